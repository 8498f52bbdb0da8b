package protocol_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestStdlibOnly pins that the wire package, shared with clients, imports
// only the standard library.
func TestStdlibOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if p != "github.com/relay-pubsub/relay/node/protocol" {
			t.Errorf("node/protocol depends on %s; it must import only the standard library", p)
		}
	}
}
