package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// frame is one outbound WebSocket message with its frame header, encoded
// once. It is immutable and shared by every subscriber it is queued for:
// the writer hands the same header and payload to the kernel for each
// (writev), without copying them.
type frame struct {
	typ    websocket.MessageType
	data   []byte
	hdr    []byte // hdrBuf[:n]
	hdrBuf [maxFrameHeader]byte
}

// maxFrameHeader is the longest header of an unmasked server frame.
const maxFrameHeader = 10

// newFrame returns the frame of a message of type typ with payload data.
func newFrame(typ websocket.MessageType, data []byte) *frame {
	f := &frame{typ: typ, data: data}
	f.hdr = appendFrameHeader(f.hdrBuf[:0], typ, len(data))
	return f
}

// appendFrameHeader appends the header of a final, unmasked (server) frame
// of n payload bytes (RFC 6455 section 5.2).
func appendFrameHeader(b []byte, typ websocket.MessageType, n int) []byte {
	op := byte(0x1) // text
	if typ == websocket.MessageBinary {
		op = 0x2
	}
	b = append(b, 0x80|op)
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xffff:
		return append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

// newRawFrame is the raw-mode form of m: its payload with its opcode. A
// payload from outside Relay (a plain PUBLISH) is text when it is valid
// UTF-8, and binary otherwise, since a text frame must be UTF-8.
func newRawFrame(m pubsub.Message) *frame {
	typ := websocket.MessageText
	if m.Binary || (m.Origin == "" && !utf8.Valid(m.Payload)) {
		typ = websocket.MessageBinary
	}
	return newFrame(typ, m.Payload)
}

// closeError is why the server closes a connection: the close code and
// reason sent to the client, and whether what is queued is sent first.
type closeError struct {
	code   websocket.StatusCode
	reason string
	flush  bool
}

func (e *closeError) Error() string { return fmt.Sprintf("close %d: %s", e.code, e.reason) }

// Why the server closes a connection. Reasons are short: a close frame
// carries at most 123 bytes of reason.
var (
	errSlowConsumer = &closeError{protocol.CloseTryAgainLater, "slow consumer: outbound queue full", false}
	errWriteTimeout = &closeError{protocol.CloseTryAgainLater, "write timeout", false}
	errBrokerDown   = &closeError{protocol.CloseTryAgainLater, "broker unavailable, try again later", true}
	errDraining     = &closeError{protocol.CloseServiceRestart, "service restart: reconnect to another node", true}
	errInvalidUTF8  = &closeError{protocol.CloseInvalidData, "invalid UTF-8 in a text message", true}
	// errPongTimeout ends a connection whose peer stopped answering; no
	// close frame is sent (it would not be read), so 1006 is logged.
	errPongTimeout = &closeError{websocket.StatusAbnormalClosure, "pong timeout", false}
)

// mode is what a connection speaks.
type mode string

const (
	modeRaw  mode = "raw"
	modeEcho mode = "echo"
)

// modeProto is protocol mode (docs/PROTOCOL.md; proto.go).
const modeProto mode = "proto"

// conn is one client connection.
//
// Goroutines: one reader (readLoop) for the connection's life. Data frames
// are written by the connection's flusher (flush.go) in its sweeps; the
// connection's own writer (writeLoop) runs only while its socket is too
// slow for a sweep, or to close the connection. So an idle connection costs
// one goroutine. Only the flusher and the own writer write data frames, and
// only the own writer closes the WebSocket.
type conn struct {
	n       *Node
	id      uint64
	mode    mode
	channel string // raw mode
	echo    bool   // deliver the connection's own publishes back to it
	remote  string
	opened  time.Time

	ws      *websocket.Conn
	nc      *wsConn
	flusher *flusher
	stats   *modeMetrics // shared by the connections of a mode
	release func()       // gives back the connection slot
	pinger  *time.Timer
	// pingSent is when the ping that is out was sent (monotime), 0 for none;
	// only the pinger's timer callback uses it. lastPong is the last pong.
	pingSent int64
	lastPong atomic.Int64

	// proto is protocol mode's state; nil in other modes.
	proto *protoConn
	// sess is who the connection is and when its token expires.
	sess *session

	mu     sync.Mutex
	queue  []*frame
	spare  []*frame // the previous batch's array, reused
	queued int      // bytes in queue
	state  writerState
	// lastWrite is when the last batch went out (monotime): the start of the
	// sweep that wrote it, or the own writer's write. due is when the
	// next write is due, set as the connection is queued for its flusher.
	lastWrite int64
	due       atomic.Int64
	cause     error          // why the connection closes; set once
	writers   sync.WaitGroup // the own writer and a flusher's write
}

// writerState is who writes a connection's queue.
type writerState uint8

const (
	writerOpening  writerState = iota // the upgrade is not done: frames wait
	writerIdle                        // nothing is queued
	writerQueued                      // in the flusher's next sweep
	writerFlushing                    // the flusher is writing a batch
	writerOwn                         // the connection's own writer runs
)

// enqueue puts f in the outbound queue, scheduling a write if none is due.
// It never blocks: a full queue closes the connection as a slow consumer.
func (c *conn) enqueue(f *frame) { c.enqueueAt(f, nil, 0) }

// enqueueAt is enqueue, but when w is not nil and the connection's write
// is due at now (monotime), it writes at once on the calling goroutine,
// without blocking, with w as scratch space, rather than waking the
// flusher: for a small fan-out the hand-off to another thread costs about
// as much as the write. It reports whether it kept w (see flush).
func (c *conn) enqueueAt(f *frame, w *writev, now int64) (kept bool) {
	c.mu.Lock()
	if c.cause != nil {
		c.mu.Unlock()
		return true
	}
	if len(c.queue) >= c.n.cfg.QueueMessages || c.queued+len(f.data) > c.n.cfg.QueueBytes {
		c.closeLocked(errSlowConsumer)
		c.mu.Unlock()
		c.n.metrics.slowConsumers.Inc()
		return true
	}
	c.queue = append(c.queue, f)
	c.queued += len(f.data)
	if c.state != writerIdle {
		c.mu.Unlock()
		return true
	}
	if w == nil || c.lastWrite+int64(c.n.cfg.WriteDelay) > now {
		c.queueLocked()
		c.mu.Unlock()
		return true
	}
	c.state = writerQueued // as if a sweep had come to it
	c.mu.Unlock()
	return c.flush(w, now)
}

// open marks the WebSocket ready for writing and sends what was queued
// while the upgrade completed.
func (c *conn) open() {
	c.mu.Lock()
	c.state = writerIdle
	switch {
	case c.cause != nil:
		c.startOwnLocked(nil, false)
	case len(c.queue) > 0:
		c.queueLocked()
	}
	c.mu.Unlock()
}

// queueLocked hands the connection to its flusher, its write due
// WriteDelay after the last one.
func (c *conn) queueLocked() {
	c.state = writerQueued
	due := c.lastWrite + int64(c.n.cfg.WriteDelay)
	c.due.Store(due)
	c.flusher.add(c, due)
}

// startOwnLocked starts the connection's own writer; pending is a batch it
// writes first, with the socket's lock already held if locked.
func (c *conn) startOwnLocked(pending *writev, locked bool) {
	c.state = writerOwn
	c.writers.Add(1)
	go c.writeLoop(pending, locked)
}

// close asks the writer to close the connection for cause. Only the first
// cause counts.
func (c *conn) close(cause error) {
	c.mu.Lock()
	c.closeLocked(cause)
	c.mu.Unlock()
}

func (c *conn) closeLocked(cause error) {
	if c.cause != nil {
		return
	}
	c.cause = cause
	switch c.state {
	case writerIdle, writerQueued:
		// A queued connection stays in the sweep, which skips it.
		c.startOwnLocked(nil, false)
	}
	// Opening: open starts the writer. Flushing: the flusher does when
	// its write is done. Own: it runs.
}

// takeLocked empties the queue and returns what was in it.
func (c *conn) takeLocked() []*frame {
	batch := c.queue
	c.queue, c.spare, c.queued = c.spare[:0], nil, 0
	return batch
}

// flush writes the queue as one batch without blocking, with w as scratch
// space; the connection's flusher calls it in the sweep that started at
// now. A batch the socket cannot take whole goes to the own writer, with w:
// flush reports whether it kept w. A close goes to the own writer too.
func (c *conn) flush(w *writev, now int64) (kept bool) {
	c.mu.Lock()
	if c.state != writerQueued {
		c.mu.Unlock()
		return true
	}
	batch := c.takeLocked()
	c.state = writerFlushing
	c.writers.Add(1) // the connection ends after this write
	c.mu.Unlock()
	defer c.writers.Done()

	c.buildBatch(w, batch)
	done, locked, err := c.nc.tryWriteBuffers(w)
	if done {
		c.countSent(w)
	}
	clear(batch) // let the frames go; w holds what is still to write
	c.mu.Lock()
	c.spare = batch[:0]
	c.lastWrite = now
	switch {
	case err != nil:
		c.closeLocked(errWriteTimeout)
		c.state = writerIdle // nothing more is queued once a cause is set
		c.mu.Unlock()
		w.reset()
		c.ws.CloseNow()
		return true
	case !done:
		c.startOwnLocked(w, locked)
		c.mu.Unlock()
		return false
	case c.cause != nil:
		c.startOwnLocked(nil, false)
	case len(c.queue) > 0:
		c.queueLocked()
	default:
		c.state = writerIdle
	}
	c.mu.Unlock()
	w.reset()
	return true
}

// writeLoop is the connection's own writer: it writes pending (the rest of
// a batch a sweep could not finish) and then the queue in batches, each
// with one blocking write within the write timeout, until the queue is
// empty; then it hands the connection back to the flusher and exits. A
// batch goes out when the previous write is WriteDelay old. When a close is
// due it sends (or drops) what is queued, closes the WebSocket and exits.
func (c *conn) writeLoop(pending *writev, locked bool) {
	defer c.writers.Done()
	if pending != nil && !c.writeRest(pending, locked) {
		return
	}
	for {
		if wait := time.Duration(c.lastWrite + int64(c.n.cfg.WriteDelay) - monotime()); wait > 0 {
			time.Sleep(wait)
		}
		c.mu.Lock()
		batch, cause := c.queue, c.cause
		var ce *closeError
		if cause != nil && (!errors.As(cause, &ce) || !ce.flush) {
			if len(batch) > 0 {
				c.n.metrics.dropped.Add(float64(len(batch)))
			}
			batch = nil
		}
		if len(batch) == 0 && cause == nil {
			c.state = writerIdle
			c.mu.Unlock()
			return
		}
		c.takeLocked()
		c.mu.Unlock()

		if len(batch) > 0 {
			w := writevPool.Get().(*writev)
			c.buildBatch(w, batch)
			w.rest = w.bufs
			if !c.writeRest(w, false) {
				return
			}
			clear(batch) // let the frames go
			c.mu.Lock()
			c.spare = batch[:0]
			c.mu.Unlock()
			continue
		}
		if ce != nil && ce.code != websocket.StatusAbnormalClosure {
			c.ws.Close(ce.code, ce.reason)
		} else {
			c.ws.CloseNow()
		}
		return
	}
}

// writeRest writes w.rest, blocking within the write timeout (locked: the
// caller holds the socket's lock), and puts w back in the pool. It reports
// false when the write failed: the connection is then closed.
func (c *conn) writeRest(w *writev, locked bool) bool {
	err := c.nc.writeBuffers(w.rest, locked)
	if err == nil {
		c.countSent(w)
		c.lastWrite = monotime()
	}
	w.release()
	if err != nil {
		c.close(errWriteTimeout)
		c.ws.CloseNow()
		return false
	}
	return true
}

// buildBatch fills w with the buffers of one writev of every frame of
// batch. The frames' headers and payloads are handed to the kernel as they
// are: nothing is copied per subscriber, but for protocol-mode pushes
// joined into one frame.
func (c *conn) buildBatch(w *writev, batch []*frame) {
	w.frames = len(batch)
	for rest := batch; len(rest) > 0; {
		hdr, data, n := w.next(c, rest)
		rest = rest[n:]
		w.bufs = append(w.bufs, hdr, data)
		w.bytes += len(data)
	}
}

// countSent counts the frames of w as sent.
func (c *conn) countSent(w *writev) {
	c.stats.sent.Add(float64(w.frames))
	c.stats.sentBytes.Add(float64(w.bytes))
}

// writev is the scratch space of one batch: the buffers of the writev, the
// headers and payloads of frames joined for it, and the iovecs of a
// non-blocking write. Each flusher keeps one; own writers take them from a
// pool.
type writev struct {
	bufs   net.Buffers
	rest   net.Buffers // what a non-blocking write left of bufs
	hdrs   []byte
	joins  []byte
	iov    iovecs // writevNonblock's
	errno  syscall.Errno
	write  func(fd uintptr) bool // calls writevNonblock, for RawConn.Write
	frames int                   // messages in bufs
	bytes  int                   // their payload bytes
}

var writevPool = sync.Pool{New: func() any { return new(writev) }}

// reset empties w for the next batch.
func (w *writev) reset() {
	clear(w.bufs) // let the frames go
	clear(w.iov)
	w.bufs, w.hdrs, w.joins, w.iov = w.bufs[:0], w.hdrs[:0], w.joins[:0], w.iov[:0]
	w.frames, w.bytes, w.rest = 0, 0, nil
	if cap(w.joins) > maxJoinBytes*4 {
		w.joins = nil
	}
}

// release puts w back in the pool.
func (w *writev) release() {
	w.reset()
	writevPool.Put(w)
}

// read reads the client's next message and counts it.
func (c *conn) read() (websocket.MessageType, []byte, error) {
	// Background: a context that can end would cost an allocation per read.
	typ, data, err := c.ws.Read(context.Background())
	if err != nil {
		return typ, data, err
	}
	c.stats.received.Inc()
	c.stats.receivedBytes.Add(float64(len(data)))
	// RFC 6455 8.1: a text message that is not UTF-8 fails the connection.
	// Forwarded, it would make every strict client of the channel (browsers,
	// Python's websockets) drop its own connection.
	if typ == websocket.MessageText && !utf8.Valid(data) {
		return typ, nil, errInvalidUTF8
	}
	return typ, data, nil
}

// startPings pings the client every PingInterval, the first time at a
// random point of the first interval so that the connections of a storm do
// not all ping at once; a client that does not answer within PongTimeout is
// disconnected. No goroutine waits for the pong: the timer sends a ping,
// then fires again after PongTimeout to check lastPong.
func (c *conn) startPings() {
	iv := c.n.cfg.PingInterval
	c.pinger = time.AfterFunc(iv/2+time.Duration(mrand.Int64N(int64(iv/2)+1)), c.onPingTimer)
}

func (c *conn) stopPings() { c.pinger.Stop() }

// pingFrame is a ping control frame with no payload.
var pingFrame = []byte{0x89, 0x00}

// onPingTimer runs on the timer's goroutine; calls never overlap (each
// re-arms the timer last), so pingSent needs no lock.
func (c *conn) onPingTimer() {
	if c.pingSent != 0 {
		if c.lastPong.Load() < c.pingSent {
			c.close(errPongTimeout)
			return
		}
		c.pingSent = 0
		c.pinger.Reset(max(c.n.cfg.PingInterval-c.n.cfg.PongTimeout, c.n.cfg.PingInterval/2))
		return
	}
	c.pingSent = monotime()
	if _, err := c.nc.Write(pingFrame); err != nil {
		c.close(errPongTimeout)
		return
	}
	c.pinger.Reset(c.n.cfg.PongTimeout)
}

// pong records a pong from the client; coder/websocket calls it from the
// reader.
func (c *conn) pong(context.Context, []byte) { c.lastPong.Store(monotime()) }

// closeCode is the close code of a connection that ended with err: the
// server's own cause, or what the peer sent.
func closeCode(cause, readErr error) (websocket.StatusCode, string) {
	var ce *closeError
	if errors.As(cause, &ce) {
		return ce.code, "server"
	}
	if errors.Is(readErr, websocket.ErrMessageTooBig) {
		return protocol.CloseMessageTooBig, "server"
	}
	if code := websocket.CloseStatus(readErr); code != -1 {
		return code, "client"
	}
	return websocket.StatusAbnormalClosure, "client"
}
