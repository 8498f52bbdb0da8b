package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// RelayBinary builds ./cmd/relay once per test binary (with -race when the
// tests run with it) and returns its path. Call Cleanup from TestMain to
// remove it.
func RelayBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "relay-test-bin-")
		if buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "relay")
		args := []string{"build", "-o", buildBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "github.com/relay-pubsub/relay/cmd/relay")
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build relay: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// Cleanup removes what the package's tests built; call it from TestMain.
func Cleanup() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// Relay is a relay process started by a test.
type Relay struct {
	// Addr is the host:port it listens on.
	Addr string
	// NodeID is its node ID.
	NodeID string

	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	logs []map[string]any
	more chan struct{}
}

// StartRelay runs the relay binary with the environment env (KEY=value,
// added to a clean RELAY_ environment with JSON logs) and waits until it
// listens. The process is killed at the end of the test if still running.
func StartRelay(t testing.TB, env ...string) *Relay {
	t.Helper()
	cmd := exec.Command(RelayBinary(t))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RELAY_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "RELAY_LOG_FORMAT=json", "RELAY_LOG_LEVEL=debug")
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = os.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &Relay{cmd: cmd, done: make(chan struct{}), more: make(chan struct{}, 1)}
	go r.collect(stderr)
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-r.done
	})
	line := r.WaitLog(t, 60*time.Second, func(l map[string]any) bool { return l["msg"] == "listening" })
	r.Addr, _ = line["addr"].(string)
	r.NodeID, _ = line["node"].(string)
	return r
}

func (r *Relay) collect(stderr io.Reader) {
	defer close(r.done)
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			l = map[string]any{"msg": sc.Text()}
		}
		r.mu.Lock()
		r.logs = append(r.logs, l)
		r.mu.Unlock()
		select {
		case r.more <- struct{}{}:
		default:
		}
	}
	r.cmd.Wait()
}

// Logs returns the log lines so far, decoded.
func (r *Relay) Logs() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.logs...)
}

// WaitLog waits for a log line that match accepts and returns it.
func (r *Relay) WaitLog(t testing.TB, timeout time.Duration, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		logs := r.Logs()
		for _, l := range logs[seen:] {
			if match(l) {
				return l
			}
		}
		seen = len(logs)
		select {
		case <-r.more:
		case <-r.done:
			for _, l := range r.Logs()[seen:] {
				if match(l) {
					return l
				}
			}
			t.Fatalf("relay exited (%v) without the awaited log line; logs:\n%s", r.cmd.ProcessState, r.dump())
		case <-deadline.C:
			t.Fatalf("no awaited log line after %v; logs:\n%s", timeout, r.dump())
		}
	}
}

func (r *Relay) dump() string {
	var b strings.Builder
	for _, l := range r.Logs() {
		j, _ := json.Marshal(l)
		b.Write(j)
		b.WriteByte('\n')
	}
	return b.String()
}

// Signal sends sig to the process.
func (r *Relay) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// Wait waits for the process to exit and returns its exit code.
func (r *Relay) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-r.done:
		return r.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("relay still running after %v", timeout)
		return -1
	}
}
