package node_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// backend is the app's backend of the proxy tests: a real HTTP server on
// loopback. answer answers each call (the event is the URL's path:
// /connect, /subscribe, /publish); every call is recorded in calls.
type backend struct {
	*httptest.Server
	calls chan backendCall
}

// backendCall is one call the backend received.
type backendCall struct {
	event  string
	header http.Header
	req    map[string]any
}

func newBackend(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, call backendCall)) *backend {
	t.Helper()
	b := &backend{calls: make(chan backendCall, 64)}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		call := backendCall{event: strings.TrimPrefix(r.URL.Path, "/"), header: r.Header.Clone()}
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || json.Unmarshal(body, &call.req) != nil {
			t.Errorf("backend got %s %s %q with body %q, want a JSON POST", r.Method, r.URL.Path, r.Header.Get("Content-Type"), body)
		}
		b.calls <- call
		answer(w, r, call)
	}))
	t.Cleanup(b.Close)
	return b
}

// next returns the next call the backend received.
func (b *backend) next(t *testing.T) backendCall {
	t.Helper()
	select {
	case c := <-b.calls:
		return c
	case <-t.Context().Done():
		t.Fatal("test ended before the backend was called")
	}
	return backendCall{}
}

// none fails t if the backend received a call not yet taken.
func (b *backend) none(t *testing.T) {
	t.Helper()
	select {
	case c := <-b.calls:
		t.Fatalf("backend called for %s %v, want no call", c.event, c.req)
	default:
	}
}

// startProxied starts a node with the in-memory broker whose proxy calls
// b for the given events, with edit's changes.
func startProxied(t *testing.T, b *backend, events string, edit func(*node.Config)) *nodetest.Server {
	t.Helper()
	cfg := nodetest.Config()
	for _, ev := range strings.Split(events, ",") {
		switch ev {
		case "connect":
			cfg.ProxyConnectURL = b.URL + "/connect"
		case "subscribe":
			cfg.ProxySubscribeURL = b.URL + "/subscribe"
		case "publish":
			cfg.ProxyPublishURL = b.URL + "/publish"
		}
	}
	if edit != nil {
		edit(&cfg)
	}
	return nodetest.Start(t, cfg, pubsub.NewMemory())
}

// answerJSON writes body as a 200 answer.
func answerJSON(w http.ResponseWriter, body string) {
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, body)
}

const aliceAllowed = `{"result":{"user":"alice","channels":["chat:*","user:{sub}"],"publish":["chat:*"],"info":{"name":"Alice"}}}`

// TestProxyConnectAllow: with the connect proxy, a connection without a
// token is who the backend says, with the channels and info it gives; the
// backend gets the headers and cookies configured, and no other. A
// connection with a token is decided by the token, without a call.
func TestProxyConnectAllow(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request, c backendCall) { answerJSON(w, aliceAllowed) })
	s := startProxied(t, b, "connect", func(cfg *node.Config) {
		withJWT(cfg)
		cfg.ProxyHeaders = []string{"x-session"}
		cfg.ProxyCookies = []string{"session"}
	})
	h := http.Header{
		"Cookie":     {"session=s3cr3t; tracking=no-thanks"},
		"X-Session":  {"abc"},
		"X-Other":    {"not forwarded"},
		"User-Agent": {"test"},
	}

	t.Run("protocol", func(t *testing.T) {
		p := dialProtoWith(t, s.WS+"/ws", h)
		b.none(t) // asked at connect, not at the upgrade
		p.send(`{"id":1,"cmd":"connect"}`)
		r := p.reply()
		var res protocol.ConnectResult
		if r.Error != nil || json.Unmarshal(r.Result, &res) != nil || res.User != "alice" || string(res.Info) != `{"name":"Alice"}` {
			t.Fatalf("connect reply %+v (%s), want alice with her info", r, r.Result)
		}
		c := b.next(t)
		if c.event != "connect" || c.req["client"] != res.Client || c.req["mode"] != "proto" {
			t.Errorf("backend got %s %v, want connect of %s in proto mode", c.event, c.req, res.Client)
		}
		if got := c.header.Get("Cookie"); got != "session=s3cr3t" {
			t.Errorf("backend got Cookie %q, want only the session cookie", got)
		}
		if c.header.Get("X-Session") != "abc" || c.header.Get("X-Other") != "" || c.header.Get("User-Agent") != "relay" {
			t.Errorf("backend got headers %v, want X-Session only", c.header)
		}
		p.subscribe(2, "chat:1")
		p.subscribe(3, "user:alice")
		p.do(`{"id":4,"cmd":"subscribe","channel":"user:bob"}`,
			`{"id":4,"error":{"code":"forbidden","message":"not allowed to subscribe to \"user:bob\""}}`)
		p.do(`{"id":5,"cmd":"publish","channel":"chat:1","data":"hi"}`, `{"id":5,"result":{}}`)
		p.do(`{"id":6,"cmd":"publish","channel":"user:alice","data":"hi"}`,
			`{"id":6,"error":{"code":"forbidden","message":"not allowed to publish to \"user:alice\""}}`)
	})

	t.Run("protocol first command", func(t *testing.T) {
		p := dialProtoWith(t, s.WS+"/ws", h)
		p.send(`{"id":1,"cmd":"ping"}`) // needs no identity: no call
		p.expect(`{"id":1,"result":{}}`)
		b.none(t)
		p.subscribe(2, "chat:1")
		b.next(t)
		p.send(`{"id":3,"cmd":"connect"}`) // connected already: the same answer, no call
		if r := p.reply(); r.Error != nil || !strings.Contains(string(r.Result), `"user":"alice"`) {
			t.Fatalf("connect reply %+v", r)
		}
		b.none(t)
	})

	t.Run("raw", func(t *testing.T) {
		ws := nodetest.Dial(t, s.WS+"/ws/chat:1?echo=true", h)
		if c := b.next(t); c.req["mode"] != "raw" || c.req["channel"] != "chat:1" {
			t.Errorf("backend got %v, want a raw connect to chat:1", c.req)
		}
		nodetest.Write(t, ws, "hello")
		if got := nodetest.ReadText(t, ws); got != "hello" {
			t.Fatalf("read %q, want hello", got)
		}
		status, e := dialRefused(t, s.WS+"/ws/admin:1", h)
		if status != http.StatusForbidden || e.Code != protocol.CodeForbidden {
			t.Fatalf("admin:1: %d %+v, want 403 forbidden", status, e)
		}
		b.next(t)
	})

	t.Run("token decides", func(t *testing.T) {
		tok := mint(t, "carol", []string{"chat:*"}, nil, time.Time{})
		nodetest.Dial(t, s.WS+"/ws/chat:1", bearer(tok))
		p := dialProtoWith(t, s.WS+"/ws", bearer(tok))
		p.subscribe(1, "chat:1")
		b.none(t)
		status, e := dialRefused(t, s.WS+"/ws/chat:1", bearer("not.a.token"))
		if status != http.StatusUnauthorized || e.Reason != "malformed" {
			t.Fatalf("bad token: %d %+v, want 401 malformed", status, e)
		}
		b.none(t)
	})
}

// TestProxyConnectDeny: the backend's code and message reach the client:
// before the upgrade as the HTTP status (401 for unauthorized, else 403)
// and JSON body, in protocol mode as the error reply, after which the
// connection is closed with 4002.
func TestProxyConnectDeny(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request, c backendCall) {
		if r.Header.Get("X-Session") == "expired" {
			answerJSON(w, `{"error":{"code":"unauthorized","message":"log in again"}}`)
			return
		}
		answerJSON(w, `{"error":{"code":"banned","message":"you are banned until Monday"}}`)
	})
	s := startProxied(t, b, "connect", func(cfg *node.Config) { cfg.ProxyHeaders = []string{"X-Session"} })

	for _, path := range []string{"/ws/chat:1", "/echo"} {
		status, e := dialRefused(t, s.WS+path, nil)
		if status != http.StatusForbidden || e.Code != "banned" || e.Message != "you are banned until Monday" {
			t.Errorf("%s: %d %+v, want 403 banned with the backend's message", path, status, e)
		}
		b.next(t)
	}
	status, e := dialRefused(t, s.WS+"/ws/chat:1", http.Header{"X-Session": {"expired"}})
	if status != http.StatusUnauthorized || e.Code != protocol.CodeUnauthorized || e.Message != "log in again" {
		t.Errorf("unauthorized: %d %+v, want 401", status, e)
	}
	b.next(t)

	p := dialProtoWith(t, s.WS+"/ws", nil)
	p.do(`{"id":1,"cmd":"connect"}`, `{"id":1,"error":{"code":"banned","message":"you are banned until Monday"}}`)
	expectClose(t, p.ws, protocol.CloseTokenInvalid)

	p = dialProtoWith(t, s.WS+"/ws", nil)
	p.do(`{"id":1,"cmd":"subscribe","channel":"chat:1"}`, `{"id":1,"error":{"code":"banned","message":"you are banned until Monday"}}`)
	expectClose(t, p.ws, protocol.CloseTokenInvalid)
}

// TestProxyFailures: a backend that is slow, down, answers 5xx, another
// status or garbage gets the documented refusal (proxy_unavailable or
// proxy_error), never a 500; a protocol-mode connection stays and may
// try again; the node and its other clients go on.
func TestProxyFailures(t *testing.T) {
	release := make(chan struct{})
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request, c backendCall) {
		switch r.Header.Get("X-Case") {
		case "slow":
			select { // until the node gives up, or the test ends
			case <-r.Context().Done():
			case <-release:
			}
		case "500":
			http.Error(w, "boom", http.StatusInternalServerError)
		case "404":
			http.Error(w, "no such page", http.StatusNotFound)
		case "redirect":
			http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusFound)
		case "html":
			io.WriteString(w, "<html>login</html>")
		case "both":
			answerJSON(w, `{"result":{"user":"x"},"error":{"code":"no"}}`)
		case "neither":
			answerJSON(w, `{"ok":true}`)
		case "array":
			answerJSON(w, `[1,2]`)
		case "bad code":
			answerJSON(w, `{"error":{"code":"Not Allowed!","message":"no"}}`)
		case "bad type":
			answerJSON(w, `{"result":{"user":42}}`)
		case "expired":
			answerJSON(w, `{"result":{"user":"alice","expire_at":1}}`)
		case "huge":
			answerJSON(w, `{"result":{"user":"alice","info":"`+strings.Repeat("x", 1<<20)+`"}}`)
		default:
			answerJSON(w, aliceAllowed)
		}
	})
	t.Cleanup(func() { close(release) }) // runs before the backend's Close
	s := startProxied(t, b, "connect", func(cfg *node.Config) {
		cfg.ProxyHeaders = []string{"X-Case"}
		cfg.ProxyTimeout = 200 * time.Millisecond
	})

	// A client connected before the trouble, and still served after it.
	other := nodetest.Dial(t, s.WS+"/ws/chat:1?echo=true", nil)
	b.next(t)
	roundTrip := func() {
		t.Helper()
		nodetest.Write(t, other, "still here")
		if got := nodetest.ReadText(t, other); got != "still here" {
			t.Fatalf("other client read %q", got)
		}
	}

	for _, tc := range []struct {
		name   string
		status int
		code   protocol.Code
	}{
		{"slow", http.StatusServiceUnavailable, protocol.CodeProxyUnavailable},
		{"500", http.StatusServiceUnavailable, protocol.CodeProxyUnavailable},
		{"404", http.StatusBadGateway, protocol.CodeProxyError},
		{"redirect", http.StatusBadGateway, protocol.CodeProxyError},
		{"html", http.StatusBadGateway, protocol.CodeProxyError},
		{"both", http.StatusBadGateway, protocol.CodeProxyError},
		{"neither", http.StatusBadGateway, protocol.CodeProxyError},
		{"array", http.StatusBadGateway, protocol.CodeProxyError},
		{"bad code", http.StatusBadGateway, protocol.CodeProxyError},
		{"bad type", http.StatusBadGateway, protocol.CodeProxyError},
		{"expired", http.StatusBadGateway, protocol.CodeProxyError},
		{"huge", http.StatusBadGateway, protocol.CodeProxyError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{"X-Case": {tc.name}}
			status, e := dialRefused(t, s.WS+"/ws/chat:1", h)
			if status != tc.status || e.Code != tc.code {
				t.Errorf("raw: %d %+v, want %d %s", status, e, tc.status, tc.code)
			}
			b.next(t)
			roundTrip()

			// Protocol mode: the error reply; the connection stays. While
			// a slow call hangs, the other client is served.
			p := dialProtoWith(t, s.WS+"/ws", h)
			p.send(`{"id":1,"cmd":"connect"}`)
			b.next(t)
			roundTrip()
			if r := p.reply(); r.Error == nil || r.Error.Code != tc.code {
				t.Fatalf("proto connect reply %+v, want %s", r, tc.code)
			}
			p.do(`{"id":2,"cmd":"ping"}`, `{"id":2,"result":{}}`)
		})
	}

	m := testenv.Metrics(t, s.URL)
	for result, want := range map[string]float64{"allow": 1, "unavailable": 4, "error": 20} {
		if got := m[`relay_proxy_requests_total{event="connect",result="`+result+`"}`]; got != want {
			t.Errorf("relay_proxy_requests_total connect %s = %v, want %v", result, got, want)
		}
	}

	t.Run("down", func(t *testing.T) {
		down := httptest.NewServer(http.NotFoundHandler())
		down.Close() // a loopback port nobody listens on
		s := nodetest.Start(t, func() node.Config {
			cfg := nodetest.Config()
			cfg.ProxyConnectURL = down.URL + "/connect"
			return cfg
		}(), pubsub.NewMemory())
		status, e := dialRefused(t, s.WS+"/ws/chat:1", nil)
		if status != http.StatusServiceUnavailable || e.Code != protocol.CodeProxyUnavailable {
			t.Errorf("%d %+v, want 503 proxy_unavailable", status, e)
		}
	})
}

// TestProxySubscribe: the subscribe proxy decides each subscribe, in a
// protocol subscribe command and at a raw-mode upgrade; its refusal
// reaches the client. Channels of a namespace open to anonymous
// subscribers need no call.
func TestProxySubscribe(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request, c backendCall) {
		switch {
		case c.event == "connect":
			answerJSON(w, aliceAllowed)
		case c.req["channel"] == "secret:1":
			answerJSON(w, `{"error":{"code":"forbidden","message":"members only"}}`)
		default:
			answerJSON(w, `{"result":{}}`)
		}
	})
	nsFile := filepath.Join(t.TempDir(), "ns.yaml")
	if err := os.WriteFile(nsFile, []byte("namespaces:\n  news:\n    anonymous_subscribe: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startProxied(t, b, "connect,subscribe", func(cfg *node.Config) { cfg.NamespacesFile = nsFile })

	p := dialProtoWith(t, s.WS+"/ws", nil)
	p.send(`{"id":1,"cmd":"connect"}`)
	if r := p.reply(); r.Error != nil {
		t.Fatalf("connect reply %+v", r)
	}
	b.next(t)
	p.subscribe(2, "admin:7") // not in alice's channels: the backend decides
	if c := b.next(t); c.event != "subscribe" || c.req["user"] != "alice" || c.req["channel"] != "admin:7" || c.req["mode"] != "proto" {
		t.Errorf("backend got %s %v, want alice's subscribe to admin:7", c.event, c.req)
	}
	p.do(`{"id":3,"cmd":"subscribe","channel":"secret:1"}`, `{"id":3,"error":{"code":"forbidden","message":"members only"}}`)
	b.next(t)
	p.subscribe(4, "news:1")
	b.none(t)

	ws := nodetest.Dial(t, s.WS+"/ws/admin:7", nil)
	ws.CloseNow()
	if c := b.next(t); c.event != "connect" {
		t.Fatalf("first call %s, want connect", c.event)
	}
	if c := b.next(t); c.event != "subscribe" || c.req["mode"] != "raw" || c.req["user"] != "alice" {
		t.Fatalf("second call %s %v, want alice's raw subscribe", c.event, c.req)
	}
	status, e := dialRefused(t, s.WS+"/ws/secret:1", nil)
	if status != http.StatusForbidden || e.Code != protocol.CodeForbidden || e.Message != "members only" {
		t.Fatalf("raw secret:1: %d %+v, want 403 members only", status, e)
	}
}

// TestProxyPublish: the publish proxy decides each publish and may replace
// its data: protocol mode gets the error reply, raw mode is closed with
// 1008 and the backend's message.
func TestProxyPublish(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request, c backendCall) {
		switch {
		case c.req["channel"] == "chat:quiet":
			answerJSON(w, `{"error":{"code":"muted","message":"you are muted"}}`)
		case c.req["mode"] == "raw":
			raw, _ := base64.StdEncoding.DecodeString(c.req["b64data"].(string))
			answerJSON(w, `{"result":{"b64data":"`+base64.StdEncoding.EncodeToString(bytes.ToUpper(raw))+`"}}`)
		case c.req["data"] == "keep":
			answerJSON(w, `{"result":{}}`)
		default:
			answerJSON(w, `{"result":{"data": {"text": "replaced", "was": `+mustJSON(c.req["data"])+`}}}`)
		}
	})
	s := startProxied(t, b, "publish", nil)

	sub := dialProtoWith(t, s.WS+"/ws", nil)
	sub.subscribe(1, "chat:1")
	pub := dialProtoWith(t, s.WS+"/ws", nil)
	pub.do(`{"id":1,"cmd":"publish","channel":"chat:1","data":{"text":"hi"}}`, `{"id":1,"result":{}}`)
	if c := b.next(t); c.event != "publish" || c.req["channel"] != "chat:1" || mustJSON(c.req["data"]) != `{"text":"hi"}` {
		t.Errorf("backend got %s %v, want the publish of hi", c.event, c.req)
	}
	if m := sub.push(); string(m.Data) != `{"text":"replaced","was":{"text":"hi"}}` {
		t.Fatalf("subscriber got %s, want the replaced data, compact", m.Data)
	}
	pub.do(`{"id":2,"cmd":"publish","channel":"chat:1","data":"keep"}`, `{"id":2,"result":{}}`)
	b.next(t)
	if m := sub.push(); string(m.Data) != `"keep"` {
		t.Fatalf("subscriber got %s, want keep unchanged", m.Data)
	}
	pub.do(`{"id":3,"cmd":"publish","channel":"chat:quiet","data":"x"}`, `{"id":3,"error":{"code":"muted","message":"you are muted"}}`)
	b.next(t)

	raw := nodetest.Dial(t, s.WS+"/ws/chat:1?echo=true", nil)
	nodetest.Write(t, raw, "hello")
	if c := b.next(t); c.req["b64data"] != base64.StdEncoding.EncodeToString([]byte("hello")) || c.req["binary"] != nil {
		t.Errorf("backend got %v, want hello as b64data of a text message", c.req)
	}
	if got := nodetest.ReadText(t, raw); got != "HELLO" {
		t.Fatalf("raw read %q, want HELLO", got)
	}
	if m := sub.push(); string(m.Data) != `"HELLO"` {
		t.Fatalf("subscriber got %s, want HELLO", m.Data)
	}
	quiet := nodetest.Dial(t, s.WS+"/ws/chat:quiet", nil)
	nodetest.Write(t, quiet, "psst")
	b.next(t)
	if code, reason := nodetest.ReadClose(t, quiet); code != protocol.ClosePolicyViolation || reason != "publish refused: muted: you are muted" {
		t.Fatalf("closed with %d %q, want 1008 with the backend's refusal", code, reason)
	}
}

// TestProxyAnonymous: a connect answer without a user lets the connection
// in anonymously: the namespace rules apply.
func TestProxyAnonymous(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request, c backendCall) { answerJSON(w, `{"result":{}}`) })
	nsFile := filepath.Join(t.TempDir(), "ns.yaml")
	if err := os.WriteFile(nsFile, []byte("namespaces:\n  news:\n    anonymous_subscribe: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startProxied(t, b, "connect", func(cfg *node.Config) { cfg.NamespacesFile = nsFile })
	nodetest.Dial(t, s.WS+"/ws/news:1", nil)
	b.next(t)
	if status, e := dialRefused(t, s.WS+"/ws/chat:1", nil); status != http.StatusForbidden || e.Code != protocol.CodeForbidden {
		t.Fatalf("chat:1: %d %+v, want 403 forbidden", status, e)
	}
	b.next(t)
	p := dialProtoWith(t, s.WS+"/ws", nil)
	p.send(`{"id":1,"cmd":"connect"}`)
	if r := p.reply(); r.Error != nil || strings.Contains(string(r.Result), `"user"`) {
		t.Fatalf("connect reply %+v (%s), want no user", r, r.Result)
	}
	p.subscribe(2, "news:1")
	p.do(`{"id":3,"cmd":"publish","channel":"news:1","data":1}`,
		`{"id":3,"error":{"code":"forbidden","message":"not allowed to publish to \"news:1\""}}`)
}

// TestProxyOncePerEvent: with two nodes on Redis, a subscribe is asked by
// the subscriber's node and a publish by the publisher's, once each; the
// node that delivers the message across asks nothing.
func TestProxyOncePerEvent(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request, c backendCall) { answerJSON(w, `{"result":{}}`) })
	nodes := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: func(cfg *node.Config) {
		cfg.ProxySubscribeURL = b.URL + "/subscribe"
		cfg.ProxyPublishURL = b.URL + "/publish"
	}})
	sub := dialProtoWith(t, nodes[1].WS+"/ws", nil)
	sub.subscribe(1, "chat:1")
	if c := b.next(t); c.event != "subscribe" || !strings.HasPrefix(c.req["client"].(string), "node-2/") {
		t.Fatalf("backend got %s from %v, want node 2's subscribe", c.event, c.req["client"])
	}
	pub := dialProtoWith(t, nodes[0].WS+"/ws", nil)
	pub.do(`{"id":1,"cmd":"publish","channel":"chat:1","data":1}`, `{"id":1,"result":{}}`)
	if c := b.next(t); c.event != "publish" || !strings.HasPrefix(c.req["client"].(string), "node-1/") {
		t.Fatalf("backend got %s from %v, want node 1's publish", c.event, c.req["client"])
	}
	if m := sub.push(); string(m.Data) != "1" {
		t.Fatalf("push %+v", m)
	}
	b.none(t)
}

// TestProxyExpiry: a connection the connect proxy let in with expire_at
// is closed with 4001 then, in protocol mode too: it has no token to
// refresh, so no refresh request comes first.
func TestProxyExpiry(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request, c backendCall) {
		answerJSON(w, fmt.Sprintf(`{"result":{"user":"alice","channels":["chat:*"],"expire_at":%d}}`, time.Now().Add(time.Second).Unix()+1))
	})
	s := startProxied(t, b, "connect", nil)
	raw := nodetest.Dial(t, s.WS+"/ws/chat:1", nil)
	p := dialProtoWith(t, s.WS+"/ws", nil)
	p.send(`{"id":1,"cmd":"connect"}`)
	if r := p.reply(); r.Error != nil || !strings.Contains(string(r.Result), `"expires":`) {
		t.Fatalf("connect reply %+v (%s), want an expiry", r, r.Result)
	}
	expectClose(t, raw, protocol.CloseTokenExpired)
	// The next thing the protocol-mode client gets is the close, not a
	// refresh request.
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	_, msg, err := p.ws.Read(ctx)
	if websocket.CloseStatus(err) != protocol.CloseTokenExpired {
		t.Fatalf("protocol mode read %q, %v; want the close 4001", msg, err)
	}
}

// TestProxyOrigins: with cookies forwarded, a page of another site is
// refused before any call, so that it cannot use a visitor's cookies;
// the node's own pages and RELAY_ORIGINS are let in.
func TestProxyOrigins(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request, c backendCall) { answerJSON(w, aliceAllowed) })
	s := startProxied(t, b, "connect", func(cfg *node.Config) {
		cfg.ProxyCookies = []string{"session"}
		cfg.Origins = []string{"app.example.com"}
	})
	h := func(origin string) http.Header {
		return http.Header{"Cookie": {"session=victim"}, "Origin": {origin}}
	}
	for _, p := range []string{"/ws/chat:1", "/ws", "/echo"} {
		status, e := dialRefused(t, s.WS+p, h("https://evil.example"))
		if status != http.StatusForbidden || e.Code != protocol.CodeForbidden {
			t.Errorf("%s from evil.example: %d %+v, want 403", p, status, e)
		}
	}
	b.none(t)
	nodetest.Dial(t, s.WS+"/ws/chat:1", h("https://app.example.com"))
	b.next(t)
	nodetest.Dial(t, s.WS+"/ws/chat:1", h(s.URL))
	b.next(t)
}

// TestProxyConfig: invalid proxy settings stop the node, naming the
// variable; cookies with RELAY_ORIGINS=* are refused.
func TestProxyConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*node.Config)
		want string
	}{
		{"bad url", func(c *node.Config) { c.ProxyConnectURL = "ftp://x/?key=secret" }, "RELAY_PROXY_CONNECT_URL: want an http:// or https:// URL"},
		{"no timeout", func(c *node.Config) { c.ProxyPublishURL = "http://127.0.0.1:1/p"; c.ProxyTimeout = 0 }, "RELAY_PROXY_TIMEOUT"},
		{"cookie header", func(c *node.Config) { c.ProxyHeaders = []string{"Cookie"} }, "RELAY_PROXY_HEADERS: Cookie: name the cookies to forward in RELAY_PROXY_COOKIES"},
		{"own header", func(c *node.Config) { c.ProxyHeaders = []string{"Host"} }, "RELAY_PROXY_HEADERS: Host"},
		{"bad header", func(c *node.Config) { c.ProxyHeaders = []string{"X Y"} }, "RELAY_PROXY_HEADERS"},
		{"bad cookie", func(c *node.Config) { c.ProxyCookies = []string{"a;b"} }, "RELAY_PROXY_COOKIES"},
		{"cookies any origin", func(c *node.Config) {
			c.ProxyCookies = []string{"session"}
			c.Origins = []string{"app.example.com", "*"}
		}, "RELAY_PROXY_COOKIES with RELAY_ORIGINS=*"},
		{"cookies any scheme origin", func(c *node.Config) { c.ProxyCookies = []string{"*"}; c.Origins = []string{"*://*"} }, "cross-site WebSocket hijacking"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := nodetest.Config()
			tc.edit(&cfg)
			err := cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("Validate quotes a URL's key: %v", err)
			}
		})
	}
}

// TestProxyLogs: the node's log never holds the forwarded cookies and
// headers, the proxy's URL or the client's query string.
func TestProxyLogs(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request, c backendCall) {
		if r.Header.Get("X-Case") == "500" {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		answerJSON(w, aliceAllowed)
	})
	var logs lockedBuffer
	cfg := nodetest.Config()
	cfg.ProxyConnectURL = b.URL + "/connect?key=proxy-url-key"
	cfg.ProxyHeaders = []string{"X-Case", "X-Session"}
	cfg.ProxyCookies = []string{"*"}
	s := nodetest.StartWith(t, cfg, pubsub.NewMemory(), slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	h := http.Header{"Cookie": {"session=cookie-value"}, "X-Session": {"header-value"}}
	nodetest.Dial(t, s.WS+"/ws/chat:1?q=query-value", h).Close(websocket.StatusNormalClosure, "")
	b.next(t)
	h.Set("X-Case", "500")
	dialRefused(t, s.WS+"/ws/chat:1?q=query-value", h)
	b.next(t)
	for _, secret := range []string{"cookie-value", "header-value", "query-value", "proxy-url-key"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds %q:\n%s", secret, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "proxy call failed") {
		t.Errorf("the log lacks the failed call:\n%s", logs.String())
	}
}

// BenchmarkProxyConnect: the cost of a raw-mode connection (dial,
// upgrade, close) without the proxy and with a connect call to a backend
// on loopback that allows at once.
func BenchmarkProxyConnect(b *testing.B) {
	backendSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		answerJSON(w, aliceAllowed)
	}))
	defer backendSrv.Close()
	for _, bc := range []struct {
		name string
		url  string
	}{{"off", ""}, {"connect", backendSrv.URL + "/connect"}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := nodetest.Config()
			cfg.ProxyConnectURL = bc.url
			s := nodetest.Start(b, cfg, pubsub.NewMemory())
			ctx := context.Background()
			b.ResetTimer()
			for range b.N {
				ws, _, err := websocket.Dial(ctx, s.WS+"/ws/chat:1", nil)
				if err != nil {
					b.Fatal(err)
				}
				ws.CloseNow()
			}
		})
	}
}
