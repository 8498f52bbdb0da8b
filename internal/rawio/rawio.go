// Package rawio reads and writes sockets with raw system calls on Linux.
//
// Go's own socket reads and writes are made through syscall.Syscall, which
// tells the scheduler that the thread may block. When every P of the
// process was idle, telling it also wakes the runtime's monitor thread
// (sysmon), which then polls every 20 µs until the process is idle again:
// on chat-shaped traffic, where each message wakes a node from idle, that
// was a sixth of a node's CPU (docs/BENCHMARKS.md). A read or write of a
// non-blocking socket never blocks, so it needs none of that: rawio makes
// it a raw system call, through the socket's syscall.RawConn, which still
// parks the goroutine in the network poller when the socket is not ready
// and honours the connection's deadlines and Close.
//
// Off Linux, and for a connection without a file descriptor, it calls the
// connection's own Read and Write.
package rawio

import (
	"io"
	"net"
	"os"
	"syscall"
)

// A Reader reads one connection; Init it before use. One goroutine at a
// time may call Read (a net.Conn's reads are not concurrent anyway).
type Reader struct {
	c  net.Conn
	rc syscall.RawConn // nil: read through c
	op op
}

// A Writer writes one connection; Init it before use. One goroutine at a
// time may call Write.
type Writer struct {
	c  net.Conn
	rc syscall.RawConn // nil: write through c
	op op
}

// op is the state of one raw read or write, kept with the connection so
// that the function passed to RawConn.Read or Write is made once: a new
// closure per call would escape and allocate.
type op struct {
	p     []byte
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

// Init makes r read c.
func (r *Reader) Init(c net.Conn) {
	r.c, r.rc = c, rawConn(c)
	if r.rc != nil {
		r.op.fn = r.op.read
	}
}

// Init makes w write c.
func (w *Writer) Init(c net.Conn) {
	w.c, w.rc = c, rawConn(c)
	if w.rc != nil {
		w.op.fn = w.op.write
	}
}

// Read reads as net.Conn.Read does.
func (r *Reader) Read(p []byte) (int, error) {
	if r.rc == nil || len(p) == 0 {
		return r.c.Read(p)
	}
	r.op.p = p
	err := r.rc.Read(r.op.fn)
	n, errno := r.op.n, r.op.errno
	r.op.p, r.op.n, r.op.errno = nil, 0, 0
	switch {
	case err != nil:
		return 0, renameOp(err, "read")
	case errno != 0:
		return 0, opError(r.c, "read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes as net.Conn.Write does: all of p, or an error.
func (w *Writer) Write(p []byte) (int, error) {
	if w.rc == nil || len(p) == 0 {
		return w.c.Write(p)
	}
	w.op.p = p
	err := w.rc.Write(w.op.fn)
	n, errno := w.op.n, w.op.errno
	w.op.p, w.op.n, w.op.errno = nil, 0, 0
	switch {
	case err != nil:
		return n, renameOp(err, "write")
	case errno != 0:
		return n, opError(w.c, "write", errno)
	}
	return n, nil
}

// renameOp names the operation of an error of RawConn ("raw-read") as
// net.Conn's would be named, for the logs that show it.
func renameOp(err error, op string) error {
	if oe, ok := err.(*net.OpError); ok {
		oe.Op = op
	}
	return err
}

func opError(c net.Conn, op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}

// A Conn is a net.Conn that reads and writes through a Reader and a
// Writer.
//
// Its SyscallConn is for checks of an idle connection, such as go-redis's
// pool makes before each use (a recvfrom with MSG_PEEK, itself through
// syscall.Syscall): Read through it peeks with a raw recvfrom first, and
// when the socket is open with nothing to read, which is what the check
// finds on a healthy idle connection, returns without calling f; in any
// other case f runs as usual and decides.
type Conn struct {
	net.Conn
	r    Reader
	w    Writer
	peek peekConn
}

// Wrap returns c reading and writing with raw system calls, or c itself
// when it has no file descriptor to make them on.
func Wrap(c net.Conn) net.Conn {
	rc := rawConn(c)
	if rc == nil {
		return c
	}
	w := &Conn{Conn: c}
	w.r.Init(c)
	w.w.Init(c)
	w.peek.RawConn = rc
	w.peek.fn = w.peek.check
	return w
}

func (c *Conn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *Conn) Write(p []byte) (int, error) { return c.w.Write(p) }

// SyscallConn returns the RawConn described at Conn.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return &c.peek, nil }

// peekConn is Conn's RawConn. One goroutine at a time reads through it (a
// check holds the connection, or its read side).
type peekConn struct {
	syscall.RawConn
	fn    func(fd uintptr) bool // check, made once
	quiet bool
}

func (p *peekConn) check(fd uintptr) bool {
	p.quiet = peekQuiet(fd)
	return true
}

func (p *peekConn) Read(f func(fd uintptr) bool) error {
	if err := p.RawConn.Read(p.fn); err != nil {
		return err
	}
	if p.quiet {
		return nil
	}
	return p.RawConn.Read(f)
}
