package node_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/internal/wsclient"
	"github.com/relay-pubsub/relay/node/nodetest"
)

// crossNode is a well-behaved subscriber on nodes[0] of channel "good" and
// a publisher on nodes[1]: after each hostile case, a message published on
// the other node must still reach the subscriber, next.
type crossNode struct {
	sub, pub *websocket.Conn
}

func newCrossNode(t *testing.T, nodes []*nodetest.Server) *crossNode {
	return &crossNode{
		sub: nodetest.Dial(t, nodes[0].WS+"/ws/good", nil),
		pub: nodetest.Dial(t, nodes[1].WS+"/ws/good", nil),
	}
}

func (x *crossNode) stillWorks(t *testing.T, msg string) {
	t.Helper()
	nodetest.Write(t, x.pub, msg)
	if got := nodetest.ReadText(t, x.sub); got != msg {
		t.Fatalf("well-behaved subscriber read %q, want %q", got, msg)
	}
}

// TestHandshakeRefusals: every handshake the node refuses is answered with
// the documented status and a JSON {code, message} body, and counted in
// relay_upgrades_refused_total, whichever layer refused it.
func TestHandshakeRefusals(t *testing.T) {
	nodes := cluster(t, testenv.StartRedis(t), 2)
	x := newCrossNode(t, nodes)
	host := strings.TrimPrefix(nodes[0].URL, "http://")
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	tests := []struct {
		name    string
		request string // the request line and headers, without the final blank line
		status  int
		code    string
	}{
		{"version 12", "GET /ws/x HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 12\r\nSec-WebSocket-Key: " + key,
			http.StatusBadRequest, "bad_request"},
		{"no version", "GET /ws HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: " + key,
			http.StatusBadRequest, "bad_request"},
		{"no key", "GET /echo HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13",
			http.StatusBadRequest, "bad_request"},
		{"short key", "GET /ws/x HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=",
			http.StatusBadRequest, "bad_request"},
		{"key not base64", "GET /ws/x HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!",
			http.StatusBadRequest, "bad_request"},
		{"two keys", "GET /ws/x HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Key: " + key,
			http.StatusBadRequest, "bad_request"},
		{"HTTP/1.0", "GET /ws/x HTTP/1.0\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key,
			http.StatusUpgradeRequired, "upgrade_required"},
		{"cross origin", "GET /ws/x HTTP/1.1\r\nHost: " + host + "\r\nOrigin: https://evil.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key,
			http.StatusForbidden, "forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			counter := fmt.Sprintf(`relay_upgrades_refused_total{status="%d"}`, tt.status)
			before := testenv.Metrics(t, nodes[0].URL)[counter]
			resp := rawRequest(t, nodes[0].URL, tt.request)
			defer resp.Body.Close()
			var body struct{ Code, Message string }
			if err := jsonDecode(resp, &body); err != nil {
				t.Fatalf("%s: HTTP %d, body is not a JSON error: %v", tt.name, resp.StatusCode, err)
			}
			if resp.StatusCode != tt.status || body.Code != tt.code || body.Message == "" {
				t.Errorf("%s = %d %q %q, want %d %q and a message", tt.name, resp.StatusCode, body.Code, body.Message, tt.status, tt.code)
			}
			if after := testenv.Metrics(t, nodes[0].URL)[counter]; after != before+1 {
				t.Errorf("%s = %v after the refusal, want %v", counter, after, before+1)
			}
			x.stillWorks(t, "after "+tt.name)
		})
	}
}

// rawRequest sends request as written (net/http's client cannot send
// HTTP/1.0 or two keys) and reads the answer.
func rawRequest(t *testing.T, baseURL, request string) *http.Response {
	t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(baseURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if _, err := nc.Write([]byte(request + "\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	return resp
}

// TestInvalidUTF8: a text message that is not UTF-8 closes its sender's
// connection with 1007 (RFC 6455 8.1) in every mode, and is never
// forwarded: strict clients would drop their own connections on it. Binary
// messages carry any bytes.
func TestInvalidUTF8(t *testing.T) {
	nodes := cluster(t, testenv.StartRedis(t), 2)
	x := newCrossNode(t, nodes)
	bad := []byte("caf\xc3(\xff")
	for _, path := range []string{"/ws/good", "/ws/good?echo=true", "/echo", "/", "/ws"} {
		t.Run(path, func(t *testing.T) {
			c := nodetest.Dial(t, nodes[1].WS+path, nil)
			msg := bad
			if path == "/ws" {
				msg = []byte(`{"cmd":"publish","channel":"good","data":"` + string(bad) + `"}`)
			}
			ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
			defer cancel()
			if err := c.Write(ctx, websocket.MessageText, msg); err != nil {
				t.Fatal(err)
			}
			if code, reason := nodetest.ReadClose(t, c); code != websocket.StatusInvalidFramePayloadData || reason == "" {
				t.Errorf("close %d %q, want 1007 with a reason", code, reason)
			}
			// The subscriber's next message is this one: the bad one never came.
			x.stillWorks(t, "after "+path)
		})
	}
	t.Run("binary", func(t *testing.T) {
		c := nodetest.Dial(t, nodes[1].WS+"/ws/good", nil)
		ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
		defer cancel()
		if err := c.Write(ctx, websocket.MessageBinary, bad); err != nil {
			t.Fatal(err)
		}
		if typ, got := nodetest.Read(t, x.sub); typ != websocket.MessageBinary || got != string(bad) {
			t.Fatalf("subscriber read %v %q, want the binary message %q", typ, got, bad)
		}
		x.stillWorks(t, "after binary")
	})
}

// frame builds a client frame byte by byte, rules or not: b0 is
// FIN|RSV|opcode, masked says whether the mask bit and a key are sent.
func frame(b0 byte, payload []byte, masked bool) []byte {
	f := []byte{b0}
	mbit := byte(0)
	if masked {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		f = append(f, mbit|byte(n))
	case n <= 0xffff:
		f = append(f, mbit|126, byte(n>>8), byte(n))
	default:
		f = append(f, mbit|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	if !masked {
		return append(f, payload...)
	}
	key := []byte{0x12, 0x34, 0x56, 0x78}
	f = append(f, key...)
	for i, b := range payload {
		f = append(f, b^key[i&3])
	}
	return f
}

func closePayload(code int, reason string) []byte {
	return append([]byte{byte(code >> 8), byte(code)}, reason...)
}

// TestFrameViolations: every frame-level violation of RFC 6455 gets its
// documented close, in raw and protocol mode, and the node keeps serving:
// after each, a message published on the other node reaches a
// well-behaved subscriber.
func TestFrameViolations(t *testing.T) {
	nodes := cluster(t, testenv.StartRedis(t), 2)
	x := newCrossNode(t, nodes)
	addr := strings.TrimPrefix(nodes[0].URL, "http://")
	const (
		fin     = 0x80
		text    = 0x1
		binary  = 0x2
		cont    = 0x0
		closeOp = 0x8
		ping    = 0x9
	)
	cat := func(fs ...[]byte) []byte { return bytes.Join(fs, nil) }
	tests := []struct {
		name string
		send []byte
		code int // the close code the node must send; 1006: it drops the connection without a close frame
	}{
		// RFC 6455 5.1 and 5.2: the node MAY send a close frame; it drops
		// the connection at once.
		{"unmasked frame", frame(fin|text, []byte("hi"), false), 1006},
		{"RSV1 without an extension", frame(fin|0x40|text, []byte("hi"), true), 1002},
		{"RSV2", frame(fin|0x20|text, []byte("hi"), true), 1002},
		{"reserved data opcode", frame(fin|0x3, []byte("hi"), true), 1002},
		{"reserved control opcode", frame(fin|0xB, nil, true), 1002},
		{"control frame over 125 bytes", frame(fin|ping, make([]byte, 126), true), 1002},
		{"fragmented control frame", frame(ping, []byte("x"), true), 1002},
		{"continuation without a start", frame(fin|cont, []byte("x"), true), 1002},
		{"new message inside a fragmented one", cat(frame(text, []byte("a"), true), frame(fin|text, []byte("b"), true)), 1002},
		{"close with a 1-byte payload", frame(fin|closeOp, []byte{3}, true), 1002},
		{"close code 999", frame(fin|closeOp, closePayload(999, ""), true), 1002},
		{"close code 1005", frame(fin|closeOp, closePayload(1005, ""), true), 1002},
		{"close code 1006", frame(fin|closeOp, closePayload(1006, ""), true), 1002},
		{"close code 5000", frame(fin|closeOp, closePayload(5000, ""), true), 1002},
		{"close reason not UTF-8", frame(fin|closeOp, closePayload(1000, "bye\xff"), true), 1007},
		{"text not UTF-8", frame(fin|text, []byte("caf\xc3("), true), 1007},
		{"text not UTF-8 across fragments", cat(frame(text, []byte("caf\xc3"), true), frame(fin|cont, []byte("("), true)), 1007},
		{"frame over the limit", frame(fin|binary, make([]byte, 64<<10+1), true), 1009},
		{"fragments over the limit", cat(frame(binary, make([]byte, 40<<10), true), frame(fin|cont, make([]byte, 40<<10), true)), 1009},
		{"length with the top bit set", []byte{fin | binary, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}, 1006},
	}
	for _, path := range []string{"/ws/good", "/ws"} {
		for _, tt := range tests {
			t.Run(path+" "+tt.name, func(t *testing.T) {
				nc := testenv.DialWebSocket(t, addr, path, wsclient.Options{})
				nc.SetDeadline(time.Now().Add(nodetest.Timeout))
				if _, err := nc.Write(tt.send); err != nil {
					t.Fatal(err)
				}
				r := bufio.NewReader(nc)
				for {
					_, _, err := wsclient.ReadMessage(r)
					var ce *wsclient.CloseError
					if errors.As(err, &ce) {
						if ce.Code != tt.code || ce.Reason == "" || !utf8.ValidString(ce.Reason) {
							t.Errorf("close %d %q, want %d with a UTF-8 reason", ce.Code, ce.Reason, tt.code)
						}
						break
					}
					if tt.code == 1006 && errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						t.Fatalf("read: %v, want a close frame %d", err, tt.code)
					}
				}
				x.stillWorks(t, "after "+tt.name)
			})
		}
	}
	// A message whose UTF-8 is valid only once its fragments are joined is
	// valid.
	t.Run("UTF-8 split across fragments", func(t *testing.T) {
		nc := testenv.DialWebSocket(t, strings.TrimPrefix(nodes[1].URL, "http://"), "/ws/good", wsclient.Options{})
		if _, err := nc.Write(cat(frame(text, []byte("caf\xc3"), true), frame(fin|cont, []byte("\xa9"), true))); err != nil {
			t.Fatal(err)
		}
		if got := nodetest.ReadText(t, x.sub); got != "café" {
			t.Fatalf("subscriber read %q, want café", got)
		}
	})
}
