package wsout

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/protocol"
)

// Config is how the writes of a node's connections are bounded and paced.
// It is shared by the connections and must not change once they use it.
type Config struct {
	QueueMessages int           // most messages queued per connection
	QueueBytes    int           // most payload bytes queued per connection
	WriteDelay    time.Duration // pacing of a busy connection's writes (see Conn)
	WriteTimeout  time.Duration // bound on one blocking write
	PingInterval  time.Duration // 0: no pings
	PongTimeout   time.Duration // a ping unanswered this long closes the connection
}

// A Meter counts what the writers do. One serves many connections: it must
// be safe for concurrent use, and it is called with no lock held.
type Meter interface {
	Sent(messages, bytes int) // a batch went out whole
	Dropped(messages int)     // queued messages thrown away at a close
	SlowConsumer()            // a full queue closed the connection
}

// A Closer is the WebSocket the writer closes: a *websocket.Conn.
type Closer interface {
	Close(code websocket.StatusCode, reason string) error
	CloseNow() error
}

// A CloseError is why the server closes a connection: the close code and
// reason sent to the client, and whether what is queued is sent first.
// Reasons are short: a close frame carries at most 123 bytes of reason.
type CloseError struct {
	Code   websocket.StatusCode
	Reason string
	Flush  bool
}

func (e *CloseError) Error() string { return fmt.Sprintf("close %d: %s", e.Code, e.Reason) }

// Why the writer closes a connection by itself.
var (
	errSlowConsumer = &CloseError{protocol.CloseTryAgainLater, "slow consumer: outbound queue full", false}
	errWriteTimeout = &CloseError{protocol.CloseTryAgainLater, "write timeout", false}
	// errPongTimeout ends a connection whose peer stopped answering; no
	// close frame is sent (it would not be read), so 1006 is logged.
	errPongTimeout = &CloseError{websocket.StatusAbnormalClosure, "pong timeout", false}
)

// A Conn is the outbound half of one WebSocket connection: its queue and
// the turn to write its socket. Use it in place, after Init; the zero Conn
// is not ready.
//
// The turn: whoever holds it is the only one who writes the socket, data,
// pings, pongs and close alike, and nobody else does. It is the state
// field, changed under mu; the turn's holder writes with mu released.
//
//	opening  the upgrade is not done: frames wait
//	idle     nothing is queued; the next Send, Inline or ping takes the turn
//	queued   the connection's flusher has it, for its next sweep
//	writing  a non-blocking write by a sweep, an Inline, a Send or a ping
//	own      the connection's own goroutine: a socket too slow for a
//	         non-blocking write, or the close
//	control  coder/websocket writes a frame of its own (socket.Write)
//	closing  the close frame is out or the socket failed: only
//	         coder/websocket writes, and nothing else is queued
//
// Pacing: a token bucket of two writes that refills one per WriteDelay.
// After a quiet spell two writes go at once; once a connection has had to
// wait, it is written at most once per WriteDelay, and what arrives
// meanwhile goes in that write. So a busy connection gets one write per
// WriteDelay with several messages in it, and a member of a quiet channel
// who gets two messages close together gets both at once.
type Conn struct {
	// What every enqueue touches comes first, in as few cache lines as
	// may be: a fan-out to thousands goes through them all.
	mu     sync.Mutex
	state  state
	cfg    *Config
	queue  []*Frame
	queued int   // payload bytes in queue
	cause  error // why the connection closes; set once

	spare    []*Frame // the previous batch's array, reused
	ctrl     []byte   // control frames waiting for the turn, sent before queue
	tat      int64    // pacing: when the bucket is full again (monotime)
	pingSent int64    // monotime of the ping that is out, 0 for none
	// due is when the next write is due (monotime), stored as the
	// connection is queued for its flusher, which reads it without mu.
	due      atomic.Int64
	lastPong atomic.Int64   // monotime of the last pong
	writers  sync.WaitGroup // holders of the turn other than the flusher itself, and ping timers' writes

	flusher *Flusher
	meter   Meter
	join    JoinFunc
	closer  Closer // set by Open
	sock    socket
	pinger  *time.Timer
	// deadline is the socket's write deadline; only the turn's holder
	// uses it.
	deadline time.Time
}

type state uint8

const (
	opening state = iota
	idle
	queued
	writing
	own
	control
	closing
)

// burst is how many writes the pacing lets through back to back after a
// quiet spell.
const burst = 2

// maxCtrl bounds the control frames waiting for the turn: pongs beyond it
// are not sent (RFC 6455 lets a pong answer only the latest ping).
const maxCtrl = 1024

// Init prepares c to write through flusher f, bounded and paced by cfg,
// counting with m.
func (c *Conn) Init(cfg *Config, f *Flusher, m Meter) {
	c.cfg, c.flusher, c.meter = cfg, f, m
	c.sock.out = c
}

// SetJoin makes join join the frames of each batch; call it before Open.
func (c *Conn) SetJoin(join JoinFunc) { c.join = join }

// Open marks the WebSocket ready for writing (ws is the *websocket.Conn
// made on c's Hijacker), sends what was queued while the upgrade completed
// and starts the pings.
func (c *Conn) Open(ws Closer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closer = ws
	c.state = idle
	c.lastPong.Store(monotime())
	if c.cause != nil {
		c.startOwnLocked(nil)
		return
	}
	if iv := c.cfg.PingInterval; iv > 0 {
		// The first at a random point of the first interval, so that the
		// connections of a storm do not all ping at once.
		c.pinger = time.AfterFunc(iv/2+time.Duration(mrand.Int64N(int64(iv/2)+1)), c.onPingTimer)
	}
	if len(c.queue) > 0 {
		c.queueLocked()
	}
}

// Enqueue queues f for the connection's flusher. It never blocks and makes
// no system call, so it may be called under the caller's locks: a full
// queue closes the connection as a slow consumer (1013).
func (c *Conn) Enqueue(f *Frame) { c.enqueue(f, false, 0) }

// Send queues f and, when the connection's write is due, writes it on the
// calling goroutine, without blocking (what the socket does not take goes
// to the connection's own writer). The caller must hold no lock that a
// write may not be made under.
func (c *Conn) Send(f *Frame) {
	now := monotime()
	if c.enqueue(f, true, now) {
		b := getBatch()
		if c.write(b, now, false) {
			b.release()
		}
	}
}

// Close asks the writer to close the connection for cause: a *CloseError
// sends its close frame (after what is queued, if it says Flush), anything
// else closes without one. Only the first cause counts. It never blocks.
func (c *Conn) Close(cause error) {
	c.mu.Lock()
	c.closeLocked(cause)
	c.mu.Unlock()
}

// Wait waits until no one holds c's turn after Close: the close frame is
// out, or the socket has failed.
func (c *Conn) Wait() { c.writers.Wait() }

// Cause returns what Close was given first, or nil.
func (c *Conn) Cause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
}

// Pending reports the messages queued and not yet being written.
func (c *Conn) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// Discard drops what is queued, for tests and benchmarks that keep a
// connection from opening.
func (c *Conn) Discard() {
	c.mu.Lock()
	clear(c.queue)
	c.queue, c.queued = c.queue[:0], 0
	c.mu.Unlock()
}

// Pong records a pong from the client: the OnPongReceived of
// websocket.AcceptOptions.
func (c *Conn) Pong(context.Context, []byte) { c.lastPong.Store(monotime()) }

// OnPing queues the pong that answers a ping from the client: the
// OnPingReceived of websocket.AcceptOptions. It returns false, so that
// coder/websocket does not write the pong itself.
func (c *Conn) OnPing(_ context.Context, p []byte) bool {
	c.mu.Lock()
	if c.cause == nil && len(c.ctrl)+2+len(p) <= maxCtrl {
		c.ctrl = append(c.ctrl, opPong, byte(len(p)))
		c.ctrl = append(c.ctrl, p...)
		if c.state == idle {
			// To the flusher: a write here would grow the reader's stack.
			c.queueLocked()
		}
	}
	c.mu.Unlock()
	return false
}

// enqueue puts f in the queue. When claim is set and the connection is idle
// and due at now, the caller takes the turn (claimed) and must call write.
func (c *Conn) enqueue(f *Frame, claim bool, now int64) (claimed bool) {
	c.mu.Lock()
	if c.cause != nil {
		c.mu.Unlock()
		return false
	}
	if len(c.queue) >= c.cfg.QueueMessages || c.queued+len(f.data) > c.cfg.QueueBytes {
		c.closeLocked(errSlowConsumer)
		c.mu.Unlock()
		c.meter.SlowConsumer()
		return false
	}
	c.queue = append(c.queue, f)
	c.queued += len(f.data)
	claimed = c.state == idle && c.kickLocked(claim, now)
	c.mu.Unlock()
	return claimed
}

// kickLocked starts the write of an idle connection with something to
// write: the caller takes the turn (true) if claim and the write is due at
// now, or the flusher gets it.
func (c *Conn) kickLocked(claim bool, now int64) bool {
	if claim && c.dueLocked() <= now {
		c.state = writing
		c.writers.Add(1)
		return true
	}
	c.queueLocked()
	return false
}

// dueLocked is when the next write may go (monotime).
func (c *Conn) dueLocked() int64 { return c.tat - int64(c.cfg.WriteDelay)*(burst-1) }

// wroteLocked takes a write at now from the pacing's bucket. A paced
// write (a sweep's or the own writer's: the connection had to wait) empties
// it, so that a busy connection is written once per WriteDelay exactly as
// before the bucket, even when a sweep comes late; a write of a connection
// that was due when its message came takes one token.
func (c *Conn) wroteLocked(now int64, paced bool) {
	d := int64(c.cfg.WriteDelay)
	if paced {
		c.tat = now + d*burst
		return
	}
	c.tat = max(c.tat, now) + d
}

// queueLocked gives the turn to the connection's flusher.
func (c *Conn) queueLocked() {
	c.state = queued
	due := c.dueLocked()
	c.due.Store(due)
	c.flusher.add(c, due)
}

// nextLocked passes the turn on as its holder is done: to the own writer to
// close, to the flusher if something is queued, or to no one.
func (c *Conn) nextLocked() {
	switch {
	case c.cause != nil:
		c.startOwnLocked(nil)
	case len(c.queue) > 0 || len(c.ctrl) > 0:
		c.queueLocked()
	default:
		c.state = idle
	}
}

// startOwnLocked gives the turn to the connection's own writer; b, if not
// nil, is a batch cut short that it finishes first.
func (c *Conn) startOwnLocked(b *batch) {
	c.state = own
	c.writers.Add(1)
	go c.ownLoop(b)
}

func (c *Conn) closeLocked(cause error) {
	if c.cause != nil {
		return
	}
	c.cause = cause
	if c.pinger != nil {
		c.pinger.Stop() // a callback under way sees the cause and stops
	}
	switch c.state {
	case idle, queued:
		// A queued connection stays in its flusher's list; the sweep
		// skips it.
		c.startOwnLocked(nil)
	}
	// opening: Open starts the writer. writing, own, control: the turn's
	// holder does when it is done. closing: done already.
}

// takeLocked moves the control frames into b and empties the queue,
// returning what was in it.
func (c *Conn) takeLocked(b *batch) []*Frame {
	b.ctrl = append(b.ctrl, c.ctrl...)
	c.ctrl = nil // an idle connection keeps no buffer
	frames := c.queue
	c.queue, c.spare, c.queued = c.spare[:0], nil, 0
	return frames
}

// giveBackLocked keeps the array of a written batch for the next one.
func (c *Conn) giveBackLocked(frames []*Frame) {
	clear(frames) // let the frames go
	if c.spare == nil {
		c.spare = frames[:0]
	}
}

// sweep takes the turn from the flusher and writes; see write.
func (c *Conn) sweep(b *batch, now int64) (kept bool) {
	c.mu.Lock()
	if c.state != queued {
		c.mu.Unlock()
		return true
	}
	c.state = writing
	c.writers.Add(1)
	c.mu.Unlock()
	return c.write(b, now, true)
}

// write writes what is queued as one batch without blocking, with b as
// scratch space; the caller holds the turn (writing), which write passes
// on. paced: see wroteLocked. A batch the socket does not take whole goes, with b, to the
// connection's own writer: write reports whether the caller keeps b.
func (c *Conn) write(b *batch, now int64, paced bool) (kept bool) {
	defer c.writers.Done()
	c.mu.Lock()
	if c.cause != nil {
		c.nextLocked()
		c.mu.Unlock()
		return true
	}
	frames := c.takeLocked(b)
	c.wroteLocked(now, paced)
	c.mu.Unlock()

	b.build(frames, c.join)
	done, err := c.tryWrite(b)
	if done {
		c.meter.Sent(b.frames, b.bytes)
	}
	c.mu.Lock()
	c.giveBackLocked(frames)
	switch {
	case err != nil:
		c.closeLocked(errWriteTimeout)
		c.state = closing
		c.mu.Unlock()
		b.reset()
		c.closer.CloseNow()
		return true
	case !done:
		c.startOwnLocked(b)
		c.mu.Unlock()
		return false
	}
	c.nextLocked()
	c.mu.Unlock()
	b.reset()
	return true
}

// ownLoop is the connection's own writer. It finishes b (the rest of a
// batch a non-blocking write cut short), then writes the queue in batches,
// each with one blocking write within the write timeout, while the next is
// due; then it gives the turn back and exits. When a close is due it sends
// (or drops) what is queued, sends the control frames, closes the
// WebSocket and exits.
func (c *Conn) ownLoop(b *batch) {
	defer c.writers.Done()
	if b != nil && !c.writeRest(b) {
		return
	}
	for {
		c.mu.Lock()
		var ce *CloseError
		switch {
		case c.cause != nil:
			if (!errors.As(c.cause, &ce) || !ce.Flush) && len(c.queue) > 0 {
				// Control frames stay: a close echo may be among them.
				dropped := len(c.queue)
				clear(c.queue)
				c.queue, c.queued = c.queue[:0], 0
				c.mu.Unlock()
				c.meter.Dropped(dropped)
				continue
			}
		case len(c.queue) == 0 && len(c.ctrl) == 0:
			c.state = idle
			c.mu.Unlock()
			return
		case c.dueLocked() > monotime():
			c.queueLocked()
			c.mu.Unlock()
			return
		}
		if len(c.queue) > 0 || len(c.ctrl) > 0 {
			b := getBatch()
			frames := c.takeLocked(b)
			c.wroteLocked(monotime(), true)
			c.mu.Unlock()
			b.build(frames, c.join)
			ok := c.writeRest(b)
			c.mu.Lock()
			c.giveBackLocked(frames)
			c.mu.Unlock()
			if !ok {
				return
			}
			continue
		}
		c.state = closing
		c.mu.Unlock()
		if ce != nil && ce.Code != websocket.StatusAbnormalClosure {
			c.closer.Close(ce.Code, ce.Reason)
		} else {
			c.closer.CloseNow()
		}
		return
	}
}

// writeRest writes b.rest, blocking within the write timeout, and puts b
// back in the pool. It reports false when the write failed: the connection
// is then closed.
func (c *Conn) writeRest(b *batch) bool {
	err := c.writeBlocking(&b.rest)
	if err == nil {
		c.meter.Sent(b.frames, b.bytes)
	}
	b.release()
	if err != nil {
		c.mu.Lock()
		c.closeLocked(errWriteTimeout)
		c.state = closing
		c.mu.Unlock()
		c.closer.CloseNow()
		return false
	}
	return true
}

// writeControl writes a frame of coder/websocket's own (socket.Write): at
// once if no one holds the turn, taking it for the write, or else by the
// turn's holder after its batch.
func (c *Conn) writeControl(p []byte) (int, error) {
	if badCloseEcho(p) {
		if _, err := c.writeControl(closeInvalidReason); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	c.mu.Lock()
	switch c.state {
	case opening, idle:
		prev := c.state
		c.state = control
		c.mu.Unlock()
		c.refreshDeadline()
		n, err := c.sock.Conn.Write(p)
		c.mu.Lock()
		if prev == opening {
			c.state = opening
		} else {
			c.nextLocked()
		}
		c.mu.Unlock()
		return n, err
	case closing:
		// Only coder/websocket writes now, one frame at a time.
		c.mu.Unlock()
		c.refreshDeadline()
		return c.sock.Conn.Write(p)
	}
	c.ctrl = append(c.ctrl, p...)
	c.mu.Unlock()
	return len(p), nil
}

// awaitControl waits, within the write timeout, until no control frame
// waits for the turn and no holder is writing one. There is no event for
// it (the turn passes between many holders), so it polls; it runs only as
// coder/websocket closes the socket, rarely with anything pending, and
// then for at most one write interval.
func (c *Conn) awaitControl() {
	deadline := time.Now().Add(c.cfg.WriteTimeout)
	for {
		c.mu.Lock()
		pending := len(c.ctrl) > 0 || c.state == writing || c.state == own
		c.mu.Unlock()
		if !pending || time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// onPingTimer runs on the ping timer's goroutine: it queues a ping, or
// checks that the last one was answered. It re-arms the timer under mu,
// and never once the connection closes.
func (c *Conn) onPingTimer() {
	c.mu.Lock()
	if c.cause != nil {
		c.mu.Unlock()
		return
	}
	if c.pingSent != 0 {
		if c.lastPong.Load() < c.pingSent {
			c.closeLocked(errPongTimeout)
		} else {
			c.pingSent = 0
			c.pinger.Reset(max(c.cfg.PingInterval-c.cfg.PongTimeout, c.cfg.PingInterval/2))
		}
		c.mu.Unlock()
		return
	}
	now := monotime()
	c.pingSent = now
	c.ctrl = append(c.ctrl, opPing, 0)
	c.pinger.Reset(c.cfg.PongTimeout)
	claimed := c.state == idle && c.kickLocked(true, now)
	c.mu.Unlock()
	if claimed {
		b := getBatch()
		if c.write(b, now, false) {
			b.release()
		}
	}
}
