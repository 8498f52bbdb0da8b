package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
)

// TestLogsHoldNoSecrets: a full run of two nodes at debug level (tokens
// good and bad, in headers and query strings, API keys, payloads in every
// mode, refusals and closes, a drain) leaves no secret, payload or query
// string in any log line.
func TestLogsHoldNoSecrets(t *testing.T) {
	const (
		token    = "tok-S3CRET-1"
		apiKey   = "key-S3CRET-2"
		marker   = "S3CRET"
		wrongTok = "wrong-S3CRET-3"
	)
	r := testenv.StartRedis(t)
	env := []string{"RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL=" + r.URL(), "RELAY_AUTH_TOKENS=" + token,
		"RELAY_API_KEY=" + apiKey, "RELAY_DRAIN_SECONDS=1"}
	a := testenv.StartRelay(t, append(env, "RELAY_NODE_ID=a")...)
	b := testenv.StartRelay(t, append(env, "RELAY_NODE_ID=b")...)
	auth := http.Header{"Authorization": {"Bearer " + token}}

	sub := nodetest.Dial(t, "ws://"+a.Addr+"/ws/secrets?q=query-S3CRET-4", auth)
	pub := nodetest.Dial(t, "ws://"+b.Addr+"/ws/secrets?echo=false&x=query-S3CRET-5", auth)
	nodetest.Write(t, pub, "raw-payload-S3CRET-6")
	if got := nodetest.ReadText(t, sub); got != "raw-payload-S3CRET-6" {
		t.Fatalf("subscriber read %q", got)
	}
	proto := nodetest.Dial(t, "ws://"+b.Addr+"/ws", auth)
	nodetest.Write(t, proto, `{"id":1,"cmd":"publish","channel":"secrets","data":"proto-payload-S3CRET-7"}`)
	nodetest.ReadText(t, proto) // the ack
	nodetest.ReadText(t, sub)

	req, _ := http.NewRequest("POST", "http://"+a.Addr+"/api/publish?k=query-S3CRET-8",
		strings.NewReader(`{"channel":"secrets","data":"api-payload-S3CRET-9"}`))
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("API publish: HTTP %d", resp.StatusCode)
	}
	nodetest.ReadText(t, sub)

	// Refusals: a wrong token in the header and in the query string, a
	// wrong API key, a bad message that closes its connection.
	for _, url := range []string{"ws://" + a.Addr + "/ws/secrets", "ws://" + a.Addr + "/ws/secrets?token=" + wrongTok} {
		ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
		_, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {wrongTok}}})
		cancel()
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("dial with a wrong token: %v, want 401", err)
		}
	}
	req, _ = http.NewRequest("POST", "http://"+a.Addr+"/api/publish", strings.NewReader(`{}`))
	req.Header.Set("X-API-Key", wrongTok)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	bad := nodetest.Dial(t, "ws://"+a.Addr+"/ws/secrets", auth)
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	bad.Write(ctx, websocket.MessageText, []byte("bad-S3CRET-10\xff"))
	nodetest.ReadClose(t, bad)

	for _, n := range []*testenv.Relay{a, b} {
		n.Signal(t, syscall.SIGTERM)
		if code := n.Wait(t, 30*time.Second); code != 0 {
			t.Errorf("exit code %d after SIGTERM", code)
		}
		lines := 0
		for _, l := range n.Logs() {
			lines++
			j, _ := json.Marshal(l)
			if strings.Contains(string(j), marker) {
				t.Errorf("node %s logged a secret, payload or query string: %s", n.NodeID, j)
			}
		}
		// The run was logged at all: the check above is not vacuous.
		if lines < 10 {
			t.Errorf("node %s wrote %d log lines, want a full run's", n.NodeID, lines)
		}
	}
}
