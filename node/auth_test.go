package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/auth"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

const tokenSecret = "0123456789abcdef0123456789abcdef"

// mint returns an HS256 token of sub that may subscribe to channels and
// publish to publish, expiring at exp (zero: never).
func mint(t testing.TB, sub string, channels, publish []string, exp time.Time) string {
	t.Helper()
	c := auth.Claims{Channels: channels, Publish: publish}
	c.Subject = sub
	if !exp.IsZero() {
		c.ExpiresAt = jwt.NewNumericDate(exp)
	}
	tok, err := auth.MintHS256([]byte(tokenSecret), c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// withJWT turns on HS256 tokens with tokenSecret.
func withJWT(cfg *node.Config) {
	cfg.TokenHMACSecret = tokenSecret
	cfg.TokenRefreshGrace = 10 * time.Second
}

// authCluster starts n nodes on r with JWT auth and edit's changes.
func authCluster(t *testing.T, r *testenv.Redis, n int, edit func(*node.Config)) []*nodetest.Server {
	t.Helper()
	return nodetest.ClusterWith(t, r.URL(), n, nodetest.Options{Config: func(cfg *node.Config) {
		withJWT(cfg)
		if edit != nil {
			edit(cfg)
		}
	}})
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// dialRefused dials url expecting a refusal before the upgrade; it returns
// the status and the JSON error body.
func dialRefused(t *testing.T, url string, h http.Header) (int, protocol.Error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		c.CloseNow()
		t.Fatalf("dial %s: upgraded, want a refusal", url)
	}
	if resp == nil {
		t.Fatalf("dial %s: %v, want an HTTP refusal", url, err)
	}
	var e protocol.Error
	if err := jsonDecode(resp, &e); err != nil {
		t.Fatalf("dial %s: HTTP %d body: %v", url, resp.StatusCode, err)
	}
	return resp.StatusCode, e
}

func dialProtoWith(t testing.TB, url string, h http.Header) *protoClient {
	t.Helper()
	return &protoClient{t: t, ws: nodetest.Dial(t, url, h)}
}

// expectClose fails t unless the server closes ws with code.
func expectClose(t *testing.T, ws *websocket.Conn, code websocket.StatusCode) {
	t.Helper()
	if got, reason := nodetest.ReadClose(t, ws); got != code {
		t.Fatalf("closed with %d %q, want %d", got, reason, code)
	}
}

// TestTokenCarriers: a token is accepted in the Authorization header
// (Bearer or bare), in ?token= and in protocol mode's connect command,
// whose reply names the connection.
func TestTokenCarriers(t *testing.T) {
	s := authCluster(t, testenv.StartRedis(t), 1, nil)[0]
	tok := mint(t, "alice", []string{"chat:*"}, nil, time.Now().Add(time.Hour))
	for name, h := range map[string]http.Header{"bearer": bearer(tok), "bare": {"Authorization": {tok}}} {
		t.Run(name, func(t *testing.T) {
			nodetest.Dial(t, s.WS+"/ws/chat:1", h)
			p := dialProtoWith(t, s.WS+"/ws", h)
			p.subscribe(1, "chat:1")
		})
	}
	t.Run("query", func(t *testing.T) {
		nodetest.Dial(t, s.WS+"/ws/chat:1?token="+tok, nil)
		p := dialProtoWith(t, s.WS+"/ws?token="+tok, nil)
		p.subscribe(1, "chat:1")
	})
	t.Run("connect", func(t *testing.T) {
		p := dialProtoWith(t, s.WS+"/ws", nil)
		p.send(`{"id":1,"cmd":"connect","token":"` + tok + `"}`)
		r := p.reply()
		var res protocol.ConnectResult
		if r.Error != nil || json.Unmarshal(r.Result, &res) != nil || res.User != "alice" ||
			!strings.HasPrefix(res.Client, "node-1/") || res.Expires == 0 {
			t.Fatalf("connect reply %+v (%s), want alice's client id", r, r.Result)
		}
		p.subscribe(2, "chat:1")
		p.do(`{"id":3,"cmd":"connect"}`, `{"id":3,"error":{"code":"bad_request","message":"connect runs once per connection"}}`)
	})
	t.Run("connect without token after header", func(t *testing.T) {
		p := dialProtoWith(t, s.WS+"/ws", bearer(tok))
		p.send(`{"id":1,"cmd":"connect"}`)
		if r := p.reply(); r.Error != nil || !strings.Contains(string(r.Result), `"user":"alice"`) {
			t.Fatalf("connect reply %+v", r)
		}
	})
	t.Run("anonymous before connect", func(t *testing.T) {
		p := dialProtoWith(t, s.WS+"/ws", nil)
		p.do(`{"id":1,"cmd":"subscribe","channel":"chat:1"}`,
			`{"id":1,"error":{"code":"forbidden","message":"not allowed to subscribe to \"chat:1\""}}`)
	})
}

// TestTokenRefused: without a token, or with a bad one, an upgrade gets
// 401 with the reason before it; connect with a bad token gets the reason
// and close 4002.
func TestTokenRefused(t *testing.T) {
	s := authCluster(t, testenv.StartRedis(t), 1, nil)[0]
	expired := mint(t, "alice", []string{"chat:*"}, nil, time.Now().Add(-time.Hour))
	for _, path := range []string{"/ws/chat:1", "/echo"} {
		if st, e := dialRefused(t, s.WS+path, nil); st != http.StatusUnauthorized || e.Code != protocol.CodeUnauthorized || e.Reason != "missing" {
			t.Errorf("%s without a token: %d %+v, want 401 unauthorized missing", path, st, e)
		}
	}
	for _, path := range []string{"/ws/chat:1", "/ws", "/echo"} {
		if st, e := dialRefused(t, s.WS+path, bearer(expired)); st != http.StatusUnauthorized || e.Reason != "expired" {
			t.Errorf("%s with an expired token: %d %+v, want 401 expired", path, st, e)
		}
		if st, e := dialRefused(t, s.WS+path+"?token=x.y.z", nil); st != http.StatusUnauthorized || e.Reason != "malformed" {
			t.Errorf("%s?token=x.y.z: %d %+v, want 401 malformed", path, st, e)
		}
	}
	p := dialProtoWith(t, s.WS+"/ws", nil)
	p.send(`{"id":1,"cmd":"connect","token":"` + expired + `"}`)
	if r := p.reply(); r.Error == nil || r.Error.Code != protocol.CodeUnauthorized || r.Error.Reason != "expired" {
		t.Fatalf("connect with an expired token: %+v, want unauthorized expired", r)
	}
	expectClose(t, p.ws, protocol.CloseTokenInvalid)

	m := testenv.Metrics(t, s.URL)
	for reason, want := range map[string]float64{"missing": 2, "expired": 4, "malformed": 3} {
		if got := m[`relay_tokens_refused_total{reason="`+reason+`"}`]; got != want {
			t.Errorf("relay_tokens_refused_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
}

// TestPermissions: a user with channels chat:* and user:{sub} subscribes
// there only, and publishes only where publish allows, in both modes.
func TestPermissions(t *testing.T) {
	nodes := authCluster(t, testenv.StartRedis(t), 2, nil)
	a, b := nodes[0], nodes[1]
	exp := time.Now().Add(time.Hour)
	reader := mint(t, "alice", []string{"chat:*", "user:{sub}"}, nil, exp)
	writer := mint(t, "bob", []string{"chat:*"}, []string{"chat:general"}, exp)

	t.Run("raw subscribe", func(t *testing.T) {
		for _, ch := range []string{"chat:1", "user:alice"} {
			nodetest.Dial(t, a.WS+"/ws/"+ch, bearer(reader))
		}
		for _, ch := range []string{"admin:1", "user:bob", "chat"} {
			if st, e := dialRefused(t, a.WS+"/ws/"+ch, bearer(reader)); st != http.StatusForbidden || e.Code != protocol.CodeForbidden {
				t.Errorf("alice to %s: %d %+v, want 403 forbidden", ch, st, e)
			}
		}
	})
	t.Run("raw publish", func(t *testing.T) {
		sub := nodetest.Dial(t, b.WS+"/ws/chat:general", bearer(reader))
		pub := nodetest.Dial(t, a.WS+"/ws/chat:general", bearer(writer))
		nodetest.Write(t, pub, "from bob")
		if got := nodetest.ReadText(t, sub); got != "from bob" {
			t.Fatalf("subscriber read %q, want from bob", got)
		}
		// alice may read chat:general but not write: her frame closes
		// her connection with 1008, and nothing reaches bob.
		ro := nodetest.Dial(t, a.WS+"/ws/chat:general", bearer(reader))
		nodetest.Write(t, ro, "from alice")
		if code, reason := nodetest.ReadClose(t, ro); code != websocket.StatusPolicyViolation || reason != "publish not allowed" {
			t.Fatalf("alice's publish: close %d %q, want 1008 publish not allowed", code, reason)
		}
		nodetest.Write(t, pub, "marker")
		if got := nodetest.ReadText(t, sub); got != "marker" {
			t.Fatalf("subscriber read %q, want the marker", got)
		}
	})
	t.Run("protocol", func(t *testing.T) {
		p := dialProtoWith(t, a.WS+"/ws", bearer(writer))
		p.subscribe(1, "chat:1")
		p.do(`{"id":2,"cmd":"subscribe","channel":"admin:1"}`,
			`{"id":2,"error":{"code":"forbidden","message":"not allowed to subscribe to \"admin:1\""}}`)
		p.do(`{"id":3,"cmd":"publish","channel":"chat:1","data":1}`,
			`{"id":3,"error":{"code":"forbidden","message":"not allowed to publish to \"chat:1\""}}`)
		p.subscribe(4, "chat:general")
		r := dialProtoWith(t, b.WS+"/ws", bearer(reader))
		r.subscribe(1, "chat:general")
		r.subscribe(2, "user:alice")
		p.do(`{"id":5,"cmd":"publish","channel":"chat:general","data":"hi"}`, `{"id":5,"result":{}}`)
		if m := r.push(); m.Channel != "chat:general" || string(m.Data) != `"hi"` {
			t.Fatalf("alice got %+v", m)
		}
		// The connection stays after refusals.
		p.do(`{"id":6,"cmd":"ping"}`, `{"id":6,"result":{}}`)
	})
}

// TestNamespaces: a namespace open to anonymous subscribers, one where
// only backends publish, and the default for the rest.
func TestNamespaces(t *testing.T) {
	f := filepath.Join(t.TempDir(), "namespaces.yaml")
	os.WriteFile(f, []byte("namespaces:\n  news:\n    anonymous_subscribe: true\n    client_publish: false\n"), 0o600)
	s := authCluster(t, testenv.StartRedis(t), 1, func(cfg *node.Config) {
		cfg.NamespacesFile = f
		withAPIKeys(cfg)
	})[0]
	all := mint(t, "carol", []string{"*"}, []string{"*"}, time.Now().Add(time.Hour))

	anon := nodetest.Dial(t, s.WS+"/ws/news:today", nil)
	p := dialProtoWith(t, s.WS+"/ws", nil)
	p.subscribe(1, "news:today")
	p.do(`{"id":2,"cmd":"subscribe","channel":"chat:1"}`,
		`{"id":2,"error":{"code":"forbidden","message":"not allowed to subscribe to \"chat:1\""}}`)
	if st, e := dialRefused(t, s.WS+"/ws/chat:1", nil); st != http.StatusUnauthorized || e.Reason != "missing" {
		t.Errorf("anonymous raw to chat:1: %d %+v, want 401 missing", st, e)
	}

	// Even a token that allows every channel may not publish to news:;
	// the API may.
	c := dialProtoWith(t, s.WS+"/ws", bearer(all))
	c.do(`{"id":1,"cmd":"publish","channel":"news:today","data":1}`,
		`{"id":1,"error":{"code":"forbidden","message":"not allowed to publish to \"news:today\""}}`)
	c.do(`{"id":2,"cmd":"publish","channel":"lobby","data":1}`, `{"id":2,"result":{}}`)
	apiPublish(t, s.URL+"/api/publish", `{"channel":"news:today","data":"extra"}`, `{}`)
	if got := nodetest.ReadText(t, anon); got != `"extra"` {
		t.Errorf("anonymous raw subscriber read %q, want \"extra\"", got)
	}
	if m := p.push(); string(m.Data) != `"extra"` {
		t.Errorf("anonymous protocol subscriber got %+v", m)
	}
	// An anonymous protocol connection may not publish.
	p.do(`{"id":3,"cmd":"publish","channel":"lobby","data":1}`,
		`{"id":3,"error":{"code":"forbidden","message":"not allowed to publish to \"lobby\""}}`)
}

// TestTokenExpiry: raw connections are closed with 4001 when their token
// expires; protocol connections get a refresh request first, and a refresh
// within the grace keeps them.
func TestTokenExpiry(t *testing.T) {
	s := authCluster(t, testenv.StartRedis(t), 1, func(cfg *node.Config) {
		cfg.TokenRefreshGrace = 500 * time.Millisecond
	})[0]
	soon := func() time.Time { return time.Now().Add(1500 * time.Millisecond) } // exp has whole seconds

	t.Run("raw", func(t *testing.T) {
		ws := nodetest.Dial(t, s.WS+"/ws/chat:1", bearer(mint(t, "alice", []string{"chat:*"}, nil, soon())))
		expectClose(t, ws, protocol.CloseTokenExpired)
	})
	t.Run("protocol without refresh", func(t *testing.T) {
		p := dialProtoWith(t, s.WS+"/ws", bearer(mint(t, "alice", []string{"chat:*"}, nil, soon())))
		p.expect(`{"refresh":{"grace_ms":500}}`)
		expectClose(t, p.ws, protocol.CloseTokenExpired)
	})
	t.Run("protocol with refresh", func(t *testing.T) {
		exp1 := soon()
		p := dialProtoWith(t, s.WS+"/ws", bearer(mint(t, "alice", []string{"chat:*"}, nil, exp1)))
		p.subscribe(1, "chat:1")
		p.expect(`{"refresh":{"grace_ms":500}}`)
		p.do(`{"id":2,"cmd":"refresh","token":"`+mint(t, "bob", nil, nil, exp1.Add(time.Hour))+`"}`,
			`{"id":2,"error":{"code":"unauthorized","reason":"other_user","message":"token refused: other_user: the new token's sub is not the connection's user"}}`)
		// The new token expires two seconds after the old: its refresh
		// request comes after the old grace ended, so receiving it proves
		// the connection outlived that grace.
		p.do(`{"id":3,"cmd":"refresh","token":"`+mint(t, "alice", []string{"chat:*"}, nil, exp1.Add(2*time.Second))+`"}`, `{"id":3,"result":{}}`)
		p.expect(`{"refresh":{"grace_ms":500}}`)
		expectClose(t, p.ws, protocol.CloseTokenExpired)
	})
	t.Run("connect refused", func(t *testing.T) {
		p := dialProtoWith(t, s.WS+"/ws", nil)
		p.send(`{"id":1,"cmd":"connect"}`)
		if r := p.reply(); r.Error == nil || r.Error.Reason != "missing" {
			t.Fatalf("connect without a token: %+v, want unauthorized missing", r)
		}
		expectClose(t, p.ws, protocol.CloseTokenInvalid)
	})
}

// TestConnectTimeout: a protocol connection without a token that does not
// send connect in time is closed with 4003; connect in time keeps it.
func TestConnectTimeout(t *testing.T) {
	s := authCluster(t, testenv.StartRedis(t), 1, func(cfg *node.Config) {
		cfg.TokenConnectTimeout = 500 * time.Millisecond
	})[0]
	ok := dialProtoWith(t, s.WS+"/ws", nil)
	ok.send(`{"id":1,"cmd":"connect","token":"` + mint(t, "alice", []string{"chat:*"}, nil, time.Time{}) + `"}`)
	if r := ok.reply(); r.Error != nil {
		t.Fatalf("connect: %+v", r.Error)
	}
	late := dialProtoWith(t, s.WS+"/ws", nil) // its deadline is after ok's
	expectClose(t, late.ws, protocol.CloseConnectNeeded)
	// So ok outlived its own deadline: it still answers.
	ok.do(`{"id":2,"cmd":"ping"}`, `{"id":2,"result":{}}`)
}

// TestStaticTokensBesideJWT: RELAY_AUTH_TOKENS keep working, with every
// channel, when JWTs are on.
func TestStaticTokensBesideJWT(t *testing.T) {
	s := authCluster(t, testenv.StartRedis(t), 1, func(cfg *node.Config) { cfg.AuthTokens = node.Secrets{"expected_token"} })[0]
	ws := nodetest.Dial(t, s.WS+"/echo", http.Header{"Authorization": {"expected_token"}})
	nodetest.Write(t, ws, "hi")
	if got := nodetest.ReadText(t, ws); got != "Server received: hi" {
		t.Fatalf("echo read %q", got)
	}
	p := dialProtoWith(t, s.WS+"/ws", bearer("expected_token"))
	p.subscribe(1, "admin:1")
	p.do(`{"id":2,"cmd":"publish","channel":"admin:1","data":1}`, `{"id":2,"result":{}}`)
}

// TestReadyzJWKS: a JWKS URL that never answered well fails readiness:
// /readyz names the component, /readyz/details the reason.
func TestReadyzJWKS(t *testing.T) {
	dead := "http://" + fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) + "/jwks.json"
	s := authCluster(t, testenv.StartRedis(t), 1, func(cfg *node.Config) {
		cfg.TokenJWKSURL, cfg.TokenJWKSRefresh = dead, time.Hour
	})[0]
	testenv.WaitFor(t, nodetest.Timeout, "readyz/details names the JWKS", func() bool {
		resp, err := http.Get(s.URL + "/readyz/details")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var body struct{ Failing, Reasons []string }
		return resp.StatusCode == http.StatusServiceUnavailable && jsonDecode(resp, &body) == nil &&
			len(body.Reasons) == 1 && strings.Contains(body.Reasons[0], "connection refused") &&
			slices.Equal(body.Failing, []string{"jwks"})
	})
	resp, err := http.Get(s.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := jsonDecode(resp, &body); err != nil || resp.StatusCode != http.StatusServiceUnavailable ||
		fmt.Sprint(body["failing"]) != "[jwks]" || body["reasons"] != nil {
		t.Errorf("/readyz = %d %v (%v), want 503 failing [jwks] and no reasons", resp.StatusCode, body, err)
	}
}
