package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	"github.com/relay-pubsub/relay/pubsub"
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
	errs    atomic.Int64 // answered unavailable or unknown_outcome
	// unavailable counts the publishes answered unavailable; failed
	// holds the code of each publish answered an error, by N.
	unavailable atomic.Int64
	failed      sync.Map
	tick        chan struct{}
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
			// The outage's answers: not published, or maybe (then
			// not acknowledged either: it is not counted).
			if m.Error.Code != protocol.CodeUnavailable && m.Error.Code != protocol.CodeUnknownOutcome {
				return false, fmt.Errorf("publish: %v", m.Error)
			}
			p.errs.Add(1)
			if m.Error.Code == protocol.CodeUnavailable {
				p.unavailable.Add(1)
			}
			p.failed.Store(n, m.Error.Code)
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

// feedTraffic is the traffic of the Redis-fault tests on two nodes: a
// subscriber of "feed" (history) and one of "plain:feed" (none) on each
// node, with churn one more of "feed" that leaves and subscribes again
// with since throughout, alternating nodes; and two publishers per
// channel, one on each node, each waiting for every acknowledgement.
type feedTraffic struct {
	ctx     context.Context
	subs    []*subscriber
	pubs    []*publisher
	stop    chan struct{}
	errs    chan error
	wg, pwg sync.WaitGroup
}

// startFeedTraffic starts the traffic on the nodes at urls and returns
// once every subscriber is subscribed and every publisher has acked
// messages acknowledged.
func startFeedTraffic(t *testing.T, urls []string, churn bool, acked int64) *feedTraffic {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	f := &feedTraffic{ctx: ctx, stop: make(chan struct{}), errs: make(chan error, 16)}
	for _, ch := range []string{"feed", "plain:feed"} {
		for i := range urls {
			f.subs = append(f.subs, &subscriber{channel: ch, urls: urls[i : i+1]})
		}
	}
	if churn {
		f.subs = append(f.subs, &subscriber{channel: "feed", urls: urls, churn: true})
	}
	ready := make(chan struct{}, len(f.subs))
	for _, s := range f.subs {
		f.wg.Go(func() {
			if err := s.run(ctx, 2, ready, f.stop); err != nil {
				f.errs <- err
				cancel()
			}
		})
	}
	for range f.subs {
		select {
		case <-ready:
		case err := <-f.errs:
			t.Fatal(err)
		}
	}
	for i, ch := range []string{"feed", "feed", "plain:feed", "plain:feed"} {
		p := &publisher{id: i + 1, channel: ch, tick: make(chan struct{}, 1)}
		f.pubs = append(f.pubs, p)
		f.pwg.Go(func() {
			if err := p.run(ctx, urls[i%2]+"/ws", f.stop); err != nil {
				f.errs <- fmt.Errorf("publisher %d: %w", p.id, err)
				cancel()
			}
		})
	}
	waitCount(t, f.pubs, acked)
	return f
}

// acked returns how many messages each publisher has acknowledged.
func (f *feedTraffic) acked() []int64 {
	n := make([]int64, len(f.pubs))
	for i, p := range f.pubs {
		n[i] = p.count.Load()
	}
	return n
}

// finish waits until each publisher has more acknowledged than in base,
// then stops the traffic and waits for every client's last message.
func (f *feedTraffic) finish(t *testing.T, base []int64, more int64) {
	t.Helper()
	for i, p := range f.pubs {
		if f.ctx.Err() == nil {
			waitCount(t, []*publisher{p}, base[i]+more)
		}
	}
	close(f.stop)
	f.pwg.Wait()
	f.wg.Wait()
	close(f.errs)
	for err := range f.errs {
		t.Fatal(err)
	}
}

// count tallies every acknowledged message for every subscriber of its
// channel (tally), logging the pairs that lost any silently; each, when
// not nil, also sees each pair.
func (f *feedTraffic) count(t *testing.T, each func(*subscriber, *publisher)) (delivered, recovered, announced, silent int) {
	t.Helper()
	for _, s := range f.subs {
		for _, p := range f.pubs {
			if p.channel != s.channel {
				continue
			}
			d, rc, a, sl := tally(t, s, p)
			if sl > 0 {
				t.Logf("%s subscriber (churn %v, %d events), publisher %d: delivered %d recovered %d announced %d silent %d", s.channel, s.churn, len(s.events), p.id, d, rc, a, sl)
			}
			delivered, recovered, announced, silent = delivered+d, recovered+rc, announced+a, silent+sl
			if each != nil {
				each(s, p)
			}
		}
	}
	return
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

// event is what a subscriber got, in order: a message (delivered live, or
// recovered by a subscribe with since) or a gap notice (a gap push, or a
// subscribe with since answered recovered false).
type event struct {
	gap, recovered bool
	m              feedMsg
	offset         uint64 // of a message; for a subscribe, its since (failure logs)
	subscribe      string // a subscribe's answer (failure logs only)
}

// subscriber records the events of channel until it has the last message
// of each of its publishers. A churning subscriber leaves and subscribes
// again with since every 100 messages, alternating nodes, until stop.
type subscriber struct {
	channel string
	urls    []string
	churn   bool
	events  []event // read once run returned
}

func (s *subscriber) run(ctx context.Context, publishers int, ready chan<- struct{}, stop <-chan struct{}) error {
	var c *feedClient
	defer func() {
		if c != nil {
			c.ws.CloseNow()
		}
	}()
	var since *protocol.Since
	var recoveredTo uint64                       // pushes up to this offset were recovered
	pace := time.NewTicker(5 * time.Millisecond) // retries while Redis is down
	defer pace.Stop()
	var connect func(i int) error
	retry := func(i int) error {
		for range 4000 {
			err := connect(i)
			var pe *protocol.Error
			if !errors.As(err, &pe) || pe.Code != protocol.CodeUnavailable {
				return err
			}
			<-pace.C
		}
		return errors.New("subscribe unavailable for too long")
	}
	connect = func(i int) error {
		var err error
		if c != nil {
			c.ws.CloseNow()
		}
		if c, err = dialFeed(ctx, s.urls[i%len(s.urls)]+"/ws"); err != nil {
			return err
		}
		cmd := fmt.Sprintf(`{"id":1,"cmd":"subscribe","channel":%q}`, s.channel)
		if since != nil {
			cmd = fmt.Sprintf(`{"id":1,"cmd":"subscribe","channel":%q,"since":{"offset":%d,"epoch":%q}}`, s.channel, since.Offset, since.Epoch)
		}
		if err := c.send(ctx, cmd); err != nil {
			return err
		}
		for {
			m, err := c.read(ctx)
			if err != nil {
				return err
			}
			if m.ID == nil {
				continue // a push before the reply: cannot be, it is held
			}
			if m.Error != nil {
				return fmt.Errorf("subscribe: %w", m.Error)
			}
			sub := event{subscribe: fmt.Sprintf("subscribe to %s: %+v", s.urls[i%len(s.urls)], m.Result)}
			if since != nil {
				sub.offset = since.Offset
			}
			s.events = append(s.events, sub)
			if m.Result != nil && m.Result.Recovered != nil {
				if *m.Result.Recovered {
					recoveredTo = m.Result.Offset
				} else {
					s.events = append(s.events, event{gap: true})
				}
			}
			if m.Result != nil && m.Result.Epoch != "" {
				since = &protocol.Since{Offset: m.Result.Offset, Epoch: m.Result.Epoch}
			}
			return nil
		}
	}
	if err := connect(0); err != nil {
		return err
	}
	ready <- struct{}{}
	ends, got, churns := 0, 0, 0
	for ends < publishers {
		m, err := c.read(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", s.channel, err)
		}
		switch {
		case m.Gap != nil:
			s.events = append(s.events, event{gap: true})
		case m.Data != nil:
			if m.Data.N == -1 {
				ends++
				continue
			}
			s.events = append(s.events, event{m: *m.Data, offset: m.Offset, recovered: m.Offset != 0 && m.Offset <= recoveredTo})
			if since != nil && m.Offset != 0 {
				since.Offset = m.Offset
			}
			got++
		default:
			return fmt.Errorf("%s: unexpected %+v", s.channel, m)
		}
		select {
		case <-stop:
			continue
		default:
		}
		if s.churn && got%100 == 0 && churns < 6 {
			churns++
			if err := retry(churns); err != nil {
				return err
			}
		}
	}
	return nil
}

// tally counts, for each message p acknowledged, whether s got it live,
// recovered, announced by a gap notice between its neighbours, or none of
// these; and reports duplicates and disorder.
func tally(t *testing.T, s *subscriber, p *publisher) (delivered, recovered, announced, silent int) {
	t.Helper()
	pos := map[int]int{} // N → index of its event
	lastN := 0
	for i, e := range s.events {
		if e.gap || e.m.P != p.id {
			continue
		}
		if _, dup := pos[e.m.N]; dup {
			t.Errorf("%s: publisher %d message %d received twice", s.channel, p.id, e.m.N)
		}
		if e.m.N < lastN {
			t.Errorf("%s: publisher %d message %d after %d", s.channel, p.id, e.m.N, lastN)
		}
		lastN = e.m.N
		pos[e.m.N] = i
	}
	p.acked.Range(func(k, _ any) bool {
		n := k.(int)
		if i, ok := pos[n]; ok {
			if s.events[i].recovered {
				recovered++
			} else {
				delivered++
			}
			return true
		}
		before, after := -1, len(s.events) // neighbours received
		for m, i := range pos {
			if m < n && i > before {
				before = i
			}
			if m > n && i < after {
				after = i
			}
		}
		for i := before + 1; i < after; i++ {
			if s.events[i].gap {
				announced++
				return true
			}
		}
		silent++
		// What the subscriber saw around the message it lacks.
		for i := max(before-3, 0); i < min(after+4, len(s.events)); i++ {
			t.Logf("%s: lacks publisher %d message %d; event %d: %+v", s.channel, p.id, n, i, s.events[i])
		}
		return true
	})
	return
}

// TestRedisKilledNothingLostSilently kills Redis (SIGKILL) and starts it
// again while publishers, waiting for each acknowledgement, and
// subscribers on two nodes run, on a channel with history and one
// without, one subscriber leaving and recovering with since throughout:
// every acknowledged message must be delivered, recovered or announced by
// a gap notice to every subscriber. Redis comes back at several points of
// the nodes' reconnect schedule (attempts 50 ms apart, doubling up to 2 s):
// once every publisher had 1, 10 or 40 publishes refused, outages of about
// 0.8, 3 and 3.6 s here (each run logs its own), so the nodes' subscriber
// connections are mid-schedule or at the 2 s ceiling when Redis is back.
func TestRedisKilledNothingLostSilently(t *testing.T) {
	for _, refused := range []int64{1, 10, 40} {
		t.Run(fmt.Sprintf("refused=%d", refused), func(t *testing.T) {
			redisFault(t, nil, true, func(r *testenv.Redis, nodes []*nodetest.Server, outage func(refused int64)) {
				start := time.Now()
				r.Stop() // SIGKILL
				outage(refused)
				r.Start()
				t.Logf("Redis down for %v", time.Since(start).Round(time.Millisecond))
			})
		})
	}
}

// TestRedisPausedNothingLostSilently stops Redis with SIGSTOP past the
// timeouts (every publisher answered an error, several probe rounds of
// each node failed), then continues it (SIGCONT), with
// the traffic of TestRedisKilledNothingLostSilently: Redis then runs what
// was sent to it meanwhile, so publishes answered while it was stopped
// may take effect late; every acknowledged message must be delivered,
// recovered or announced, and none answered unavailable delivered.
func TestRedisPausedNothingLostSilently(t *testing.T) {
	fast := func(cfg *pubsub.RedisConfig) {
		cfg.Timeout = 500 * time.Millisecond
		cfg.ProbeInterval = 200 * time.Millisecond
		cfg.ProbeTimeout = 500 * time.Millisecond
	}
	redisFault(t, fast, false, func(r *testenv.Redis, nodes []*nodetest.Server, outage func(refused int64)) {
		r.Pause()
		defer r.Resume()
		outage(1)
		// Past the timeouts: several probe rounds failed on each node.
		for _, n := range nodes {
			testenv.WaitFor(t, 30*time.Second, "probes failing", func() bool {
				return testenv.Metrics(t, n.URL)["relay_broker_probe_failures_total"] >= 6
			})
		}
	})
}

// redisFault runs fault on the Redis of two nodes while publishers,
// waiting for each acknowledgement, and subscribers run, on a channel
// with history and one without, one subscriber leaving and recovering
// with since throughout; fault calls outage once the fault is on, which
// returns once every publisher had at least refused publishes answered
// with an error. Every acknowledged message must be
// delivered, recovered or announced by a gap notice to every subscriber,
// and no publish answered unavailable delivered to any. redis, when not
// nil, changes the nodes' broker configuration; wantGap requires every
// subscriber that stays to get a gap notice.
func redisFault(t *testing.T, redis func(*pubsub.RedisConfig), wantGap bool, fault func(r *testenv.Redis, nodes []*nodetest.Server, outage func(refused int64))) {
	r := testenv.StartRedis(t)
	ns := filepath.Join(t.TempDir(), "namespaces.yaml")
	if err := os.WriteFile(ns, []byte("namespaces:\n  plain:\n    history_size: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nodes := nodetest.ClusterWith(t, r.URL(), 2, nodetest.Options{Config: func(cfg *node.Config) {
		withHistory(10000)(cfg)
		cfg.ProtoCommandRate = 0
		cfg.NamespacesFile = ns
		cfg.HistoryCheckInterval = 50 * time.Millisecond // checks race the traffic
	}, Redis: redis})
	f := startFeedTraffic(t, []string{nodes[0].WS, nodes[1].WS}, true, 100)
	var before []int64
	fault(r, nodes, func(refused int64) {
		for _, p := range f.pubs { // every publisher saw the outage
			testenv.WaitFor(t, 60*time.Second, "publishes answered unavailable", func() bool { return p.errs.Load() >= refused || f.ctx.Err() != nil })
		}
		before = f.acked()
	})
	f.finish(t, before, 300)

	var refused, unknownDelivered int
	delivered, recovered, announced, silent := f.count(t, func(s *subscriber, p *publisher) {
		for _, e := range s.events {
			if code, ok := p.failed.Load(e.m.N); ok && !e.gap && e.m.P == p.id {
				if code == protocol.CodeUnavailable {
					refused++
				} else {
					unknownDelivered++
				}
			}
		}
	})
	subs, pubs := f.subs, f.pubs
	var acked, unavailable, unknown int64
	for _, p := range pubs {
		acked += p.count.Load()
		unavailable += p.unavailable.Load()
		unknown += p.errs.Load() - p.unavailable.Load()
	}
	t.Logf("publishes: %d acknowledged, %d unavailable, %d unknown outcome; acknowledged messages × subscribers: delivered %d, recovered %d, announced %d, lost silently %d; deliveries of publishes answered unavailable %d, unknown outcome %d",
		acked, unavailable, unknown, delivered, recovered, announced, silent, refused, unknownDelivered)
	for _, n := range nodes {
		m := testenv.Metrics(t, n.URL)
		t.Logf("%s: %v probe failures, %v teardowns, %v resubscribes", n.URL, m["relay_broker_probe_failures_total"], m["relay_broker_teardowns_total"], m["relay_broker_resubscribes_total"])
	}
	if silent != 0 {
		t.Errorf("%d acknowledged messages lost silently", silent)
	}
	if refused != 0 {
		t.Errorf("%d deliveries of publishes answered unavailable, want none (unknown_outcome when it may take effect)", refused)
	}
	for _, s := range subs {
		gaps := 0
		for _, e := range s.events {
			if e.gap {
				gaps++
			}
		}
		if wantGap && gaps == 0 && !s.churn {
			t.Errorf("%s subscriber on %s got no gap notice for the outage", s.channel, s.urls[0])
		}
	}
}
