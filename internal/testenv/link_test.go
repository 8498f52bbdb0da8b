package testenv

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// echoServer accepts connections on loopback and echoes what each sends,
// until the end of the test.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		var conns []net.Conn
		var wg sync.WaitGroup
		defer func() {
			for _, c := range conns {
				c.Close()
			}
			wg.Wait()
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			wg.Go(func() { io.Copy(c, c) })
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	readExactly(t, c, msg)
}

func readExactly(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != want {
		t.Fatalf("read %q, %v; want %q", buf, err, want)
	}
}

// TestLinkBlackHole: a black-holed link passes no byte either way and
// closes nothing; once restored, what was held goes through in order, and
// a connection accepted meanwhile reaches the target.
func TestLinkBlackHole(t *testing.T) {
	l := StartLink(t, echoServer(t))
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "before")

	l.BlackHole()
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	late, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	if _, err := late.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	// Nothing comes back, and nothing is closed: the read times out.
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read through a black hole: %d bytes, %v; want a timeout", n, err)
	}

	l.Restore()
	readExactly(t, c, "held")
	readExactly(t, late, "late")
	roundTrip(t, c, "after")
}

// TestLinkClose: Close ends every connection through the link.
func TestLinkClose(t *testing.T) {
	l := StartLink(t, echoServer(t))
	c, err := net.Dial("tcp", l.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, "x")
	l.BlackHole()
	l.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("read after Close: %v, want EOF", err)
	}
}
