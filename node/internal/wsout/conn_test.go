//go:build unix

package wsout

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// meter counts what a connection's writer reports.
type meter struct {
	sent, batches, dropped, slow atomic.Int64
	firstBatch                   atomic.Int64 // messages in the first batch
}

func (m *meter) Sent(messages, _ int) {
	m.firstBatch.CompareAndSwap(0, int64(messages))
	m.sent.Add(int64(messages))
	m.batches.Add(1)
}
func (m *meter) Dropped(messages int) { m.dropped.Add(int64(messages)) }
func (m *meter) SlowConsumer()        { m.slow.Add(1) }

// closer stands in for coder/websocket's Conn: Close writes the close
// frame through the socket, as coder/websocket does, then closes it.
type closer struct{ c *Conn }

func (cl closer) Close(code websocket.StatusCode, reason string) error {
	p := []byte{0x88, byte(2 + len(reason)), byte(code >> 8), byte(code)}
	if _, err := cl.c.sock.Write(append(p, reason...)); err != nil {
		return err
	}
	return cl.c.sock.Close()
}

func (cl closer) CloseNow() error { return cl.c.sock.Close() }

// pair is a Conn on the server end of a loopback TCP connection and the
// client end, whose receive buffer (and the server's send buffer) are
// small when small is set, so that the socket is soon full.
type pair struct {
	c      *Conn
	m      *meter
	f      *Flusher
	client net.Conn
	r      *bufio.Reader
}

func newPair(t *testing.T, cfg Config, small bool) *pair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	setBuf := func(opt int) func(string, string, syscall.RawConn) error {
		return func(_, _ string, rc syscall.RawConn) error {
			if small {
				rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, 4096) })
			}
			return nil
		}
	}
	d := net.Dialer{Control: setBuf(syscall.SO_RCVBUF)}
	client, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if small {
		raw, _ := server.(*net.TCPConn).SyscallConn()
		setBuf(syscall.SO_SNDBUF)("", "", raw)
	}
	if cfg.QueueMessages == 0 {
		cfg.QueueMessages, cfg.QueueBytes = 1<<20, 1<<30
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = time.Minute
	}
	p := &pair{m: new(meter), f: NewFlusher(cfg.WriteDelay), client: client, r: bufio.NewReader(client)}
	p.c = new(Conn)
	p.c.Init(&cfg, p.f, p.m)
	p.c.sock.attach(server)
	t.Cleanup(func() {
		client.Close()
		p.c.Close(errors.New("test over"))
		p.c.Wait()
		server.Close()
		p.f.Close()
	})
	return p
}

// frame is a frame as the client reads it.
type frame struct {
	op      byte
	payload []byte
}

// read reads the next frame the server sent.
func (p *pair) read(t *testing.T) (frame, error) {
	t.Helper()
	p.client.SetReadDeadline(time.Now().Add(time.Minute))
	var hdr [8]byte
	if _, err := io.ReadFull(p.r, hdr[:2]); err != nil {
		return frame{}, err
	}
	if hdr[0]&0x70 != 0 || hdr[0]&0x80 == 0 || hdr[1]&0x80 != 0 {
		return frame{}, fmt.Errorf("bad frame header %x", hdr[:2])
	}
	op, size := hdr[0]&0x0f, uint64(hdr[1])
	switch size {
	case 126:
		if _, err := io.ReadFull(p.r, hdr[:2]); err != nil {
			return frame{}, err
		}
		size = uint64(binary.BigEndian.Uint16(hdr[:2]))
	case 127:
		if _, err := io.ReadFull(p.r, hdr[:8]); err != nil {
			return frame{}, err
		}
		size = binary.BigEndian.Uint64(hdr[:8])
	}
	if size > 1<<20 {
		return frame{}, fmt.Errorf("frame of %d bytes: the stream is out of step", size)
	}
	f := frame{op: op, payload: make([]byte, size)}
	_, err := io.ReadFull(p.r, f.payload)
	return f, err
}

// message i is i's sequence number followed by size(i) bytes of one letter.
func message(i int) []byte {
	size := 1 + (i*7919)%3000
	b := binary.BigEndian.AppendUint32(nil, uint32(i))
	for range size {
		b = append(b, byte('a'+i%26))
	}
	return b
}

// readMessages reads messages from..to-1, whole and in order, skipping
// control frames.
func (p *pair) readMessages(t *testing.T, from, to int) {
	t.Helper()
	for i := from; i < to; {
		f, err := p.read(t)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if f.op != 0x2 {
			continue
		}
		if want := message(i); string(f.payload) != string(want) {
			t.Fatalf("message %d: got %d bytes (sequence %d), want %d bytes", i, len(f.payload), seq(f.payload), len(want))
		}
		i++
	}
}

func seq(p []byte) int {
	if len(p) < 4 {
		return -1
	}
	return int(binary.BigEndian.Uint32(p))
}

// fillUntilOwn sends messages from 0 on until the socket is full and the
// connection's own writer holds a batch cut short, and returns how many
// it sent. The client reads nothing meanwhile.
func (p *pair) fillUntilOwn(t *testing.T) int {
	t.Helper()
	for i := range 100_000 {
		p.c.Send(NewFrame(websocket.MessageBinary, message(i)))
		p.c.mu.Lock()
		st := p.c.state
		p.c.mu.Unlock()
		if st == own {
			return i + 1
		}
	}
	t.Fatal("the socket never filled")
	return 0
}

// A socket that takes part of a batch: the rest goes to the connection's
// own writer, which finishes it with blocking writes as the slow client
// reads, and every message arrives whole and in order.
func TestPartialWriteHandsOffToOwnWriter(t *testing.T) {
	p := newPair(t, Config{}, true)
	p.c.Open(closer{p.c})
	sent := p.fillUntilOwn(t)
	// More behind the cut batch: queued while the own writer blocks.
	for i := sent; i < sent+200; i++ {
		p.c.Send(NewFrame(websocket.MessageBinary, message(i)))
	}
	p.readMessages(t, 0, sent+200)
	if p.m.slow.Load() != 0 || p.m.dropped.Load() != 0 {
		t.Errorf("slow consumers %d, dropped %d; want none", p.m.slow.Load(), p.m.dropped.Load())
	}
}

// A frame of coder/websocket's own (a close echo, say) written while a
// batch is half out waits for the batch and follows a whole frame.
func TestControlFrameWaitsForHalfWrittenBatch(t *testing.T) {
	p := newPair(t, Config{}, true)
	p.c.Open(closer{p.c})
	sent := p.fillUntilOwn(t)
	pong := []byte{opPong, 3, 'x', 'y', 'z'}
	if n, err := p.c.sock.Write(pong); n != len(pong) || err != nil {
		t.Fatalf("socket.Write = %d, %v; want %d, nil", n, err, len(pong))
	}
	p.c.Send(NewFrame(websocket.MessageBinary, message(sent)))
	got := 0
	for got < sent+1 {
		f, err := p.read(t)
		if err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		switch f.op {
		case 0x2:
			if want := message(got); string(f.payload) != string(want) {
				t.Fatalf("message %d differs (sequence %d)", got, seq(f.payload))
			}
			got++
		case 0xa:
			if got < sent {
				t.Fatalf("pong after %d messages, inside the batch of %d cut short", got, sent)
			}
			if string(f.payload) != "xyz" {
				t.Fatalf("pong %q, want xyz", f.payload)
			}
		default:
			t.Fatalf("unexpected frame %#x", f.op)
		}
	}
}

// A close while a batch is half out: the peer gets whole frames, then the
// close frame, and nothing else; what was queued behind the cut batch is
// dropped (and counted) unless the close flushes.
func TestCloseWhileBatchHalfWritten(t *testing.T) {
	for _, flush := range []bool{false, true} {
		t.Run(fmt.Sprintf("flush=%v", flush), func(t *testing.T) {
			p := newPair(t, Config{}, true)
			p.c.Open(closer{p.c})
			sent := p.fillUntilOwn(t)
			const behind = 50
			for i := sent; i < sent+behind; i++ {
				p.c.Send(NewFrame(websocket.MessageBinary, message(i)))
			}
			p.c.Close(&CloseError{Code: websocket.StatusGoingAway, Reason: "bye", Flush: flush})
			got := 0
			for {
				f, err := p.read(t)
				if err != nil {
					t.Fatalf("after %d messages, no close frame: %v", got, err)
				}
				if f.op == 0x8 {
					if code := binary.BigEndian.Uint16(f.payload); code != uint16(websocket.StatusGoingAway) || string(f.payload[2:]) != "bye" {
						t.Fatalf("close frame %d %q, want 1001 bye", code, f.payload[2:])
					}
					break
				}
				if f.op != 0x2 || string(f.payload) != string(message(got)) {
					t.Fatalf("frame %d: opcode %#x, sequence %d; want message %d", got, f.op, seq(f.payload), got)
				}
				got++
			}
			if _, err := p.read(t); err == nil {
				t.Fatal("a frame after the close frame")
			}
			p.c.Wait()
			want := sent
			if flush {
				want = sent + behind
			}
			if got < sent || got > sent+behind || (flush && got != want) {
				t.Fatalf("%d messages before the close frame; want %d", got, want)
			}
			if !flush && int(p.m.dropped.Load()) != sent+behind-got {
				t.Errorf("dropped %d, want %d", p.m.dropped.Load(), sent+behind-got)
			}
		})
	}
}

// A batch of more frames than one writev takes (IOV_MAX, 1,024 buffers)
// goes out whole and in order, as one batch.
func TestBatchBeyondIOVMax(t *testing.T) {
	const n = 1500 // 3,000 buffers: a header and a payload each
	p := newPair(t, Config{}, false)
	for i := range n {
		p.c.Enqueue(NewFrame(websocket.MessageBinary, message(i)[:8]))
	}
	p.c.Open(closer{p.c}) // one batch of everything queued
	for i := range n {
		f, err := p.read(t)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if string(f.payload) != string(message(i)[:8]) {
			t.Fatalf("message %d: sequence %d", i, seq(f.payload))
		}
	}
	if got := p.m.firstBatch.Load(); got != n {
		t.Errorf("first batch had %d messages, want %d", got, n)
	}
}

// Pings go through the connection's writer like data, and an unanswered
// one closes the connection without a close frame.
func TestPingThroughWriter(t *testing.T) {
	p := newPair(t, Config{PingInterval: time.Hour, PongTimeout: time.Hour}, false)
	p.c.Open(closer{p.c})
	p.c.onPingTimer() // as the timer would
	if f, err := p.read(t); err != nil || f.op != 0x9 {
		t.Fatalf("read %#x, %v; want a ping", f.op, err)
	}
	p.c.Send(NewFrame(websocket.MessageBinary, message(0)))
	p.readMessages(t, 0, 1)
	p.c.onPingTimer() // no pong came
	if _, err := p.read(t); err == nil {
		t.Fatal("the connection is open after a pong timeout")
	}
	p.c.Wait()
	if err := p.c.Cause(); err != errPongTimeout {
		t.Fatalf("cause %v, want %v", err, errPongTimeout)
	}
}

// A full queue closes the connection as a slow consumer, without blocking
// the sender.
func TestQueueBound(t *testing.T) {
	p := newPair(t, Config{QueueMessages: 4, QueueBytes: 1 << 20}, false)
	for i := range 5 {
		p.c.Enqueue(NewFrame(websocket.MessageBinary, message(i)))
	}
	if p.m.slow.Load() != 1 {
		t.Fatalf("slow consumers %d, want 1", p.m.slow.Load())
	}
	p.c.Open(closer{p.c})
	f, err := p.read(t)
	if err != nil || f.op != 0x8 || binary.BigEndian.Uint16(f.payload) != 1013 {
		t.Fatalf("read %#x %q, %v; want close 1013", f.op, f.payload, err)
	}
	p.c.Wait()
	if p.m.dropped.Load() != 4 {
		t.Errorf("dropped %d, want 4", p.m.dropped.Load())
	}
}

// Deliveries from many goroutines at once, as from several broker
// goroutines: every message arrives once, whole; per sender, in order.
func TestConcurrentSenders(t *testing.T) {
	const senders, each = 4, 300
	p := newPair(t, Config{WriteDelay: time.Millisecond}, true)
	p.c.Open(closer{p.c})
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				var in Inline
				in.Add(p.c, NewFrame(websocket.MessageBinary, binary.BigEndian.AppendUint32([]byte{byte(s)}, uint32(i))))
				in.Flush()
			}
		})
	}
	next := make([]int, senders)
	for range senders * each {
		f, err := p.read(t)
		if err != nil {
			t.Fatal(err)
		}
		if f.op != 0x2 || len(f.payload) != 5 {
			t.Fatalf("frame %#x of %d bytes", f.op, len(f.payload))
		}
		s, i := int(f.payload[0]), int(binary.BigEndian.Uint32(f.payload[1:]))
		if i != next[s] {
			t.Fatalf("sender %d: message %d, want %d", s, i, next[s])
		}
		next[s]++
	}
	wg.Wait()
}

// After a quiet spell two writes go at once, so that a member of a quiet
// channel who gets two messages close together waits for neither; a third
// waits for the write delay, and goes out with whatever joins it.
func TestPacingBurst(t *testing.T) {
	p := newPair(t, Config{WriteDelay: time.Hour}, false)
	p.c.Open(closer{p.c})
	for i := range 2 {
		p.c.Send(NewFrame(websocket.MessageBinary, message(i)))
		p.readMessages(t, i, i+1)
	}
	p.c.Send(NewFrame(websocket.MessageBinary, message(2)))
	p.c.Send(NewFrame(websocket.MessageBinary, message(3)))
	if got := p.c.Pending(); got != 2 {
		t.Fatalf("%d messages pending after two writes; want 2, held for the write delay", got)
	}
}

// The client closes while a batch is half out: coder/websocket's echo of
// its close frame, handed to the writer, still goes out after the batch,
// though the rest of the queue is dropped.
func TestCloseEchoAfterHalfWrittenBatch(t *testing.T) {
	p := newPair(t, Config{}, true)
	p.c.Open(closer{p.c})
	sent := p.fillUntilOwn(t)
	p.c.Send(NewFrame(websocket.MessageBinary, message(sent))) // dropped
	echo := []byte{0x88, 2, 0x03, 0xe8}                        // 1000
	p.c.sock.Write(echo)
	p.c.Close(errors.New("read: the client closed"))
	for got := 0; ; {
		f, err := p.read(t)
		if err != nil {
			t.Fatalf("after %d messages, no close frame: %v", got, err)
		}
		if f.op == 0x8 {
			if got != sent {
				t.Fatalf("close echo after %d messages, want %d", got, sent)
			}
			break
		}
		if string(f.payload) != string(message(got)) {
			t.Fatalf("message %d: sequence %d", got, seq(f.payload))
		}
		got++
	}
	if _, err := p.read(t); err == nil {
		t.Fatal("a frame after the close echo")
	}
}

// coder/websocket closes the socket right after it answers a client's
// close frame. While another holder has the turn the answer is only
// queued: the socket's Close waits for it, so the peer gets the rest of
// the batch and then the close frame, not an abrupt end.
func TestSocketCloseWaitsForCloseEcho(t *testing.T) {
	p := newPair(t, Config{}, true)
	p.c.Open(closer{p.c})
	sent := p.fillUntilOwn(t)
	echo := []byte{0x88, 2, 0x03, 0xe8} // 1000
	p.c.sock.Write(echo)
	closed := make(chan error, 1)
	go func() { closed <- p.c.sock.Close() }()
	for got := 0; ; got++ {
		f, err := p.read(t)
		if err != nil {
			t.Fatalf("after %d of %d messages, no close frame: %v", got, sent, err)
		}
		if f.op == 0x8 {
			if got != sent {
				t.Fatalf("close echo after %d messages, want %d", got, sent)
			}
			break
		}
	}
	if err := <-closed; err != nil {
		t.Fatalf("socket.Close: %v", err)
	}
}
