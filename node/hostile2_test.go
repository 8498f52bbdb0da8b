package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/internal/wsclient"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
)

// Hostile input beyond the frame level (hostile_test.go): floods, deep and
// huge JSON, channel names at and past every limit, header limits. Each
// case gets its documented answer, and after each a well-behaved
// subscriber on the other node still gets a message published on the
// attacked one (crossNode). docs/RELIABILITY.md lists them.

// hostileCluster is two nodes with cmd/relay's default limits, which
// nodetest.Config turns off for other tests.
func hostileCluster(t *testing.T) []*nodetest.Server {
	return nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: func(c *node.Config) {
		c.ProtoMaxChannels = 128
		c.ProtoCommandRate, c.ProtoCommandBurst = 100, 200
		c.ProtoMaxErrors, c.ProtoErrorWindow = 10, 10*time.Second
	}})
}

// reply is one server object of protocol mode.
type reply struct {
	ID     json.RawMessage `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

// readReplies reads the next frame of a protocol-mode connection and
// returns its objects (a frame may batch several, one per line).
func readReplies(t *testing.T, c *websocket.Conn) []reply {
	t.Helper()
	var out []reply
	for line := range strings.SplitSeq(nodetest.ReadText(t, c), "\n") {
		var r reply
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("server object %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// send writes one text message.
func send(t *testing.T, c *websocket.Conn, msg []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, msg); err != nil {
		t.Fatalf("write %d bytes: %v", len(msg), err)
	}
}

// call sends one command and returns the reply of the given id, skipping
// pushes.
func call(t *testing.T, c *websocket.Conn, id int, cmd string) reply {
	t.Helper()
	send(t, c, []byte(cmd))
	for {
		for _, r := range readReplies(t, c) {
			if string(r.ID) == fmt.Sprint(id) {
				return r
			}
		}
	}
}

func errCode(r reply) string {
	if r.Error == nil {
		return ""
	}
	return r.Error.Code
}

// TestFloods: commands over the rate get limit_exceeded and are not
// executed, without closing the connection; WebSocket pings are answered
// however many come; a raw publisher over its rate is read more slowly and
// nothing it sent is dropped.
func TestFloods(t *testing.T) {
	nodes := hostileCluster(t)
	x := newCrossNode(t, nodes)

	t.Run("commands over the rate", func(t *testing.T) {
		c := nodetest.Dial(t, nodes[1].WS+"/ws", nil)
		const n = 1000
		ctxw, cancelw := context.WithTimeout(context.Background(), nodetest.Timeout)
		defer cancelw()
		for i := range n {
			// The node may close the connection before the last: stop then.
			if c.Write(ctxw, websocket.MessageText, fmt.Appendf(nil, `{"id":%d,"cmd":"publish","channel":"good","data":"flood %d"}`, i, i)) != nil {
				break
			}
		}
		// Commands beyond the burst get limit_exceeded, which counts as a
		// bad command: the tenth closes the connection with 1008.
		var ok, limited int
		var acked []string // ids of the publishes acknowledged, in order: a token refilled mid-flood acks a later one
		ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
		defer cancel()
		for {
			_, data, err := c.Read(ctx)
			if err != nil {
				if code := websocket.CloseStatus(err); code != websocket.StatusPolicyViolation {
					t.Fatalf("read: %v, want a close 1008", err)
				}
				break
			}
			for line := range strings.SplitSeq(string(data), "\n") {
				var r reply
				if err := json.Unmarshal([]byte(line), &r); err != nil {
					t.Fatalf("server object %q: %v", line, err)
				}
				switch {
				case r.Error == nil:
					ok++
					acked = append(acked, string(r.ID))
				case r.Error.Code == "limit_exceeded":
					limited++
				default:
					t.Fatalf("reply %+v, want ok or limit_exceeded", r.Error)
				}
			}
		}
		if ok < 200 || limited != 10 {
			t.Errorf("%d commands: %d ok, %d limit_exceeded; want the burst (200) or more ok, then 10 limited", n, ok, limited)
		}
		// Exactly the acknowledged publishes reach the subscriber, in order.
		for _, id := range acked {
			if got, want := nodetest.ReadText(t, x.sub), fmt.Sprintf(`"flood %s"`, id); got != want {
				t.Fatalf("subscriber read %s, want %s", got, want)
			}
		}
		t.Logf("%d publishes in a burst: %d acknowledged and delivered, %d limit_exceeded (not executed), then 1008", n, ok, limited)
		x.stillWorks(t, "after a command flood")
	})

	t.Run("ping frames", func(t *testing.T) {
		addr := strings.TrimPrefix(nodes[0].URL, "http://")
		nc := testenv.DialWebSocket(t, addr, "/ws/good", wsclient.Options{})
		nc.SetDeadline(time.Now().Add(30 * time.Second))
		const n = 5000
		got := make(chan error, 1)
		pongs := 0
		go func() {
			r := bufio.NewReader(nc)
			for {
				h, err := wsclient.ReadHeader(r)
				if err != nil {
					got <- err
					return
				}
				data := make([]byte, h.Len)
				if _, err := io.ReadFull(r, data); err != nil {
					got <- err
					return
				}
				switch {
				case h.Op == wsclient.OpPong:
					pongs++
				case h.Op == wsclient.OpText && string(data) == "after a ping flood":
					got <- nil
					return
				}
			}
		}()
		var b bytes.Buffer
		for range n {
			b.Write(frame(0x80|0x9, []byte("ping"), true))
		}
		if _, err := nc.Write(b.Bytes()); err != nil {
			t.Fatal(err)
		}
		x.stillWorks(t, "after a ping flood")
		if err := <-got; err != nil {
			t.Fatalf("the pinging client: %v", err)
		}
		// Pongs are answered in order, before what the node sends next
		// on the connection; a node may coalesce pongs (RFC 6455 5.5.3).
		if pongs == 0 || pongs > n {
			t.Errorf("%d pings answered by %d pongs", n, pongs)
		}
		t.Logf("%d pings: %d pongs, the connection still subscribed", n, pongs)
	})

	t.Run("raw publisher over its rate", func(t *testing.T) {
		c := nodetest.Dial(t, nodes[1].WS+"/ws/good", nil)
		const n = 3000 // the default rate is 1000/s, burst 1000
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		go func() {
			for i := range n {
				if c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, "raw %d", i)) != nil {
					return
				}
			}
		}()
		for i := range n {
			if got, want := nodetest.ReadText(t, x.sub), fmt.Sprintf("raw %d", i); got != want {
				t.Fatalf("subscriber read %q, want %q", got, want)
			}
		}
		t.Logf("raw flood of %d: %d delivered in order, none dropped", n, n)
		x.stillWorks(t, "after a raw flood")
	})
}

// TestHostileJSON: deep, huge and odd JSON in protocol mode gets a
// documented answer: an error reply or 1009, never a crash or a hang.
func TestHostileJSON(t *testing.T) {
	nodes := hostileCluster(t)
	x := newCrossNode(t, nodes)
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	pad := func(cmd string, size int) string { // cmd padded with spaces to size bytes
		return cmd[:len(cmd)-1] + strings.Repeat(" ", size-len(cmd)) + "}"
	}
	tests := []struct {
		name  string
		cmd   string
		code  string // the reply's error code; "" for success
		close websocket.StatusCode
	}{
		{"data nested 1000 deep", `{"id":1,"cmd":"publish","channel":"hostile","data":` + deep(1000) + `}`, "", 0},
		{"data nested 20000 deep", `{"id":1,"cmd":"publish","channel":"hostile","data":` + deep(20000) + `}`, "bad_request", 0},
		{"data unbalanced 30000 deep", `{"id":1,"cmd":"publish","channel":"hostile","data":` + strings.Repeat("[", 30000) + `}`, "bad_request", 0},
		{"command at the size limit", pad(`{"id":1,"cmd":"ping"}`, 65536), "", 0},
		{"command over the size limit", pad(`{"id":1,"cmd":"ping"}`, 65537), "", websocket.StatusMessageTooBig},
		{"5000 members", `{"id":1,"cmd":"ping"` + strings.Repeat(`,"x":1`, 5000) + `}`, "", 0},
		{"5000 repeated cmd members", `{"id":1` + strings.Repeat(`,"cmd":"ping"`, 5000) + `}`, "", 0},
		{"string of 10000 escapes", `{"id":1,"cmd":"publish","channel":"hostile","data":"` + strings.Repeat(`\u0000`, 10000) + `"}`, "", 0},
		{"lone surrogate escape", `{"id":1,"cmd":"publish","channel":"hostile","data":"\ud800"}`, "", 0},
		{"a number of 60000 digits", `{"id":1,"cmd":"publish","channel":"hostile","data":` + strings.Repeat("9", 60000) + `}`, "", 0},
		{"not an object", `[` + deep(100) + `]`, "bad_request", 0},
		{"id nested 1000 deep", `{"id":` + deep(1000) + `,"cmd":"ping"}`, "bad_request", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := nodetest.Dial(t, nodes[1].WS+"/ws", nil)
			send(t, c, []byte(tt.cmd))
			if tt.close != 0 {
				if code, _ := nodetest.ReadClose(t, c); code != tt.close {
					t.Errorf("close %d, want %d", code, tt.close)
				}
				x.stillWorks(t, "after "+tt.name)
				return
			}
			rs := readReplies(t, c)
			if len(rs) != 1 || errCode(rs[0]) != tt.code {
				t.Fatalf("replies %s, want one with error code %q", mustJSON(rs), tt.code)
			}
			// The connection is still usable.
			if r := call(t, c, 2, `{"id":2,"cmd":"ping"}`); r.Error != nil {
				t.Errorf("ping after %s: %+v", tt.name, r.Error)
			}
			x.stillWorks(t, "after "+tt.name)
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestChannelLimits: channel names at every limit are taken, past it
// refused with invalid_channel (protocol mode) or a 400 JSON body (raw
// mode, before the upgrade).
func TestChannelLimits(t *testing.T) {
	nodes := hostileCluster(t)
	x := newCrossNode(t, nodes)
	tests := []struct {
		name, channel string
		ok            bool
	}{
		{"1 byte", "a", true},
		{"255 bytes", strings.Repeat("c", 255), true},
		{"256 bytes", strings.Repeat("c", 256), false},
		{"64 KiB", strings.Repeat("c", 60000), false},
		{"every allowed byte", "AZaz09_-:.@/=", true},
		{"namespace only", "ns:", true},
		{"space", "a b", false},
		{"NUL", "a\x00b", false},
		{"non-ASCII", "café", false},
		{"reserved prefix", "__relay:probe", false},
	}
	for _, tt := range tests {
		t.Run("proto "+tt.name, func(t *testing.T) {
			c := nodetest.Dial(t, nodes[1].WS+"/ws", nil)
			ch, _ := json.Marshal(tt.channel)
			r := call(t, c, 1, `{"id":1,"cmd":"subscribe","channel":`+string(ch)+`}`)
			if want := map[bool]string{true: "", false: "invalid_channel"}[tt.ok]; errCode(r) != want {
				t.Errorf("subscribe %.20q: error %q, want %q", tt.channel, errCode(r), want)
			}
			r = call(t, c, 2, `{"id":2,"cmd":"publish","channel":`+string(ch)+`,"data":1}`)
			if want := map[bool]string{true: "", false: "invalid_channel"}[tt.ok]; errCode(r) != want {
				t.Errorf("publish %.20q: error %q, want %q", tt.channel, errCode(r), want)
			}
			x.stillWorks(t, "after proto "+tt.name)
		})
		if tt.channel == "a b" || strings.ContainsAny(tt.channel, "\x00é") || len(tt.channel) > 4096 {
			continue // not a request line a client can send as is; covered in protocol mode
		}
		t.Run("raw "+tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, nodes[1].WS+"/ws/"+tt.channel, nil)
			if tt.ok {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				c.CloseNow()
			} else {
				if err == nil {
					c.CloseNow()
					t.Fatal("upgrade succeeded, want 400")
				}
				var body struct{ Code string }
				if resp == nil || resp.StatusCode != http.StatusBadRequest || json.NewDecoder(resp.Body).Decode(&body) != nil || body.Code != "invalid_channel" {
					t.Errorf("dial: %v; want 400 invalid_channel", err)
				}
			}
			x.stillWorks(t, "after raw "+tt.name)
		})
	}
}

// TestHeaderLimits: a request line and headers up to the limit (16 KiB)
// upgrade; beyond, the node answers 431 with a JSON {code, message} body,
// counted in relay_upgrades_refused_total, and keeps serving. Past net/http's
// own limit (64 KiB plus the 4 KiB it allows over MaxHeaderBytes) the 431
// is net/http's, plain text, before any handler.
func TestHeaderLimits(t *testing.T) {
	nodes := hostileCluster(t)
	x := newCrossNode(t, nodes)
	host := strings.TrimPrefix(nodes[1].URL, "http://")
	upgrade := "GET /ws/good HTTP/1.1\r\nHost: " + host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
	const counter = `relay_upgrades_refused_total{status="431"}`
	tests := []struct {
		name    string
		request string
		status  int
		json    bool // a JSON limit_exceeded body, counted
	}{
		{"12 KiB header", upgrade + "\r\nX-Big: " + strings.Repeat("a", 12<<10), http.StatusSwitchingProtocols, false},
		{"2000 small headers", upgrade + strings.Repeat("\r\nX-A: b", 2000), http.StatusSwitchingProtocols, false},
		{"16 KiB and 1 byte", upgrade + "\r\nX-Big: " + strings.Repeat("a", 16<<10-len(upgrade)-len("\r\nX-Big: \r\n\r\n")+1), http.StatusRequestHeaderFieldsTooLarge, true},
		{"32 KiB header", upgrade + "\r\nX-Big: " + strings.Repeat("a", 32<<10), http.StatusRequestHeaderFieldsTooLarge, true},
		{"5000 small headers", upgrade + strings.Repeat("\r\nX-A: b", 5000), http.StatusRequestHeaderFieldsTooLarge, true},
		{"32 KiB URL", strings.Replace(upgrade, "/ws/good", "/ws/good?x="+strings.Repeat("a", 32<<10), 1), http.StatusRequestHeaderFieldsTooLarge, true},
		{"100 KiB header", upgrade + "\r\nX-Big: " + strings.Repeat("a", 100<<10), http.StatusRequestHeaderFieldsTooLarge, false},
		// Not an upgrade: the same answer, not counted as a refused upgrade.
		{"32 KiB header to /healthz", "GET /healthz HTTP/1.1\r\nHost: " + host + "\r\nX-Big: " + strings.Repeat("a", 32<<10), http.StatusRequestHeaderFieldsTooLarge, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := testenv.Metrics(t, nodes[1].URL)[counter]
			resp := rawRequest(t, nodes[1].URL, tt.request)
			defer resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.status)
			}
			want := before
			if tt.json {
				if strings.HasPrefix(tt.request, "GET /ws") {
					want++
				}
				var body struct{ Code, Message string }
				if err := jsonDecode(resp, &body); err != nil || body.Code != "limit_exceeded" || body.Message == "" {
					t.Errorf("body %+v, %v; want a JSON limit_exceeded error", body, err)
				}
			} else if tt.status == http.StatusRequestHeaderFieldsTooLarge && !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
				t.Errorf("Content-Type %q past net/http's limit, want its text/plain", resp.Header.Get("Content-Type"))
			}
			if got := testenv.Metrics(t, nodes[1].URL)[counter]; got != want {
				t.Errorf("%s = %v, want %v", counter, got, want)
			}
			x.stillWorks(t, "after "+tt.name)
		})
	}
}
