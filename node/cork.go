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
// its buffered writer, which is flushed at the end of every frame; the
// connection's writer writes data frames with writeBuffers. The lock keeps
// every frame whole and the two in order.
type wsConn struct {
	net.Conn
	mu sync.Mutex
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.Write(p)
}

// writeBuffers writes bufs with one writev (a few past 1,024 buffers),
// failing if it is not done by deadline.
func (c *wsConn) writeBuffers(bufs net.Buffers, deadline time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Conn.SetWriteDeadline(deadline)
	_, err := bufs.WriteTo(c.Conn)
	c.Conn.SetWriteDeadline(time.Time{})
	return err
}

// hijackWriter wraps the ResponseWriter given to websocket.Accept so that
// the hijacked connection is a wsConn with small buffers.
type hijackWriter struct {
	http.ResponseWriter
	nc *wsConn
}

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.nc = &wsConn{Conn: nc}
	r := brw.Reader
	if r.Buffered() == 0 {
		// Nothing read ahead: net/http's 4 KiB reader can go.
		r = bufio.NewReaderSize(w.nc, readBufferSize)
	}
	return w.nc, bufio.NewReadWriter(r, bufio.NewWriterSize(w.nc, writeBufferSize)), nil
}
