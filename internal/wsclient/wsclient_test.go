package wsclient_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/relay-pubsub/relay/internal/wsclient"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestEcho: against a node, a client dialed by Dial (small socket buffer
// included) writes masked frames and reads the server's back, of every
// length form.
func TestEcho(t *testing.T) {
	s := nodetest.Start(t, nodetest.Config(), pubsub.NewMemory())
	addr := strings.TrimPrefix(s.URL, "http://")
	for _, o := range []wsclient.Options{{}, {ReadBuffer: 4096}} {
		ctx, cancel := context.WithTimeout(t.Context(), nodetest.Timeout)
		defer cancel()
		nc, resp, err := wsclient.Dial(ctx, addr, "/ws/echo?echo=true", o)
		if err != nil {
			t.Fatalf("Dial(%+v): %v", o, err)
		}
		defer nc.Close()
		if resp.Header.Get("X-Relay-Node") == "" {
			t.Errorf("response without X-Relay-Node: %v", resp.Header)
		}
		br := bufio.NewReader(nc)
		for _, size := range []int{0, 125, 126, 65535} {
			msg := bytes.Repeat([]byte{'x'}, size)
			if _, err := nc.Write(wsclient.AppendFrame(nil, wsclient.OpText, msg, true)); err != nil {
				t.Fatal(err)
			}
			op, got, err := wsclient.ReadMessage(br)
			if err != nil || op != wsclient.OpText || !bytes.Equal(got, msg) {
				t.Fatalf("%d bytes: ReadMessage = %#x, %d bytes, %v; want text, the same", size, op, len(got), err)
			}
		}
		nc.Write(wsclient.AppendClose(nil, 1000))
		var ce *wsclient.CloseError
		if _, _, err := wsclient.ReadMessage(br); !errors.As(err, &ce) || ce.Code != 1000 {
			t.Errorf("after our close: ReadMessage = %v, want the server's close 1000", err)
		}
	}
}

// TestHandshakeRefused: a refusal returns the response with a
// *HandshakeError.
func TestHandshakeRefused(t *testing.T) {
	s := nodetest.Start(t, nodetest.Config(), pubsub.NewMemory())
	ctx, cancel := context.WithTimeout(t.Context(), nodetest.Timeout)
	defer cancel()
	nc, resp, err := wsclient.Dial(ctx, strings.TrimPrefix(s.URL, "http://"), "/ws/has%20space", wsclient.Options{})
	var he *wsclient.HandshakeError
	if !errors.As(err, &he) || resp == nil || resp.StatusCode != http.StatusBadRequest {
		if nc != nil {
			nc.Close()
		}
		t.Fatalf("Dial of a bad channel = %v, %v; want a HandshakeError with 400", resp, err)
	}
}

// TestFrames: headers of every length form parse back from each prefix
// (n == 0 until whole), masked payloads unmask, and ReadMessage skips
// control frames and refuses fragments.
func TestFrames(t *testing.T) {
	for _, size := range []int{0, 1, 125, 126, 65535, 65536} {
		for _, masked := range []bool{false, true} {
			payload := bytes.Repeat([]byte{'p'}, size)
			f := wsclient.AppendFrame(nil, wsclient.OpBinary, payload, masked)
			var h wsclient.Header
			var n int
			for i := 0; n == 0; i++ {
				if i > wsclient.MaxHeaderLen {
					t.Fatalf("size %d masked %v: no header in %d bytes", size, masked, i)
				}
				h, n = wsclient.ParseHeader(f[:i])
			}
			if !h.Fin || h.Op != wsclient.OpBinary || h.Masked != masked || h.Len != uint64(size) || n+size != len(f) {
				t.Errorf("size %d masked %v: ParseHeader = %+v, %d; frame of %d bytes", size, masked, h, n, len(f))
			}
			op, got, err := wsclient.ReadMessage(bufio.NewReader(bytes.NewReader(f)))
			if err != nil || op != wsclient.OpBinary || !bytes.Equal(got, payload) {
				t.Errorf("size %d masked %v: ReadMessage = %#x, %d bytes, %v", size, masked, op, len(got), err)
			}
		}
	}

	var stream []byte
	stream = wsclient.AppendFrame(stream, wsclient.OpPing, []byte("p"), false)
	stream = wsclient.AppendFrame(stream, wsclient.OpText, []byte("one"), false)
	stream = append(stream, 0x01, 0x01, 'a') // text, not final
	br := bufio.NewReader(bytes.NewReader(stream))
	if op, got, err := wsclient.ReadMessage(br); err != nil || op != wsclient.OpText || string(got) != "one" {
		t.Errorf("after a ping: ReadMessage = %#x %q %v, want text \"one\"", op, got, err)
	}
	if _, _, err := wsclient.ReadMessage(br); !errors.Is(err, wsclient.ErrFragmented) {
		t.Errorf("fragment: ReadMessage = %v, want ErrFragmented", err)
	}
	if _, _, err := wsclient.ReadMessage(bufio.NewReader(bytes.NewReader([]byte{0x81, 126, 0}))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut header: ReadMessage = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestReadHeaderNoAlloc(t *testing.T) {
	f := wsclient.AppendFrame(nil, wsclient.OpText, make([]byte, 300), false)
	r := bytes.NewReader(f)
	br := bufio.NewReader(r)
	n := testing.AllocsPerRun(100, func() {
		r.Reset(f)
		br.Reset(r)
		h, err := wsclient.ReadHeader(br)
		if err != nil || h.Len != 300 {
			t.Fatalf("ReadHeader = %+v, %v", h, err)
		}
	})
	if n != 0 {
		t.Errorf("ReadHeader allocates %v times per frame, want 0", n)
	}
}

func FuzzParseHeader(f *testing.F) {
	f.Add([]byte{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'})
	f.Add([]byte{0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4})
	f.Add([]byte{0x88, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		h, n := wsclient.ParseHeader(p)
		if n > len(p) || n > wsclient.MaxHeaderLen || (n > 0 && n < 2) {
			t.Fatalf("ParseHeader(%x) = %+v, %d", p, h, n)
		}
		if n > 0 {
			if h2, n2 := wsclient.ParseHeader(p[:n]); h2 != h || n2 != n {
				t.Fatalf("ParseHeader of the header alone = %+v, %d; want %+v, %d", h2, n2, h, n)
			}
		}
	})
}
