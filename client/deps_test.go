package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps pins what an app that uses the SDK pulls in: Relay's wire
// types and coder/websocket, no Redis client, no metrics library.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		switch {
		case p == "github.com/relay-pubsub/relay/client", p == "github.com/relay-pubsub/relay/node/protocol":
		case p == "github.com/coder/websocket", strings.HasPrefix(p, "github.com/coder/websocket/"):
		default:
			t.Errorf("client depends on %s; it may import only node/protocol and coder/websocket", p)
		}
	}
}
