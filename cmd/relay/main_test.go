package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"
	"go.uber.org/goleak"

	"github.com/relay-pubsub/relay/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		testenv.Cleanup()
		os.Exit(code)
	}))
}

// python runs a script of testdata with the Python websockets client and
// returns its output.
func python(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, testenv.Python(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("python %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestTutorialClient runs the original tutorial's client, unmodified,
// against a node on :8765, the port it dials.
func TestTutorialClient(t *testing.T) {
	if shared, err := os.ReadFile("../../../shared/seed/tutorial_client.py"); err == nil {
		ours, _ := os.ReadFile("testdata/tutorial_client.py")
		if !bytes.Equal(shared, ours) {
			t.Fatal("testdata/tutorial_client.py differs from shared/seed/tutorial_client.py: it must be the unmodified original")
		}
	}
	testenv.StartRelay(t, "RELAY_ADDR=:8765")
	out := python(t, "testdata/tutorial_client.py")
	want := "Message sent to server.\nReceived from server: Server received: Hello, Server!\n"
	if out != want {
		t.Errorf("tutorial client printed %q, want %q", out, want)
	}
}

// TestTutorialBroadcast: two Python clients on two nodes of one Redis.
func TestTutorialBroadcast(t *testing.T) {
	r := testenv.StartRedis(t)
	a := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL="+r.URL(), "RELAY_NODE_ID=a")
	b := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL="+r.URL(), "RELAY_NODE_ID=b")
	out := python(t, "testdata/broadcast.py", "ws://"+a.Addr+"/ws/chat", "ws://"+b.Addr+"/ws/chat")
	want := "B received: Hello from A\nA received: Hello from B\n"
	if out != want {
		t.Errorf("broadcast printed %q, want %q", out, want)
	}
}

// TestTutorialToken: the tutorial's token in the Authorization header.
func TestTutorialToken(t *testing.T) {
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_AUTH_TOKENS=expected_token,other")
	tests := []struct{ token, want string }{
		{"expected_token", "accepted: Server received: Hello, Server!\n"},
		{"Bearer expected_token", "accepted: Server received: Hello, Server!\n"},
		{"wrong", "refused: 401\n"},
		{"-", "refused: 401\n"},
	}
	for _, tt := range tests {
		if got := python(t, "testdata/token_client.py", "ws://"+n.Addr+"/echo", tt.token); got != tt.want {
			t.Errorf("token %q: printed %q, want %q", tt.token, got, tt.want)
		}
	}
	for _, l := range n.Logs() {
		for _, v := range l {
			if s, ok := v.(string); ok && strings.Contains(s, "expected_token") {
				t.Errorf("a log line shows the token: %v", l)
			}
		}
	}
}

func TestTokenFile(t *testing.T) {
	f := t.TempDir() + "/tokens"
	os.WriteFile(f, []byte("# tokens\nfrom_file\n\n"), 0o600)
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_AUTH_TOKENS_FILE="+f)
	if got := python(t, "testdata/token_client.py", "ws://"+n.Addr+"/echo", "from_file"); !strings.HasPrefix(got, "accepted") {
		t.Errorf("token from file: %q", got)
	}
}

// TestInvalidConfig: a bad variable stops the node with a non-zero exit and
// one line naming it.
func TestInvalidConfig(t *testing.T) {
	tests := []struct{ env, name string }{
		{"RELAY_MAX_MESSAGE_BYTES=lots", "RELAY_MAX_MESSAGE_BYTES"},
		{"RELAY_MAX_MESSAGE_BYTES=0", "RELAY_MAX_MESSAGE_BYTES"},
		{"RELAY_WRITE_TIMEOUT=soon", "RELAY_WRITE_TIMEOUT"},
		{"RELAY_LOG_FORMAT=xml", "RELAY_LOG_FORMAT"},
		{"RELAY_LOG_LEVEL=loud", "RELAY_LOG_LEVEL"},
		{"RELAY_REDIS_URL=http://x", "RELAY_REDIS_URL"},
		{"RELAY_REDIS_SUBSCRIBERS=0", "RELAY_REDIS_SUBSCRIBERS"},
		{"RELAY_ADRR=:9000", "RELAY_ADRR"},
		{"RELAY_AUTH_TOKENS_FILE=/nonexistent", "RELAY_AUTH_TOKENS_FILE"},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, testenv.RelayBinary(t))
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "RELAY_ADDR=127.0.0.1:0", tt.env}
		out, err := cmd.CombinedOutput()
		cancel()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err == nil || cmd.ProcessState.ExitCode() == 0 {
			t.Errorf("%s: exit 0, want non-zero", tt.env)
			continue
		}
		if len(lines) != 1 || !strings.Contains(lines[0], tt.name) {
			t.Errorf("%s: printed %q, want one line naming %s", tt.env, out, tt.name)
		}
	}
}

func TestUnknownVariables(t *testing.T) {
	tests := []struct {
		env []string
		ok  bool
	}{
		{[]string{"RELAY_ADDR=:1", "HOME=/"}, true},
		{[]string{"RELAY_ADRR=:1"}, false},
		{[]string{"RELAY_PORT=tcp://10.0.0.1:8080", "RELAY_PORT_8080_TCP_ADDR=10.0.0.1", "RELAY_SERVICE_HOST=10.0.0.1", "RELAY_SERVICE_PORT=8080"}, true},
		{[]string{"RELAY_PORTS=1"}, false},
	}
	for _, tt := range tests {
		if err := checkUnknown(tt.env); (err == nil) != tt.ok {
			t.Errorf("checkUnknown(%q) = %v, want ok=%v", tt.env, err, tt.ok)
		}
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"--help"}, &out, &out); code != 0 {
		t.Fatalf("relay --help exit %d", code)
	}
	var keys bytes.Buffer
	envconfig.Usagef(prefix, &config{}, &keys, "{{range .}}{{usage_key .}}\n{{end}}")
	for _, want := range append(strings.Fields(keys.String()), ":8080", "65536") {
		if !strings.Contains(out.String(), want) {
			t.Errorf("relay --help lacks %q:\n%s", want, out.String())
		}
	}
}
