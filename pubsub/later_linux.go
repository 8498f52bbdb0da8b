package pubsub

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"time"
	"unsafe"
)

// laterSupported: this system has what later lanes need (later.go).
const laterSupported = true

// laterSock is a later lane's socket: a non-blocking descriptor that the
// Go runtime's poller does not watch. The zero value is no socket.
type laterSock struct {
	fd    int
	valid bool
}

func (s laterSock) ok() bool { return s.valid }

// laterDial opens a connection with dial, authenticates it, and returns a
// duplicate of its socket; the connection itself is closed, which takes the
// socket out of the poller (net's Close removes it from epoll before it
// closes its own descriptor). The socket stays non-blocking: the flag is
// the socket's, shared by both descriptors.
func laterDial(ctx context.Context, dial func(context.Context) (net.Conn, error), auth []byte) (laterSock, error) {
	c, err := dial(ctx)
	if err != nil {
		return laterSock{}, err
	}
	defer c.Close()
	if err := handshake(ctx, c, auth); err != nil {
		return laterSock{}, err
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return laterSock{}, fmt.Errorf("%T has no socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return laterSock{}, err
	}
	var fd int
	var errno syscall.Errno
	if err := rc.Control(func(s uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		fd, errno = int(r), e
	}); err != nil {
		return laterSock{}, err
	}
	if errno != 0 {
		return laterSock{}, fmt.Errorf("dup: %w", errno)
	}
	return laterSock{fd: fd, valid: true}, nil
}

// send writes what the socket takes of p at once, without waiting: a raw
// system call (internal/rawio says why).
func (s laterSock) send(p []byte) (int, error) {
	for {
		n, _, errno := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(s.fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
			syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
		switch errno {
		case 0:
			return int(n), nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, nil
		}
		return 0, errno
	}
}

// recv reads what has come, up to len(p), without waiting; eof reports that
// Redis closed the connection.
func (s laterSock) recv(p []byte) (n int, eof bool, err error) {
	for {
		r, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(s.fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)),
			syscall.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			return int(r), r == 0, nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, false, nil
		}
		return 0, false, errno
	}
}

// wait waits up to d for something to read, blocking its thread: only a
// publisher that found its lane full waits (later.go).
func (s laterSock) wait(d time.Duration) {
	if d <= 0 {
		return
	}
	fds := [1]struct {
		fd      int32
		events  int16
		revents int16
	}{{fd: int32(s.fd), events: 0x1}} // POLLIN
	ts := syscall.NsecToTimespec(d.Nanoseconds())
	syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
}

func (s laterSock) close() {
	syscall.Close(s.fd) // nothing is left to do if it fails
}
