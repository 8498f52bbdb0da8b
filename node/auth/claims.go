package auth

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Claims is the claim set of a Relay token (docs/AUTH.md is the contract):
// the registered claims (sub, exp, nbf, iat, iss, aud) and Relay's own.
type Claims struct {
	jwt.RegisteredClaims
	// Channels are the patterns of the channels the user may subscribe
	// to: globs where * matches any run of characters (chat:*) and {sub}
	// stands for the user id (user:{sub}).
	Channels []string `json:"channels,omitempty"`
	// Publish are the patterns of the channels the user may publish to,
	// written as Channels are.
	Publish []string `json:"publish,omitempty"`
	// Info is free JSON kept with the connection.
	Info json.RawMessage `json:"info,omitempty"`
}

// Identity is who a connection is and what its token lets it do. It is
// immutable: a refreshed token gives a new Identity.
type Identity struct {
	// User is the token's sub; "" for an anonymous connection.
	User string
	// Info is the token's info claim, nil when absent.
	Info json.RawMessage
	// Expires is when the token's exp passes (with the leeway); zero when
	// it never does.
	Expires time.Time
	// unrestricted: a static token, or auth is off: every channel.
	unrestricted bool
	subscribe    []pattern
	publish      []pattern
}

// Unrestricted returns the identity of a connection with a static token,
// or of every connection when auth is off: it may subscribe and publish to
// every channel (namespace rules still apply). Every call returns the same
// Identity: connections share it.
func Unrestricted() *Identity { return unrestricted }

// Anonymous returns the identity of a connection without a token: it may
// subscribe only where a namespace allows anonymous subscribers. Every
// call returns the same Identity.
func Anonymous() *Identity { return anonymous }

// The shared identities; Identity is immutable.
var (
	unrestricted = &Identity{unrestricted: true}
	anonymous    = &Identity{}
)

// Anonymous reports whether id has no user and no unrestricted token.
func (id *Identity) Anonymous() bool { return id.User == "" && !id.unrestricted }

// newIdentity is the identity of a verified token's claims; exp is when it
// stops being valid (zero: never).
func newIdentity(c *Claims, exp time.Time) *Identity {
	id := &Identity{User: c.Subject, Info: c.Info, Expires: exp}
	for _, p := range c.Channels {
		id.subscribe = append(id.subscribe, compile(p, c.Subject))
	}
	for _, p := range c.Publish {
		id.publish = append(id.publish, compile(p, c.Subject))
	}
	return id
}

// NewIdentity returns the identity of user (empty: anonymous) with the
// channel patterns channels and publish, written as the claims of the same
// names, info and expiry: what the backend proxy's connect answer gives
// (docs/AUTH.md, "Backend proxy").
func NewIdentity(user string, channels, publish []string, info json.RawMessage, expires time.Time) *Identity {
	c := &Claims{Channels: channels, Publish: publish, Info: info}
	c.Subject = user
	return newIdentity(c, expires)
}

// MaySubscribe reports whether the token lets id subscribe to channel
// under ns's rules: a namespace open to anonymous subscribers lets
// everyone; otherwise an unrestricted identity may, an anonymous one may
// not, and a user may where a channels pattern matches.
func (id *Identity) MaySubscribe(ns *Namespaces, channel string) bool {
	if ns.For(channel).AnonymousSubscribe || id.unrestricted {
		return true
	}
	return id.User != "" && matchAny(id.subscribe, channel)
}

// MayPublish reports whether id may publish to channel under ns's rules:
// never where the namespace keeps publishing to backends; otherwise an
// unrestricted identity may, an anonymous one may not, and a user may where
// a publish pattern matches.
func (id *Identity) MayPublish(ns *Namespaces, channel string) bool {
	if !ns.For(channel).ClientPublish {
		return false
	}
	if id.unrestricted {
		return true
	}
	return id.User != "" && matchAny(id.publish, channel)
}

// pattern is a compiled channel glob: the literal parts between its *s. A
// pattern without * has one part and matches only itself.
type pattern []string

// compile compiles the glob p, with {sub} replaced by user. The user id is
// literal: a * in it matches only a *, which no channel name has.
func compile(p, user string) pattern {
	parts := strings.Split(p, "*")
	for i := range parts {
		parts[i] = strings.ReplaceAll(parts[i], "{sub}", user)
	}
	return parts
}

func (p pattern) match(s string) bool {
	if len(p) == 1 {
		return s == p[0]
	}
	if !strings.HasPrefix(s, p[0]) {
		return false
	}
	s = s[len(p[0]):]
	last := p[len(p)-1]
	for _, part := range p[1 : len(p)-1] {
		i := strings.Index(s, part)
		if i < 0 {
			return false
		}
		s = s[i+len(part):]
	}
	return strings.HasSuffix(s, last)
}

func matchAny(ps []pattern, s string) bool {
	for _, p := range ps {
		if p.match(s) {
			return true
		}
	}
	return false
}
