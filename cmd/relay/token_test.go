package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/node/auth"
)

const hmacSecret = "0123456789abcdef0123456789abcdef"

// TestTokenCommand: relay token mints what the node accepts.
func TestTokenCommand(t *testing.T) {
	t.Setenv("RELAY_TOKEN_HMAC_SECRET", hmacSecret)
	t.Setenv("RELAY_TOKEN_AUDIENCE", "relay")
	var out, errb bytes.Buffer
	if code := run([]string{"token", "--sub", "alice", "--channels", "chat:*,user:{sub}", "--publish", "chat:*", "--ttl", "1h", "--info", `{"name":"Alice"}`}, &out, &errb); code != 0 {
		t.Fatalf("relay token exited %d: %s", code, errb.String())
	}
	v, err := auth.New(auth.Config{HMACSecret: []byte(hmacSecret), Audience: "relay"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := v.Verify(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("the node refuses relay token's token: %v", err)
	}
	if id.User != "alice" || string(id.Info) != `{"name":"Alice"}` || time.Until(id.Expires) < 59*time.Minute ||
		!id.MaySubscribe(nil, "user:alice") || !id.MayPublish(nil, "chat:1") || id.MayPublish(nil, "user:alice") {
		t.Errorf("identity %+v", id)
	}
	t.Setenv("RELAY_TOKEN_HMAC_SECRET", "")
	if code := run([]string{"token", "--sub", "a"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "RELAY_TOKEN_HMAC_SECRET") {
		t.Errorf("relay token without a secret exited %d: %s", code, errb.String())
	}
}
