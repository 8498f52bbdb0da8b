package node

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
)

// errUnauthorized is the answer to an upgrade without a valid token.
var errUnauthorized = errors.New("missing or invalid token in the Authorization header")

// authenticator decides whether a request may connect. It is the one place
// that checks credentials; signed tokens with per-channel permissions grow
// from here.
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

// enabled reports whether connections need a token.
func (a *authenticator) enabled() bool { return len(a.digests) > 0 }

// check accepts the request when auth is off, or when its Authorization
// header carries an accepted token, bare or as "Bearer <token>".
func (a *authenticator) check(r *http.Request) error {
	if !a.enabled() {
		return nil
	}
	h := strings.TrimSpace(r.Header.Get("Authorization"))
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		h = strings.TrimSpace(h[7:])
	}
	if h == "" {
		return errUnauthorized
	}
	d := sha256.Sum256([]byte(h))
	ok := 0
	for i := range a.digests {
		ok |= subtle.ConstantTimeCompare(d[:], a.digests[i][:])
	}
	if ok != 1 {
		return errUnauthorized
	}
	return nil
}
