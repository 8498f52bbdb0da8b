package testenv

import (
	"net"
	"sync"
	"testing"
	"time"
)

// Link is a TCP proxy on a loopback port between two parts under test (a
// client and a node, a node and Redis) that a fault test breaks like a
// network: BlackHole stops every byte both ways without closing anything,
// no FIN and no RST, as a pulled cable or a dropped route does; Restore
// lets the held bytes through again, as TCP retransmits once the route is
// back. Unlike Proxy, it knows nothing of Redis.
type Link struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	cond   *sync.Cond // signalled when holed or closed changes
	holed  bool
	closed bool
	conns  map[net.Conn]struct{}

	wg   sync.WaitGroup
	once sync.Once
}

// StartLink starts a link to target (host:port) on 127.0.0.1:0. It is
// closed at the end of the test.
func StartLink(t testing.TB, target string) *Link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &Link{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	l.cond = sync.NewCond(&l.mu)
	l.wg.Go(l.accept)
	t.Cleanup(l.Close)
	return l
}

// Addr is the host:port the link listens on.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// BlackHole stops the link: from when it returns, no byte read on either
// side is passed on and no connection is closed until Restore or Close.
// Connections accepted meanwhile reach the target only after Restore, as
// SYNs lost on the way would.
func (l *Link) BlackHole() {
	l.mu.Lock()
	l.holed = true
	l.mu.Unlock()
}

// Restore ends a BlackHole: what was held goes through, in order.
func (l *Link) Restore() {
	l.mu.Lock()
	l.holed = false
	l.cond.Broadcast()
	l.mu.Unlock()
}

// Close stops accepting, closes every connection and waits for the link's
// goroutines to exit. It is idempotent.
func (l *Link) Close() {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.ln.Close()
		for c := range l.conns {
			c.Close()
		}
		l.cond.Broadcast()
		l.mu.Unlock()
		l.wg.Wait()
	})
}

// pass waits while the link is black-holed and reports whether it is
// still open.
func (l *Link) pass() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.holed && !l.closed {
		l.cond.Wait()
	}
	return !l.closed
}

// track adds c to the connections Close closes; it reports false, and
// closes c, once the link is closed.
func (l *Link) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *Link) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	c.Close()
}

func (l *Link) accept() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return // closed
		}
		if !l.track(c) {
			return
		}
		l.wg.Go(func() { l.serve(c) })
	}
}

// serve dials the target for the client c once the link passes, then
// forwards both ways until either side ends.
func (l *Link) serve(c net.Conn) {
	defer l.untrack(c)
	if !l.pass() {
		return
	}
	s, err := net.DialTimeout("tcp", l.target, 10*time.Second)
	if err != nil {
		return // as if the server refused
	}
	if !l.track(s) {
		return
	}
	defer l.untrack(s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.pump(c, s)
	}()
	l.pump(s, c)
	<-done
}

// pump copies from src to dst, holding bytes while the link is
// black-holed; when either side ends it closes both (after a black hole,
// so that the end too is held).
func (l *Link) pump(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if !l.pass() {
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
