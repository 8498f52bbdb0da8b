package node_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
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
