package rawio

import (
	"net"
	"syscall"
	"unsafe"
)

// rawConn is c's RawConn, or nil when c has none.
func rawConn(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// read is the function RawConn.Read calls: one read(2) of o.p. It returns
// false, to wait until the socket is readable, on EAGAIN.
func (o *op) read(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&o.p[0])), uintptr(len(o.p)))
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		o.n, o.errno = int(n), errno
		return true
	}
}

// write is the function RawConn.Write calls: write(2) of o.p until all of
// it is out, returning false, to wait until the socket is writable, on
// EAGAIN.
func (o *op) write(fd uintptr) bool {
	for o.n < len(o.p) {
		rest := o.p[o.n:]
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch errno {
		case 0:
			o.n += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			o.errno = errno
			return true
		}
	}
	return true
}

// peekQuiet reports whether the socket fd is open and has nothing to read:
// a non-blocking recvfrom with MSG_PEEK finds nothing (EAGAIN).
func peekQuiet(fd uintptr) bool {
	var b [1]byte
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	return errno == syscall.EAGAIN
}
