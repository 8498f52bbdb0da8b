package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

// feedClient is a protocol-mode client for goroutines other than the
// test's: its methods return errors instead of failing the test.
type feedClient struct {
	ws      *websocket.Conn
	pending []string
}

func dialFeed(ctx context.Context, url string) (*feedClient, error) {
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	return &feedClient{ws: ws}, nil
}

func (f *feedClient) send(ctx context.Context, s string) error {
	return f.ws.Write(ctx, websocket.MessageText, []byte(s))
}

func (f *feedClient) next(ctx context.Context) (string, error) {
	if len(f.pending) == 0 {
		_, b, err := f.ws.Read(ctx)
		if err != nil {
			return "", err
		}
		f.pending = strings.Split(string(b), "\n")
	}
	s := f.pending[0]
	f.pending = f.pending[1:]
	return s, nil
}

// feedMsg is what the test's publishers publish: publisher p's n-th
// message; n is -1 for the last.
type feedMsg struct{ P, N int }

// serverMsg is any object the server sends: a reply, a push or a gap push.
type serverMsg struct {
	ID     *int                      `json:"id"`
	Result *protocol.SubscribeResult `json:"result"`
	Error  *protocol.Error           `json:"error"`
	Offset uint64                    `json:"offset"`
	Data   *feedMsg                  `json:"data"`
	Gap    *struct{ Channel string } `json:"gap"`
}

func (f *feedClient) read(ctx context.Context) (serverMsg, error) {
	s, err := f.next(ctx)
	if err != nil {
		return serverMsg{}, err
	}
	var m serverMsg
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return m, fmt.Errorf("server sent %q: %w", s, err)
	}
	return m, nil
}

// publisher publishes feedMsg{P: id, N: 1, 2, …} to channel, each waiting
// for its reply, until stop is closed (or max messages), then publishes
// the last message (N -1) until it is acknowledged. acked records what was
// acknowledged.
type publisher struct {
	id      int
	channel string
	acked   sync.Map     // N → true
	count   atomic.Int64 // acknowledged
	errs    atomic.Int64 // answered unavailable
	tick    chan struct{}
}

func (p *publisher) run(ctx context.Context, url string, stop <-chan struct{}) error {
	const max = 20000
	c, err := dialFeed(ctx, url)
	if err != nil {
		return err
	}
	defer c.ws.CloseNow()
	pace := time.NewTicker(5 * time.Millisecond) // retries while Redis is down
	defer pace.Stop()
	publish := func(n int) (bool, error) {
		data, _ := json.Marshal(feedMsg{p.id, n})
		if err := c.send(ctx, fmt.Sprintf(`{"id":%d,"cmd":"publish","channel":%q,"data":%s}`, n+1, p.channel, data)); err != nil {
			return false, err
		}
		m, err := c.read(ctx)
		if err != nil {
			return false, err
		}
		if m.Error != nil {
			if m.Error.Code != protocol.CodeUnavailable {
				return false, fmt.Errorf("publish: %v", m.Error)
			}
			p.errs.Add(1)
			<-pace.C
			return false, nil
		}
		return true, nil
	}
	for n := 1; n <= max; n++ {
		select {
		case <-stop:
			n = max + 1
			continue
		default:
		}
		ok, err := publish(n)
		if err != nil {
			return err
		}
		if ok {
			p.acked.Store(n, true)
			p.count.Add(1)
			select {
			case p.tick <- struct{}{}:
			default:
			}
		}
	}
	for range 1000 {
		ok, err := publish(-1)
		if ok || err != nil {
			return err
		}
	}
	return errors.New("last message never acknowledged")
}

// waitCount waits until every publisher has at least n acknowledged.
func waitCount(t *testing.T, pubs []*publisher, n int64) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for _, p := range pubs {
		for p.count.Load() < n {
			select {
			case <-p.tick:
			case <-deadline:
				t.Fatalf("publisher %d: %d acknowledged, want %d", p.id, p.count.Load(), n)
			}
		}
	}
}

// TestRecoverOnOtherNode: a subscriber leaves, 100 messages are published
// by a publisher that runs throughout, and it subscribes again on the
// other node with since: it gets exactly the missed messages in order,
// then the live ones, with no duplicate and no gap at the seam.
func TestRecoverOnOtherNode(t *testing.T) {
	r := testenv.StartRedis(t)
	nodes := nodetest.ClusterWith(t, r.URL(), 2, nodetest.Options{Config: func(cfg *node.Config) {
		withHistory(1000)(cfg)
		cfg.ProtoCommandRate = 0
	}})
	pub := &publisher{id: 1, channel: "feed", tick: make(chan struct{}, 1)}
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- pub.run(context.Background(), nodes[1].WS+"/ws", stop) }()
	defer func() {
		close(stop)
		if err := <-done; err != nil {
			t.Errorf("publisher: %v", err)
		}
	}()

	s := dialProto(t, nodes[0].WS+"/ws")
	pos := s.subscribeAt(1, "feed")
	var last uint64
	for range 20 {
		p := s.push()
		var m feedMsg
		json.Unmarshal(p.Data, &m)
		if p.Offset != uint64(m.N) || (last != 0 && p.Offset != last+1) {
			t.Fatalf("push offset %d data %s after offset %d: want consecutive offsets equal to n", p.Offset, p.Data, last)
		}
		last = p.Offset
	}
	s.ws.CloseNow()
	waitCount(t, []*publisher{pub}, int64(last)+100)

	again := dialProto(t, nodes[1].WS+"/ws")
	res := again.since(1, "feed", last, pos.Epoch)
	if !*res.Recovered || res.Epoch != pos.Epoch || res.Offset < last+100 {
		t.Fatalf("subscribe since %d on the other node = %+v, want recovered at %d or more", last, res, last+100)
	}
	// The missed messages, then 50 live ones, each offset once in order.
	for want := last + 1; want <= res.Offset+50; want++ {
		p := again.push()
		var m feedMsg
		json.Unmarshal(p.Data, &m)
		if p.Offset != want || m.N != int(want) {
			t.Fatalf("after since %d (reply offset %d): push offset %d data %s, want offset %d", last, res.Offset, p.Offset, p.Data, want)
		}
	}
}

// TestRecoverNotPossible: history trimmed beyond reach, and Redis
// flushed (a new epoch), answer recovered false with the current position.
func TestRecoverNotPossible(t *testing.T) {
	r := testenv.StartRedis(t)
	nodes := nodetest.ClusterWith(t, r.URL(), 2, nodetest.Options{Config: func(cfg *node.Config) {
		withHistory(10)(cfg)
		cfg.ProtoCommandRate = 0
	}})
	s := dialProto(t, nodes[0].WS+"/ws")
	pos := s.subscribeAt(1, "trim")
	p := dialProto(t, nodes[1].WS+"/ws")
	const n = 400 // Redis trims by stream nodes of 100 entries
	for i := 1; i <= n; i++ {
		p.do(fmt.Sprintf(`{"id":%d,"cmd":"publish","channel":"trim","data":%d}`, i, i), fmt.Sprintf(`{"id":%d,"result":{}}`, i))
	}
	c := dialProto(t, nodes[1].WS+"/ws")
	if res := c.since(1, "trim", 1, pos.Epoch); *res.Recovered || res.Offset != n || res.Epoch != pos.Epoch {
		t.Errorf("since offset 1 of a trimmed history = %+v, want recovered false at offset %d", res, n)
	}
	if err := r.Client(t).FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	c = dialProto(t, nodes[0].WS+"/ws")
	res := c.since(1, "trim", n, pos.Epoch)
	if *res.Recovered || res.Offset != 0 || res.Epoch == pos.Epoch {
		t.Errorf("since after FLUSHALL = %+v, want recovered false at offset 0 of a new epoch", res)
	}
	// The subscriber that stayed is told when the epoch changes under it.
	p.do(`{"id":"x","cmd":"publish","channel":"trim","data":1}`, `{"id":"x","result":{}}`)
	for {
		got := s.next()
		if got == `{"gap":{"channel":"trim"}}` {
			break
		}
		if !strings.HasPrefix(got, `{"channel":"trim","offset":`) {
			t.Fatalf("subscriber read %s, want pushes then a gap push", got)
		}
	}
	s.expect(`{"channel":"trim","offset":1,"data":1}`)
}
