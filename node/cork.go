package node

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/relay-pubsub/relay/node/protocol"
)

// Buffer sizes of a hijacked connection. net/http hands over 4 KiB for each
// direction and coder/websocket keeps both for the connection's life; these
// small ones cut the memory of an idle connection (see BENCHMARKS.md).
// Reads do not suffer much: a payload larger than the buffer is read
// straight into the message. Writes of data frames bypass the buffer (see
// writeBuffers); it carries only control frames.
const (
	readBufferSize  = 256
	writeBufferSize = 256
)

// wsConn is the hijacked net.Conn of a WebSocket. coder/websocket writes
// its control frames (pong, ping, close) through it, each as one Write of
// its buffered writer, which is flushed at the end of every frame; data
// frames are written with tryWriteBuffers and writeBuffers. The lock keeps
// every frame whole and the two in order.
type wsConn struct {
	net.Conn
	raw     syscall.RawConn // nil if Conn has no file descriptor
	timeout time.Duration   // bound on one write

	mu       sync.Mutex
	deadline time.Time // the write deadline set on Conn
}

func newWSConn(nc net.Conn, timeout time.Duration) *wsConn {
	c := &wsConn{Conn: nc, timeout: timeout}
	if sc, ok := nc.(syscall.Conn); ok && nonblockingWrites {
		if raw, err := sc.SyscallConn(); err == nil {
			c.raw = raw
		}
	}
	return c
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refreshDeadline()
	if badCloseEcho(p) {
		if _, err := c.Conn.Write(closeInvalidReason); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// closeInvalidReason is the close frame 1007 "invalid UTF-8 in the close
// reason".
var closeInvalidReason = func() []byte {
	const code, reason = protocol.CloseInvalidData, "invalid UTF-8 in the close reason"
	return append([]byte{0x88, 2 + byte(len(reason)), code >> 8, code & 0xff}, reason...)
}()

// badCloseEcho reports whether p is a close frame whose reason is not
// UTF-8. coder/websocket answers a client's close frame with the same code
// and reason, without checking the reason; RFC 6455 7.1.6 and 8.1 say to
// fail such a connection with 1007 instead, and strict clients drop a
// close frame whose reason is not UTF-8.
func badCloseEcho(p []byte) bool {
	return len(p) > 4 && p[0] == 0x88 && int(p[1]) == len(p)-2 && !utf8.Valid(p[4:])
}

// writeBuffers writes bufs with one writev (a few past 1,024 buffers),
// blocking within the write timeout. If locked, the caller holds the lock,
// which writeBuffers releases.
func (c *wsConn) writeBuffers(bufs net.Buffers, locked bool) error {
	if !locked {
		c.mu.Lock()
	}
	defer c.mu.Unlock()
	c.refreshDeadline()
	_, err := bufs.WriteTo(c.Conn)
	return err
}

// tryWriteBuffers writes what the socket takes of w.bufs now, without
// waiting. done reports that all of it went out. Otherwise w.rest holds the
// rest, for writeBuffers; locked reports that the lock is still held (a
// frame may be half written, so nothing else may go first). Without a file
// descriptor, or while another frame is being written, nothing is written.
func (c *wsConn) tryWriteBuffers(w *writev) (done, locked bool, err error) {
	w.rest = w.bufs
	if c.raw == nil || !c.mu.TryLock() {
		return false, false, nil
	}
	c.refreshDeadline() // a deadline in the past would fail the write
	if w.write == nil {
		// Made once per writev, not per call: a closure passed to
		// RawConn.Write escapes.
		w.write = func(fd uintptr) bool {
			w.errno = writevNonblock(fd, w)
			return true
		}
	}
	err = c.raw.Write(w.write)
	switch {
	case err == nil && w.errno == 0:
		c.mu.Unlock()
		return true, false, nil
	case err == nil && w.errno == syscall.EAGAIN:
		return false, true, nil
	case err == nil:
		err = w.errno
	}
	c.mu.Unlock()
	return false, false, err
}

// consume drops the first n bytes of bufs.
func consume(bufs *net.Buffers, n int) {
	for len(*bufs) > 0 && n >= len((*bufs)[0]) {
		n -= len((*bufs)[0])
		(*bufs)[0] = nil
		*bufs = (*bufs)[1:]
	}
	if n > 0 {
		(*bufs)[0] = (*bufs)[0][n:]
	}
}

// refreshDeadline keeps the write deadline between half a timeout and a
// timeout ahead: a write that blocks fails within the timeout, and the
// deadline (a timer operation) is moved once per half timeout, not twice
// per write. The lock is held.
func (c *wsConn) refreshDeadline() {
	now := time.Now()
	if c.deadline.Sub(now) > c.timeout/2 {
		return
	}
	c.deadline = now.Add(c.timeout)
	c.Conn.SetWriteDeadline(c.deadline)
}

// hijackWriter wraps the ResponseWriter given to websocket.Accept so that
// the hijacked connection is a wsConn with small buffers.
type hijackWriter struct {
	http.ResponseWriter
	timeout time.Duration // write timeout
	nc      *wsConn
}

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.nc = newWSConn(nc, w.timeout)
	r := brw.Reader
	if r.Buffered() == 0 {
		// Nothing read ahead: net/http's 4 KiB reader can go.
		r = bufio.NewReaderSize(w.nc, readBufferSize)
	}
	return w.nc, bufio.NewReadWriter(r, bufio.NewWriterSize(w.nc, writeBufferSize)), nil
}
