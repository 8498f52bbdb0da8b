package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/auth"
	"github.com/relay-pubsub/relay/node/protocol"
)

// signed returns a token of claims c signed with key by m.
func signed(t *testing.T, m jwt.SigningMethod, key any, c jwt.Claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTutorialJWT: the tutorial's token client connects with a JWT, bare
// or as Bearer, under RELAY_TOKEN_HMAC_SECRET; static tokens work beside.
func TestTutorialJWT(t *testing.T) {
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_TOKEN_HMAC_SECRET="+hmacSecret, "RELAY_AUTH_TOKENS=expected_token")
	c := auth.Claims{}
	c.Subject = "alice"
	c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(time.Hour))
	tok := signed(t, jwt.SigningMethodHS256, []byte(hmacSecret), c)
	for _, h := range []string{tok, "Bearer " + tok, "expected_token"} {
		if got := python(t, "testdata/token_client.py", "ws://"+n.Addr+"/echo", h); got != "accepted: Server received: Hello, Server!\n" {
			t.Errorf("Authorization %.20s…: printed %q", h, got)
		}
	}
	if got := python(t, "testdata/token_client.py", "ws://"+n.Addr+"/echo", "-"); got != "refused: 401\n" {
		t.Errorf("without a token: printed %q", got)
	}
}

// carrier sends a token to a node in one of the three ways.
type carrier struct {
	name string
	path string // "/ws/chat:1" (raw) or "/ws" (protocol)
	how  string // "header", "query" or "connect"
}

var carriers = []carrier{
	{"raw header", "/ws/chat:1", "header"},
	{"raw query", "/ws/chat:1", "query"},
	{"protocol header", "/ws", "header"},
	{"protocol query", "/ws", "query"},
	{"protocol connect", "/ws", "connect"},
}

// refusal is what a node answered: the HTTP status before the upgrade, or
// the connect reply's error and the close code after it. reason is the
// refusal's reason, "" when accepted.
type refusal struct {
	status int
	reason string
	close  websocket.StatusCode
}

// try presents tok to the node at addr by cr.
func try(t *testing.T, addr string, cr carrier, tok string) refusal {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	u := "ws://" + addr + cr.path
	opts := &websocket.DialOptions{HTTPHeader: http.Header{}}
	switch cr.how {
	case "header":
		opts.HTTPHeader.Set("Authorization", "Bearer "+tok)
	case "query":
		u += "?token=" + url.QueryEscape(tok)
	}
	ws, resp, err := websocket.Dial(ctx, u, opts)
	if err != nil {
		if resp == nil {
			t.Fatalf("dial: %v", err)
		}
		var e protocol.Error
		json.NewDecoder(resp.Body).Decode(&e)
		return refusal{status: resp.StatusCode, reason: e.Reason}
	}
	defer ws.CloseNow()
	ws.SetReadLimit(1 << 20)
	if cr.how != "connect" {
		return refusal{status: http.StatusSwitchingProtocols}
	}
	cmd, _ := json.Marshal(map[string]any{"id": 1, "cmd": "connect", "token": tok})
	if err := ws.Write(ctx, websocket.MessageText, cmd); err != nil {
		t.Fatalf("write connect: %v", err)
	}
	_, data, err := ws.Read(ctx)
	if err != nil {
		return refusal{status: http.StatusSwitchingProtocols, close: websocket.CloseStatus(err)}
	}
	var r protocol.Reply
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("connect reply %q: %v", data, err)
	}
	if r.Error == nil {
		return refusal{status: http.StatusSwitchingProtocols}
	}
	_, _, err = ws.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) {
		t.Fatalf("after a refused connect: %v, want a close", err)
	}
	return refusal{status: http.StatusSwitchingProtocols, reason: r.Error.Reason, close: ce.Code}
}

// hugeConnect sends a connect command larger than RELAY_MAX_MESSAGE_BYTES.
// The node closes with 1009 as soon as it reads the frame's header, while
// the client may still be writing the frame, so the client can see a
// reset instead of the close frame; the node's log says which code it sent.
func hugeConnect(t *testing.T, n *testenv.Relay, cr carrier, tok string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+n.Addr+cr.path, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer ws.CloseNow()
	cmd, _ := json.Marshal(map[string]any{"id": 1, "cmd": "connect", "token": tok})
	if err := ws.Write(ctx, websocket.MessageText, cmd); err == nil {
		if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != -1 && websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
			t.Fatalf("read after a 100 KB connect: %v, want close 1009", err)
		}
	}
	n.WaitLog(t, 20*time.Second, func(l map[string]any) bool {
		return l["msg"] == "conn closed" && l["code"] == float64(websocket.StatusMessageTooBig)
	})
}

// TestTokenRefusals: every bad token, against real relay processes, in
// raw and protocol mode, over each carrier, is refused with its reason:
// 401 before the upgrade, or a connect error and close 4002. The token is
// never logged.
func TestTokenRefusals(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	pemFile := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(pemFile, pemBytes, 0o600)

	hmacNode := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_TOKEN_HMAC_SECRET="+hmacSecret,
		"RELAY_TOKEN_ISSUER=https://issuer", "RELAY_TOKEN_AUDIENCE=relay", "RELAY_TOKEN_LEEWAY=0s")
	rsaNode := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_TOKEN_PUBLIC_KEY_FILE="+pemFile)

	claims := func(edit func(*auth.Claims)) *auth.Claims {
		c := &auth.Claims{Channels: []string{"chat:*"}}
		c.Subject, c.Issuer, c.Audience = "alice", "https://issuer", jwt.ClaimStrings{"relay"}
		c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(time.Hour))
		if edit != nil {
			edit(c)
		}
		return c
	}
	hs := func(edit func(*auth.Claims)) string {
		return signed(t, jwt.SigningMethodHS256, []byte(hmacSecret), claims(edit))
	}
	noneBody, _ := json.Marshal(claims(nil))
	algNone := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." +
		base64.RawURLEncoding.EncodeToString(noneBody) + "."
	long := hs(func(c *auth.Claims) { c.Info = json.RawMessage(`"` + strings.Repeat("x", 10<<10) + `"`) })

	tests := []struct {
		name   string
		node   *testenv.Relay
		token  string
		reason string // "" = accepted
	}{
		{"good hs256", hmacNode, hs(nil), ""},
		{"good rs256", rsaNode, signed(t, jwt.SigningMethodRS256, rsaKey, claims(nil)), ""},
		{"another key", hmacNode, signed(t, jwt.SigningMethodHS256, []byte(hmacSecret+"!"), claims(nil)), "bad_signature"},
		{"alg none", hmacNode, algNone, "bad_algorithm"},
		{"hmac token against an rsa key", rsaNode, signed(t, jwt.SigningMethodHS256, pemBytes, claims(nil)), "bad_algorithm"},
		{"expired", hmacNode, hs(func(c *auth.Claims) { c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute)) }), "expired"},
		{"not yet valid", hmacNode, hs(func(c *auth.Claims) { c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Hour)) }), "not_yet_valid"},
		{"wrong aud", hmacNode, hs(func(c *auth.Claims) { c.Audience = jwt.ClaimStrings{"other"} }), "bad_audience"},
		{"wrong iss", hmacNode, hs(func(c *auth.Claims) { c.Issuer = "https://evil" }), "bad_issuer"},
		{"not three parts", hmacNode, "abc.def", "malformed"},
		{"bad base64", hmacNode, "!!!.@@@.###", "malformed"},
		{"over 8 KiB", hmacNode, long, "malformed"},
	}
	for _, tt := range tests {
		for _, cr := range carriers {
			t.Run(tt.name+"/"+cr.name, func(t *testing.T) {
				got := try(t, tt.node.Addr, cr, tt.token)
				want := refusal{status: http.StatusUnauthorized, reason: tt.reason}
				switch {
				case tt.reason == "":
					want = refusal{status: http.StatusSwitchingProtocols}
				case cr.how == "connect":
					want = refusal{status: http.StatusSwitchingProtocols, reason: tt.reason, close: protocol.CloseTokenInvalid}
				}
				if got != want {
					t.Errorf("got %+v, want %+v", got, want)
				}
			})
		}
	}
	// 100 KB: larger than the node reads at all. The headers (and request
	// line) are bounded at 16 KiB, a frame at RELAY_MAX_MESSAGE_BYTES.
	huge := strings.Repeat("a", 100<<10)
	for _, cr := range carriers {
		t.Run("100 KB/"+cr.name, func(t *testing.T) {
			if cr.how == "connect" {
				hugeConnect(t, hmacNode, cr, huge)
				return
			}
			got := try(t, hmacNode.Addr, cr, huge)
			want := refusal{status: http.StatusRequestHeaderFieldsTooLarge}
			if cr.how == "connect" {
				want = refusal{status: http.StatusSwitchingProtocols, close: websocket.StatusMessageTooBig}
			}
			if got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
	for _, n := range []*testenv.Relay{hmacNode, rsaNode} {
		for _, l := range n.Logs() {
			line := fmt.Sprint(l)
			for _, tt := range tests {
				if len(tt.token) > 16 && strings.Contains(line, tt.token[len(tt.token)-16:]) {
					t.Errorf("a log line shows the %s token: %s", tt.name, line)
				}
			}
			if strings.Contains(line, "token=") {
				t.Errorf("a log line shows a query string: %s", line)
			}
		}
	}
}

// TestJWKSRotation: a relay process picks up a new key from its JWKS file
// and URL without a restart, and refuses the tokens of a removed key.
func TestJWKSRotation(t *testing.T) {
	k1, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	jwks := func(kid string, k *rsa.PrivateKey) []byte {
		j, err := jwkset.NewJWKFromKey(&k.PublicKey, jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.AlgRS256}})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{j.Marshal()}})
		return b
	}
	token := func(kid string, k *rsa.PrivateKey) string {
		c := auth.Claims{Channels: []string{"chat:*"}}
		c.Subject = "alice"
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
		tok.Header["kid"] = kid
		s, err := tok.SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	t1, t2 := token("k1", k1), token("k2", k2)
	header := carrier{"raw header", "/ws/chat:1", "header"}

	for _, src := range []string{"file", "url"} {
		t.Run(src, func(t *testing.T) {
			var env string
			var publish func([]byte)
			switch src {
			case "file":
				f := filepath.Join(t.TempDir(), "jwks.json")
				publish = func(b []byte) {
					os.WriteFile(f+".tmp", b, 0o600)
					if err := os.Rename(f+".tmp", f); err != nil {
						t.Fatal(err)
					}
				}
				env = "RELAY_TOKEN_JWKS_FILE=" + f
			case "url":
				var mu sync.Mutex
				var body []byte
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					defer mu.Unlock()
					w.Write(body)
				}))
				t.Cleanup(srv.Close)
				publish = func(b []byte) { mu.Lock(); body = b; mu.Unlock() }
				env = "RELAY_TOKEN_JWKS_URL=" + srv.URL
			}
			publish(jwks("k1", k1))
			n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", env, "RELAY_TOKEN_JWKS_REFRESH=1h")
			testenv.WaitFor(t, 20*time.Second, "k1 accepted", func() bool { return try(t, n.Addr, header, t1).status == http.StatusSwitchingProtocols })

			// The refresh interval is an hour: the unknown kid k2 makes
			// the node read the key set early.
			publish(jwks("k2", k2))
			testenv.WaitFor(t, 20*time.Second, "k2 accepted", func() bool { return try(t, n.Addr, header, t2).status == http.StatusSwitchingProtocols })
			if got := try(t, n.Addr, header, t1); got.reason != "unknown_key" {
				t.Errorf("a token of the removed key: %+v, want 401 unknown_key", got)
			}
		})
	}
}
