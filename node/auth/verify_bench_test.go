package auth_test

import (
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/relay-pubsub/relay/node/auth"
)

// BenchmarkVerify is the cost of one JWT check: what each connection with
// a token pays once at connect (docs/BENCHMARKS.md).
func BenchmarkVerify(b *testing.B) {
	c := claims("alice", time.Hour)
	for _, bc := range []struct {
		name  string
		cfg   auth.Config
		token string
	}{
		{"HS256", auth.Config{HMACSecret: []byte(secret)}, sign(b, jwt.SigningMethodHS256, []byte(secret), "", c)},
		{"RS256", auth.Config{PublicKeyFile: writePEM(b, rsaKey)}, sign(b, jwt.SigningMethodRS256, rsaKey, "", c)},
		{"ES256", auth.Config{PublicKeyFile: writePEM(b, ecKey)}, sign(b, jwt.SigningMethodES256, ecKey, "", c)},
		{"EdDSA", auth.Config{PublicKeyFile: writePEM(b, edKey)}, sign(b, jwt.SigningMethodEdDSA, edKey, "", c)},
		{"static", auth.Config{StaticTokens: []string{"expected_token"}}, "expected_token"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			v := newVerifier(b, bc.cfg)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(bc.token); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
