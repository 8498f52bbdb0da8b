package auth_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/relay-pubsub/relay/node/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const secret = "0123456789abcdef0123456789abcdef"

func mustKey[K any](k K, err error) K {
	if err != nil {
		panic(err)
	}
	return k
}

var (
	rsaKey   = mustKey(rsa.GenerateKey(rand.Reader, 2048))
	rsaOther = mustKey(rsa.GenerateKey(rand.Reader, 2048))
	ecKey    = mustKey(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))
	_, edKey = mustKey2(ed25519.GenerateKey(rand.Reader))
)

func mustKey2[A, B any](a A, b B, err error) (A, B) {
	if err != nil {
		panic(err)
	}
	return a, b
}

// writePEM writes the public key of k to a file and returns its path.
func writePEM(t testing.TB, k crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// jwksJSON is the JWKS of the public keys of ks, each with its kid.
func jwksJSON(t testing.TB, ks map[string]crypto.Signer) []byte {
	t.Helper()
	var set jwkset.JWKSMarshal
	for kid, k := range ks {
		j, err := jwkset.NewJWKFromKey(k.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid}})
		if err != nil {
			t.Fatal(err)
		}
		set.Keys = append(set.Keys, j.Marshal())
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sign(t testing.TB, m jwt.SigningMethod, key any, kid string, c jwt.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claims(sub string, exp time.Duration) *auth.Claims {
	c := &auth.Claims{Channels: []string{"chat:*"}, Publish: []string{"chat:*"}}
	c.Subject = sub
	if exp != 0 {
		c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(exp))
	}
	return c
}

// unsigned is a token with alg none and the claims of c.
func unsigned(c any) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	b, _ := json.Marshal(c)
	return h + "." + base64.RawURLEncoding.EncodeToString(b) + "."
}

func newVerifier(t testing.TB, cfg auth.Config) *auth.Verifier {
	t.Helper()
	v, err := auth.New(cfg, nil)
	if err != nil {
		t.Fatalf("auth.New: %v", err)
	}
	return v
}

func TestVerifyReasons(t *testing.T) {
	hmacV := newVerifier(t, auth.Config{HMACSecret: []byte(secret), StaticTokens: []string{"static"},
		Issuer: "https://issuer", Audience: "relay"})
	rsaV := newVerifier(t, auth.Config{PublicKeyFile: writePEM(t, rsaKey)})
	ecV := newVerifier(t, auth.Config{PublicKeyFile: writePEM(t, ecKey)})
	edV := newVerifier(t, auth.Config{PublicKeyFile: writePEM(t, edKey)})
	staticV := newVerifier(t, auth.Config{StaticTokens: []string{"static"}})

	good := func() *auth.Claims {
		c := claims("alice", time.Hour)
		c.Issuer, c.Audience = "https://issuer", jwt.ClaimStrings{"relay"}
		return c
	}
	with := func(f func(c *auth.Claims)) *auth.Claims { c := good(); f(c); return c }
	rsaPub := x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)

	tests := []struct {
		name  string
		v     *auth.Verifier
		token string
		want  auth.Reason // "" = accepted
	}{
		{"hs256", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", good()), ""},
		{"hs512", hmacV, sign(t, jwt.SigningMethodHS512, []byte(secret), "", good()), ""},
		{"static beside jwt", hmacV, "static", ""},
		{"static only", staticV, "static", ""},
		{"wrong static", staticV, "other", auth.ReasonBadToken},
		{"jwt without keys", staticV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", good()), auth.ReasonBadToken},
		{"missing", hmacV, "", auth.ReasonMissing},
		{"other key", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret+"x"), "", good()), auth.ReasonBadSignature},
		{"alg none", hmacV, unsigned(good()), auth.ReasonBadAlgorithm},
		{"alg none against rsa", rsaV, unsigned(good()), auth.ReasonBadAlgorithm},
		{"hmac against rsa key", rsaV, sign(t, jwt.SigningMethodHS256, rsaPub, "", good()), auth.ReasonBadAlgorithm},
		{"rs256", rsaV, sign(t, jwt.SigningMethodRS256, rsaKey, "", good()), ""},
		{"ps256", rsaV, sign(t, jwt.SigningMethodPS256, rsaKey, "", good()), ""},
		{"rs256 other key", rsaV, sign(t, jwt.SigningMethodRS256, rsaOther, "", good()), auth.ReasonBadSignature},
		{"es256 against rsa", rsaV, sign(t, jwt.SigningMethodES256, ecKey, "", good()), auth.ReasonBadAlgorithm},
		{"es256", ecV, sign(t, jwt.SigningMethodES256, ecKey, "", good()), ""},
		{"eddsa", edV, sign(t, jwt.SigningMethodEdDSA, edKey, "", good()), ""},
		{"rs256 against hmac", hmacV, sign(t, jwt.SigningMethodRS256, rsaKey, "", good()), auth.ReasonBadAlgorithm},
		{"expired", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", with(func(c *auth.Claims) {
			c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
		})), auth.ReasonExpired},
		{"not yet valid", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", with(func(c *auth.Claims) {
			c.NotBefore = jwt.NewNumericDate(time.Now().Add(time.Minute))
		})), auth.ReasonNotYetValid},
		{"wrong aud", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", with(func(c *auth.Claims) {
			c.Audience = jwt.ClaimStrings{"other"}
		})), auth.ReasonBadAudience},
		{"no aud", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", with(func(c *auth.Claims) {
			c.Audience = nil
		})), auth.ReasonBadAudience},
		{"wrong iss", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "", with(func(c *auth.Claims) {
			c.Issuer = "https://evil"
		})), auth.ReasonBadIssuer},
		{"two parts", hmacV, "a.b", auth.ReasonMalformed},
		{"four parts", hmacV, "a.b.c.d", auth.ReasonMalformed},
		{"bad base64", hmacV, "!!!.@@@.###", auth.ReasonMalformed},
		{"channels not a list", hmacV, sign(t, jwt.SigningMethodHS256, []byte(secret), "",
			jwt.MapClaims{"sub": "a", "channels": "chat:*", "iss": "https://issuer", "aud": "relay"}), auth.ReasonMalformed},
		{"100 KB", hmacV, strings.Repeat("a", 100<<10), auth.ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := tt.v.Verify(tt.token)
			if got := auth.ReasonOf(err); got != tt.want {
				t.Fatalf("Verify = %v, want reason %q", err, tt.want)
			}
			if tt.want == "" && id == nil {
				t.Fatal("Verify accepted without an identity")
			}
			if err != nil && len(tt.token) > 8 && strings.Contains(err.Error(), tt.token) {
				t.Errorf("the error quotes the token: %v", err)
			}
		})
	}
}

func TestShortHMACSecret(t *testing.T) {
	if _, err := auth.New(auth.Config{HMACSecret: []byte("short")}, nil); err == nil || !strings.Contains(err.Error(), "RELAY_TOKEN_HMAC_SECRET") {
		t.Errorf("auth.New with a 5-byte secret = %v, want an error naming RELAY_TOKEN_HMAC_SECRET", err)
	}
}

func TestIdentity(t *testing.T) {
	v := newVerifier(t, auth.Config{HMACSecret: []byte(secret)})
	c := &auth.Claims{Channels: []string{"chat:*", "user:{sub}", "a*b*c"}, Publish: []string{"chat:general"},
		Info: json.RawMessage(`{"name":"Alice"}`)}
	c.Subject = "alice"
	c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(time.Hour))
	id, err := v.Verify(sign(t, jwt.SigningMethodHS256, []byte(secret), "", c))
	if err != nil {
		t.Fatal(err)
	}
	if id.User != "alice" || string(id.Info) != `{"name":"Alice"}` || id.Expires.IsZero() {
		t.Errorf("identity = %+v", id)
	}
	ns, err := auth.ParseNamespaces([]byte("namespaces:\n  news:\n    anonymous_subscribe: true\n    client_publish: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		ch         string
		sub, pub   bool
		anon, anyP bool // anonymous subscribe; unrestricted publish
	}{
		{"chat:1", true, false, false, true},
		{"chat:", true, false, false, true},
		{"chat:general", true, true, false, true},
		{"admin:1", false, false, false, true},
		{"user:alice", true, false, false, true},
		{"user:bob", false, false, false, true},
		{"user:alice2", false, false, false, true},
		{"abc", true, false, false, true},
		{"a:b:c", true, false, false, true},
		{"acb", false, false, false, true},
		{"news:1", true, false, true, false},
	} {
		if got := id.MaySubscribe(ns, tt.ch); got != tt.sub {
			t.Errorf("MaySubscribe(%q) = %v, want %v", tt.ch, got, tt.sub)
		}
		if got := id.MayPublish(ns, tt.ch); got != tt.pub {
			t.Errorf("MayPublish(%q) = %v, want %v", tt.ch, got, tt.pub)
		}
		if got := auth.Anonymous().MaySubscribe(ns, tt.ch); got != tt.anon {
			t.Errorf("anonymous MaySubscribe(%q) = %v, want %v", tt.ch, got, tt.anon)
		}
		if got := auth.Unrestricted().MayPublish(ns, tt.ch); got != tt.anyP {
			t.Errorf("unrestricted MayPublish(%q) = %v, want %v", tt.ch, got, tt.anyP)
		}
	}
}

func TestNamespacesFile(t *testing.T) {
	yaml := `
default:
  client_publish: false
namespaces:
  chat:
    client_publish: true
  news:
    anonymous_subscribe: true
  feed:
    history_size: 100
    history_ttl: 10m
  room:
    presence: true
    join_leave: true
    presence_leave_grace: 2s
`
	json := `{"default":{"client_publish":false},"namespaces":{"chat":{"client_publish":true},"news":{"anonymous_subscribe":true},"feed":{"history_size":100,"history_ttl":"10m"},` +
		`"room":{"presence":true,"join_leave":true,"presence_leave_grace":"2s"}}}`
	for name, text := range map[string]string{"yaml": yaml, "json": json} {
		ns, err := auth.ParseNamespaces([]byte(text))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := map[string]auth.Namespace{
			"lobby":   {},
			"other:1": {},
			"chat:1":  {ClientPublish: true},
			"news:1":  {AnonymousSubscribe: true},
			"feed:1":  {HistorySet: true, HistorySize: 100, HistoryTTL: 10 * time.Minute},
			"room:1":  {Presence: true, JoinLeave: true, PresenceLeaveGrace: 2 * time.Second},
		}
		for ch, w := range want {
			if w.PresenceLeaveGrace == 0 {
				w.PresenceLeaveGrace = auth.DefaultPresenceLeaveGrace
			}
			if got := ns.For(ch); got != w {
				t.Errorf("%s: For(%q) = %+v, want %+v", name, ch, got, w)
			}
		}
	}
	var none *auth.Namespaces
	if got := none.For("x:1"); got != (auth.Namespace{ClientPublish: true, PresenceLeaveGrace: auth.DefaultPresenceLeaveGrace}) {
		t.Errorf("default For = %+v", got)
	}
	for _, bad := range []string{"namespaces:\n  chat:\n    client_publsh: true\n", "namespaces:\n  'a:b': {}\n", "default: [1]\n",
		"namespaces:\n  feed:\n    history_size: -1\n", "default:\n  history_ttl: -1s\n", "namespaces:\n  feed:\n    history_ttl: 10\n",
		"namespaces:\n  room:\n    join_leave: true\n", "namespaces:\n  room:\n    presence: true\n    presence_leave_grace: -1s\n",
		"namespaces:\n  room:\n    presence: yes please\n"} {
		if _, err := auth.ParseNamespaces([]byte(bad)); err == nil {
			t.Errorf("ParseNamespaces(%q) = nil error", bad)
		}
	}
}

func TestMintHS256(t *testing.T) {
	tok, err := auth.MintHS256([]byte(secret), *claims("bob", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	id, err := newVerifier(t, auth.Config{HMACSecret: []byte(secret)}).Verify(tok)
	if err != nil || id.User != "bob" {
		t.Fatalf("Verify(MintHS256) = %+v, %v", id, err)
	}
}

// runVerifier runs v until the end of the test.
func runVerifier(t *testing.T, v *auth.Verifier) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}
