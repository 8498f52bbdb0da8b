package rawio_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/rawio"
)

// pair returns both ends of a loopback TCP connection, the first wrapped.
func pair(t *testing.T) (wrapped, peer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p := <-accepted
	if p == nil {
		t.Fatal("accept failed")
	}
	w := rawio.Wrap(c)
	if w == c {
		t.Fatal("Wrap returned the TCP connection unwrapped")
	}
	t.Cleanup(func() { w.Close(); p.Close() })
	return w, p
}

// A write larger than the socket buffers fills them (EAGAIN, partial
// writes) and completes as the peer reads; every byte arrives in order.
func TestWriteLargerThanSocketBuffers(t *testing.T) {
	w, p := pair(t)
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(p)
		got <- b
	}()
	n, err := w.Write(data)
	if n != len(data) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(data))
	}
	w.Close()
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("peer read %d bytes, not the %d written", len(b), len(data))
	}
}

// Read waits for data in the poller, returns what arrived, and io.EOF once
// the peer closes.
func TestReadWaitsThenEOF(t *testing.T) {
	w, p := pair(t)
	go func() {
		p.Write([]byte("hello"))
		p.Close()
	}()
	b, err := io.ReadAll(w)
	if string(b) != "hello" || err != nil {
		t.Fatalf("ReadAll = %q, %v; want hello, nil", b, err)
	}
	if n, err := w.Read(make([]byte, 4)); n != 0 || err != io.EOF {
		t.Fatalf("Read after EOF = %d, %v; want 0, io.EOF", n, err)
	}
}

// A read deadline ends a waiting Read with a timeout, as net.Conn's does;
// Close ends it with net.ErrClosed.
func TestReadDeadlineAndClose(t *testing.T) {
	w, _ := pair(t)
	w.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	_, err := w.Read(make([]byte, 4))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past the deadline = %v; want a timeout", err)
	}
	w.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := w.Read(make([]byte, 4))
		done <- err
	}()
	w.Close()
	err = <-done
	var oe *net.OpError
	if !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("Read on a closed connection = %v; want a read error of net.ErrClosed", err)
	}
}

// A reset by the peer is a read error wrapping ECONNRESET.
func TestReadReset(t *testing.T) {
	w, p := pair(t)
	p.(*net.TCPConn).SetLinger(0)
	p.Close()
	_, err := w.Read(make([]byte, 4))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("Read after a reset = %v; want ECONNRESET", err)
	}
}

// The RawConn of SyscallConn calls f, as a check of an idle connection
// expects, only when there is something to see: data or the peer's close.
func TestSyscallConnCallsCheckOnlyWhenNotQuiet(t *testing.T) {
	w, p := pair(t)
	rc, err := w.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	check := func(uintptr) bool { calls++; return true }
	if err := rc.Read(check); err != nil || calls != 0 {
		t.Fatalf("quiet socket: Read = %v with %d calls of f; want nil and none", err, calls)
	}
	p.Write([]byte("x"))
	awaitCall(t, rc, check, &calls)
	if b := make([]byte, 1); func() bool { n, _ := w.Read(b); return n != 1 || b[0] != 'x' }() {
		t.Fatal("the peeked byte was consumed")
	}
	p.Close()
	calls = 0
	awaitCall(t, rc, check, &calls)
}

// awaitCall reads through rc until check is called: what the peer sent
// crosses loopback at once, but not necessarily before the first look.
func awaitCall(t *testing.T, rc syscall.RawConn, check func(uintptr) bool, calls *int) {
	t.Helper()
	for i := 0; *calls == 0; i++ {
		if i == 1_000_000 {
			t.Fatal("f was never called")
		}
		if err := rc.Read(check); err != nil {
			t.Fatal(err)
		}
		runtime.Gosched()
	}
}

// A connection without a file descriptor is returned as it is.
func TestWrapPipeUnchanged(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if rawio.Wrap(a) != a {
		t.Fatal("Wrap wrapped a net.Pipe")
	}
}
