package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

// docBackend returns the Python backend of docs/AUTH.md ("A backend in 50
// lines"), listening on port instead of 9000.
func docBackend(t *testing.T, port int) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/AUTH.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```python\n# backend.py")
	src, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 || !strings.Contains(src, `("127.0.0.1", 9000)`) {
		t.Fatal("docs/AUTH.md lacks the backend.py example listening on 127.0.0.1:9000")
	}
	return "# backend.py" + strings.Replace(src, `("127.0.0.1", 9000)`, fmt.Sprintf(`("127.0.0.1", %d)`, port), 1)
}

// TestProxyDocBackend runs the backend of docs/AUTH.md with a relay
// process configured as the document says, and plays its examples: the
// session cookie lets alice in with her info, the backend decides
// subscribes and stamps publishes, and no cookie is refused before the
// upgrade with the backend's code and message.
func TestProxyDocBackend(t *testing.T) {
	port := testenv.FreePort(t)
	file := filepath.Join(t.TempDir(), "backend.py")
	if err := os.WriteFile(file, []byte(docBackend(t, port)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	py := exec.CommandContext(ctx, testenv.Python(t), file)
	py.Stderr = os.Stderr
	if err := py.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); py.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	testenv.WaitFor(t, 20*time.Second, "the backend listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	base := "http://" + addr + "/relay/"
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0",
		"RELAY_PROXY_CONNECT_URL="+base+"connect", "RELAY_PROXY_SUBSCRIBE_URL="+base+"subscribe",
		"RELAY_PROXY_PUBLISH_URL="+base+"publish", "RELAY_PROXY_COOKIES=session")
	cookie := http.Header{"Cookie": {"session=s3cr3t"}}

	ws := nodetest.Dial(t, "ws://"+n.Addr+"/ws?echo=true", cookie)
	do := func(cmd string) protocol.Reply {
		t.Helper()
		nodetest.Write(t, ws, cmd)
		var r protocol.Reply
		if err := json.Unmarshal([]byte(nodetest.ReadText(t, ws)), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	var res protocol.ConnectResult
	if r := do(`{"id":1,"cmd":"connect"}`); r.Error != nil || json.Unmarshal(r.Result, &res) != nil ||
		res.User != "alice" || string(res.Info) != `{"name":"Alice"}` {
		t.Fatalf("connect: %+v %s, want alice with her info", r.Error, r.Result)
	}
	if r := do(`{"id":2,"cmd":"subscribe","channel":"team:red"}`); r.Error != nil {
		t.Fatalf("subscribe team:red: %+v", r.Error)
	}
	if r := do(`{"id":3,"cmd":"subscribe","channel":"admin:1"}`); r.Error == nil || r.Error.Code != protocol.CodeForbidden || r.Error.Message != "members only" {
		t.Fatalf("subscribe admin:1: %+v, want forbidden: members only", r.Error)
	}
	nodetest.Write(t, ws, `{"cmd":"publish","channel":"team:red","data":"hi"}`)
	var push protocol.Push
	if err := json.Unmarshal([]byte(nodetest.ReadText(t, ws)), &push); err != nil || string(push.Data) != `{"text":"hi","by":"alice"}` {
		t.Fatalf("push %+v (%v), want hi stamped by alice", push, err)
	}

	dctx, dcancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer dcancel()
	c, resp, err := websocket.Dial(dctx, "ws://"+n.Addr+"/ws/team:red", nil)
	if err == nil {
		c.CloseNow()
		t.Fatal("upgraded without the session cookie")
	}
	var e protocol.Error
	if resp == nil || resp.StatusCode != http.StatusUnauthorized || json.NewDecoder(resp.Body).Decode(&e) != nil ||
		e.Code != protocol.CodeUnauthorized || e.Message != "log in first" {
		t.Fatalf("without the cookie: %v %+v, want 401 log in first", err, e)
	}
}

// TestProxyCookiesAnyOrigin: forwarding cookies while any site's pages
// may connect stops the node at start with one line naming both
// variables.
func TestProxyCookiesAnyOrigin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.RelayBinary(t))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "RELAY_ADDR=127.0.0.1:0",
		"RELAY_PROXY_CONNECT_URL=http://127.0.0.1:9/connect", "RELAY_PROXY_COOKIES=session", "RELAY_ORIGINS=*"}
	out, err := cmd.CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err == nil || cmd.ProcessState.ExitCode() == 0 {
		t.Fatalf("exit 0, want non-zero; printed %q", out)
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "RELAY_PROXY_COOKIES") || !strings.Contains(lines[0], "RELAY_ORIGINS") {
		t.Fatalf("printed %q, want one line naming RELAY_PROXY_COOKIES and RELAY_ORIGINS", out)
	}
}
