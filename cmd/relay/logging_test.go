package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
)

// TestConfigErrorLine: an invalid value stops the node with one line that
// gives the variable, the value and what is expected, and no Go internals.
func TestConfigErrorLine(t *testing.T) {
	tests := []struct{ env, want string }{
		{"RELAY_MAX_MESSAGE_BYTES=lots", `relay: RELAY_MAX_MESSAGE_BYTES="lots": want an integer`},
		{"RELAY_MAX_CONNECTIONS=99999999999999999999", `relay: RELAY_MAX_CONNECTIONS="99999999999999999999": out of range; want an integer`},
		{"RELAY_WRITE_TIMEOUT=10", `relay: RELAY_WRITE_TIMEOUT="10": want a duration such as 10s, 250ms or 1m30s`},
		{"RELAY_RAW_PUBLISH_RATE=fast", `relay: RELAY_RAW_PUBLISH_RATE="fast": want a number`},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, testenv.RelayBinary(t))
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "RELAY_ADDR=127.0.0.1:0", tt.env}
		out, _ := cmd.CombinedOutput()
		cancel()
		if got := strings.TrimSpace(string(out)); got != tt.want || cmd.ProcessState.ExitCode() != 2 {
			t.Errorf("%s: exit %d, printed %q; want exit 2 and %q", tt.env, cmd.ProcessState.ExitCode(), got, tt.want)
		}
	}
}

// TestRedisClientLogsJSON: what go-redis itself logs (here: its pool
// failing to dial a Redis that is not there for a publish of the HTTP
// API) arrives as JSON lines of the node's log, not as plain text.
func TestRedisClientLogsJSON(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	r := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL=redis://"+dead+"/0", "RELAY_API_KEY=k")
	req, _ := http.NewRequest(http.MethodPost, "http://"+r.Addr+"/api/publish", strings.NewReader(`{"channel":"x","data":1}`))
	req.Header.Set("Authorization", "Bearer k")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("publish without Redis: HTTP %d, want 503", resp.StatusCode)
	}
	l := r.WaitLog(t, 60*time.Second, func(l map[string]any) bool { return l["msg"] == "redis client" })
	if d, _ := l["detail"].(string); l["level"] != "WARN" || l["component"] != "redis" || !strings.Contains(d, "dial") {
		t.Errorf("go-redis's line = %v, want a WARN of component redis about dialing", l)
	}
	for _, l := range r.Logs() {
		if _, ok := l["level"]; !ok {
			t.Errorf("a log line is not JSON: %q", l["msg"])
		}
	}
}

// TestLogDurations: durations are logged as "15s", not in nanoseconds.
func TestLogDurations(t *testing.T) {
	r := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_DRAIN_SECONDS=2")
	r.Signal(t, syscall.SIGTERM)
	l := r.WaitLog(t, 10*time.Second, func(l map[string]any) bool { return l["msg"] == "draining" })
	for _, key := range []string{"window", "deadline"} {
		s, ok := l[key].(string)
		if _, err := time.ParseDuration(s); !ok || err != nil {
			t.Errorf("draining: %s = %#v, want a duration such as \"1.5s\"", key, l[key])
		}
	}
	r.Wait(t, 30*time.Second)
}
