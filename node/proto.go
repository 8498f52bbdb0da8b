package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// Protocol mode: GET /ws, one connection, many channels, JSON commands with
// replies and pushes. docs/PROTOCOL.md is the specification; this file and
// it must agree (TestProtocolDoc plays every example of it).

// maxJoinBytes bounds a frame of joined pushes: a push is added to the
// frame only while the frame stays within it. A single larger push goes in
// a frame of its own.
const maxJoinBytes = 64 << 10

// errTooManyErrors closes a connection that keeps sending bad commands.
// The error reply that crossed the limit is sent first.
var errTooManyErrors = &wsout.CloseError{Code: protocol.ClosePolicyViolation, Reason: "too many bad commands", Flush: true}

// The result of every successful command in protocol version 1.
var emptyResult = json.RawMessage(`{}`)

// protoConn is the protocol-mode state of a connection. The connection's
// reader goroutine owns it, but for subs and ended (under subsMu).
type protoConn struct {
	// subsMu guards subs and ended: the reader's subscribe and
	// unsubscribe commands hold it, and so does a server-side
	// subscription (api_subscribe.go), which runs on another goroutine.
	subsMu sync.Mutex
	subs   map[string]struct{} // the channels subscribed to
	ended  bool                // unsubscribeAll ran: subscribe no more
	bucket *rate.Limiter       // commands; nil = no limit
	errs   errorWindow         // recent client errors
	// closing, set by a command, closes the connection after its reply.
	closing error
	// replied is set by a command that queued its own reply (history.go).
	replied bool
}

// serveProto is protocol mode: GET /ws[?echo=true][&batch=false][&hello=true].
func (n *Node) serveProto(w http.ResponseWriter, r *http.Request) {
	echo, err := queryBool(r, "echo")
	if err != nil && isUpgrade(r) {
		n.refuse(w, http.StatusBadRequest, protocol.CodeBadRequest, err.Error())
		return
	}
	batch := true // absent or empty: the default
	if r.URL.Query().Get("batch") != "" {
		if batch, err = queryBool(r, "batch"); err != nil && isUpgrade(r) {
			n.refuse(w, http.StatusBadRequest, protocol.CodeBadRequest, err.Error())
			return
		}
	}
	hello, err := queryBool(r, "hello")
	if err != nil && isUpgrade(r) {
		n.refuse(w, http.StatusBadRequest, protocol.CodeBadRequest, err.Error())
		return
	}
	c := n.connect(w, r, modeProto, "")
	if c == nil {
		return
	}
	c.echo = echo
	if batch {
		c.out.SetJoin(joinLines)
	}
	c.proto = &protoConn{
		subs:   make(map[string]struct{}),
		bucket: commandLimiter(n.cfg),
		errs:   errorWindow{max: n.cfg.ProtoMaxErrors, window: n.cfg.ProtoErrorWindow},
	}
	if hello { // queued before the upgrade: the first object sent
		c.out.Send(wsout.NewFrame(websocket.MessageText, protocol.AppendHello(nil, n.id)))
	}
	if !n.accept(w, r, c, n.readProto) {
		c.release()
	}
}

// readProto runs the commands the client sends, one at a time and in
// order, until the connection ends; then it leaves every channel.
func (n *Node) readProto(c *conn) error {
	defer n.unsubscribeAll(c)
	for {
		typ, data, err := c.read()
		if err != nil {
			return err
		}
		if err := n.protoMessage(c, typ, data); err != nil {
			return err
		}
	}
}

// unsubscribeAll ends the subscriptions of a protocol-mode connection.
func (n *Node) unsubscribeAll(c *conn) {
	c.proto.subsMu.Lock()
	defer c.proto.subsMu.Unlock()
	c.proto.ended = true
	for ch := range c.proto.subs {
		n.presence.leave(c, ch)
		n.hub.unsubscribe(ch, c)
	}
}

// protoMessage runs one command frame and queues its reply; an error ends
// the connection.
//
// Not inlined, so that its locals are not on the reader's stack while it
// waits for the next message (see runConn).
//
//go:noinline
func (n *Node) protoMessage(c *conn, typ websocket.MessageType, data []byte) error {
	p := c.proto
	now := time.Now()
	allowed := p.bucket == nil || p.bucket.AllowN(now, 1) // every frame takes a token
	var cmd protocol.Command
	var perr *protocol.Error
	var err error
	result := emptyResult
	if typ != websocket.MessageText {
		perr = &protocol.Error{Code: protocol.CodeBadRequest,
			Message: "binary frame: send each command as JSON in a text frame"}
	} else if cmd, err = protocol.DecodeCommand(data); err != nil {
		if !errors.As(err, &perr) {
			perr = &protocol.Error{Code: protocol.CodeBadRequest, Message: err.Error()}
		}
	} else if !allowed {
		perr = &protocol.Error{Code: protocol.CodeLimitExceeded, Message: fmt.Sprintf(
			"more than %g commands per second: slow down", n.cfg.ProtoCommandRate)}
	} else if cmd.Cmd == protocol.CmdConnect {
		result, perr = n.runConnect(c, cmd)
	} else {
		perr = n.runCommand(c, cmd)
	}
	if perr == nil && p.replied {
		p.replied = false
		return nil
	}
	if perr == nil {
		if cmd.ID != nil {
			c.out.Send(wsout.NewFrame(websocket.MessageText, protocol.AppendResult(nil, cmd.ID, result)))
		}
		return nil
	}
	c.out.Send(wsout.NewFrame(websocket.MessageText, protocol.AppendError(nil, cmd.ID, perr)))
	if p.closing != nil {
		return p.closing
	}
	if clientError(perr.Code) && p.errs.add(now) {
		return errTooManyErrors
	}
	return nil
}

// runCommand runs a decoded command and returns its error reply, or nil.
func (n *Node) runCommand(c *conn, cmd protocol.Command) *protocol.Error {
	p := c.proto
	if c.sess.pending != nil && cmd.Cmd != protocol.CmdPing {
		// Connected by the backend proxy at the first command that needs it.
		if perr := n.proxyConnectProto(c); perr != nil {
			return perr
		}
	}
	switch cmd.Cmd {
	case protocol.CmdPing:
		return nil
	case protocol.CmdRefresh:
		return n.runRefresh(c, cmd)
	case protocol.CmdSubscribe:
		// Asked before taking subsMu: the backend proxy may take up to
		// its timeout, and a server-side subscribe waits for subsMu.
		if perr := n.allowSubscribe(n.ctx, c, cmd.Channel, "subscribe to"); perr != nil {
			return perr
		}
		p.subsMu.Lock()
		defer p.subsMu.Unlock()
		if _, ok := p.subs[cmd.Channel]; ok {
			return &protocol.Error{Code: protocol.CodeAlreadySubscribed,
				Message: fmt.Sprintf("already subscribed to %q", cmd.Channel)}
		}
		if limit := n.cfg.ProtoMaxChannels; limit > 0 && len(p.subs) >= limit {
			return &protocol.Error{Code: protocol.CodeLimitExceeded,
				Message: fmt.Sprintf("at most %d channels per connection", limit)}
		}
		if hist, opts, ok := n.historyOf(cmd.Channel); ok || cmd.Since != nil {
			// Present before the reply, which subscribeHistory queues.
			if ok {
				n.presence.join(c, cmd.Channel)
			}
			perr := n.subscribeHistory(c, cmd, hist, opts, ok)
			if perr != nil && ok {
				n.presence.leave(c, cmd.Channel)
			}
			return perr
		}
		if err := n.hub.subscribe(n.ctx, cmd.Channel, c, nil); err != nil {
			return n.brokerError(c, "subscribe failed", cmd.Channel, err)
		}
		p.subs[cmd.Channel] = struct{}{}
		n.presence.join(c, cmd.Channel)
		return nil
	case protocol.CmdHistory:
		return n.runHistory(c, cmd)
	case protocol.CmdUnsubscribe:
		p.subsMu.Lock()
		defer p.subsMu.Unlock()
		if _, ok := p.subs[cmd.Channel]; !ok {
			return &protocol.Error{Code: protocol.CodeNotSubscribed,
				Message: fmt.Sprintf("not subscribed to %q", cmd.Channel)}
		}
		delete(p.subs, cmd.Channel)
		n.presence.leave(c, cmd.Channel)
		n.hub.unsubscribe(cmd.Channel, c)
		return nil
	case protocol.CmdPresence, protocol.CmdPresenceStats:
		return n.presenceCommand(c, cmd)
	case protocol.CmdPublish:
		data, perr := n.allowPublish(c, cmd.Channel, cmd.Data)
		if perr != nil {
			return perr
		}
		// data aliases the frame ws.Read returned, a fresh buffer that
		// nothing else uses, or is the backend proxy's replacement: the
		// broker may own it.
		m := pubsub.Message{
			Origin:  n.id,
			Conn:    c.id,
			Payload: data,
		}
		if cmd.IdempotencyKey != "" {
			return n.publishOnceReply(c, cmd, m)
		}
		if err := n.publish(cmd.Channel, m); err != nil {
			return n.brokerError(c, "publish failed", cmd.Channel, err)
		}
		return nil
	}
	// DecodeCommand returns only the commands above.
	n.log.Error("command without a handler", "conn", c.id, "cmd", cmd.Cmd)
	return &protocol.Error{Code: protocol.CodeInternal, Message: "internal error"}
}

// brokerError is the error reply of a failed publish or subscribe. When
// the broker cannot be reached or the node is shutting down, it is
// unavailable: the client may retry, here or on another node; that is
// logged at debug level only, since a Redis outage is the broker's to
// report, not once per command of every client. Anything else is internal
// and logged as an error.
func (n *Node) brokerError(c *conn, msg, channel string, err error) *protocol.Error {
	if errors.Is(err, pubsub.ErrOutcomeUnknown) {
		n.log.Debug(msg, "conn", c.id, "channel", channel, "err", err)
		return &protocol.Error{Code: protocol.CodeUnknownOutcome, Message: outcomeUnknown}
	}
	if errors.Is(err, pubsub.ErrUnavailable) || errors.Is(err, pubsub.ErrClosed) || errors.Is(err, context.Canceled) {
		n.log.Debug(msg, "conn", c.id, "channel", channel, "err", err)
		return &protocol.Error{Code: protocol.CodeUnavailable, Message: "the broker is unavailable, try again later"}
	}
	n.log.Error(msg, "conn", c.id, "channel", channel, "err", err)
	return &protocol.Error{Code: protocol.CodeInternal, Message: "internal error"}
}

// clientError reports whether an error with code is the client's doing;
// those count towards closing the connection.
func clientError(code protocol.Code) bool {
	switch code {
	case protocol.CodeUnavailable, protocol.CodeInternal, protocol.CodeUnknownOutcome,
		protocol.CodeProxyUnavailable, protocol.CodeProxyError:
		return false
	}
	return true
}

// outcomeUnknown is the message of an unknown_outcome error.
const outcomeUnknown = "the broker did not confirm the publish in time: it may or may not have been published"

// newPushFrame is the protocol-mode form of m on channel, built once per
// message per node and shared by its protocol-mode subscribers.
func newPushFrame(channel string, m pubsub.Message) *wsout.Frame {
	binary := m.Binary || (m.Origin == "" && !utf8.Valid(m.Payload))
	buf := make([]byte, 0, protocol.PushSize(channel, m.Payload, binary))
	return wsout.NewFrame(websocket.MessageText, protocol.AppendPushAt(buf, channel, m.Offset, m.Payload, binary))
}

// joinLines is the writer's join (wsout.JoinFunc) of a protocol-mode
// connection that batches: consecutive text frames of a batch become one
// message, separated by "\n", up to maxJoinBytes, so that several pending
// pushes (and replies) cost one frame. Every protocol-mode message is one
// line of compact JSON, so the client splits on "\n".
func joinLines(dst []byte, batch []*wsout.Frame) ([]byte, int) {
	f := batch[0]
	if f.Type() != websocket.MessageText {
		return dst, 1
	}
	size, k := len(f.Payload()), 1
	for ; k < len(batch); k++ {
		g := batch[k]
		if g.Type() != websocket.MessageText || size+1+len(g.Payload()) > maxJoinBytes {
			break
		}
		size += 1 + len(g.Payload())
	}
	if k == 1 {
		return dst, 1
	}
	dst = append(dst, f.Payload()...)
	for _, g := range batch[1:k] {
		dst = append(dst, '\n')
		dst = append(dst, g.Payload()...)
	}
	return dst, k
}

// commandLimiter is the token bucket of one connection's commands, nil
// when they are not limited.
func commandLimiter(cfg Config) *rate.Limiter {
	if cfg.ProtoCommandRate <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(cfg.ProtoCommandRate), cfg.ProtoCommandBurst)
}

// errorWindow counts client errors: add reports whether max of them fell
// within window. A zero max never does.
type errorWindow struct {
	max    int
	window time.Duration
	times  []time.Time // the last max errors, oldest first
}

func (w *errorWindow) add(now time.Time) bool {
	if w.max <= 0 {
		return false
	}
	if len(w.times) == w.max {
		copy(w.times, w.times[1:])
		w.times = w.times[:w.max-1]
	}
	w.times = append(w.times, now)
	return len(w.times) == w.max && now.Sub(w.times[0]) < w.window
}
