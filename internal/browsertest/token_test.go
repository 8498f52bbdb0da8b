package browsertest

import (
	"fmt"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/auth"
)

// TestTokens: relay.js sends getToken's token in a connect command, answers
// the node's refresh request with a new token and keeps its connection; a
// refused token stops the client with the node's code.
func TestTokens(t *testing.T) {
	const secret = "browsertest-secret-of-at-least-32-bytes"
	node := startRelay(t, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "node-1", "",
		"RELAY_TOKEN_HMAC_SECRET="+secret, "RELAY_TOKEN_LEEWAY=0")
	mint := func(ttl time.Duration) string {
		tok, err := auth.MintHS256([]byte(secret), auth.Claims{
			RegisteredClaims: jwt.RegisteredClaims{Subject: "ann", ExpiresAt: jwt.NewNumericDate(time.Now().Add(ttl))},
			Channels:         []string{"chat:*"},
			Publish:          []string{"chat:*"},
		})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tb := openTab(t, startBrowser(t), "http://"+node.Addr+"/healthz")
	evaluate[bool](tb, pageScript)

	// The first token expires in a second: the node asks for a refresh,
	// and the second one keeps the connection.
	got := evaluate[map[string]any](tb, fmt.Sprintf(`(async () => {
		const { Relay } = await import('/relay.js');
		const tokens = [%q, %q];
		let calls = 0;
		const relay = new Relay(location.origin, { echo: true, getToken: async () => { calls++; changed(); return tokens[Math.min(calls, 2) - 1]; } });
		record(relay);
		await relay.subscribe('chat:a', handle);
		await until(() => calls >= 2);
		await relay.publish('chat:a', 'after refresh');
		await until(() => got.length >= 1);
		return { got, events, calls, shared: relay.shared };
	})()`, mint(time.Second), mint(time.Hour)))
	want := map[string]any{"got": []any{"after refresh@0"}, "events": []any{"connected"}, "calls": float64(2), "shared": false}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("refresh: %v, want %v", got, want)
	}

	// A refused token: the client stops with the node's code.
	got = evaluate[map[string]any](tb, `(async () => {
		const { Relay } = await import('/relay.js');
		const relay = new Relay(location.origin, { token: 'not-a-token' });
		const closed = new Promise((resolve) => relay.addEventListener('closed', (e) => resolve(e.error.code)));
		let sub;
		try { await relay.subscribe('chat:a', () => {}); sub = 'ok'; } catch (err) { sub = err.code; }
		return { closed: await closed, sub, state: relay.state };
	})()`)
	want = map[string]any{"closed": "unauthorized", "sub": "unauthorized", "state": "closed"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("refused token: %v, want %v", got, want)
	}
	tb.checkConsole()
}
