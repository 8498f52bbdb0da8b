package node

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"time"
)

// Buffer sizes of a hijacked connection. net/http hands over 4 KiB for each
// direction and coder/websocket keeps both for the connection's life; these
// smaller ones cut the memory of an idle connection (see BENCHMARKS.md).
// Writes do not suffer: the writer corks the socket for a whole batch.
const (
	readBufferSize  = 1024
	writeBufferSize = 512
	// corkFlushAt is the size at which a corked batch is written even before
	// the batch ends, so that one write stays under the socket buffer.
	corkFlushAt = 64 << 10
)

// corkConn is the hijacked net.Conn of a WebSocket. While corked, writes
// collect in a pooled buffer and go out with one syscall at uncork: this is
// how several frames share a write although coder/websocket flushes after
// each message. Uncorked, writes go straight to the socket. The lock keeps
// control frames written by the reader (pong, close) whole and in order.
type corkConn struct {
	net.Conn

	mu     sync.Mutex
	corked bool
	buf    *[]byte
}

var corkPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	*c.buf = append(*c.buf, p...)
	if len(*c.buf) >= corkFlushAt {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// cork starts collecting writes; the batch must be written by deadline.
func (c *corkConn) cork(deadline time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = true
	c.buf = corkPool.Get().(*[]byte)
	c.Conn.SetWriteDeadline(deadline)
}

// uncork writes what was collected and returns the buffer to the pool.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.flushLocked()
	c.corked = false
	if cap(*c.buf) <= 4*corkFlushAt {
		*c.buf = (*c.buf)[:0]
		corkPool.Put(c.buf)
	}
	c.buf = nil
	c.Conn.SetWriteDeadline(time.Time{})
	return err
}

func (c *corkConn) flushLocked() error {
	if len(*c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(*c.buf)
	*c.buf = (*c.buf)[:0]
	return err
}

// hijackWriter wraps the ResponseWriter given to websocket.Accept so that
// the hijacked connection is a corkConn with small buffers.
type hijackWriter struct {
	http.ResponseWriter
	nc *corkConn
}

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.nc = &corkConn{Conn: nc}
	r := brw.Reader
	if r.Buffered() == 0 {
		// Nothing read ahead: net/http's 4 KiB reader can go.
		r = bufio.NewReaderSize(w.nc, readBufferSize)
	}
	return w.nc, bufio.NewReadWriter(r, bufio.NewWriterSize(w.nc, writeBufferSize)), nil
}
