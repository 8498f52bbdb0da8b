package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

// protoClient is a protocol-mode client. It reads frames either way the
// server may send them: one JSON object per frame, or several joined with
// "\n"; next returns one object at a time.
type protoClient struct {
	t       testing.TB
	ws      *websocket.Conn
	pending []string
	frames  int // frames read
	joined  int // frames that held more than one object
}

func dialProto(t testing.TB, url string) *protoClient {
	t.Helper()
	return &protoClient{t: t, ws: nodetest.Dial(t, url, nil)}
}

func (p *protoClient) send(s string) {
	p.t.Helper()
	nodetest.Write(p.t, p.ws, s)
}

// next returns the next JSON object the server sent.
func (p *protoClient) next() string {
	p.t.Helper()
	if len(p.pending) == 0 {
		msg := nodetest.ReadText(p.t, p.ws)
		p.pending = strings.Split(msg, "\n")
		p.frames++
		if len(p.pending) > 1 {
			p.joined++
		}
	}
	s := p.pending[0]
	p.pending = p.pending[1:]
	if !json.Valid([]byte(s)) {
		p.t.Fatalf("server sent %q, not a JSON object per line", s)
	}
	return s
}

// expect fails the test unless the next object is want.
func (p *protoClient) expect(want string) {
	p.t.Helper()
	if got := p.next(); got != want {
		p.t.Fatalf("read %s, want %s", got, want)
	}
}

// do sends cmd and expects want as the next object.
func (p *protoClient) do(cmd, want string) {
	p.t.Helper()
	p.send(cmd)
	p.expect(want)
}

func (p *protoClient) subscribe(id int, channel string) {
	p.t.Helper()
	p.do(fmt.Sprintf(`{"id":%d,"cmd":"subscribe","channel":%q}`, id, channel), fmt.Sprintf(`{"id":%d,"result":{}}`, id))
}

// push reads the next object as a push.
func (p *protoClient) push() protocol.Push {
	p.t.Helper()
	s := p.next()
	var m protocol.Push
	if err := json.Unmarshal([]byte(s), &m); err != nil || m.Channel == "" {
		p.t.Fatalf("read %s, want a push", s)
	}
	return m
}

// reply reads the next object as a reply.
func (p *protoClient) reply() protocol.Reply {
	p.t.Helper()
	s := p.next()
	var r protocol.Reply
	if err := json.Unmarshal([]byte(s), &r); err != nil || (r.Result == nil && r.Error == nil) {
		p.t.Fatalf("read %s, want a reply", s)
	}
	return r
}

// protoCluster starts n nodes against r like cluster, and returns their
// brokers too.
func protoCluster(t *testing.T, r *testenv.Redis, n int) ([]*nodetest.Server, []*pubsub.Redis) {
	t.Helper()
	var nodes []*nodetest.Server
	var brokers []*pubsub.Redis
	for i := range n {
		b, err := pubsubtest.RunRedis(t, pubsub.RedisConfig{URL: r.URL(), Prefix: "relay:", Subscribers: 2, Pipelines: 2, Timeout: 3 * time.Second}, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := nodetest.Config()
		cfg.NodeID = fmt.Sprintf("node-%d", i+1)
		s := nodetest.Start(t, cfg, b)
		t.Cleanup(func() { b.Close() })
		nodes = append(nodes, s)
		brokers = append(brokers, b)
	}
	return nodes, brokers
}

func startProto(t *testing.T, edit func(*node.Config)) *nodetest.Server {
	t.Helper()
	cfg := nodetest.Config()
	if edit != nil {
		edit(&cfg)
	}
	return nodetest.Start(t, cfg, pubsub.NewMemory())
}

// TestProtoAcrossNodes: a protocol client on node 1 subscribed to three
// channels receives, in order and exactly once each, what raw and protocol
// clients on node 2 publish to them; unsubscribing from one channel stops
// its delivery only.
func TestProtoAcrossNodes(t *testing.T) {
	nodes := cluster(t, testenv.StartRedis(t), 2)
	p := dialProto(t, nodes[0].WS+"/ws")
	for i, ch := range []string{"a", "b", "c"} {
		p.subscribe(i+1, ch)
	}
	rawA := nodetest.Dial(t, nodes[1].WS+"/ws/a", nil)
	rawB := nodetest.Dial(t, nodes[1].WS+"/ws/b", nil)
	rawC := nodetest.Dial(t, nodes[1].WS+"/ws/c", nil) // reads protocol publishes
	q := dialProto(t, nodes[1].WS+"/ws")

	const each = 30
	for i := range each {
		nodetest.Write(t, rawA, fmt.Sprintf(`{"src":"raw","n":%d}`, i))
		nodetest.Write(t, rawB, fmt.Sprintf("raw-b #%d", i))
		for j, ch := range []string{"a", "b", "c"} {
			q.send(fmt.Sprintf(`{"id":%d,"cmd":"publish","channel":%q,"data":{"src":"proto","n":%d}}`, 3*i+j, ch, i))
		}
	}
	for id := range 3 * each {
		q.expect(fmt.Sprintf(`{"id":%d,"result":{}}`, id))
	}

	// Every message once, in order per channel and publisher.
	next := map[string]int{}
	for range 5 * each {
		m := p.push()
		var src string
		var n int
		var obj struct {
			Src string
			N   int
		}
		var text string
		switch {
		case json.Unmarshal(m.Data, &obj) == nil:
			src, n = obj.Src, obj.N
		case json.Unmarshal(m.Data, &text) == nil:
			if _, err := fmt.Sscanf(text, "raw-b #%d", &n); err != nil {
				t.Fatalf("push %+v: unexpected data", m)
			}
			src = "raw"
		default:
			t.Fatalf("push %+v: unexpected data", m)
		}
		key := m.Channel + "/" + src
		if n != next[key] {
			t.Fatalf("push on %s from %s: #%d, want #%d", m.Channel, src, n, next[key])
		}
		next[key]++
	}
	for _, key := range []string{"a/raw", "a/proto", "b/raw", "b/proto", "c/proto"} {
		if next[key] != each {
			t.Errorf("%s: %d pushes, want %d", key, next[key], each)
		}
	}
	for i := range each { // a raw subscriber gets protocol publishes as JSON text
		if got, want := nodetest.ReadText(t, rawC), fmt.Sprintf(`{"src":"proto","n":%d}`, i); got != want {
			t.Fatalf("raw subscriber of c read %s, want %s", got, want)
		}
	}
	// Exactly once: a marker on c is the next push; a duplicate would come
	// first.
	q.do(`{"id":"m1","cmd":"publish","channel":"c","data":"marker"}`, `{"id":"m1","result":{}}`)
	p.expect(`{"channel":"c","data":"marker"}`)

	// Unsubscribe from b: a and c still arrive, b no more. A raw
	// subscriber of b on node 1, after p in the hub's list of b, witnesses
	// that node 1 has delivered a message of b.
	witness := nodetest.Dial(t, nodes[0].WS+"/ws/b", nil)
	p.do(`{"id":4,"cmd":"unsubscribe","channel":"b"}`, `{"id":4,"result":{}}`)
	nodetest.Write(t, rawB, "b after unsubscribe")
	if got := nodetest.ReadText(t, witness); got != "b after unsubscribe" {
		t.Fatalf("witness of b read %q", got)
	}
	nodetest.Write(t, rawA, `"a after"`)
	p.expect(`{"channel":"a","data":"a after"}`)
	q.do(`{"id":"m2","cmd":"publish","channel":"c","data":"c after"}`, `{"id":"m2","result":{}}`)
	p.expect(`{"channel":"c","data":"c after"}`)
	p.do(`{"id":5,"cmd":"ping"}`, `{"id":5,"result":{}}`)
}

// TestProtoPublishRedisDown: with Redis stopped a publish is answered
// unavailable and the connection stays usable; once Redis is back a
// publish is acknowledged and delivered on the other node.
func TestProtoPublishRedisDown(t *testing.T) {
	r := testenv.StartRedis(t)
	nodes, brokers := protoCluster(t, r, 2)
	p := dialProto(t, nodes[0].WS+"/ws")
	s := dialProto(t, nodes[1].WS+"/ws")
	p.subscribe(1, "x")
	s.subscribe(1, "x")
	p.do(`{"id":2,"cmd":"publish","channel":"x","data":"before"}`, `{"id":2,"result":{}}`)
	s.expect(`{"channel":"x","data":"before"}`)

	r.Stop()
	p.do(`{"id":3,"cmd":"publish","channel":"x","data":"lost?"}`,
		`{"id":3,"error":{"code":"unavailable","message":"the broker is unavailable, try again later"}}`)
	p.do(`{"id":4,"cmd":"ping"}`, `{"id":4,"result":{}}`)
	p.do(`{"id":"y","cmd":"subscribe","channel":"y"}`,
		`{"id":"y","error":{"code":"unavailable","message":"the broker is unavailable, try again later"}}`)

	r.Start()
	testenv.WaitFor(t, 20*time.Second, "Redis back for both nodes", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return r.NumSub(t, "relay:x")["relay:x"] == 2 && brokers[0].Ping(ctx) == nil
	})
	// Both subscribers are told that messages of x may have been lost.
	p.expect(`{"gap":{"channel":"x"}}`)
	s.expect(`{"gap":{"channel":"x"}}`)
	p.do(`{"id":5,"cmd":"publish","channel":"x","data":"after"}`, `{"id":5,"result":{}}`)
	// The unacknowledged publish was not delivered; the next push is the
	// acknowledged one.
	s.expect(`{"channel":"x","data":"after"}`)
	// The failed subscribe left no subscription behind: subscribing works.
	p.subscribe(6, "y")
}

// TestProtoPlainRedisPublish: a PUBLISH from any Redis client reaches
// protocol-mode subscribers: valid JSON as its value, other UTF-8 text as a
// string, anything else as base64.
func TestProtoPlainRedisPublish(t *testing.T) {
	r := testenv.StartRedis(t)
	nodes := cluster(t, r, 2)
	p := dialProto(t, nodes[1].WS+"/ws")
	p.subscribe(1, "ext")
	rc := r.Client(t)
	for _, payload := range []string{`{"from": "redis-cli"}`, "hello", "\xff\x00"} {
		if err := rc.Publish(context.Background(), "relay:ext", payload).Err(); err != nil {
			t.Fatal(err)
		}
	}
	p.expect(`{"channel":"ext","data":{"from":"redis-cli"}}`)
	p.expect(`{"channel":"ext","data":"hello"}`)
	p.expect(`{"channel":"ext","data":"/wA=","binary":true}`)
}

// TestProtoBadInput: each bad command gets its documented error, with the
// command's id when it has a readable one, and the connection stays usable.
func TestProtoBadInput(t *testing.T) {
	s := startProto(t, nil)
	p := dialProto(t, s.WS+"/ws")
	p.subscribe(1, "taken")
	tests := []struct {
		name   string
		in     string
		binary bool
		id     string // "" for none
		code   protocol.Code
	}{
		{"invalid JSON", `{"id":1,"cmd":`, false, "", protocol.CodeBadRequest},
		{"not an object", `["ping"]`, false, "", protocol.CodeBadRequest},
		{"string", `"ping"`, false, "", protocol.CodeBadRequest},
		{"bad id", `{"id":true,"cmd":"ping"}`, false, "", protocol.CodeBadRequest},
		{"unknown command", `{"id":2,"cmd":"jump"}`, false, "2", protocol.CodeUnknownCommand},
		{"missing cmd", `{"id":3}`, false, "3", protocol.CodeBadRequest},
		{"missing channel", `{"id":4,"cmd":"subscribe"}`, false, "4", protocol.CodeBadRequest},
		{"channel not a string", `{"id":5,"cmd":"subscribe","channel":5}`, false, "5", protocol.CodeBadRequest},
		{"missing data", `{"id":6,"cmd":"publish","channel":"x"}`, false, "6", protocol.CodeBadRequest},
		{"bad channel", `{"id":"s","cmd":"subscribe","channel":"no spaces"}`, false, `"s"`, protocol.CodeInvalidChannel},
		{"double subscribe", `{"id":7,"cmd":"subscribe","channel":"taken"}`, false, "7", protocol.CodeAlreadySubscribed},
		{"unsubscribe not subscribed", `{"id":8,"cmd":"unsubscribe","channel":"other"}`, false, "8", protocol.CodeNotSubscribed},
		{"no id still answered", `{"cmd":"unsubscribe","channel":"other"}`, false, "", protocol.CodeNotSubscribed},
		{"binary frame", `{"id":9,"cmd":"ping"}`, true, "", protocol.CodeBadRequest},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.t = t
			if tt.binary {
				ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
				defer cancel()
				if err := p.ws.Write(ctx, websocket.MessageBinary, []byte(tt.in)); err != nil {
					t.Fatal(err)
				}
			} else {
				p.send(tt.in)
			}
			r := p.reply()
			if r.Error == nil || r.Error.Code != tt.code || string(r.ID) != tt.id || r.Error.Message == "" {
				t.Errorf("%s: reply id %s error %+v, want id %q code %s", tt.in, r.ID, r.Error, tt.id, tt.code)
			}
			p.do(fmt.Sprintf(`{"id":"ok%d","cmd":"ping"}`, i), fmt.Sprintf(`{"id":"ok%d","result":{}}`, i))
		})
	}
	// Still subscribed and delivering.
	p.t = t
	q := dialProto(t, s.WS+"/ws")
	q.do(`{"id":1,"cmd":"publish","channel":"taken","data":true}`, `{"id":1,"result":{}}`)
	p.expect(`{"channel":"taken","data":true}`)
	// A success without id has no reply: the ping's reply comes next.
	p.send(`{"cmd":"ping"}`)
	p.do(`{"id":"last","cmd":"ping"}`, `{"id":"last","result":{}}`)
}

// TestProtoErrorFlood: the RELAY_PROTO_MAX_ERRORS-th error within the
// window is answered, then the connection is closed with 1008.
func TestProtoErrorFlood(t *testing.T) {
	s := startProto(t, func(c *node.Config) {
		c.ProtoMaxErrors = 10
		c.ProtoErrorWindow = time.Hour // no timing in the test
	})
	bystander := dialProto(t, s.WS+"/ws")
	p := dialProto(t, s.WS+"/ws")
	for i := range 9 {
		p.send("garbage")
		if r := p.reply(); r.Error == nil || r.Error.Code != protocol.CodeBadRequest {
			t.Fatalf("garbage #%d: reply %+v, want bad_request", i, r.Error)
		}
	}
	p.do(`{"id":1,"cmd":"ping"}`, `{"id":1,"result":{}}`) // successes do not count
	p.send("garbage")
	if r := p.reply(); r.Error == nil || r.Error.Code != protocol.CodeBadRequest {
		t.Fatalf("garbage #10: reply %+v, want bad_request", r.Error)
	}
	code, reason := nodetest.ReadClose(t, p.ws)
	if code != websocket.StatusPolicyViolation || reason != "too many bad commands" {
		t.Errorf("close %d %q, want 1008 %q", code, reason, "too many bad commands")
	}
	bystander.do(`{"id":1,"cmd":"ping"}`, `{"id":1,"result":{}}`)
}

func TestProtoLimits(t *testing.T) {
	t.Run("channels", func(t *testing.T) {
		s := startProto(t, func(c *node.Config) { c.ProtoMaxChannels = 2 })
		p := dialProto(t, s.WS+"/ws")
		p.subscribe(1, "one")
		p.subscribe(2, "two")
		p.do(`{"id":3,"cmd":"subscribe","channel":"three"}`,
			`{"id":3,"error":{"code":"limit_exceeded","message":"at most 2 channels per connection"}}`)
		p.do(`{"id":4,"cmd":"unsubscribe","channel":"one"}`, `{"id":4,"result":{}}`)
		p.subscribe(5, "three")
	})
	t.Run("commands per second", func(t *testing.T) {
		s := startProto(t, func(c *node.Config) {
			c.ProtoCommandRate = 0.001 // one more every 1000 s: none within the test
			c.ProtoCommandBurst = 3
		})
		p := dialProto(t, s.WS+"/ws")
		for i := range 3 {
			p.do(fmt.Sprintf(`{"id":%d,"cmd":"ping"}`, i), fmt.Sprintf(`{"id":%d,"result":{}}`, i))
		}
		p.do(`{"id":3,"cmd":"ping"}`,
			`{"id":3,"error":{"code":"limit_exceeded","message":"more than 0.001 commands per second: slow down"}}`)
	})
	t.Run("message size", func(t *testing.T) {
		s := startProto(t, nil)
		p := dialProto(t, s.WS+"/ws")
		big := `{"cmd":"publish","channel":"x","data":"` + strings.Repeat("x", 64<<10) + `"}`
		p.send(big)
		if code, _ := nodetest.ReadClose(t, p.ws); code != websocket.StatusMessageTooBig {
			t.Errorf("close code %d, want 1009", code)
		}
	})
}

// TestProtoMixedModes: raw and protocol clients of one channel see each
// other's messages in the documented forms; a protocol publisher gets its
// own messages only with ?echo=true.
func TestProtoMixedModes(t *testing.T) {
	s := startProto(t, nil)
	p := dialProto(t, s.WS+"/ws")
	e := dialProto(t, s.WS+"/ws?echo=true")
	p.subscribe(1, "m")
	e.subscribe(1, "m")
	raw := nodetest.Dial(t, s.WS+"/ws/m", nil)

	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	if err := raw.Write(ctx, websocket.MessageBinary, []byte{0, 0xff, 'x'}); err != nil {
		t.Fatal(err)
	}
	nodetest.Write(t, raw, "{ \"a\": [1, 2] }")
	nodetest.Write(t, raw, "plain text")
	for _, c := range []*protoClient{p, e} {
		c.expect(`{"channel":"m","data":"AP94","binary":true}`)
		c.expect(`{"channel":"m","data":{"a":[1,2]}}`)
		c.expect(`{"channel":"m","data":"plain text"}`)
	}

	p.do(`{"id":2,"cmd":"publish","channel":"m","data":{"b": "from p"}}`, `{"id":2,"result":{}}`)
	if got := nodetest.ReadText(t, raw); got != `{"b":"from p"}` {
		t.Errorf("raw subscriber read %s, want the JSON text of data", got)
	}
	e.expect(`{"channel":"m","data":{"b":"from p"}}`)

	e.send(`{"id":3,"cmd":"publish","channel":"m","data":"from e"}`)
	if got := nodetest.ReadText(t, raw); got != `"from e"` {
		t.Errorf("raw subscriber read %s, want \"from e\"", got)
	}
	// p did not get its own message: the next push is e's.
	p.expect(`{"channel":"m","data":"from e"}`)
	// e gets its own (echo=true), before or after the reply.
	got := []string{e.next(), e.next()}
	if !(got[0] == `{"id":3,"result":{}}` && got[1] == `{"channel":"m","data":"from e"}`) &&
		!(got[1] == `{"id":3,"result":{}}` && got[0] == `{"channel":"m","data":"from e"}`) {
		t.Errorf("echo=true publisher read %q, want its reply and its own push", got)
	}
}

// TestProtoBatching: with batching, pending pushes may share a frame split
// by "\n"; with ?batch=false every frame is one object. Either way the
// reader gets every message exactly once, in order.
func TestProtoBatching(t *testing.T) {
	s := startProto(t, nil)
	batched := dialProto(t, s.WS+"/ws")
	single := dialProto(t, s.WS+"/ws?batch=false")
	batched.subscribe(1, "b")
	single.subscribe(1, "b")
	pub := dialProto(t, s.WS+"/ws")

	const n = 2000
	pad := strings.Repeat("x", 200)
	for i := range n {
		pub.send(fmt.Sprintf(`{"cmd":"publish","channel":"b","data":{"n":%d,"pad":%q}}`, i, pad))
	}
	pub.do(`{"id":"done","cmd":"ping"}`, `{"id":"done","result":{}}`)
	for _, c := range []*protoClient{batched, single} {
		for i := range n {
			want := fmt.Sprintf(`{"channel":"b","data":{"n":%d,"pad":%q}}`, i, pad)
			if got := c.next(); got != want {
				t.Fatalf("message %d: read %.60s…, want %.60s…", i, got, want)
			}
		}
	}
	// Exactly once: the next is a marker.
	pub.do(`{"id":"m","cmd":"publish","channel":"b","data":"marker"}`, `{"id":"m","result":{}}`)
	batched.expect(`{"channel":"b","data":"marker"}`)
	single.expect(`{"channel":"b","data":"marker"}`)
	if single.joined != 0 {
		t.Errorf("batch=false: %d frames held several objects, want none", single.joined)
	}
	t.Logf("batch=true: %d messages in %d frames, %d of them joined", n+1, batched.frames, batched.joined)
}

func TestProtoQueryFlags(t *testing.T) {
	s := startProto(t, nil)
	for _, q := range []string{"?echo=maybe", "?batch=sometimes"} {
		ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
		c, resp, err := websocket.Dial(ctx, s.WS+"/ws"+q, nil)
		cancel()
		if err == nil {
			c.CloseNow()
			t.Errorf("GET /ws%s upgraded, want 400", q)
			continue
		}
		if resp == nil || resp.StatusCode != 400 {
			t.Errorf("GET /ws%s: %v, want HTTP 400", q, err)
		}
	}
}

// TestProtoConfig: invalid protocol-mode limits fail node.New with a
// message that names the variable; zero means no limit.
func TestProtoConfig(t *testing.T) {
	tests := []struct {
		edit func(*node.Config)
		want string // "" for valid
	}{
		{func(c *node.Config) {}, ""},
		{func(c *node.Config) { c.ProtoMaxChannels = -1 }, "RELAY_PROTO_MAX_CHANNELS"},
		{func(c *node.Config) { c.ProtoCommandRate = -1 }, "RELAY_PROTO_COMMAND_RATE"},
		{func(c *node.Config) { c.ProtoCommandRate, c.ProtoCommandBurst = 10, 0 }, "RELAY_PROTO_COMMAND_BURST"},
		{func(c *node.Config) { c.ProtoMaxErrors = -1 }, "RELAY_PROTO_MAX_ERRORS"},
		{func(c *node.Config) { c.ProtoMaxErrors, c.ProtoErrorWindow = 5, 0 }, "RELAY_PROTO_ERROR_WINDOW"},
		{func(c *node.Config) {
			c.ProtoMaxChannels, c.ProtoCommandRate, c.ProtoCommandBurst = 128, 100, 200
			c.ProtoMaxErrors, c.ProtoErrorWindow = 10, 10*time.Second
		}, ""},
	}
	for _, tt := range tests {
		cfg := nodetest.Config()
		tt.edit(&cfg)
		_, err := node.New(cfg, pubsub.NewMemory(), prometheus.NewRegistry(), nil)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("node.New(%+v) = %v, want no error", cfg, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("node.New(%+v) = %v, want an error naming %s", cfg, err, tt.want)
		}
	}
}
