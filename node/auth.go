package node

import (
	"crypto/sha256"
)

// authenticator holds the digests of the HTTP API's keys (api.go).
// Connections are authenticated by package auth (session.go).
type authenticator struct {
	// digests of the accepted tokens; comparing fixed-size digests in
	// constant time leaks neither a token nor its length.
	digests [][sha256.Size]byte
}

func newAuthenticator(tokens []string) *authenticator {
	a := &authenticator{}
	for _, t := range tokens {
		a.digests = append(a.digests, sha256.Sum256([]byte(t)))
	}
	return a
}

// enabled reports whether keys are configured.
func (a *authenticator) enabled() bool { return len(a.digests) > 0 }
