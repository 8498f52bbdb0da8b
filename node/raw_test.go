package node_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/internal/wsclient"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// cluster starts n nodes against r, each with its own Redis broker.
func cluster(t *testing.T, r *testenv.Redis, n int) []*nodetest.Server {
	t.Helper()
	return nodetest.Cluster(t, r.URL(), n)
}

func single(t *testing.T) *nodetest.Server {
	t.Helper()
	return nodetest.Start(t, nodetest.Config(), pubsub.NewMemory())
}

// TestRawAcrossNodes: with two and three nodes on one Redis, a subscriber
// on every node receives what is published on any node, exactly once and
// in order; the sender does not get its own messages.
func TestRawAcrossNodes(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d nodes", n), func(t *testing.T) {
			nodes := cluster(t, testenv.StartRedis(t), n)
			var conns []*websocket.Conn
			for _, s := range nodes {
				conns = append(conns, nodetest.Dial(t, s.WS+"/ws/lobby", nil))
			}
			const each = 20
			for i, c := range conns {
				for j := range each {
					nodetest.Write(t, c, fmt.Sprintf("from %d #%d", i, j))
				}
			}
			for i, c := range conns {
				next := make([]int, len(conns))
				for range each * (len(conns) - 1) {
					var from, seq int
					msg := nodetest.ReadText(t, c)
					if _, err := fmt.Sscanf(msg, "from %d #%d", &from, &seq); err != nil {
						t.Fatalf("conn %d read %q", i, msg)
					}
					if from == i {
						t.Fatalf("conn %d received its own message %q", i, msg)
					}
					if seq != next[from] {
						t.Fatalf("conn %d: from %d got #%d, want #%d", i, from, seq, next[from])
					}
					next[from]++
				}
			}
			// Exactly once: a marker from conn 1 is the next message conn 0
			// sees; a duplicate would come first.
			nodetest.Write(t, conns[1], "marker")
			if got := nodetest.ReadText(t, conns[0]); got != "marker" {
				t.Fatalf("after all messages conn 0 read %q, want marker", got)
			}
		})
	}
}

func TestRawEcho(t *testing.T) {
	nodes := cluster(t, testenv.StartRedis(t), 2)
	self := nodetest.Dial(t, nodes[0].WS+"/ws/room?echo=true", nil)
	other := nodetest.Dial(t, nodes[1].WS+"/ws/room", nil)
	nodetest.Write(t, self, "hello")
	if got := nodetest.ReadText(t, self); got != "hello" {
		t.Errorf("echo=true sender read %q, want its own hello", got)
	}
	if got := nodetest.ReadText(t, other); got != "hello" {
		t.Errorf("other node read %q, want hello", got)
	}
}

func TestRawOpcodesPreserved(t *testing.T) {
	s := single(t)
	a := nodetest.Dial(t, s.WS+"/ws/bin", nil)
	b := nodetest.Dial(t, s.WS+"/ws/bin", nil)
	payload := []byte{0, 0xff, 0xfe, 'x'}
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	if err := a.Write(ctx, websocket.MessageBinary, payload); err != nil {
		t.Fatal(err)
	}
	nodetest.Write(t, a, "text")
	if typ, got := nodetest.Read(t, b); typ != websocket.MessageBinary || got != string(payload) {
		t.Errorf("read %v %q, want binary %q", typ, got, payload)
	}
	if typ, got := nodetest.Read(t, b); typ != websocket.MessageText || got != "text" {
		t.Errorf("read %v %q, want text", typ, got)
	}
}

// TestPlainRedisPublish: a PUBLISH from any Redis client reaches the
// subscribers of the channel on every node as a text frame.
func TestPlainRedisPublish(t *testing.T) {
	r := testenv.StartRedis(t)
	nodes := cluster(t, r, 2)
	a := nodetest.Dial(t, nodes[0].WS+"/ws/news", nil)
	b := nodetest.Dial(t, nodes[1].WS+"/ws/news", nil)
	if err := r.Client(t).Publish(context.Background(), "relay:news", "hello").Err(); err != nil {
		t.Fatal(err)
	}
	for i, c := range []*websocket.Conn{a, b} {
		if typ, got := nodetest.Read(t, c); typ != websocket.MessageText || got != "hello" {
			t.Errorf("node %d subscriber read %v %q, want text hello", i+1, typ, got)
		}
	}
}

// TestRedisRestartRaw: Redis stopped and started mid-test; subscribers on
// both nodes are closed with 4005 (messages may have been lost), and those
// that connect again receive what is published after it returns.
func TestRedisRestartRaw(t *testing.T) {
	r := testenv.StartRedis(t)
	nodes := cluster(t, r, 2)
	a := nodetest.Dial(t, nodes[0].WS+"/ws/news", nil)
	b := nodetest.Dial(t, nodes[1].WS+"/ws/news", nil)
	nodetest.Write(t, a, "before")
	if got := nodetest.ReadText(t, b); got != "before" {
		t.Fatalf("read %q, want before", got)
	}
	r.Stop()
	r.Start()
	for i, conn := range []*websocket.Conn{a, b} {
		if code, _ := nodetest.ReadClose(t, conn); code != protocol.CloseMessagesLost {
			t.Errorf("subscriber %d closed with %d, want %d", i, code, protocol.CloseMessagesLost)
		}
	}
	a = nodetest.Dial(t, nodes[0].WS+"/ws/news", nil)
	b = nodetest.Dial(t, nodes[1].WS+"/ws/news", nil)
	c := nodetest.Dial(t, nodes[1].WS+"/ws/news", nil)
	nodetest.Write(t, c, "after")
	for i, conn := range []*websocket.Conn{a, b} {
		if got := nodetest.ReadText(t, conn); got != "after" {
			t.Errorf("subscriber %d read %q, want after", i, got)
		}
	}
}

func TestNoTrafficWithoutLocalInterest(t *testing.T) {
	r := testenv.StartRedis(t)
	nodes := cluster(t, r, 2)
	c := nodetest.Dial(t, nodes[0].WS+"/ws/only-here", nil)
	if got := r.NumSub(t, "relay:only-here")["relay:only-here"]; got != 1 {
		t.Fatalf("NUMSUB = %d with one node interested, want 1", got)
	}
	c.Close(websocket.StatusNormalClosure, "")
	testenv.WaitFor(t, 10*time.Second, "the node's subscription to go", func() bool {
		return r.NumSub(t, "relay:only-here")["relay:only-here"] == 0
	})
}

func TestEcho(t *testing.T) {
	s := single(t)
	for _, path := range []string{"/echo", "/"} {
		c := nodetest.Dial(t, s.WS+path, nil)
		nodetest.Write(t, c, "Hello, Server!")
		if got := nodetest.ReadText(t, c); got != "Server received: Hello, Server!" {
			t.Errorf("%s answered %q", path, got)
		}
	}
}

func TestNodeHeader(t *testing.T) {
	s := single(t)
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, s.WS+"/ws/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if got := resp.Header.Get("X-Relay-Node"); got != s.ID() {
		t.Errorf("X-Relay-Node = %q, want %q", got, s.ID())
	}
}

// TestBadInput: each bad request gets its documented answer while a
// well-behaved client on the same node keeps working.
func TestBadInput(t *testing.T) {
	s := single(t)
	good := nodetest.Dial(t, s.WS+"/ws/good", nil)
	peer := nodetest.Dial(t, s.WS+"/ws/good", nil)
	stillWorks := func(t *testing.T, msg string) {
		t.Helper()
		nodetest.Write(t, peer, msg)
		if got := nodetest.ReadText(t, good); got != msg {
			t.Fatalf("well-behaved client read %q, want %q", got, msg)
		}
	}

	httpTests := []struct {
		name, path string
		upgrade    bool
		status     int
		code       string
	}{
		{"unknown path", "/nope", false, http.StatusNotFound, "not_found"},
		{"plain GET of /ws/x", "/ws/x", false, http.StatusUpgradeRequired, "upgrade_required"},
		{"bad channel", "/ws/has%20space", true, http.StatusBadRequest, "invalid_channel"},
		{"long channel", "/ws/" + strings.Repeat("a", 256), true, http.StatusBadRequest, "invalid_channel"},
		{"bad echo flag", "/ws/x?echo=maybe", true, http.StatusBadRequest, "bad_request"},
	}
	for _, tt := range httpTests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", s.URL+tt.path, nil)
			if tt.upgrade {
				wsclient.SetUpgrade(req.Header, wsclient.NewKey())
			}
			status, code := doJSON(t, req)
			if status != tt.status || code != tt.code {
				t.Errorf("GET %s = %d %q, want %d %q", tt.path, status, code, tt.status, tt.code)
			}
			stillWorks(t, tt.name)
		})
	}

	t.Run("message too big", func(t *testing.T) {
		c := nodetest.Dial(t, s.WS+"/ws/good", nil)
		ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
		defer cancel()
		c.Write(ctx, websocket.MessageText, make([]byte, 64<<10+1))
		if code, _ := nodetest.ReadClose(t, c); code != websocket.StatusMessageTooBig {
			t.Errorf("close code %d, want 1009", code)
		}
		stillWorks(t, "after too big")
	})
}

func TestAuth(t *testing.T) {
	cfg := nodetest.Config()
	cfg.AuthTokens = node.Secrets{"expected_token", "second"}
	s := nodetest.Start(t, cfg, pubsub.NewMemory())
	for _, h := range []string{"expected_token", "Bearer expected_token", "bearer second"} {
		c := nodetest.Dial(t, s.WS+"/echo", http.Header{"Authorization": {h}})
		c.Close(websocket.StatusNormalClosure, "")
	}
	for _, h := range []string{"", "wrong", "Bearer ", "Bearer wrong", "expected_token2", "Basic expected_token"} {
		ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
		c, resp, err := websocket.Dial(ctx, s.WS+"/ws/x", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {h}}})
		cancel()
		if err == nil {
			c.CloseNow()
			t.Errorf("Authorization %q: upgraded, want 401", h)
			continue
		}
		if resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %v, want HTTP 401", h, err)
		}
	}
}

func doJSON(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Code, Message string }
	if err := jsonDecode(resp, &body); err != nil {
		t.Fatalf("%s %s: body is not a JSON error: %v", req.Method, req.URL.Path, err)
	}
	if body.Message == "" {
		t.Errorf("%s %s: error without a message", req.Method, req.URL.Path)
	}
	return resp.StatusCode, body.Code
}

// TestRawPublishUnanswered: a raw-mode message is published without
// waiting for Redis's answer (pubsub.LaterPublisher), but one left
// unanswered past the broker's Timeout still closes its sender with 1013
// and the documented reason, while the node keeps serving the others.
func TestRawPublishUnanswered(t *testing.T) {
	r := testenv.StartRedis(t)
	nodes := nodetest.ClusterWith(t, r.URL(), 1, nodetest.Options{Redis: func(c *pubsub.RedisConfig) {
		c.Timeout = 300 * time.Millisecond
	}})
	sender := nodetest.Dial(t, nodes[0].WS+"/ws/frozen?echo=true", nil)
	bystander := nodetest.Dial(t, nodes[0].WS+"/ws/frozen", nil)
	nodetest.Write(t, sender, "answered")
	for _, c := range []*websocket.Conn{sender, bystander} {
		if got := nodetest.ReadText(t, c); got != "answered" {
			t.Fatalf("read %q, want answered", got)
		}
	}
	r.Pause()
	nodetest.Write(t, sender, "unanswered")
	if code, reason := nodetest.ReadClose(t, sender); code != protocol.CloseTryAgainLater || reason != "broker unavailable, try again later" {
		t.Errorf("sender closed with %d %q after an unanswered publish; want 1013 broker unavailable, try again later", code, reason)
	}
	r.Resume()
	// The bystander kept its connection: it gets what comes next.
	next := nodetest.Dial(t, nodes[0].WS+"/ws/frozen", nil)
	nodetest.Write(t, next, "after")
	for {
		got := nodetest.ReadText(t, bystander)
		if got == "after" {
			break
		}
		if got != "unanswered" { // Redis ran it once resumed: its outcome was unknown
			t.Fatalf("bystander read %q, want unanswered or after", got)
		}
	}
}
