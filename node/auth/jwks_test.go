package auth_test

import (
	"crypto"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/auth"
)

// keyServer serves a JWKS that the test changes.
type keyServer struct {
	mu     sync.Mutex
	body   []byte
	status int
}

func (s *keyServer) set(status int, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func (s *keyServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w.WriteHeader(s.status)
	w.Write(s.body)
}

// TestJWKSRotation: a key added to the JWKS is used without a restart, a
// removed key is refused afterwards, and a broken JWKS keeps the last good
// keys and says so; from a file and from a URL.
func TestJWKSRotation(t *testing.T) {
	keys1 := map[string]crypto.Signer{"k1": rsaKey}
	keys2 := map[string]crypto.Signer{"k2": ecKey}
	for _, src := range []string{"file", "url"} {
		t.Run(src, func(t *testing.T) {
			cfg := auth.Config{JWKSRefresh: 20 * time.Millisecond}
			var publish func(status int, body []byte)
			switch src {
			case "file":
				cfg.JWKSFile = filepath.Join(t.TempDir(), "jwks.json")
				publish = func(_ int, body []byte) {
					tmp := cfg.JWKSFile + ".tmp"
					if err := os.WriteFile(tmp, body, 0o600); err != nil {
						t.Fatal(err)
					}
					if err := os.Rename(tmp, cfg.JWKSFile); err != nil {
						t.Fatal(err)
					}
				}
			case "url":
				ks := &keyServer{}
				srv := httptest.NewServer(ks)
				t.Cleanup(srv.Close)
				cfg.JWKSURL = srv.URL + "/jwks.json?secret=s3cret"
				publish = ks.set
			}
			publish(http.StatusOK, jwksJSON(t, keys1))
			v := newVerifier(t, cfg)
			runVerifier(t, v)

			tok1 := sign(t, jwt.SigningMethodRS256, rsaKey, "k1", claims("alice", time.Hour))
			tok2 := sign(t, jwt.SigningMethodES256, ecKey, "k2", claims("alice", time.Hour))
			reason := func(tok string) auth.Reason { _, err := v.Verify(tok); return auth.ReasonOf(err) }
			testenv.WaitFor(t, 10*time.Second, "k1 accepted", func() bool { return reason(tok1) == "" })
			if got := reason(tok2); got != auth.ReasonUnknownKey {
				t.Errorf("a token of a kid not yet published: reason %q, want unknown_key", got)
			}
			if nr, stale := v.Status(); len(nr)+len(stale) != 0 {
				t.Errorf("Status = %q, %q; want nothing wrong", nr, stale)
			}

			publish(http.StatusOK, jwksJSON(t, keys2))
			testenv.WaitFor(t, 10*time.Second, "k2 accepted", func() bool { return reason(tok2) == "" })
			if got := reason(tok1); got != auth.ReasonUnknownKey {
				t.Errorf("a token of a removed kid: reason %q, want unknown_key", got)
			}

			publish(http.StatusInternalServerError, []byte(`{"keys":[{"kty":"RSA","n":"garbage"}]}`))
			testenv.WaitFor(t, 10*time.Second, "stale status", func() bool {
				_, stale := v.Status()
				return len(stale) == 1
			})
			_, stale := v.Status()
			if strings.Contains(stale[0], "s3cret") {
				t.Errorf("status shows the URL's query: %q", stale[0])
			}
			if got := reason(tok2); got != "" {
				t.Errorf("after a broken JWKS, the last good key: reason %q, want accepted", got)
			}
		})
	}
}

// TestJWKSNotLoaded: a URL that never answers well leaves the verifier not
// ready, and its tokens refused with unknown_key.
func TestJWKSNotLoaded(t *testing.T) {
	ks := &keyServer{status: http.StatusOK, body: []byte("not json")}
	srv := httptest.NewServer(ks)
	t.Cleanup(srv.Close)
	v := newVerifier(t, auth.Config{JWKSURL: srv.URL, JWKSRefresh: time.Hour})
	if nr, _ := v.Status(); len(nr) != 1 {
		t.Errorf("before Run: Status not ready = %q, want one reason", nr)
	}
	runVerifier(t, v)
	testenv.WaitFor(t, 10*time.Second, "a read error in the status", func() bool {
		nr, _ := v.Status()
		return len(nr) == 1 && strings.Contains(nr[0], "not a JWKS")
	})
	_, err := v.Verify(sign(t, jwt.SigningMethodRS256, rsaKey, "k1", claims("alice", time.Hour)))
	if got := auth.ReasonOf(err); got != auth.ReasonUnknownKey {
		t.Errorf("reason %q, want unknown_key", got)
	}
}

func TestJWKSFileBadAtStart(t *testing.T) {
	p := filepath.Join(t.TempDir(), "jwks.json")
	os.WriteFile(p, []byte(`{"keys":[]}`), 0o600)
	if _, err := auth.New(auth.Config{JWKSFile: p, JWKSRefresh: time.Minute}, nil); err == nil || !strings.Contains(err.Error(), "RELAY_TOKEN_JWKS_FILE") {
		t.Errorf("auth.New with an empty JWKS = %v, want an error naming RELAY_TOKEN_JWKS_FILE", err)
	}
}
