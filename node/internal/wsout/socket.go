package wsout

import (
	"bufio"
	"net"
	"net/http"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/relay-pubsub/relay/internal/rawio"
	"github.com/relay-pubsub/relay/node/protocol"
)

// Buffer sizes of a hijacked connection. net/http hands over 4 KiB for each
// direction and coder/websocket keeps both for the connection's life; these
// small ones cut the memory of an idle connection (docs/BENCHMARKS.md).
// Reads do not suffer much: a payload larger than the buffer is read
// straight into the message. Data frames bypass the write buffer; it
// carries only coder/websocket's own frames (the handshake response and
// close frames).
const (
	readBufferSize  = 256
	writeBufferSize = 256
)

// socket is the hijacked net.Conn of a WebSocket, as coder/websocket sees
// it. Its Write is how coder/websocket's own frames reach the socket, each
// as one Write (its buffered writer is flushed at the end of every frame):
// they are written at once when no one else writes (Conn.writeControl),
// and otherwise handed to the writer that does, which sends them between
// two batches. So a frame is never cut by another.
type socket struct {
	net.Conn
	raw syscall.RawConn // nil if Conn has no file descriptor
	out *Conn
	rd  rawio.Reader // reads Conn without waking the runtime's monitor
}

func (s *socket) Write(p []byte) (int, error) { return s.out.writeControl(p) }

// Read is how coder/websocket reads the client, on the connection's reader
// goroutine.
func (s *socket) Read(p []byte) (int, error) { return s.rd.Read(p) }

// Close closes the socket once the control frames waiting for the turn
// are out. coder/websocket answers a client's close frame (socket.Write)
// and closes the socket right after: while another holder had the turn,
// the answer was only queued, and closing at once lost it (the client saw
// the connection end without a close frame).
func (s *socket) Close() error {
	s.out.awaitControl()
	return s.Conn.Close()
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

// attach makes nc the connection's socket.
func (s *socket) attach(nc net.Conn) {
	s.Conn = nc
	s.rd.Init(nc)
	if sc, ok := nc.(syscall.Conn); ok && nonblockingWrites {
		if raw, err := sc.SyscallConn(); err == nil {
			s.raw = raw
		}
	}
}

// writeBlocking writes bufs, blocking within the write timeout. Only the
// holder of the write turn calls it.
func (c *Conn) writeBlocking(bufs *net.Buffers) error {
	c.refreshDeadline()
	_, err := bufs.WriteTo(c.sock.Conn)
	return err
}

// tryWrite writes what the socket takes of b.rest now, without waiting.
// done reports that all of it went out; otherwise b.rest holds the rest,
// which may start in the middle of a frame. Without a file descriptor
// nothing is written. Only the holder of the write turn calls it.
func (c *Conn) tryWrite(b *batch) (done bool, err error) {
	if c.sock.raw == nil {
		return false, nil
	}
	c.refreshDeadline() // a deadline in the past would fail the write
	if b.write == nil {
		// Made once per batch, not per call: a closure passed to
		// RawConn.Write escapes.
		b.write = func(fd uintptr) bool {
			b.errno = writevNonblock(fd, b)
			return true
		}
	}
	if err := c.sock.raw.Write(b.write); err != nil {
		return false, err
	}
	switch b.errno {
	case 0:
		return true, nil
	case syscall.EAGAIN:
		return false, nil
	}
	return false, b.errno
}

// refreshDeadline keeps the write deadline between half a timeout and a
// timeout ahead: a write that blocks fails within the timeout, and the
// deadline (a timer operation) is moved once per half timeout, not twice
// per write. Only the holder of the write turn calls it.
func (c *Conn) refreshDeadline() {
	now := time.Now()
	if c.deadline.Sub(now) > c.cfg.WriteTimeout/2 {
		return
	}
	c.deadline = now.Add(c.cfg.WriteTimeout)
	c.sock.SetWriteDeadline(c.deadline)
}

// Hijacker wraps the ResponseWriter to pass to websocket.Accept, so that
// the hijacked connection becomes c's socket, with small buffers.
func (c *Conn) Hijacker(w http.ResponseWriter) http.ResponseWriter {
	return &hijacker{ResponseWriter: w, c: c}
}

type hijacker struct {
	http.ResponseWriter
	c *Conn
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	s := &h.c.sock
	s.attach(nc)
	r := brw.Reader
	if r.Buffered() == 0 {
		// Nothing read ahead: net/http's 4 KiB reader can go.
		r = bufio.NewReaderSize(s, readBufferSize)
	}
	return s, bufio.NewReadWriter(r, bufio.NewWriterSize(s, writeBufferSize)), nil
}
