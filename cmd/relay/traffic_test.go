package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/client"
	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
)

// traffic is the load a fault test keeps running through the fault: Go
// SDK publishers that each publish numbered messages to one channel,
// waiting for each ack, and Go SDK subscribers of the channel that record
// what they receive. At the end every acknowledged message is accounted
// for, for every subscriber: delivered, announced (the subscriber was told
// of a gap) or lost silently. Nothing is recovered yet: channels keep no
// history.
type traffic struct {
	t       *testing.T
	channel string
	// limit bounds the messages of each publisher.
	limit int

	pubs []*publisher
	subs []*subscriber
	stop chan struct{}
	wg   sync.WaitGroup
}

// publisher is one publishing client and what became of its publishes.
type publisher struct {
	id   int
	c    *client.Client
	tick time.Duration

	mu      sync.Mutex
	next    int   // the sequence number of the next publish
	acked   []int // sequence numbers acknowledged
	unknown []int // ErrUnknownOutcome: the connection ended before the ack
	refused []int // the node answered an error (e.g. unavailable)
}

// subscriber is one subscribing client and what it received.
type subscriber struct {
	name string
	c    *client.Client

	// since is, for each publisher, the first sequence number published
	// after the subscription was live: earlier messages are not its due.
	since map[int]int

	mu       sync.Mutex
	got      map[int]map[int]int // publisher → sequence → times received
	last     map[int]int         // publisher → last sequence received
	disorder int                 // messages received after a later one of their publisher
	gaps     int                 // EventGap: the client was told it may have missed messages
	drops    int                 // EventDisconnected
	received int
	ended    map[int]bool // publisher → its end marker came
	changed  chan struct{}
}

func newTraffic(t *testing.T, channel string, limit int) *traffic {
	return &traffic{t: t, channel: channel, limit: limit, stop: make(chan struct{})}
}

// sdkOptions are the client options of fault tests: quick reconnection,
// so that a test awaits seconds, not the default backoff.
func sdkOptions(urls []string, onEvent func(client.Event)) *client.Options {
	return &client.Options{
		URLs:        urls,
		MinBackoff:  50 * time.Millisecond,
		MaxBackoff:  500 * time.Millisecond,
		DialTimeout: 5 * time.Second,
		OnEvent:     onEvent,
	}
}

func dialSDK(t *testing.T, addrs []string, onEvent func(client.Event)) *client.Client {
	t.Helper()
	var urls []string
	for _, a := range addrs[1:] {
		urls = append(urls, "ws://"+a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	c, err := client.Dial(ctx, "ws://"+addrs[0], sdkOptions(urls, onEvent))
	if err != nil {
		t.Fatalf("dial %s: %v", addrs[0], err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// subscribe adds a subscriber connected to addrs[0] (then the others in
// turn when it loses its node) and returns once its subscription is live.
func (tr *traffic) subscribe(name string, addrs ...string) *subscriber {
	t := tr.t
	t.Helper()
	s := &subscriber{
		name:    name,
		got:     make(map[int]map[int]int),
		last:    make(map[int]int),
		ended:   make(map[int]bool),
		changed: make(chan struct{}, 1),
		since:   make(map[int]int),
	}
	s.c = dialSDK(t, addrs, func(e client.Event) {
		s.mu.Lock()
		switch e.Type {
		case client.EventGap:
			s.gaps++
		case client.EventDisconnected:
			s.drops++
		case client.EventUnsubscribed:
			t.Errorf("%s unsubscribed: %v", name, e.Err)
		}
		s.mu.Unlock()
	})
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	if _, err := s.c.Subscribe(ctx, tr.channel, s.receive); err != nil {
		t.Fatalf("%s: subscribe %s: %v", name, tr.channel, err)
	}
	for _, p := range tr.pubs {
		p.mu.Lock()
		s.since[p.id] = p.next
		p.mu.Unlock()
	}
	tr.subs = append(tr.subs, s)
	return s
}

// receive records one message: "p<publisher> <sequence>" or
// "p<publisher> end".
func (s *subscriber) receive(m client.Message) {
	p, seq, ok := parseMessage(string(m.Bytes()))
	if !ok {
		return
	}
	s.mu.Lock()
	if seq < 0 {
		s.ended[p] = true
	} else {
		if s.got[p] == nil {
			s.got[p] = make(map[int]int)
		}
		s.got[p][seq]++
		if last, ok := s.last[p]; ok && seq <= last {
			s.disorder++
		}
		s.last[p] = seq
		s.received++
	}
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func parseMessage(msg string) (p, seq int, ok bool) {
	head, tail, found := strings.Cut(msg, " ")
	if !found || !strings.HasPrefix(head, "p") {
		return 0, 0, false
	}
	p, err := strconv.Atoi(head[1:])
	if err != nil {
		return 0, 0, false
	}
	if tail == "end" {
		return p, -1, true
	}
	seq, err = strconv.Atoi(tail)
	return p, seq, err == nil
}

// await waits until cond holds for s, failing t after timeout.
func (s *subscriber) await(t *testing.T, timeout time.Duration, what string, cond func(*subscriber) bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok := cond(s)
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-s.changed:
		case <-deadline.C:
			t.Fatalf("%s: no %s after %v", s.name, what, timeout)
		}
	}
}

// awaitReceived waits until every subscriber has received n more messages
// than it had when called.
func (tr *traffic) awaitReceived(n int) {
	tr.t.Helper()
	for _, s := range tr.subs {
		s.mu.Lock()
		want := s.received + n
		s.mu.Unlock()
		s.await(tr.t, 30*time.Second, fmt.Sprintf("%d more messages", n), func(s *subscriber) bool { return s.received >= want })
	}
}

// publish adds a publisher connected to addrs[0] (then the others) that
// publishes a message every tick until finish, or limit messages.
func (tr *traffic) publish(addrs ...string) *publisher {
	t := tr.t
	t.Helper()
	p := &publisher{id: len(tr.pubs), c: dialSDK(t, addrs, nil), tick: 5 * time.Millisecond}
	tr.pubs = append(tr.pubs, p)
	return p
}

// start starts the publishers.
func (tr *traffic) start() {
	for _, p := range tr.pubs {
		tr.wg.Go(func() { p.run(tr.channel, tr.limit, tr.stop) })
	}
}

func (p *publisher) run(channel string, limit int, stop chan struct{}) {
	tick := time.NewTicker(p.tick)
	defer tick.Stop()
	for seq := range limit {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		p.mu.Lock()
		p.next = seq + 1
		p.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := p.c.Publish(ctx, channel, fmt.Appendf(nil, "p%d %d", p.id, seq))
		cancel()
		p.mu.Lock()
		switch {
		case err == nil:
			p.acked = append(p.acked, seq)
		case errors.Is(err, client.ErrUnknownOutcome), errors.Is(err, context.DeadlineExceeded):
			p.unknown = append(p.unknown, seq)
		default:
			p.refused = append(p.refused, seq)
		}
		p.mu.Unlock()
	}
}

// tally is what became of the acknowledged messages, counted per
// subscriber: a message acknowledged once with three subscribers counts
// three times.
type tally struct {
	Acked, Unknown, Refused                            int // publishes, by outcome
	Delivered, Recovered, Announced, LostSilently      int // acknowledged × subscribers
	UnknownDelivered, RefusedDelivered, Dups, Disorder int
}

func (x tally) String() string {
	return fmt.Sprintf("publishes: %d acked, %d unknown outcome, %d refused; acked × subscribers: %d delivered, %d recovered, %d announced, %d lost silently; "+
		"unknown outcome delivered %d, refused delivered %d, duplicates %d, out of order %d",
		x.Acked, x.Unknown, x.Refused, x.Delivered, x.Recovered, x.Announced, x.LostSilently,
		x.UnknownDelivered, x.RefusedDelivered, x.Dups, x.Disorder)
}

// finish stops the publishers, has each publish an end marker, waits
// until every subscriber has every marker (the messages of one publisher
// arrive in order, so whatever is missing then never comes) and counts.
func (tr *traffic) finish() tally {
	t := tr.t
	t.Helper()
	close(tr.stop)
	tr.wg.Wait()
	for _, p := range tr.pubs {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for {
			err := p.c.Publish(ctx, tr.channel, fmt.Appendf(nil, "p%d end", p.id))
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("publisher %d: end marker: %v", p.id, err)
			}
		}
		cancel()
	}
	for _, s := range tr.subs {
		s.await(t, 30*time.Second, "end markers", func(s *subscriber) bool { return len(s.ended) == len(tr.pubs) })
	}
	var x tally
	for _, p := range tr.pubs {
		p.mu.Lock()
		x.Acked += len(p.acked)
		x.Unknown += len(p.unknown)
		x.Refused += len(p.refused)
		for _, s := range tr.subs {
			s.mu.Lock()
			for _, seq := range p.acked {
				if seq < s.since[p.id] {
					continue
				}
				switch n := s.got[p.id][seq]; {
				case n > 0:
					x.Delivered++
					x.Dups += n - 1
				case s.gaps > 0:
					x.Announced++
				default:
					x.LostSilently++
				}
			}
			for _, seq := range p.unknown {
				if s.got[p.id][seq] > 0 {
					x.UnknownDelivered++
				}
			}
			for _, seq := range p.refused {
				if s.got[p.id][seq] > 0 {
					x.RefusedDelivered++
				}
			}
			s.mu.Unlock()
		}
		p.mu.Unlock()
	}
	for _, s := range tr.subs {
		s.mu.Lock()
		x.Disorder += s.disorder
		s.mu.Unlock()
	}
	return x
}

// check fails t unless every acknowledged message reached every
// subscriber that was never told of a gap, once and in order.
func (x tally) check(t *testing.T) {
	t.Helper()
	if x.LostSilently != 0 || x.Dups != 0 || x.Disorder != 0 {
		t.Errorf("%v; want none lost silently, no duplicates, none out of order", x)
	}
	// A publish answered with an error (unavailable) did not take effect;
	// one that may have is answered unknown_outcome instead.
	if x.RefusedDelivered != 0 {
		t.Errorf("%v; want no refused publish delivered", x)
	}
	if x.Acked == 0 {
		t.Errorf("%v; want messages acknowledged", x)
	}
}

// steady reports the subscribers that never lost their connection.
func (tr *traffic) steady() []*subscriber {
	var out []*subscriber
	for _, s := range tr.subs {
		s.mu.Lock()
		if s.drops == 0 && s.gaps == 0 {
			out = append(out, s)
		}
		s.mu.Unlock()
	}
	return out
}

// crossTraffic is the traffic most fault tests run through nodes a and b:
// a subscriber on each, and a publisher on each sending to the other's
// subscriber too. It is not started.
func crossTraffic(t *testing.T, channel string, limit int, a, b *testenv.Relay) *traffic {
	t.Helper()
	tr := newTraffic(t, channel, limit)
	tr.subscribe("sub on a", a.Addr)
	tr.subscribe("sub on b", b.Addr)
	tr.publish(b.Addr)
	tr.publish(a.Addr)
	return tr
}

// relayEnv is the environment of a node of a fault test on a free
// loopback port.
func relayEnv(redisURL, id string, more ...string) []string {
	return append([]string{"RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL=" + redisURL, "RELAY_NODE_ID=" + id, "RELAY_DRAIN_SECONDS=0"}, more...)
}

// gauge scrapes one sample of a node's /metrics.
func gauge(t *testing.T, n *testenv.Relay, name string) float64 {
	t.Helper()
	return testenv.Metrics(t, "http://"+n.Addr)[name]
}
