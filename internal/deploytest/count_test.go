//go:build compose

package deploytest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// The counted traffic of TestComposeE2E: protocol-mode publishers that
// wait for each acknowledgement and subscribers that, whenever their
// connection ends (a node stopped, Redis stopped), reconnect through the
// load balancer and subscribe again with since. Every acknowledged
// message must reach every subscriber live or recovered, or be announced
// to it (a gap push, or recovered false); any other outcome is lost
// silently and fails the test. The channel keeps history
// (RELAY_HISTORY_SIZE, set by stack.env).

// countMsg is what the publishers publish: publisher P's N-th message;
// N is -1 for the last.
type countMsg struct{ P, N int }

// serverLine is one line the server sends in protocol mode.
type serverLine struct {
	ID     *int `json:"id"`
	Result *struct {
		Offset    uint64 `json:"offset"`
		Epoch     string `json:"epoch"`
		Recovered *bool  `json:"recovered"`
	} `json:"result"`
	Error *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Offset uint64                    `json:"offset"`
	Data   *countMsg                 `json:"data"`
	Gap    *struct{ Channel string } `json:"gap"`
}

// protoConn is a protocol-mode connection through the load balancer.
type protoConn struct {
	ws      *websocket.Conn
	pending []string
}

func (st *stack) protoDial(ctx context.Context) (*protoConn, error) {
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(dctx, st.url("ws", "/ws"), nil)
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(1 << 20)
	return &protoConn{ws: ws}, nil
}

func (c *protoConn) send(ctx context.Context, s string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return c.ws.Write(ctx, websocket.MessageText, []byte(s))
}

func (c *protoConn) read(ctx context.Context) (serverLine, error) {
	if len(c.pending) == 0 {
		_, b, err := c.ws.Read(ctx)
		if err != nil {
			return serverLine{}, err
		}
		c.pending = strings.Split(string(b), "\n") // pushes may come joined
	}
	s := c.pending[0]
	c.pending = c.pending[1:]
	var l serverLine
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return l, fmt.Errorf("server sent %q: %w", s, err)
	}
	return l, nil
}

// countPub publishes until stop, then its last message until acknowledged.
type countPub struct {
	id      int
	mu      sync.Mutex
	acked   map[int]bool
	unknown map[int]bool // no answer: the connection ended, or unknown_outcome
	refused map[int]bool // answered unavailable
	count   int
}

func (p *countPub) run(ctx context.Context, st *stack, channel string, stop <-chan struct{}) error {
	var c *protoConn
	defer func() {
		if c != nil {
			c.ws.CloseNow()
		}
	}()
	pace := time.NewTicker(20 * time.Millisecond)
	defer pace.Stop()
	// publish reports true when n was acknowledged.
	publish := func(n int) (bool, error) {
		if c == nil {
			var err error
			if c, err = st.protoDial(ctx); err != nil {
				return false, nil // the load balancer has no node yet: again
			}
		}
		data, _ := json.Marshal(countMsg{p.id, n})
		outcome := func(m map[int]bool) {
			p.mu.Lock()
			m[n] = true
			p.mu.Unlock()
		}
		err := c.send(ctx, fmt.Sprintf(`{"id":%d,"cmd":"publish","channel":%q,"data":%s}`, n+2, channel, data))
		var l serverLine
		if err == nil {
			l, err = c.read(ctx)
		}
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			outcome(p.unknown)
			c.ws.CloseNow()
			c = nil
			return false, nil
		case l.Error != nil && l.Error.Code == "unavailable":
			outcome(p.refused)
			return false, nil
		case l.Error != nil && l.Error.Code == "unknown_outcome":
			outcome(p.unknown)
			return false, nil
		case l.Error != nil:
			return false, fmt.Errorf("publish %d: %s %s", n, l.Error.Code, l.Error.Message)
		}
		if n > 0 {
			outcome(p.acked)
			p.mu.Lock()
			p.count++
			p.mu.Unlock()
		}
		return true, nil
	}
	for n := 1; n <= 100000; n++ {
		select {
		case <-stop:
			n = 100001
			continue
		case <-ctx.Done():
			return ctx.Err()
		case <-pace.C:
		}
		if _, err := publish(n); err != nil {
			return err
		}
	}
	for range 3000 {
		if ok, err := publish(-1); ok || err != nil {
			return err
		}
		<-pace.C
	}
	return errors.New("last message never acknowledged")
}

// countEvent is what a subscriber got, in order.
type countEvent struct {
	gap, recovered bool
	m              countMsg
}

// countSub records the events of the channel until it has the last
// message of every publisher, reconnecting with since when its
// connection ends.
type countSub struct {
	events      []countEvent // read once run returned
	reconnects  int
	offset      uint64
	epoch       string
	recoveredTo uint64
}

// subscribe opens a connection and subscribes, with since after the
// first time; unavailable is retried.
func (s *countSub) subscribe(ctx context.Context, st *stack, channel string) (*protoConn, error) {
	for try := 0; ; try++ {
		if try == 600 {
			return nil, errors.New("no subscription within 600 tries")
		}
		if try > 0 {
			pollPause(ctx, 200*time.Millisecond)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		c, err := st.protoDial(ctx)
		if err != nil {
			continue
		}
		cmd := fmt.Sprintf(`{"id":1,"cmd":"subscribe","channel":%q}`, channel)
		if s.epoch != "" {
			cmd = fmt.Sprintf(`{"id":1,"cmd":"subscribe","channel":%q,"since":{"offset":%d,"epoch":%q}}`, channel, s.offset, s.epoch)
		}
		var l serverLine
		if err = c.send(ctx, cmd); err == nil {
			l, err = c.read(ctx)
		}
		switch {
		case err != nil:
			c.ws.CloseNow()
			continue
		case l.Error != nil && l.Error.Code == "unavailable":
			c.ws.CloseNow()
			continue
		case l.Error != nil || l.Result == nil:
			c.ws.CloseNow()
			return nil, fmt.Errorf("subscribe: %+v", l)
		}
		if r := l.Result.Recovered; r != nil {
			if *r {
				s.recoveredTo = l.Result.Offset
			} else {
				s.events = append(s.events, countEvent{gap: true})
			}
		}
		if s.epoch == "" || (l.Result.Recovered != nil && !*l.Result.Recovered) {
			s.offset, s.epoch = l.Result.Offset, l.Result.Epoch
		}
		return c, nil
	}
}

func (s *countSub) run(ctx context.Context, st *stack, channel string, publishers int, ready chan<- struct{}) error {
	c, err := s.subscribe(ctx, st, channel)
	if err != nil {
		return err
	}
	defer func() { c.ws.CloseNow() }()
	ready <- struct{}{}
	for ends := 0; ends < publishers; {
		l, err := c.read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			c.ws.CloseNow()
			s.reconnects++
			if c, err = s.subscribe(ctx, st, channel); err != nil {
				return err
			}
			continue
		}
		switch {
		case l.Gap != nil:
			s.events = append(s.events, countEvent{gap: true})
		case l.Data != nil:
			if l.Offset != 0 {
				s.offset = l.Offset
			}
			if l.Data.N == -1 {
				ends++
				continue
			}
			s.events = append(s.events, countEvent{m: *l.Data, recovered: l.Offset != 0 && l.Offset <= s.recoveredTo})
		}
	}
	return nil
}

// countTally is what became of the acknowledged messages, per subscriber.
type countTally struct {
	Acked, Unknown, Refused                       int
	Delivered, Recovered, Announced, LostSilently int
	RefusedDelivered, Dups, Disorder, Reconnects  int
}

func (x countTally) String() string {
	return fmt.Sprintf("publishes: %d acked, %d unknown outcome, %d refused; acked × subscribers: %d delivered, %d recovered, %d announced, %d lost silently; "+
		"refused delivered %d, duplicates %d, out of order %d; subscriber reconnects %d",
		x.Acked, x.Unknown, x.Refused, x.Delivered, x.Recovered, x.Announced, x.LostSilently, x.RefusedDelivered, x.Dups, x.Disorder, x.Reconnects)
}

// tally counts, for every subscriber and every message acknowledged to
// a publisher, whether the subscriber got it live, recovered, or a gap
// notice between its neighbours received; and its duplicates, disorder
// and deliveries of refused publishes.
func countAll(subs []*countSub, pubs []*countPub) countTally {
	var x countTally
	for _, p := range pubs {
		x.Acked += len(p.acked)
		x.Unknown += len(p.unknown)
		x.Refused += len(p.refused)
	}
	for _, s := range subs {
		x.Reconnects += s.reconnects
		for _, p := range pubs {
			pos := map[int]int{}
			last := 0
			for i, e := range s.events {
				if e.gap || e.m.P != p.id {
					continue
				}
				if _, dup := pos[e.m.N]; dup {
					x.Dups++
				}
				if e.m.N < last {
					x.Disorder++
				}
				last = e.m.N
				pos[e.m.N] = i
				if p.refused[e.m.N] {
					x.RefusedDelivered++
				}
			}
			for n := range p.acked {
				if i, ok := pos[n]; ok {
					if s.events[i].recovered {
						x.Recovered++
					} else {
						x.Delivered++
					}
					continue
				}
				before, after := -1, len(s.events)
				for m, i := range pos {
					if m < n && i > before {
						before = i
					}
					if m > n && i < after {
						after = i
					}
				}
				announced := false
				for i := before + 1; i < after && !announced; i++ {
					announced = s.events[i].gap
				}
				if announced {
					x.Announced++
				} else {
					x.LostSilently++
				}
			}
		}
	}
	return x
}

// countedTraffic runs the counted traffic on channel until finish is
// called, which stops the publishers, waits for every subscriber to get
// every publisher's last message and returns the tally.
func countedTraffic(t *testing.T, ctx context.Context, st *stack, channel string, nsubs, npubs int) (finish func() countTally) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	subs := make([]*countSub, nsubs)
	ready := make(chan struct{}, nsubs)
	errs := make(chan error, nsubs+npubs)
	var swg, pwg sync.WaitGroup
	for i := range subs {
		subs[i] = &countSub{}
		swg.Go(func() {
			if err := subs[i].run(ctx, st, channel, npubs, ready); err != nil {
				errs <- fmt.Errorf("subscriber %d: %w", i, err)
			}
		})
	}
	for range subs {
		select {
		case <-ready:
		case err := <-errs:
			cancel()
			t.Fatal(err)
		case <-time.After(2 * time.Minute):
			cancel()
			t.Fatal("subscribers not subscribed within 2 min")
		}
	}
	pubs := make([]*countPub, npubs)
	stop := make(chan struct{})
	for i := range pubs {
		pubs[i] = &countPub{id: i + 1, acked: map[int]bool{}, unknown: map[int]bool{}, refused: map[int]bool{}}
		pwg.Go(func() {
			if err := pubs[i].run(ctx, st, channel, stop); err != nil {
				errs <- fmt.Errorf("publisher %d: %w", i+1, err)
			}
		})
	}
	return func() countTally {
		t.Helper()
		defer cancel()
		close(stop)
		waited := make(chan struct{})
		go func() { pwg.Wait(); swg.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-time.After(3 * time.Minute):
			cancel()
			<-waited
			t.Fatal("counted traffic: last messages not all received within 3 min")
		}
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		return countAll(subs, pubs)
	}
}
