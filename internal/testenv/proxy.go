package testenv

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy on a loopback port between the code under test and a
// server such as Redis, for fault tests. Each accepted connection gets its
// own connection to the target, and bytes flow both ways until either side
// closes.
//
// FreezeSubscribers makes Redis subscriber connections go silent without
// closing them: the failure a broker cannot see from errors alone.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[*proxyConn]struct{}
	closed bool

	wg   sync.WaitGroup
	once sync.Once
}

type proxyConn struct {
	client, server net.Conn
	// subscriber is set once the client sent a SUBSCRIBE, PSUBSCRIBE or
	// SSUBSCRIBE command.
	subscriber atomic.Bool
	frozen     atomic.Bool
	done       chan struct{} // closed when the connection is closed
	once       sync.Once
}

// StartProxy starts a proxy to target (host:port) on 127.0.0.1:0. It is
// closed at the end of the test.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: make(map[*proxyConn]struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(p.Close)
	return p
}

// Addr is the host:port the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is a redis:// URL (database 0) that reaches the target through the
// proxy.
func (p *Proxy) URL() string { return "redis://" + p.Addr() + "/0" }

// FreezeSubscribers stops forwarding from the server to the client on every
// connection whose client has sent a SUBSCRIBE command (or PSUBSCRIBE or
// SSUBSCRIBE, in any case) so far. The client to server direction keeps
// flowing, and connections accepted later, or that subscribe only later,
// are not affected.
//
// A frozen connection stops reading from the server: no byte the proxy
// reads from the server after FreezeSubscribers returns reaches the client,
// and the server's writes back up in its output buffer and the kernel's, as
// on a stalled link. Nothing is closed: the connection stays frozen until
// either side closes it or the proxy closes. It returns how many
// connections it froze.
func (p *Proxy) FreezeSubscribers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for pc := range p.conns {
		if pc.subscriber.Load() && !pc.frozen.Swap(true) {
			n++
		}
	}
	return n
}

// Close stops accepting, closes every connection and waits for the proxy's
// goroutines to exit. It is idempotent.
func (p *Proxy) Close() {
	p.once.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.ln.Close()
		for pc := range p.conns {
			pc.close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

// serve dials the target for the client c and forwards until either side
// closes.
func (p *Proxy) serve(c net.Conn) {
	s, err := net.DialTimeout("tcp", p.target, 10*time.Second)
	if err != nil {
		c.Close() // as if the server refused
		return
	}
	pc := &proxyConn{client: c, server: s, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		pc.close()
		return
	}
	p.conns[pc] = struct{}{}
	p.wg.Go(pc.toClient)
	p.mu.Unlock()
	pc.toServer()
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

func (pc *proxyConn) close() {
	pc.once.Do(func() {
		pc.client.Close()
		pc.server.Close()
		close(pc.done)
	})
}

// toServer forwards client bytes to the server, watching for a subscribe
// command, until either side closes.
func (pc *proxyConn) toServer() {
	defer pc.close()
	var sc respScanner
	buf := make([]byte, 32<<10)
	for {
		n, err := pc.client.Read(buf)
		if n > 0 {
			if !pc.subscriber.Load() && sc.scan(buf[:n]) {
				pc.subscriber.Store(true)
			}
			if _, werr := pc.server.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// toClient forwards server bytes to the client until either side closes;
// once the connection is frozen it holds what it read and reads no more.
func (pc *proxyConn) toClient() {
	defer pc.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := pc.server.Read(buf)
		if n > 0 {
			if pc.frozen.Load() {
				<-pc.done
				return
			}
			if _, werr := pc.client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// respScanner follows a stream of Redis requests (RESP arrays of bulk
// strings, or inline commands) split at any byte, and reports subscribe
// commands. Only command names are kept; arguments are skipped as they
// pass, so a payload that reads "SUBSCRIBE" is not mistaken for one.
type respScanner struct {
	line   []byte // a header line read in part
	args   int    // bulk strings left in the current array
	first  bool   // the next bulk string is the command name
	bulk   int    // bytes left of the current bulk string, CRLF included
	inName bool   // the current bulk string is the command name
	name   []byte
}

var errRESP = errors.New("not a RESP request")

// scan consumes p and reports whether it completed a subscribe command.
func (s *respScanner) scan(p []byte) bool {
	found := false
	for len(p) > 0 {
		if s.bulk > 0 {
			n := min(s.bulk, len(p))
			if s.inName && len(s.name) < 64 {
				s.name = append(s.name, p[:n]...)
			}
			s.bulk -= n
			p = p[n:]
			if s.bulk == 0 && s.inName {
				s.inName = false
				found = found || isSubscribe(bytes.TrimRight(s.name, "\r\n"))
				s.name = s.name[:0]
			}
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.line = append(s.line, p...)
			return found
		}
		line := bytes.TrimRight(append(s.line, p[:i+1]...), "\r\n")
		p = p[i+1:]
		if err := s.header(line); err != nil {
			*s = respScanner{line: s.line} // resynchronise at the next line
		}
		if len(line) > 0 && line[0] != '*' && line[0] != '$' && s.args == 0 {
			// An inline command: its first word is the name.
			if f := bytes.Fields(line); len(f) > 0 && isSubscribe(f[0]) {
				found = true
			}
		}
		s.line = s.line[:0]
	}
	return found
}

// header takes one header line: an array's "*n" or a bulk string's "$n".
func (s *respScanner) header(line []byte) error {
	switch {
	case s.args > 0:
		if len(line) == 0 || line[0] != '$' {
			return errRESP
		}
		n, err := strconv.Atoi(string(line[1:]))
		if err != nil || n < 0 {
			return errRESP
		}
		s.args--
		s.bulk = n + 2
		s.inName, s.first = s.first, false
	case len(line) > 0 && line[0] == '*':
		n, err := strconv.Atoi(string(line[1:]))
		if err != nil {
			return errRESP
		}
		s.args, s.first = max(n, 0), true
	}
	return nil
}

func isSubscribe(name []byte) bool {
	for _, cmd := range []string{"subscribe", "psubscribe", "ssubscribe"} {
		if bytes.EqualFold(name, []byte(cmd)) {
			return true
		}
	}
	return false
}
