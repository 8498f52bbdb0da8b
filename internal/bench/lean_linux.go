package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/relay-pubsub/relay/internal/wsclient"
)

// leanSupported reports that raw-mode subscribers can be lean (below).
const leanSupported = true

// A leanSub is a raw-mode subscriber read by one of a few epoll loops
// rather than by a goroutine of its own through coder/websocket. Per batch
// of frames the server writes it costs one read system call, where a
// goroutine blocked in a read costs that read, a second one that finds the
// socket empty, a park and a wake-up. So the generator takes less of the
// CPU it shares with the servers it measures, and adds less delay to the
// latency it reports.
//
// It speaks the part of RFC 6455 a subscriber needs: the opening handshake
// (Sec-WebSocket-Accept checked), unmasked data frames from the server, a
// masked pong for each ping, and the close handshake.
type leanSub struct {
	c       *conn
	nc      net.Conn // owns the file descriptor
	fd      int32
	pending []byte // the start of a frame not yet whole

	wmu       sync.Mutex // guards the descriptor's use outside the loop
	closeSent bool
	closed    bool // nc is closed: fd may name another file now
	ended     atomic.Bool
}

// leanLoops read the lean subscribers of one run, one epoll loop per CPU.
type leanLoops struct {
	r     *runner
	once  sync.Once
	loops []*epollLoop
	next  atomic.Uint64
	stop  atomic.Bool
	wg    sync.WaitGroup
	err   error // from starting
}

type epollLoop struct {
	epfd int
	mu   sync.Mutex
	subs map[int32]*leanSub
}

// epollWaitMs bounds a wait, so that a loop sees stop soon.
const epollWaitMs = 50

func (ll *leanLoops) start() error {
	ll.once.Do(func() {
		for range runtime.GOMAXPROCS(0) {
			epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
			if err != nil {
				ll.err = fmt.Errorf("epoll_create1: %w", err)
				return
			}
			l := &epollLoop{epfd: epfd, subs: make(map[int32]*leanSub)}
			ll.loops = append(ll.loops, l)
			ll.wg.Go(func() { ll.run(l) })
		}
	})
	return ll.err
}

// close stops the loops and waits for them; subscribers still open are
// closed.
func (ll *leanLoops) close() {
	ll.stop.Store(true)
	ll.wg.Wait()
	for _, l := range ll.loops {
		syscall.Close(l.epfd)
		for _, s := range l.subs {
			s.release()
		}
	}
}

func (ll *leanLoops) run(l *epollLoop) {
	events := make([]syscall.EpollEvent, 256)
	buf := make([]byte, 256<<10)
	for !ll.stop.Load() {
		n, err := syscall.EpollWait(l.epfd, events, epollWaitMs)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			ll.r.closes.add("abnormal: epoll_wait: "+err.Error(), 1)
			return
		}
		now := ll.r.clk.now()
		for _, ev := range events[:n] {
			l.mu.Lock()
			s := l.subs[ev.Fd]
			l.mu.Unlock()
			if s != nil {
				s.readable(ll.r, l, buf, now)
			}
		}
	}
}

// dialLean opens a lean raw-mode subscriber of channel on base.
func (r *runner) dialLean(ctx context.Context, base *url.URL, channel string) (*leanSub, string, error) {
	if err := r.lean.start(); err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	defer cancel()
	u, err := url.Parse(r.cfg.wsURL(base, channel))
	if err != nil {
		return nil, "", err
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	nc, err := r.dialer.dialFunc(r.dialer.next(base))(ctx, "tcp", host)
	if err != nil {
		r.dialErrors.add(errorClass(err, nil), 1)
		return nil, "", err
	}
	s, node, err := r.handshake(ctx, nc, u)
	if err != nil {
		nc.Close()
		return nil, "", err
	}
	if node == "" {
		node = base.Host
	}
	return s, node, nil
}

// handshake performs the opening handshake on nc and registers the
// subscriber with a loop.
func (r *runner) handshake(ctx context.Context, nc net.Conn, u *url.URL) (*leanSub, string, error) {
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline)
	var header http.Header
	if r.cfg.Token != "" {
		header = http.Header{"Authorization": {"Bearer " + r.cfg.Token}}
	}
	resp, rest, err := wsclient.Handshake(nc, u.Host, u.RequestURI(), header)
	if err != nil {
		switch {
		case resp == nil:
			r.dialErrors.add(errorClass(err, nil), 1)
		case resp.StatusCode != http.StatusSwitchingProtocols:
			r.dialErrors.add(errorClass(nil, resp), 1)
		default:
			r.dialErrors.add("bad handshake", 1)
		}
		return nil, "", err
	}
	nc.SetDeadline(time.Time{})
	s := &leanSub{nc: nc, pending: rest} // frames the server sent right after its answer
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil, "", errors.New("lean subscriber: connection has no file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, "", err
	}
	raw.Control(func(fd uintptr) { s.fd = int32(fd) })
	return s, resp.Header.Get("X-Relay-Node"), nil
}

// attach hands s, owned by c, to a loop; what arrived with the handshake
// is accounted first.
func (r *runner) attach(s *leanSub, c *conn) error {
	s.c = c
	l := r.lean.loops[r.lean.next.Add(1)%uint64(len(r.lean.loops))]
	now := r.clk.now()
	rest, ok := s.frames(r, s.pending, now)
	if !ok {
		return errors.New("lean subscriber: ended during the handshake")
	}
	s.pending = append(s.pending[:0], rest...) // rest lies in s.pending: append moves it
	l.mu.Lock()
	l.subs[s.fd] = s
	l.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: s.fd}
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, int(s.fd), &ev); err != nil {
		l.mu.Lock()
		delete(l.subs, s.fd)
		l.mu.Unlock()
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// readable reads what the socket holds and accounts every whole frame.
func (s *leanSub) readable(r *runner, l *epollLoop, buf []byte, now int64) {
	// The socket is non-blocking: a raw call, unknown to the scheduler.
	r0, _, errno := syscall.RawSyscall(syscall.SYS_READ, uintptr(s.fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
	n := int(r0)
	if errno == syscall.EAGAIN || errno == syscall.EINTR {
		return
	}
	if errno != 0 || n == 0 {
		var err error = io.EOF
		if errno != 0 {
			err = errno
		}
		s.end(r, l, "abnormal: "+errorClass(err, nil))
		return
	}
	data := buf[:n]
	if len(s.pending) > 0 {
		s.pending = append(s.pending, data...)
		data = s.pending
	}
	rest, ok := s.frames(r, data, now)
	if !ok {
		s.end(r, l, "")
		return
	}
	// rest may lie in s.pending itself: copy moves it to the front.
	if len(s.pending) > 0 {
		s.pending = s.pending[:copy(s.pending, rest)]
	} else {
		s.pending = append(s.pending, rest...)
	}
}

// frames accounts the whole frames at the start of data and returns what
// follows them; ok is false when the connection must end (a close frame,
// or a frame a server may not send, recorded in r.closes).
func (s *leanSub) frames(r *runner, data []byte, now int64) (rest []byte, ok bool) {
	for len(data) > 0 {
		h, hl := wsclient.ParseHeader(data)
		if hl == 0 {
			return data, true
		}
		if h.Masked {
			s.fail(r, "abnormal: masked frame from the server")
			return nil, false
		}
		if h.Len > readLimit {
			s.fail(r, "abnormal: message too big")
			return nil, false
		}
		if uint64(len(data)-hl) < h.Len {
			return data, true
		}
		payload := data[hl : hl+int(h.Len)]
		data = data[hl+int(h.Len):]
		switch op := h.Op; {
		case op == wsclient.OpText || op == wsclient.OpBinary:
			if !h.Fin {
				s.fail(r, "abnormal: fragmented message")
				return nil, false
			}
			if s.c != nil && s.c.rcv != nil {
				s.c.rcv.message(payload, now)
			}
		case op == wsclient.OpClose:
			code := 1005 // no status
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
			}
			if !r.closing.Load() {
				label := fmt.Sprintf("%d", code)
				if len(payload) > 2 {
					label += " " + string(payload[2:])
				}
				r.closes.add(label, 1)
			}
			s.writeClose(code)
			return nil, false
		case op == wsclient.OpPing:
			s.write(wsclient.OpPong, payload)
		case op == wsclient.OpPong:
		default:
			s.fail(r, fmt.Sprintf("abnormal: opcode %#x", op))
			return nil, false
		}
	}
	return data, true
}

// fail records why the connection ends, unless the generator ends it.
func (s *leanSub) fail(r *runner, label string) {
	if !r.closing.Load() {
		r.closes.add(label, 1)
	}
}

// end removes s from its loop and closes it; label, if any, is recorded
// unless the generator is closing.
func (s *leanSub) end(r *runner, l *epollLoop, label string) {
	if label != "" {
		s.fail(r, label)
	}
	syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, int(s.fd), nil)
	l.mu.Lock()
	delete(l.subs, s.fd)
	l.mu.Unlock()
	s.release()
}

// release closes the connection and marks it done, once.
func (s *leanSub) release() {
	s.wmu.Lock()
	s.closed = true
	s.nc.Close()
	s.wmu.Unlock()
	if s.ended.CompareAndSwap(false, true) {
		s.c.rcv.lat.flush()
		close(s.c.done)
	}
}

// write sends one masked frame of opcode op (a control frame: payload of
// at most 125 bytes). Control frames are small: the socket takes them
// whole unless the connection is failing, and then the loop sees it end.
func (s *leanSub) write(op byte, payload []byte) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closeSent || s.closed {
		return
	}
	if op == wsclient.OpClose {
		s.closeSent = true
	}
	syscall.Write(int(s.fd), wsclient.AppendFrame(nil, op, payload, true))
}

// writeClose sends a close frame with code, unless one was sent.
func (s *leanSub) writeClose(code int) {
	if code == 1005 {
		s.write(wsclient.OpClose, nil)
		return
	}
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], uint16(code))
	s.write(wsclient.OpClose, p[:])
}

// closeGraceful starts the close handshake; the loop ends the connection
// when the server's close frame (or EOF) arrives.
func (s *leanSub) closeGraceful() {
	s.writeClose(1000)
}

// closeNow makes the loop end the connection at once.
func (s *leanSub) closeNow() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if !s.closed {
		syscall.Shutdown(int(s.fd), syscall.SHUT_RDWR)
	}
}
