package node

import (
	"syscall"
	"unsafe"
)

// nonblockingWrites reports that tryWriteBuffers can write to a socket
// without waiting (writevNonblock).
const nonblockingWrites = true

// iovecs are the buffers of a writev system call.
type iovecs = []syscall.Iovec

// writevNonblock writes w.rest to the non-blocking socket fd until all of
// it is written (0), the socket is full (EAGAIN) or it fails; what was
// written is consumed from w.rest. The call cannot block, so it is a raw
// system call: the goroutine keeps its P, where the scheduler would
// otherwise be told about every call and hand busy Ps to other threads.
func writevNonblock(fd uintptr, w *writev) syscall.Errno {
	for len(w.rest) > 0 {
		w.iov = w.iov[:0]
		for _, b := range w.rest {
			if len(b) == 0 {
				continue
			}
			w.iov = append(w.iov, syscall.Iovec{Base: &b[0]})
			w.iov[len(w.iov)-1].SetLen(len(b))
			if len(w.iov) == maxIovecs {
				break
			}
		}
		if len(w.iov) == 0 {
			w.rest = nil
			return 0
		}
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(len(w.iov)))
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		consume(&w.rest, int(n))
	}
	return 0
}

// maxIovecs is the most buffers one writev takes (IOV_MAX on Linux).
const maxIovecs = 1024
