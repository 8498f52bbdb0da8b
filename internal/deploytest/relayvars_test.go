package deploytest

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"
)

// contractVars are the configuration variables of the relay binary as the
// design fixes them. When the binary's `relay --help` lists its variables,
// that list is used instead (see relayVars).
var contractVars = []string{
	"RELAY_ADDR",
	"RELAY_REDIS_URL",
	"RELAY_NODE_ID",
	"RELAY_AUTH_TOKENS",
	"RELAY_AUTH_TOKENS_FILE",
	"RELAY_API_KEY",
	"RELAY_DRAIN_SECONDS",
	"RELAY_LOG_FORMAT",
	"RELAY_LOG_LEVEL",
	"RELAY_CHANNEL_PREFIX",
	"RELAY_MAX_CONNECTIONS",
}

// nonRelayVars are variables the manifests may set that the Go runtime,
// not relay, reads.
var nonRelayVars = []string{"GOMEMLIMIT", "GOMAXPROCS", "GOGC"}

var relayVarRE = regexp.MustCompile(`\bRELAY_[A-Z0-9_]+\b`)

var (
	relayVarsOnce sync.Once
	relayVarsList []string
	relayVarsFrom string
)

// relayVarsMissing lists the contractVars that relay --help lacks.
var relayVarsMissing []string

// relayVars returns the RELAY_ variables the deployment files may set:
// those that `go run ./cmd/relay --help` prints. It fails t when the binary
// lacks one of contractVars, the ones the design promises: the node refuses
// to start with a RELAY_ variable it does not know.
func relayVars(t *testing.T) []string {
	t.Helper()
	relayVarsOnce.Do(func() {
		relayVarsList, relayVarsFrom = contractVars, "the design's list (relay --help printed none)"
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool(), "run", "./cmd/relay", "--help")
		cmd.Dir = repoRoot(t)
		cmd.Env = append(cmd.Environ(), "GOWORK=off")
		out, _ := cmd.CombinedOutput() // --help may exit non-zero (flag.ErrHelp)
		found := relayVarRE.FindAllString(string(out), -1)
		if !slices.Contains(found, "RELAY_ADDR") {
			return
		}
		var missing []string
		for _, v := range contractVars {
			if !slices.Contains(found, v) {
				missing = append(missing, v)
			}
		}
		all := append(found, contractVars...)
		slices.Sort(all)
		relayVarsList, relayVarsFrom = slices.Compact(all), "relay --help and the design"
		relayVarsMissing = missing
	})
	if len(relayVarsMissing) > 0 {
		t.Fatalf("relay --help lacks %v: a node started with them set would refuse to start", relayVarsMissing)
	}
	t.Logf("RELAY_ variables from %s: %v", relayVarsFrom, relayVarsList)
	return relayVarsList
}

// goTool is the go command: go test puts its GOROOT/bin first on PATH.
func goTool() string { return "go" }

// repoRoot is the root of the relay repository: this module lives in
// internal/deploytest.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}
