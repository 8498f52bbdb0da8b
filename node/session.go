package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/auth"
	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/node/protocol"
)

// Authentication and authorisation of connections (docs/AUTH.md): where
// the token comes from, what a connection may do, and what happens when
// its token expires. Package auth verifies tokens; this file applies them.

// Why the server closes a connection, for its token.
var (
	errTokenExpired     = &wsout.CloseError{Code: protocol.CloseTokenExpired, Reason: "token expired: fetch a new token before reconnecting", Flush: true}
	errTokenInvalid     = &wsout.CloseError{Code: protocol.CloseTokenInvalid, Reason: "token refused: fetch a new token before reconnecting", Flush: true}
	errConnectNeeded    = &wsout.CloseError{Code: protocol.CloseConnectNeeded, Reason: "no token: send a token with the upgrade or a connect command", Flush: true}
	errPublishForbidden = &wsout.CloseError{Code: protocol.ClosePolicyViolation, Reason: "publish not allowed", Flush: true}
)

// newAuth returns the token verifier and namespace rules of cfg.
func newAuth(cfg Config, log *slog.Logger) (*auth.Verifier, *auth.Namespaces, error) {
	v, err := auth.New(auth.Config{
		StaticTokens:  cfg.AuthTokens,
		HMACSecret:    []byte(cfg.TokenHMACSecret),
		PublicKeyFile: cfg.TokenPublicKeyFile,
		JWKSURL:       cfg.TokenJWKSURL,
		JWKSFile:      cfg.TokenJWKSFile,
		JWKSRefresh:   cfg.TokenJWKSRefresh,
		Issuer:        cfg.TokenIssuer,
		Audience:      cfg.TokenAudience,
		Leeway:        cfg.TokenLeeway,
	}, log.With("component", "auth"))
	if err != nil {
		return nil, nil, err
	}
	var ns *auth.Namespaces
	if cfg.NamespacesFile != "" {
		if ns, err = auth.ReadNamespaces(cfg.NamespacesFile); err != nil {
			return nil, nil, fmt.Errorf("RELAY_NAMESPACES_FILE: %w", err)
		}
	}
	return v, ns, nil
}

// runAuth keeps the verifier's JWKS fresh until the returned stop is
// called; stop waits for it.
func (n *Node) runAuth() (stop func()) {
	if n.verifier.Enabled() {
		n.log.Info("auth on", "static_tokens", len(n.cfg.AuthTokens), "jwt_algorithms", n.verifier.Algorithms())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.verifier.Run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

// tokenOf returns the token r carries: in its Authorization header, bare
// or as "Bearer <token>", or else in its token query parameter (browsers
// cannot set headers on a WebSocket). Neither is ever logged.
func tokenOf(r *http.Request) string {
	h := strings.TrimSpace(r.Header.Get("Authorization"))
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		h = strings.TrimSpace(h[7:])
	}
	if h != "" {
		return h
	}
	return r.URL.Query().Get("token")
}

// authenticate returns the identity of the token r carries: unrestricted
// when auth is off, or an *auth.Error.
func (n *Node) authenticate(r *http.Request) (*auth.Identity, error) {
	if !n.verifier.Enabled() {
		if n.proxy.connects() { // the connect proxy decides
			return nil, &auth.Error{Reason: auth.ReasonMissing}
		}
		return auth.Unrestricted(), nil
	}
	return n.verifier.Verify(tokenOf(r))
}

// refuseToken answers an upgrade whose token was refused with 401 and a
// JSON body naming the reason.
func (n *Node) refuseToken(w http.ResponseWriter, err error) {
	n.metrics.tokensRefused.WithLabelValues(string(auth.ReasonOf(err))).Inc()
	w.Header().Set("WWW-Authenticate", `Bearer realm="relay"`)
	n.metrics.refused.WithLabelValues(strconv.Itoa(http.StatusUnauthorized)).Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusUnauthorized)
	json.NewEncoder(w).Encode(tokenError(err))
}

// tokenRefused counts a token refused by a command and returns its error
// reply.
func (n *Node) tokenRefused(err error) *protocol.Error {
	n.metrics.tokensRefused.WithLabelValues(string(auth.ReasonOf(err))).Inc()
	return tokenError(err)
}

// tokenError is the error body or reply of a refused token.
func tokenError(err error) *protocol.Error {
	return &protocol.Error{Code: protocol.CodeUnauthorized, Reason: string(auth.ReasonOf(err)), Message: err.Error()}
}

// session is the authentication state of a connection. id is read and
// replaced only by the connection's reader goroutine (connect, refresh);
// the expiry timer's state is under mu.
type session struct {
	id *auth.Identity
	// name is id.User, readable by any goroutine under mu (user).
	name string
	// upgradeToken: the upgrade carried a token; connected: connect ran.
	upgradeToken, connected bool
	// rawPublish: a raw-mode connection may publish to its channel.
	rawPublish bool
	// pending holds the headers forwarded to the connect proxy until it
	// has answered; nil when it is not to be asked (proxy.go). proxied:
	// the connect proxy gave id.
	pending http.Header
	proxied bool

	mu       sync.Mutex
	timer    *time.Timer // nil until armed; stopped when the connection ends
	deadline time.Time   // when the timer's action is due
	phase    sessionPhase
	ended    bool
}

// sessionPhase is what the session's timer waits for.
type sessionPhase uint8

const (
	phaseNone    sessionPhase = iota // nothing: the token never expires
	phaseLive                        // the token's expiry
	phaseGrace                       // a refresh, after the refresh request
	phaseConnect                     // a connect command
)

// start arms the connection's timer; the reader goroutine calls it when
// the connection opens, and stop when it ends.
func (s *session) start(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case c.mode == modeProto && s.id.Anonymous() && (c.n.verifier.Enabled() || s.pending != nil) && !s.upgradeToken &&
		!c.n.namespaces.AnyAnonymous() && c.n.cfg.TokenConnectTimeout > 0:
		s.armLocked(c, phaseConnect, c.opened.Add(c.n.cfg.TokenConnectTimeout))
	case !s.id.Expires.IsZero():
		s.armLocked(c, phaseLive, s.id.Expires)
	}
}

// user returns the connection's user; any goroutine may call it.
func (s *session) user() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.name
}

// stop stops the timer for good.
func (s *session) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended = true
	if s.timer != nil {
		s.timer.Stop()
	}
}

// armLocked sets the timer to fire at deadline, for phase.
func (s *session) armLocked(c *conn, phase sessionPhase, deadline time.Time) {
	s.phase, s.deadline = phase, deadline
	if s.ended {
		return
	}
	d := time.Until(deadline)
	if s.timer == nil {
		s.timer = time.AfterFunc(d, func() { s.fire(c) })
		return
	}
	s.timer.Reset(d)
}

// setIdentity makes id the connection's identity, its timer waiting for
// id's expiry; the reader goroutine calls it.
func (s *session) setIdentity(c *conn, id *auth.Identity) {
	s.id = id
	s.mu.Lock()
	defer s.mu.Unlock()
	s.name = id.User
	if id.Expires.IsZero() {
		s.phase = phaseNone
		if s.timer != nil {
			s.timer.Stop()
		}
		return
	}
	s.armLocked(c, phaseLive, id.Expires)
}

// fire runs on the timer's goroutine when a deadline passes.
func (s *session) fire(c *conn) {
	s.mu.Lock()
	now := time.Now()
	if s.ended || s.phase == phaseNone || now.Before(s.deadline) {
		// Re-armed meanwhile: the timer fires again.
		s.mu.Unlock()
		return
	}
	phase := s.phase
	grace := c.n.cfg.TokenRefreshGrace
	// A connection the connect proxy let in has no token to refresh.
	if phase == phaseLive && c.mode == modeProto && grace > 0 && !s.proxied {
		s.armLocked(c, phaseGrace, now.Add(grace))
		s.mu.Unlock()
		c.out.Send(wsout.NewFrame(websocket.MessageText, protocol.AppendRefresh(nil, grace.Milliseconds())))
		return
	}
	s.phase = phaseNone
	s.mu.Unlock()
	if phase == phaseConnect {
		c.close(errConnectNeeded)
		return
	}
	c.close(errTokenExpired)
}

// clientID is c's id in the cluster: node id, slash, connection number.
func (c *conn) clientID() string { return c.n.id + "/" + strconv.FormatUint(c.id, 10) }

// parseClientID splits a client id into its node id and connection number.
func parseClientID(id string) (node string, conn uint64, ok bool) {
	i := strings.LastIndexByte(id, '/')
	if i <= 0 || i > 255 {
		return "", 0, false
	}
	conn, err := strconv.ParseUint(id[i+1:], 10, 64)
	if err != nil || conn == 0 {
		return "", 0, false
	}
	return id[:i], conn, true
}

// runConnect runs a connect command: it authenticates a connection that
// sent no token with its upgrade, and tells the client its id.
func (n *Node) runConnect(c *conn, cmd protocol.Command) (json.RawMessage, *protocol.Error) {
	s := c.sess
	if s.connected {
		return nil, &protocol.Error{Code: protocol.CodeBadRequest, Message: "connect runs once per connection"}
	}
	switch {
	case cmd.Token != "" && s.upgradeToken:
		return nil, &protocol.Error{Code: protocol.CodeBadRequest, Message: "the upgrade carried a token already; send connect without one"}
	case cmd.Token != "":
		id, err := n.verifier.Verify(cmd.Token)
		if err != nil {
			c.proto.closing = errTokenInvalid
			return nil, n.tokenRefused(err)
		}
		s.pending = nil
		s.setIdentity(c, id)
	case s.pending != nil:
		if perr := n.proxyConnectProto(c); perr != nil {
			return nil, perr
		}
	case !s.upgradeToken && !s.proxied && n.verifier.Enabled() && !n.namespaces.AnyAnonymous():
		c.proto.closing = errTokenInvalid
		return nil, n.tokenRefused(&auth.Error{Reason: auth.ReasonMissing, Detail: "send connect with a token"})
	}
	s.connected = true
	res := protocol.ConnectResult{Client: c.clientID(), User: s.id.User, Info: s.id.Info}
	if !s.id.Expires.IsZero() {
		res.Expires = s.id.Expires.Unix()
	}
	b, err := json.Marshal(res)
	if err != nil {
		return nil, &protocol.Error{Code: protocol.CodeInternal, Message: "internal error"}
	}
	return b, nil
}

// runRefresh runs a refresh command: a new token for the same user.
func (n *Node) runRefresh(c *conn, cmd protocol.Command) *protocol.Error {
	s := c.sess
	if s.id.Anonymous() {
		return &protocol.Error{Code: protocol.CodeBadRequest, Message: "refresh replaces a token: this connection has none (send connect)"}
	}
	id, err := n.verifier.Verify(cmd.Token)
	if err != nil {
		return n.tokenRefused(err)
	}
	if id.User != s.id.User {
		return n.tokenRefused(&auth.Error{Reason: auth.ReasonOtherUser, Detail: "the new token's sub is not the connection's user"})
	}
	s.setIdentity(c, id)
	return nil
}

// forbidden is the error reply of a command the connection's token does
// not allow.
func forbidden(verb, channel string) *protocol.Error {
	return &protocol.Error{Code: protocol.CodeForbidden, Message: fmt.Sprintf("not allowed to %s %q", verb, channel)}
}

// isMissing reports whether authenticate refused a request for carrying
// no token at all.
func isMissing(err error) bool {
	var e *auth.Error
	return errors.As(err, &e) && e.Reason == auth.ReasonMissing
}

// admitToken authenticates the upgrade r of mode m (to channel, in raw
// mode) and, in raw mode, checks that it may subscribe; on failure it has
// answered the request (401 with the reason, or 403). Without a token, a
// protocol-mode connection is anonymous until it sends connect, and a
// raw-mode one is anonymous where the namespace allows it.
func (n *Node) admitToken(w http.ResponseWriter, r *http.Request, m mode, channel string) *session {
	id, err := n.authenticate(r)
	s := &session{upgradeToken: err == nil && n.verifier.Enabled()}
	switch {
	case err == nil:
	case isMissing(err) && n.proxy.connects():
		id, s.pending = auth.Anonymous(), n.proxy.forwarded(r)
	case isMissing(err) && (m == modeProto || m == modeRaw && (n.namespaces.For(channel).AnonymousSubscribe || n.proxy.subscribes())):
		id = auth.Anonymous()
	default:
		n.refuseToken(w, err)
		return nil
	}
	s.id, s.name = id, id.User
	if m == modeRaw && n.proxy == nil { // else admitProxy decides, after the proxy calls
		if !id.MaySubscribe(n.namespaces, channel) {
			n.refuse(w, http.StatusForbidden, protocol.CodeForbidden, fmt.Sprintf("not allowed to subscribe to %q", channel))
			return nil
		}
		s.rawPublish = id.MayPublish(n.namespaces, channel)
	}
	return s
}
