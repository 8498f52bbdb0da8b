package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/protocol"
)

// Options configure a [Client]. The zero value is usable: no token, the
// default backoff, no events.
type Options struct {
	// URLs are further addresses of the same deployment, tried in turn
	// after the one given to Dial when a connection cannot be opened or
	// ends. Each is a ws:// or wss:// URL; a URL without a path (or "/")
	// means its /ws endpoint.
	URLs []string
	// Token is sent as "Authorization: Bearer <Token>" on every
	// connection, unless TokenFunc is set.
	Token string
	// TokenFunc, when set, is called before every connection attempt for
	// the token to send, and when the node asks for a new one on a live
	// connection (the token expired; the refresh command answers it). With
	// it, a refused token is retried with backoff instead of ending the
	// client.
	TokenFunc func(ctx context.Context) (string, error)
	// Header is sent with every handshake (besides Authorization).
	Header http.Header
	// Echo asks the node for the client's own publishes on channels it is
	// subscribed to (?echo=true).
	Echo bool
	// MinBackoff and MaxBackoff bound the delay before a reconnection
	// attempt: attempt n waits a random time between 0 and
	// min(MaxBackoff, MinBackoff·2ⁿ) (full jitter). Zero means 100 ms and
	// 10 s.
	MinBackoff, MaxBackoff time.Duration
	// DialTimeout bounds one connection attempt, handshake and
	// resubscription included. Zero means 10 s.
	DialTimeout time.Duration
	// PingInterval is how often the client pings the node to find a
	// connection that died without a close (a vanished network); a ping
	// not answered within DialTimeout ends the connection. Zero means 25 s.
	PingInterval time.Duration
	// OnEvent, when set, is told of connections, disconnections,
	// resubscriptions and gaps. It is called on the client's goroutines,
	// one event at a time (a gap the node announces comes in order with
	// the channel's messages, from the goroutine that runs handlers), and
	// must not block or call the client.
	OnEvent func(Event)
}

// EventType says what an [Event] reports.
type EventType int

const (
	// EventConnected: a connection is open and every subscription is live
	// again; URL and Node say where.
	EventConnected EventType = iota + 1
	// EventDisconnected: the connection ended (Code and Reason are the
	// node's close frame, Code -1 when there was none) or an attempt to
	// open one failed (Err). The next attempt comes after Retry.
	EventDisconnected
	// EventGap: messages of Channel may have been missed: it was
	// subscribed again after a reconnection and could not be recovered
	// (no history, or the history no longer reaches back), or the node
	// announced that messages of it may have been lost (its Redis link
	// failed: a gap push, docs/PROTOCOL.md). The app should reload what
	// it shows of the channel.
	EventGap
	// EventRecovered: Channel was subscribed again after a reconnection
	// and the node sends every message published to it meanwhile (a
	// channel with history, within its reach): nothing was missed.
	EventRecovered
	// EventUnsubscribed: Channel could not be subscribed again after a
	// reconnection (Err says why, e.g. forbidden); its handler gets no
	// more messages.
	EventUnsubscribed
	// EventClosed: the client has stopped for good: Close was called, or
	// the node refused it in a way retrying cannot fix (Err: a *DialError,
	// or a websocket.CloseError such as 1008 or a 4xxx token code).
	EventClosed
)

func (t EventType) String() string {
	switch t {
	case EventConnected:
		return "connected"
	case EventDisconnected:
		return "disconnected"
	case EventGap:
		return "gap"
	case EventRecovered:
		return "recovered"
	case EventUnsubscribed:
		return "unsubscribed"
	case EventClosed:
		return "closed"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is something that happened to a client's connection.
type Event struct {
	Type    EventType
	URL     string               // the connection's URL
	Node    string               // the node's ID (X-Relay-Node), when connected
	Code    websocket.StatusCode // EventDisconnected: the close code, -1 if none
	Reason  string               // EventDisconnected: the close reason
	Err     error                // why an attempt failed, or why the client closed
	Retry   time.Duration        // EventDisconnected: the delay before the next attempt
	Channel string               // EventGap, EventUnsubscribed
}

// Message is one message of a subscribed channel.
type Message struct {
	Channel string
	// Data is the message as a JSON value. When Binary, it is a JSON
	// string holding the standard base64 of the bytes.
	Data   json.RawMessage
	Binary bool
	// Offset is the message's offset in the channel's history (1, 2, …);
	// 0 on a channel without history.
	Offset uint64
}

// Bytes returns the message as it was published: the bytes of a binary
// message, the text of a JSON string (what a raw-mode client's text frame
// becomes), or the JSON text of any other value.
func (m Message) Bytes() []byte {
	if len(m.Data) > 0 && m.Data[0] == '"' {
		var s string
		if json.Unmarshal(m.Data, &s) == nil {
			if !m.Binary {
				return []byte(s)
			}
			var b []byte
			if json.Unmarshal(m.Data, &b) == nil {
				return b
			}
		}
	}
	return m.Data
}

// Error is an error reply of the node: Code is one of the stable codes of
// docs/PROTOCOL.md, such as forbidden or limit_exceeded.
type Error = protocol.Error

var (
	// ErrClosed is returned by calls on a client that has stopped.
	ErrClosed = errors.New("relay client closed")
	// ErrUnknownOutcome is returned by Publish when the connection ended
	// after the message was sent and before the node answered, or when the
	// node answered unknown_outcome (its broker did not confirm in time):
	// the message may or may not have been published. A retry may deliver
	// it twice; PublishOnce retries without that risk.
	ErrUnknownOutcome = errors.New("the publish may or may not have taken effect")
)

// errConnLost ends the calls of a connection that ended.
var errConnLost = errors.New("connection lost")

// DialError is a connection attempt the node refused before the upgrade.
type DialError struct {
	URL    string
	Status int    // the HTTP status, 0 if the node was not reached
	Code   string // the error code of the node's JSON body, if any
	Err    error
}

func (e *DialError) Error() string {
	if e.Status == 0 {
		var op *net.OpError
		if errors.As(e.Err, &op) {
			return fmt.Sprintf("cannot reach %s: %v", e.URL, op.Err)
		}
		return fmt.Sprintf("cannot reach %s: %v", e.URL, e.Err)
	}
	if e.Code != "" {
		return fmt.Sprintf("%s refused the connection: HTTP %d %v", e.URL, e.Status, e.Err)
	}
	return fmt.Sprintf("%s refused the connection: HTTP %d", e.URL, e.Status)
}

func (e *DialError) Unwrap() error { return e.Err }

// permanent reports whether retrying the same request cannot succeed:
// the node refused it (bad URL, bad request, forbidden), or refused the
// token and there is no way to get another.
func (e *DialError) permanent(canRefresh bool) bool {
	switch {
	case e.Status == http.StatusUnauthorized:
		return !canRefresh
	case e.Status >= 400 && e.Status < 500 && e.Status != http.StatusTooManyRequests:
		return true
	}
	return false
}

// Client is a protocol-mode connection to Relay that reconnects by itself.
// Its methods are safe for concurrent use.
type Client struct {
	opts   Options
	urls   []string
	ctx    context.Context // the client's life; canceled by Close
	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned
	wg     sync.WaitGroup

	deliveries chan delivery // from the readers to the handler goroutine
	emitMu     sync.Mutex    // one OnEvent call at a time

	mu    sync.Mutex
	sess  *session      // the live connection, nil while there is none
	ready chan struct{} // closed when sess is set; replaced when it ends
	subs  map[string]*Subscription
	err   error // why the client stopped
}

type delivery struct {
	sub *Subscription
	msg Message
	gap *Event // instead of msg: a gap the node announced
}

// Subscription is a live subscription of a channel.
type Subscription struct {
	c       *Client
	channel string
	handler func(Message)
	pos     position // guarded by c.mu
}

// position is where a subscription of a channel with history is: the
// epoch of its last subscribe reply and the offset of the last message
// received. The zero position is unknown (no history, or lost by a gap).
type position struct {
	offset uint64
	epoch  string
}

// since is the recovery to ask for when subscribing again, nil for none.
func (p position) since() *protocol.Since {
	if p.epoch == "" {
		return nil
	}
	return &protocol.Since{Offset: p.offset, Epoch: p.epoch}
}

// subscribed records the position of a subscribe reply.
func (c *Client) subscribed(sub *Subscription, result json.RawMessage) {
	var r protocol.SubscribeResult
	if json.Unmarshal(result, &r) != nil || r.Epoch == "" {
		return // a channel without history
	}
	c.mu.Lock()
	if r.Recovered == nil || !*r.Recovered || sub.pos.epoch != r.Epoch {
		sub.pos = position{offset: r.Offset, epoch: r.Epoch}
	}
	// Recovered: the missed messages follow the reply, and their pushes
	// move the offset on.
	c.mu.Unlock()
}

// Channel is the subscription's channel.
func (s *Subscription) Channel() string { return s.channel }

// deliveryBuffer is how many messages wait for the handlers before the
// client stops reading the connection. A node closes a connection that
// stops reading for long with 1013 (slow consumer); the client then
// reconnects and reports a gap.
const deliveryBuffer = 1024

// Dial connects to the Relay node at url (ws://host:port, or its /ws
// endpoint) and returns a client that stays connected until Close. The
// first connection is made before Dial returns: Dial tries url and then
// Options.URLs once each, and returns the last error if none took it (a
// *DialError when a node answered). opts may be nil.
func Dial(ctx context.Context, url string, opts *Options) (*Client, error) {
	o := Options{}
	if opts != nil {
		o = *opts
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 10 * time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 25 * time.Second
	}
	var urls []string
	for _, u := range append([]string{url}, o.URLs...) {
		wsURL, err := endpoint(u, o.Echo)
		if err != nil {
			return nil, err
		}
		urls = append(urls, wsURL)
	}
	c := &Client{
		opts:       o,
		urls:       urls,
		done:       make(chan struct{}),
		deliveries: make(chan delivery, deliveryBuffer),
		ready:      make(chan struct{}),
		subs:       make(map[string]*Subscription),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	var first *session
	var err error
	for i, u := range urls {
		if first, err = c.connect(ctx, u); err == nil {
			c.urls = append(urls[i:], urls[:i]...)
			break
		}
		if ctx.Err() != nil {
			break
		}
	}
	if first == nil {
		c.cancel()
		return nil, err
	}
	c.wg.Add(1)
	go c.handle()
	c.live(first)
	go c.run(first)
	return c, nil
}

// endpoint turns a user's URL into the protocol-mode URL.
func endpoint(raw string, echo bool) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("url %q: %w", raw, err)
	}
	switch u.Scheme {
	case "ws", "wss":
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("url %q: want ws:// or wss://", raw)
	}
	if u.Host == "" {
		return "", fmt.Errorf("url %q: no host", raw)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/ws"
	}
	if echo {
		q := u.Query()
		q.Set("echo", "true")
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}

// Close ends the connection with 1000 and stops the client: pending calls
// return ErrClosed, handlers are not called any more once Close returns.
func (c *Client) Close() error {
	c.stop(nil)
	<-c.done
	c.wg.Wait()
	return nil
}

// stop ends the client for good with err (nil: closed by the app).
func (c *Client) stop(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = ErrClosed
		if err != nil {
			c.err = err
		}
	}
	c.mu.Unlock()
	c.cancel() // serve closes the connection
}

// run is the client's own goroutine: it serves each connection until it
// ends, then opens the next one, until the client stops.
func (c *Client) run(s *session) {
	defer close(c.done)
	attempt, next := 0, 0
	for {
		var retry time.Duration
		if s != nil {
			attempt = 0
			code, reason, permanent := c.wait(s)
			if c.ctx.Err() != nil {
				c.closed()
				return
			}
			if permanent {
				err := fmt.Errorf("not reconnecting: %w", websocket.CloseError{Code: code, Reason: reason})
				c.emit(Event{Type: EventDisconnected, URL: s.url, Node: s.node, Code: code, Reason: reason, Err: err})
				c.stop(err)
				c.closed()
				return
			}
			retry = c.backoff(0)
			if code == protocol.CloseServiceRestart {
				// A draining node: another one takes us now.
				retry = time.Duration(rand.Int64N(int64(c.opts.MinBackoff)))
			}
			c.emit(Event{Type: EventDisconnected, URL: s.url, Node: s.node, Code: code, Reason: reason, Retry: retry})
			next++
		}
		if !c.sleep(retry) {
			c.closed()
			return
		}
		u := c.urls[next%len(c.urls)]
		var err error
		s, err = c.connect(c.ctx, u)
		if err == nil {
			c.live(s)
			continue
		}
		if c.ctx.Err() != nil {
			c.closed()
			return
		}
		var de *DialError
		if errors.As(err, &de) && de.permanent(c.opts.TokenFunc != nil) {
			c.emit(Event{Type: EventDisconnected, URL: u, Code: -1, Err: err})
			c.stop(err)
			c.closed()
			return
		}
		attempt++
		next++
		retry = c.backoff(attempt)
		c.emit(Event{Type: EventDisconnected, URL: u, Code: -1, Err: err, Retry: retry})
		if !c.sleep(retry) {
			c.closed()
			return
		}
		retry = 0
	}
}

func (c *Client) closed() {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if errors.Is(err, ErrClosed) {
		err = nil
	}
	c.emit(Event{Type: EventClosed, Err: err})
}

// backoff is the delay before attempt n: full jitter under an exponential
// cap.
func (c *Client) backoff(n int) time.Duration {
	limit := c.opts.MaxBackoff
	if n < 32 {
		if d := c.opts.MinBackoff << n; d > 0 && d < limit {
			limit = d
		}
	}
	return time.Duration(rand.Int64N(int64(limit) + 1))
}

// sleep waits d, or less if the client stops; it reports whether the
// client goes on.
func (c *Client) sleep(d time.Duration) bool {
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// live subscribes s to every channel of the client and makes it the live
// connection.
func (c *Client) live(s *session) {
	c.resubscribe(s)
	c.mu.Lock()
	c.sess = s
	close(c.ready)
	c.mu.Unlock()
	c.emit(Event{Type: EventConnected, URL: s.url, Node: s.node})
}

// wait returns when the live connection s ends, with the node's close
// code; permanent reports a close that reconnecting cannot fix.
func (c *Client) wait(s *session) (code websocket.StatusCode, reason string, permanent bool) {
	ping := time.NewTicker(c.opts.PingInterval)
	defer ping.Stop()
loop:
	for {
		select {
		case <-s.dead:
			break loop
		case <-c.ctx.Done():
			s.ws.Close(websocket.StatusNormalClosure, "")
			<-s.dead
			break loop
		case <-ping.C:
			ctx, cancel := context.WithTimeout(c.ctx, c.opts.DialTimeout)
			if err := s.ws.Ping(ctx); err != nil {
				s.ws.CloseNow()
			}
			cancel()
		}
	}
	c.mu.Lock()
	c.sess = nil
	c.ready = make(chan struct{})
	c.mu.Unlock()
	code, reason = websocket.CloseStatus(s.err), ""
	var ce websocket.CloseError
	if errors.As(s.err, &ce) {
		reason = ce.Reason
	}
	permanent = code == protocol.ClosePolicyViolation || (code >= 4000 && code < 5000 && c.opts.TokenFunc == nil)
	return code, reason, permanent
}

// resubscribe subscribes a new connection to the client's channels before
// it carries anything else. A channel with history is recovered from the
// last message received (EventRecovered); otherwise, or when the history no
// longer reaches back, messages published while the client was away are
// lost, and the channel gets an EventGap.
func (c *Client) resubscribe(s *session) {
	c.mu.Lock()
	subs := make([]*Subscription, 0, len(c.subs))
	for _, sub := range c.subs {
		subs = append(subs, sub)
	}
	c.mu.Unlock()
	for _, sub := range subs {
		c.mu.Lock()
		since := sub.pos.since()
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.DialTimeout)
		_, result, err := s.callResult(ctx, protocol.Command{Cmd: protocol.CmdSubscribe, Channel: sub.channel, Since: since})
		var perr *Error
		if since != nil && errors.As(err, &perr) && (perr.Code == protocol.CodeNoHistory || perr.Code == protocol.CodeBadPosition) {
			// The channel lost its history (a node configured without it,
			// or a Redis that lost its data): subscribe without since,
			// and report a gap.
			_, result, err = s.callResult(ctx, protocol.Command{Cmd: protocol.CmdSubscribe, Channel: sub.channel})
		}
		cancel()
		switch {
		case err == nil && recovered(result):
			c.subscribed(sub, result)
			c.emit(Event{Type: EventRecovered, URL: s.url, Node: s.node, Channel: sub.channel})
		case err == nil, errors.As(err, &perr) && perr.Code == protocol.CodeAlreadySubscribed:
			c.subscribed(sub, result)
			c.emit(Event{Type: EventGap, URL: s.url, Node: s.node, Channel: sub.channel})
		case errors.As(err, &perr):
			c.remove(sub)
			c.emit(Event{Type: EventUnsubscribed, URL: s.url, Node: s.node, Channel: sub.channel, Err: err})
		default:
			// The connection ended: the next one subscribes again.
			return
		}
	}
}

// recovered reports whether a subscribe result says "recovered":true.
func recovered(result json.RawMessage) bool {
	var r protocol.SubscribeResult
	return json.Unmarshal(result, &r) == nil && r.Recovered != nil && *r.Recovered
}

func (c *Client) remove(sub *Subscription) {
	c.mu.Lock()
	if c.subs[sub.channel] == sub {
		delete(c.subs, sub.channel)
	}
	c.mu.Unlock()
}

func (c *Client) emit(e Event) {
	c.emitMu.Lock()
	defer c.emitMu.Unlock()
	if c.opts.OnEvent != nil {
		c.opts.OnEvent(e)
	}
}

// handle runs the subscriptions' handlers, one message at a time, in the
// order the messages arrived.
func (c *Client) handle() {
	defer c.wg.Done()
	for {
		select {
		case d := <-c.deliveries:
			c.mu.Lock()
			live := c.subs[d.sub.channel] == d.sub
			c.mu.Unlock()
			switch {
			case !live:
			case d.gap != nil:
				c.emit(*d.gap)
			default:
				d.sub.handler(d.msg)
			}
		case <-c.ctx.Done():
			return
		}
	}
}

// session waits for a live connection.
func (c *Client) session(ctx context.Context) (*session, error) {
	for {
		c.mu.Lock()
		s, ready, err := c.sess, c.ready, c.err
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if s != nil {
			return s, nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
		}
	}
}

// Subscribe subscribes to channel and returns once the subscription is
// live: every message published to the channel from then on is passed to
// handler, in order, until Unsubscribe or Close, across reconnections
// (with an EventGap after each). Handlers run one at a time on one
// goroutine of the client; a handler that waits for the client (Publish,
// Subscribe) can stall delivery, so call those from another goroutine.
// Errors: *Error from the node (forbidden, invalid_channel,
// limit_exceeded, already subscribed by this client), ErrClosed, or ctx's.
func (c *Client) Subscribe(ctx context.Context, channel string, handler func(Message)) (*Subscription, error) {
	if err := protocol.ValidChannel(channel); err != nil {
		return nil, &Error{Code: protocol.CodeInvalidChannel, Message: err.Error()}
	}
	sub := &Subscription{c: c, channel: channel, handler: handler}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	if _, dup := c.subs[channel]; dup {
		c.mu.Unlock()
		return nil, &Error{Code: protocol.CodeAlreadySubscribed, Message: "this client is already subscribed to " + channel}
	}
	c.subs[channel] = sub
	c.mu.Unlock()
	for {
		s, err := c.session(ctx)
		if err != nil {
			c.remove(sub)
			return nil, err
		}
		var result json.RawMessage
		_, result, err = s.callResult(ctx, protocol.Command{Cmd: protocol.CmdSubscribe, Channel: channel})
		var perr *Error
		switch {
		case err == nil:
			c.subscribed(sub, result)
			return sub, nil
		case errors.As(err, &perr) && perr.Code == protocol.CodeAlreadySubscribed:
			// Already subscribed: the resubscription of a new connection
			// came first.
			return sub, nil
		case errors.Is(err, errConnLost):
			continue // the next connection subscribes it
		default:
			c.remove(sub)
			if ctx.Err() != nil {
				// The subscribe may still take effect: undo it.
				c.wg.Add(1)
				go func() {
					defer c.wg.Done()
					s.call(c.ctx, protocol.Command{Cmd: protocol.CmdUnsubscribe, Channel: channel})
				}()
			}
			return nil, err
		}
	}
}

// Unsubscribe ends the subscription: its handler is not called again once
// Unsubscribe returns, and the node stops sending the channel.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	c := s.c
	c.mu.Lock()
	if c.subs[s.channel] != s {
		c.mu.Unlock()
		return nil
	}
	delete(c.subs, s.channel)
	sess := c.sess
	c.mu.Unlock()
	if sess == nil {
		return nil // the next connection does not subscribe it
	}
	_, err := sess.call(ctx, protocol.Command{Cmd: protocol.CmdUnsubscribe, Channel: s.channel})
	var perr *Error
	if errors.Is(err, errConnLost) || errors.As(err, &perr) && perr.Code == protocol.CodeNotSubscribed {
		return nil
	}
	return err
}

// Publish publishes data to channel on every node and returns once the
// node has handed it to the broker (the ack). data travels as the JSON
// value it holds when it is valid JSON, else as a JSON string (the rule of
// a raw-mode text frame); it must be UTF-8. While the client is
// reconnecting, Publish waits for the connection (bounded by ctx). If the
// connection ends after the message went out and before the ack, Publish
// returns ErrUnknownOutcome.
func (c *Client) Publish(ctx context.Context, channel string, data []byte) error {
	return c.publish(ctx, channel, data, "")
}

// PublishOnce is Publish with an idempotency key (1-128 bytes of printable
// ASCII without space, unique per message): the node delivers a message
// once however often it is sent with the same key on the same channel
// within its window (RELAY_IDEMPOTENCY_WINDOW, default 5m). That makes
// retries safe, so PublishOnce retries where Publish returns
// ErrUnknownOutcome (the connection ended before the ack, or the node
// answered unknown_outcome) or the node answered unavailable, after a
// backoff, until ctx ends. A retry the node recognises is a success.
func (c *Client) PublishOnce(ctx context.Context, channel string, data []byte, key string) error {
	if err := protocol.ValidIdempotencyKey(key); err != nil {
		return &Error{Code: protocol.CodeBadRequest, Message: err.Error()}
	}
	for attempt := 0; ; attempt++ {
		err := c.publish(ctx, channel, data, key)
		var perr *Error
		if !errors.Is(err, ErrUnknownOutcome) && !(errors.As(err, &perr) && perr.Code == protocol.CodeUnavailable) {
			return err
		}
		t := time.NewTimer(c.backoff(attempt))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

func (c *Client) publish(ctx context.Context, channel string, data []byte, key string) error {
	if err := protocol.ValidChannel(channel); err != nil {
		return &Error{Code: protocol.CodeInvalidChannel, Message: err.Error()}
	}
	value := json.RawMessage(data)
	if !json.Valid(data) {
		value = protocol.AppendString(nil, string(data))
	}
	for {
		s, err := c.session(ctx)
		if err != nil {
			return err
		}
		sent, err := s.call(ctx, protocol.Command{Cmd: protocol.CmdPublish, Channel: channel, Data: value, IdempotencyKey: key})
		var perr *Error
		switch {
		case errors.Is(err, errConnLost) && sent:
			return ErrUnknownOutcome
		case errors.Is(err, errConnLost):
			continue
		case errors.As(err, &perr) && perr.Code == protocol.CodeUnknownOutcome:
			return fmt.Errorf("%w: %w", ErrUnknownOutcome, err)
		}
		return err
	}
}

// Ping asks the node for a reply, through the broker-less ping command.
func (c *Client) Ping(ctx context.Context) error {
	s, err := c.session(ctx)
	if err != nil {
		return err
	}
	_, err = s.call(ctx, protocol.Command{Cmd: protocol.CmdPing})
	return err
}

// refresh answers the node's refresh request (the connection's token has
// expired) with a new token from TokenFunc, on a goroutine of its own: the
// reply comes through the reader that asked. Without TokenFunc there is
// nothing to send, and the node closes the connection with 4001 after its
// grace period.
func (c *Client) refresh(s *session) {
	if c.opts.TokenFunc == nil {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.DialTimeout)
		defer cancel()
		// If this fails, the node closes the connection with 4001 after
		// its grace, and the next connection asks TokenFunc again.
		if token, err := c.opts.TokenFunc(ctx); err == nil {
			s.call(ctx, protocol.Command{Cmd: protocol.CmdRefresh, Token: token})
		}
	}()
}

// Done is closed when the client has stopped for good: after Close, or
// when the node refused it in a way retrying cannot fix (see Err).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the client stopped: nil while it runs, ErrClosed after Close,
// otherwise the refusal that stopped it (a *DialError, or the close).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Node is the ID of the node the client is connected to, "" while it is
// not.
func (c *Client) Node() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		return ""
	}
	return c.sess.node
}

// String is for logs: the URLs, never the token.
func (c *Client) String() string { return "relay client " + strings.Join(c.urls, ",") }
