//go:build unix

package node_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub"
)

// A subscriber that does not read fills its socket: the node's sweeps must
// then hand it to its own writer without holding up anyone else, and once
// it reads it must get every message, whole and in order (a batch cut off
// mid-frame by a full socket continues where it stopped).
func TestSlowReaderLosesNothing(t *testing.T) {
	const (
		messages = 400
		size     = 8 << 10 // 3.2 MB in all: far more than the sockets hold
	)
	cfg := nodetest.Config()
	cfg.QueueBytes = 8 << 20
	broker := pubsub.NewMemory()
	s := nodetest.Start(t, cfg, broker)
	addr := strings.TrimPrefix(s.URL, "http://")

	slow := handshakeSmall(t, addr, "/ws/flood")
	fast := nodetest.Dial(t, "ws"+strings.TrimPrefix(s.URL, "http")+"/ws/flood", nil)
	fast.SetReadLimit(1 << 20)

	payload := func(i int) []byte {
		p := []byte(strings.Repeat(string(rune('a'+i%26)), size))
		binary.BigEndian.PutUint32(p, uint32(i))
		return p
	}
	ctx := context.Background()
	for i := range messages {
		if err := broker.Publish(ctx, "flood", pubsub.Message{Origin: "elsewhere", Payload: payload(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// The fast subscriber gets everything while the slow one reads nothing.
	for i := range messages {
		_, got := nodetest.Read(t, fast)
		if got != string(payload(i)) {
			t.Fatalf("fast subscriber: message %d differs", i)
		}
	}
	r := bufio.NewReader(slow)
	slow.SetReadDeadline(time.Now().Add(nodetest.Timeout))
	for i := range messages {
		got, err := readServerFrame(r)
		if err != nil {
			t.Fatalf("slow subscriber: message %d: %v", i, err)
		}
		if string(got) != string(payload(i)) {
			t.Fatalf("slow subscriber: message %d differs (sequence %d)", i, binary.BigEndian.Uint32(got))
		}
	}
}

// handshakeSmall is handshake with a 4 KiB receive buffer, so that the
// server's writes to it soon find the socket full.
func handshakeSmall(tb testing.TB, addr, path string) net.Conn {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { nc.Close() })
	io.WriteString(nc, "GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	// Read the response byte by byte: what follows it is frames.
	var resp []byte
	b := make([]byte, 1)
	for !strings.HasSuffix(string(resp), "\r\n\r\n") {
		if _, err := nc.Read(b); err != nil {
			tb.Fatalf("handshake: %v", err)
		}
		resp = append(resp, b[0])
	}
	if !strings.HasPrefix(string(resp), "HTTP/1.1 101") {
		tb.Fatalf("handshake: %q", resp)
	}
	return nc
}

// readServerFrame reads one unmasked data frame and returns its payload,
// skipping control frames.
func readServerFrame(r *bufio.Reader) ([]byte, error) {
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:2]); err != nil {
			return nil, err
		}
		if hdr[0]&0x80 == 0 {
			return nil, fmt.Errorf("fragmented frame %#x", hdr[0])
		}
		size := uint64(hdr[1] & 0x7f)
		switch size {
		case 126:
			if _, err := io.ReadFull(r, hdr[:2]); err != nil {
				return nil, err
			}
			size = uint64(binary.BigEndian.Uint16(hdr[:2]))
		case 127:
			if _, err := io.ReadFull(r, hdr[:8]); err != nil {
				return nil, err
			}
			size = binary.BigEndian.Uint64(hdr[:8])
		}
		p := make([]byte, size)
		if _, err := io.ReadFull(r, p); err != nil {
			return nil, err
		}
		if hdr[0]&0x08 == 0 {
			return p, nil
		}
	}
}
