package pubsub

// Answer-later publishing: PublishLater, for the messages of raw-mode
// clients on a standalone Redis.
//
// A raw-mode client gets no acknowledgement of its messages, so its reader
// need not wait for Redis's answer to one before it reads the next. What
// the client is owed is that its messages are published in order, and that
// one refused by Redis, or left unanswered, closes its connection. A later
// lane gives exactly that:
//
//   - A lane is one Redis connection whose socket the Go runtime's poller
//     never sees. Redis answers a PUBLISH in the same pass of its event
//     loop in which it sends the message to the subscribers; on a polled
//     socket that answer woke a second thread of the publishing node for
//     every message, which was a tenth of a node's CPU on chat-shaped
//     traffic (docs/BENCHMARKS.md, issue #10). Here the answers wait in the
//     socket until the lane's next publish reads them without waiting (a
//     recv with MSG_DONTWAIT), or, after laterIdle without a publish, the
//     lane's timer does.
//   - The publishes of one connection (Message.Conn) all go on the same
//     lane, and Redis runs the commands of one connection in order.
//   - The answers are read in order. An error answer (the publish had no
//     effect) fails its publish with ErrUnavailable; an answer that has
//     not come within the broker's Timeout, or a connection that breaks,
//     fails every publish still waiting for one with ErrOutcomeUnknown
//     (or ErrUnavailable if not one byte of it went out). A failed publish
//     is reported to its Failer, outside every lock of the lane.
//
// Only Linux has the system calls this needs, and only a plain TCP or Unix
// connection (not TLS) has a socket of its own to read this way: elsewhere,
// and while a lane has no connection, PublishLater answers ErrPublishNow and
// the caller publishes with Publish, which waits for the answer.
//
// later.mu guards a lane's state. It is held across non-blocking system
// calls only (send, recv with MSG_DONTWAIT and close); a dial runs outside
// it, by the publisher that found the lane without a connection.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrPublishNow is PublishLater's answer when it cannot take the message:
// publish it with Publish instead.
var ErrPublishNow = errors.New("publish with Publish: no later lane")

// A Failer is told when a publish made with PublishLater failed.
type Failer interface {
	// PublishFailed reports that the message published to channel was
	// not published (err wraps ErrUnavailable) or may not have been
	// (ErrOutcomeUnknown, or ErrClosed when the broker closed first). It
	// is called on a goroutine of the broker or of another publisher, at
	// most once per message, and must not block.
	PublishFailed(channel string, err error)
}

// LaterPublisher is implemented by brokers that can publish without waiting
// for their backend's answer: the Redis broker, on a standalone Redis.
type LaterPublisher interface {
	// PublishLater sends m to channel and returns without waiting for the
	// backend's answer; when the answer is a refusal, or does not come,
	// f.PublishFailed is called. The messages of one m.Conn that it takes
	// are published in the order of the calls. It returns ErrPublishNow
	// when it cannot take m (publish it with Publish, unless an earlier
	// message of m.Conn failed: it may have been reported just now), and
	// ErrClosed after Close. It does not keep m.Payload.
	PublishLater(channel string, m Message, f Failer) error
}

const (
	// laterIdle is how long the answers of a lane may wait in its socket
	// when no publish comes to read them: the delay before a refusal
	// reaches its Failer on a quiet lane.
	laterIdle = 20 * time.Millisecond
	// laterMax bounds the publishes a lane holds unanswered; past it,
	// PublishLater waits for answers (up to the broker's Timeout), which
	// is the back-pressure on its callers.
	laterMax = 4096
	// laterRead is the least room a lane reads answers into.
	laterRead = 16 << 10
	// laterKeep is the longest queue array a lane keeps once empty.
	laterKeep = 256
	// laterRetry is how long a lane whose dial failed waits before it
	// dials again (publishes meanwhile go through Publish).
	laterRetry = time.Second
)

// laterReq is a publish waiting for its answer.
type laterReq struct {
	channel string
	f       Failer
	start   int64 // where its bytes begin in the connection's output stream
	at      int64 // when it was queued, Unix nanoseconds
}

type laterLane struct {
	b *Redis

	mu      sync.Mutex
	sock    laterSock // none while the lane has no connection
	conns   uint64    // connections the lane has had: names the current one
	dialing bool
	retryAt time.Time // no dial before, after a failed one
	closed  bool
	out     []byte     // bytes not sent yet (the socket was full)
	sent    int64      // bytes sent on this connection
	in      []byte     // bytes read and not parsed yet
	pending []laterReq // unanswered, in order
	timer   *time.Timer
	armed   bool           // timer is set
	reaping sync.WaitGroup // reap calls in progress; added to under mu while !closed
	env     []byte         // the envelope being queued
}

// laterFail is a publish to report as failed once the lane's lock is
// released.
type laterFail struct {
	channel string
	f       Failer
	err     error
}

// PublishLater implements LaterPublisher; see the comment at the top of this
// file.
func (b *Redis) PublishLater(channel string, m Message, f Failer) error {
	if len(b.later) == 0 {
		return ErrPublishNow
	}
	if err := b.admit("publish", channel); err != nil {
		return err
	}
	l := b.later[m.Conn%uint64(len(b.later))]
	var fails []laterFail
	l.mu.Lock()
	if !l.sock.ok() {
		l.mu.Unlock()
		if !l.dial() {
			return ErrPublishNow
		}
		l.mu.Lock()
	}
	fails = l.readLocked(fails)
	for l.sock.ok() && len(l.pending) >= laterMax {
		// Redis is behind: wait for answers rather than publish out of
		// order elsewhere.
		sock, conn, oldest := l.sock, l.conns, l.pending[0].at
		l.mu.Unlock()
		sock.wait(time.Until(time.Unix(0, oldest).Add(l.b.cfg.Timeout)))
		l.mu.Lock()
		if l.conns == conn {
			fails = l.readLocked(fails)
		}
	}
	ok := l.sock.ok()
	if ok {
		l.appendLocked(b.cfg.Prefix, channel, m, f)
		fails = l.flushLocked(fails)
		if !l.armed && l.sock.ok() {
			l.armed = true
			l.timer.Reset(laterIdle)
		}
	}
	l.mu.Unlock()
	report(fails)
	if !ok {
		return ErrPublishNow
	}
	return nil
}

// dial gives l a connection if it has none and may dial now, and reports
// whether it has one.
func (l *laterLane) dial() bool {
	l.mu.Lock()
	switch {
	case l.sock.ok():
		l.mu.Unlock()
		return true
	case l.closed || l.dialing || time.Now().Before(l.retryAt):
		l.mu.Unlock()
		return false
	}
	l.dialing = true
	l.mu.Unlock()

	ctx, cancel := context.WithTimeout(l.b.ctx, l.b.cfg.Timeout)
	sock, err := laterDial(ctx, l.b.laterDial, l.b.laterAuth)
	cancel()

	l.mu.Lock()
	defer l.mu.Unlock()
	l.dialing = false
	if err != nil {
		l.retryAt = time.Now().Add(laterRetry)
		l.b.log.Warn("redis publish connection failed", "err", err)
		return false
	}
	if l.closed {
		sock.close()
		return false
	}
	l.sock = sock
	l.conns++
	l.out, l.in, l.sent = l.out[:0], l.in[:0], 0
	if l.timer == nil {
		l.timer = time.AfterFunc(laterIdle, l.reap)
		l.armed = true
	}
	return true
}

// appendLocked queues the PUBLISH of m to channel, whose Redis channel is
// prefix+channel.
func (l *laterLane) appendLocked(prefix, channel string, m Message, f Failer) {
	start := l.sent + int64(len(l.out))
	l.env = m.AppendEnvelope(l.env[:0])
	l.out = append(l.out, "*3\r\n"...)
	l.out = appendBulk(l.out, "PUBLISH")
	l.out = appendBulk(l.out, prefix, channel)
	l.out = appendBulk(l.out, l.env)
	at := m.Time // when the node took the message, if it says
	if at == 0 {
		at = time.Now().UnixNano()
	}
	l.pending = append(l.pending, laterReq{channel: channel, f: f, start: start, at: at})
}

// appendBulk appends to b the RESP bulk string that is the parts joined.
func appendBulk[S string | []byte](b []byte, parts ...S) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, "\r\n"...)
	for _, p := range parts {
		b = append(b, p...)
	}
	return append(b, "\r\n"...)
}

// flushLocked sends what the socket takes of l.out.
func (l *laterLane) flushLocked(fails []laterFail) []laterFail {
	if len(l.out) == 0 || !l.sock.ok() {
		return fails
	}
	n, err := l.sock.send(l.out)
	l.sent += int64(n)
	l.out = l.out[:copy(l.out, l.out[n:])]
	if err != nil {
		return l.breakLocked(fails, fmt.Errorf("write: %w", err))
	}
	return fails
}

// readLocked reads and parses the answers that have come, and fails the
// lane's publishes if its connection broke or the oldest answer is overdue.
func (l *laterLane) readLocked(fails []laterFail) []laterFail {
	for l.sock.ok() {
		// Read into l.in's spare room, at least laterRead bytes of it.
		have := len(l.in)
		l.in = slices.Grow(l.in, laterRead)
		room := l.in[have:cap(l.in)]
		n, eof, err := l.sock.recv(room)
		l.in = l.in[:have+n]
		fails = l.parseLocked(fails)
		switch {
		case err != nil:
			return l.breakLocked(fails, fmt.Errorf("read: %w", err))
		case eof:
			return l.breakLocked(fails, errors.New("read: connection closed by Redis"))
		case !l.sock.ok():
			return fails // a bad answer broke it
		case n < len(room):
			if len(l.pending) > 0 && time.Since(time.Unix(0, l.pending[0].at)) > l.b.cfg.Timeout {
				return l.breakLocked(fails, fmt.Errorf("no answer from Redis within %v", l.b.cfg.Timeout))
			}
			return fails
		}
	}
	return fails
}

// parseLocked takes the complete answers at the start of l.in off it, one
// for each publish of l.pending in order.
func (l *laterLane) parseLocked(fails []laterFail) []laterFail {
	var ok, refused uint64
	done := 0
	for l.sock.ok() {
		i := bytes.IndexByte(l.in[done:], '\n')
		if i < 0 {
			break
		}
		line := l.in[done : done+i+1]
		done += i + 1
		if len(l.pending) == 0 || len(line) < 3 || line[len(line)-2] != '\r' || (line[0] != ':' && line[0] != '-') {
			fails = l.breakLocked(fails, fmt.Errorf("unexpected answer from Redis: %q", line))
			break
		}
		r := l.pending[0]
		l.pending[0] = laterReq{}
		l.pending = l.pending[1:]
		if line[0] == ':' {
			ok++
			continue
		}
		refused++
		err := fmt.Errorf("publish %q: %w: %s", r.channel, ErrUnavailable, line[1:len(line)-2])
		fails = append(fails, laterFail{r.channel, r.f, err})
	}
	l.in = l.in[:copy(l.in, l.in[done:])]
	if len(l.pending) == 0 {
		l.pending = l.pending[:0]
		if cap(l.pending) > laterKeep {
			l.pending = nil // let go of a long queue's array
		}
	}
	l.b.stats.published.Add(ok)
	l.b.stats.publishErrors.Add(refused)
	if ok > 0 {
		l.b.pubMu.Lock()
		l.b.pubErr = nil
		l.b.pubMu.Unlock()
	}
	return fails
}

// breakLocked closes l's connection for cause and fails every publish that
// has no answer yet.
func (l *laterLane) breakLocked(fails []laterFail, cause error) []laterFail {
	if !l.sock.ok() {
		return fails
	}
	l.sock.close()
	l.sock = laterSock{}
	l.b.log.Warn("redis publish connection lost", "err", cause, "unanswered", len(l.pending))
	for _, r := range l.pending {
		kind := ErrOutcomeUnknown
		if r.start >= l.sent {
			kind = ErrUnavailable // not one byte of it went out
		}
		fails = append(fails, laterFail{r.channel, r.f, fmt.Errorf("publish %q: %w: %w", r.channel, kind, cause)})
	}
	l.b.stats.publishErrors.Add(uint64(len(l.pending)))
	l.b.pubMu.Lock()
	l.b.pubErr = cause
	l.b.pubMu.Unlock()
	l.pending = nil
	l.out, l.in = l.out[:0], l.in[:0]
	return fails
}

// reap runs laterIdle after the lane's last publish: it reads the answers
// no publish came to read, and comes back while some are still owed.
func (l *laterLane) reap() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.reaping.Add(1)
	defer l.reaping.Done()
	l.armed = false
	var fails []laterFail
	if l.sock.ok() {
		fails = l.readLocked(fails)
		fails = l.flushLocked(fails)
		if len(l.pending) > 0 && l.sock.ok() {
			l.armed = true
			l.timer.Reset(laterIdle)
		}
	}
	l.mu.Unlock()
	report(fails)
}

// close fails what l still waits for with ErrClosed, closes its connection
// and waits for a reap in progress; the broker is closing.
func (l *laterLane) close() {
	var fails []laterFail
	l.mu.Lock()
	l.closed = true
	if l.timer != nil {
		l.timer.Stop()
	}
	if l.sock.ok() {
		fails = l.readLocked(fails) // answers already come still count
	}
	for _, r := range l.pending {
		fails = append(fails, laterFail{r.channel, r.f, fmt.Errorf("publish %q: %w", r.channel, ErrClosed)})
	}
	l.pending = nil
	if l.sock.ok() {
		l.sock.close()
		l.sock = laterSock{}
	}
	l.mu.Unlock()
	l.reaping.Wait()
	report(fails)
}

func report(fails []laterFail) {
	for _, x := range fails {
		x.f.PublishFailed(x.channel, x.err)
	}
}

// laterAuth returns the AUTH command a lane's connection sends first, nil
// for none.
func laterAuth(username, password string) []byte {
	if password == "" {
		return nil
	}
	args := []string{"AUTH", password}
	if username != "" {
		args = []string{"AUTH", username, password}
	}
	b := strconv.AppendInt([]byte{'*'}, int64(len(args)), 10)
	b = append(b, "\r\n"...)
	for _, a := range args {
		b = appendBulk(b, a)
	}
	return b
}

// handshake sends auth on c, if any, and checks Redis's answer.
func handshake(ctx context.Context, c net.Conn, auth []byte) error {
	if auth == nil {
		return nil
	}
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
		defer c.SetDeadline(time.Time{})
	}
	if _, err := c.Write(auth); err != nil {
		return err
	}
	buf := make([]byte, 256)
	n := 0
	for !strings.Contains(string(buf[:n]), "\n") && n < len(buf) {
		m, err := c.Read(buf[n:])
		if err != nil {
			return err
		}
		n += m
	}
	if line := strings.TrimSpace(string(buf[:n])); line != "+OK" {
		return fmt.Errorf("AUTH: %s", strings.TrimPrefix(line, "-"))
	}
	return nil
}
