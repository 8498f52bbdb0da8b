package wsout

import (
	"syscall"
	"unsafe"
)

// nonblockingWrites reports that a sweep can write to a socket without
// waiting (writevNonblock).
const nonblockingWrites = true

// iovecs are the buffers of a writev system call.
type iovecs = []syscall.Iovec

// writevNonblock writes b.rest to the non-blocking socket fd until all of
// it is written (0), the socket is full (EAGAIN) or it fails; what was
// written is consumed from b.rest. The call cannot block, so it is a raw
// system call: the goroutine keeps its P, where the scheduler would
// otherwise be told about every call and hand busy Ps to other threads.
func writevNonblock(fd uintptr, b *batch) syscall.Errno {
	for len(b.rest) > 0 {
		b.iov = b.iov[:0]
		for _, p := range b.rest {
			if len(p) == 0 {
				continue
			}
			b.iov = append(b.iov, syscall.Iovec{Base: &p[0]})
			b.iov[len(b.iov)-1].SetLen(len(p))
			if len(b.iov) == maxIovecs {
				break
			}
		}
		if len(b.iov) == 0 {
			b.rest = nil
			return 0
		}
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&b.iov[0])), uintptr(len(b.iov)))
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		consume(&b.rest, int(n))
	}
	return 0
}

// maxIovecs is the most buffers one writev takes (IOV_MAX on Linux).
const maxIovecs = 1024
