package wsout

import (
	"net"
	"sync"
	"syscall"
)

// A JoinFunc joins the leading frames of batch into one message: it appends
// the joined payload to dst and returns it with how many frames it took.
// n == 1 means "write batch[0] as it is" (joined is then ignored). Protocol
// mode joins pending pushes (node/proto.go); nil joins nothing.
type JoinFunc func(dst []byte, batch []*Frame) (joined []byte, n int)

// batch is the scratch space of one write: the buffers of the writev, the
// control frames and joined messages copied for it, and the iovecs of a
// non-blocking write. Each flusher keeps one; other writers take them from
// a pool.
type batch struct {
	bufs   net.Buffers
	rest   net.Buffers // what a non-blocking write left of bufs
	ctrl   []byte      // control frames, written before the data
	hdrs   []byte
	joins  []byte
	iov    iovecs // writevNonblock's
	errno  syscall.Errno
	write  func(fd uintptr) bool // calls writevNonblock, for RawConn.Write
	frames int                   // data messages in bufs
	bytes  int                   // their payload bytes
}

var batchPool = sync.Pool{New: func() any { return new(batch) }}

func getBatch() *batch { return batchPool.Get().(*batch) }

// maxJoinScratch bounds the joined bytes a batch keeps between writes.
const maxJoinScratch = 256 << 10

// reset empties b for the next write.
func (b *batch) reset() {
	clear(b.bufs) // let the frames go
	clear(b.iov)
	b.bufs, b.ctrl, b.hdrs, b.joins, b.iov = b.bufs[:0], b.ctrl[:0], b.hdrs[:0], b.joins[:0], b.iov[:0]
	b.frames, b.bytes, b.rest = 0, 0, nil
	if cap(b.joins) > maxJoinScratch {
		b.joins = nil
	}
}

// release puts b back in the pool.
func (b *batch) release() {
	b.reset()
	batchPool.Put(b)
}

// build fills b with the buffers of one writev: its control frames (b.ctrl,
// copied in by takeLocked), then every frame of frames. The frames' headers and payloads
// are handed to the kernel as they are: nothing is copied per connection
// but what join joins.
func (b *batch) build(frames []*Frame, join JoinFunc) {
	if len(b.ctrl) > 0 {
		b.bufs = append(b.bufs, b.ctrl)
	}
	b.frames = len(frames)
	for rest := frames; len(rest) > 0; {
		f := rest[0]
		hdr, data, n := f.hdr, f.data, 1
		if join != nil {
			// Earlier joins keep pointing into the old array if this grows.
			start := len(b.joins)
			var joined []byte
			if joined, n = join(b.joins, rest); n > 1 {
				b.joins = joined
				data = b.joins[start:]
				h := len(b.hdrs)
				b.hdrs = AppendHeader(b.hdrs, f.typ, len(data))
				hdr = b.hdrs[h:]
			} else {
				n = 1
			}
		}
		rest = rest[n:]
		b.bufs = append(b.bufs, hdr, data)
		b.bytes += len(data)
	}
	b.rest = b.bufs
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
