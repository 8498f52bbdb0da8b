package auth_test

import (
	"slices"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/relay-pubsub/relay/node/auth"
)

// FuzzVerify: whatever a client sends as a token, Verify never panics and
// either accepts it or refuses it with one of the documented reasons.
func FuzzVerify(f *testing.F) {
	good := sign(f, jwt.SigningMethodHS256, []byte(secret), "", claims("alice", time.Hour))
	for _, s := range []string{good, good[:len(good)-3], "static", "", "a.b.c", "..", "e30.e30.", unsigned(claims("a", 0)),
		sign(f, jwt.SigningMethodRS256, rsaKey, "k1", claims("bob", time.Hour)),
		sign(f, jwt.SigningMethodHS256, []byte(secret), "", jwt.MapClaims{"sub": 5, "channels": []any{1, "x"}, "info": map[string]any{"a": nil}}),
	} {
		f.Add(s)
	}
	v, err := auth.New(auth.Config{HMACSecret: []byte(secret), StaticTokens: []string{"static"}, PublicKeyFile: writePEM(f, rsaKey)}, nil)
	if err != nil {
		f.Fatal(err)
	}
	reasons := auth.Reasons()
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := v.Verify(tok)
		if err == nil {
			if id == nil {
				t.Fatalf("Verify(%q) accepted without an identity", tok)
			}
			return
		}
		if r := auth.ReasonOf(err); !slices.Contains(reasons, r) {
			t.Fatalf("Verify(%q) = %v: reason %q is not documented", tok, err, r)
		}
	})
}
