package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/relay-pubsub/relay/client"
	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/auth"
	"github.com/relay-pubsub/relay/node/nodetest"
)

// events records a client's events and lets a test await one.
type events struct {
	mu   sync.Mutex
	all  []client.Event
	more chan struct{}
}

func newEvents() *events { return &events{more: make(chan struct{}, 1)} }

func (e *events) on(ev client.Event) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
	select {
	case e.more <- struct{}{}:
	default:
	}
}

// await returns the first event from index from on that match accepts,
// and the index after it.
func (e *events) await(t *testing.T, from int, match func(client.Event) bool) (client.Event, int) {
	t.Helper()
	deadline := time.NewTimer(3 * nodetest.Timeout)
	defer deadline.Stop()
	for {
		e.mu.Lock()
		all := e.all
		e.mu.Unlock()
		for i := from; i < len(all); i++ {
			if match(all[i]) {
				return all[i], i + 1
			}
		}
		select {
		case <-e.more:
		case <-deadline.C:
			t.Fatalf("no awaited event; events so far: %+v", all)
		}
	}
}

// TestReconnect: a subscriber follows its node's SIGKILL and then a drain
// (SIGTERM) to the next node of its list and subscribes again before
// anything else, while a publisher on a third node runs throughout. With
// history, it recovers: every acknowledged message arrives, in order and
// exactly once, across both moves. Without, it reports a gap for the
// channel and receives every message published after its reconnection, in
// order and once.
func TestReconnect(t *testing.T) {
	for _, history := range []bool{true, false} {
		t.Run(fmt.Sprintf("history=%v", history), func(t *testing.T) { testReconnect(t, history) })
	}
}

func testReconnect(t *testing.T, history bool) {
	r := testenv.StartRedis(t)
	var nodes []*testenv.Relay
	for _, id := range []string{"a", "b", "c"} {
		env := []string{"RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL=" + r.URL(), "RELAY_NODE_ID=" + id, "RELAY_DRAIN_SECONDS=1"}
		if history {
			env = append(env, "RELAY_HISTORY_SIZE=100000")
		}
		nodes = append(nodes, testenv.StartRelay(t, env...))
	}
	url := func(n *testenv.Relay) string { return "ws://" + n.Addr }
	ctx := t.Context()

	ev := newEvents()
	sub, err := client.Dial(ctx, url(nodes[0]), &client.Options{
		URLs:       []string{url(nodes[1]), url(nodes[2])},
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		OnEvent: ev.on,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if sub.Node() != "a" {
		t.Fatalf("connected to node %q, want a", sub.Node())
	}
	got := make(chan int, 100000)
	if _, err := sub.Subscribe(ctx, "orders", func(m client.Message) {
		n, err := strconv.Atoi(string(m.Bytes()))
		if err != nil {
			t.Errorf("message %s", m.Data)
		}
		got <- n
	}); err != nil {
		t.Fatal(err)
	}

	pub, err := client.Dial(ctx, url(nodes[2]), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	// The publisher runs throughout, one acknowledged message at a time;
	// acked is the last number acknowledged, and progress ticks with it.
	var acked atomic.Int64
	progress := make(chan struct{}, 1)
	pubCtx, stopPub := context.WithCancel(ctx)
	pubDone := make(chan error, 1)
	go func() {
		for i := 1; i <= 1_000_000; i++ {
			if err := pub.Publish(pubCtx, "orders", []byte(strconv.Itoa(i))); err != nil {
				if pubCtx.Err() != nil {
					err = nil
				}
				pubDone <- err
				return
			}
			acked.Store(int64(i))
			select {
			case progress <- struct{}{}:
			default:
			}
		}
		pubDone <- errors.New("publisher ran out of numbers")
	}()
	last := func() int { return int(acked.Load()) }
	waitAcked := func(n int) {
		t.Helper()
		timeout := time.NewTimer(3 * nodetest.Timeout)
		defer timeout.Stop()
		for last() < n {
			select {
			case <-progress:
			case err := <-pubDone:
				t.Fatalf("publisher stopped at %d: %v", last(), err)
			case <-timeout.C:
				t.Fatalf("publisher stuck at %d", last())
			}
		}
	}

	// expect reads until message want has arrived: messages come in order
	// and once; with gapOK, a jump forward is allowed once (the messages
	// published while the client was away are not replayed).
	prev := 0
	expect := func(want int, gapOK bool) {
		t.Helper()
		timeout := time.NewTimer(3 * nodetest.Timeout)
		defer timeout.Stop()
		for prev < want {
			select {
			case n := <-got:
				if n <= prev || (n != prev+1 && !gapOK) {
					t.Fatalf("message %d after %d", n, prev)
				}
				if n != prev+1 {
					gapOK = false
				}
				prev = n
			case <-timeout.C:
				t.Fatalf("message %d not received; last was %d", want, prev)
			}
		}
	}
	waitAcked(50)
	expect(50, false)

	steps := []struct {
		name     string
		kill     func()
		wantNode string
	}{
		{"SIGKILL", func() { nodes[0].Signal(t, syscall.SIGKILL) }, "b"},
		{"drain", func() { nodes[1].Signal(t, syscall.SIGTERM) }, "c"},
	}
	idx := 0
	for _, step := range steps {
		step.kill()
		var e client.Event
		e, idx = ev.await(t, idx, func(e client.Event) bool { return e.Type == client.EventDisconnected })
		if step.name == "drain" && e.Code != 1012 {
			t.Errorf("%s: disconnected with %d %q, want 1012", step.name, e.Code, e.Reason)
		}
		want := client.EventGap
		if history {
			want = client.EventRecovered
		}
		e, idx = ev.await(t, idx, func(e client.Event) bool {
			return (e.Type == client.EventGap || e.Type == client.EventRecovered) && e.Channel == "orders"
		})
		if e.Type != want {
			t.Fatalf("%s: resubscribed with %v, want %v", step.name, e.Type, want)
		}
		e, idx = ev.await(t, idx, func(e client.Event) bool { return e.Type == client.EventConnected })
		if e.Node != step.wantNode {
			t.Fatalf("%s: reconnected to node %q, want %q", step.name, e.Node, step.wantNode)
		}
		// Everything acknowledged after the resubscription arrives.
		from := last()
		waitAcked(from + 50)
		expect(from+50, !history)
	}
	stopPub()
	if err := <-pubDone; err != nil {
		t.Fatalf("publisher: %v", err)
	}
}

// TestDialRefused: a node that refuses the handshake gives a *DialError
// with its status and code; an address nobody listens on, one without a
// status.
func TestDialRefused(t *testing.T) {
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_AUTH_TOKENS=right")
	tests := []struct {
		url, token string
		status     int
		code       string
	}{
		{"ws://" + n.Addr, "wrong", http.StatusUnauthorized, "unauthorized"},
		{"ws://" + n.Addr + "/ws/bad%20channel", "right", http.StatusBadRequest, "invalid_channel"},
		{fmt.Sprintf("ws://127.0.0.1:%d", testenv.FreePort(t)), "right", 0, ""},
	}
	for _, tt := range tests {
		_, err := client.Dial(t.Context(), tt.url, &client.Options{Token: tt.token})
		var de *client.DialError
		if !errors.As(err, &de) || de.Status != tt.status || de.Code != tt.code {
			t.Errorf("Dial(%s) = %v, want a DialError with %d %q", tt.url, err, tt.status, tt.code)
		}
	}
	c, err := client.Dial(t.Context(), "ws://"+n.Addr, &client.Options{Token: "right"})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := c.Publish(t.Context(), "x", []byte("1")); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
}

// TestTokenRefresh: a token that expires while connected is replaced
// through TokenFunc when the node asks (the connection stays, messages keep
// coming); without TokenFunc the node's 4001 stops the client for good.
func TestTokenRefresh(t *testing.T) {
	const secret = "0123456789abcdef0123456789abcdef-test"
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_TOKEN_HMAC_SECRET="+secret, "RELAY_TOKEN_REFRESH_GRACE=5s", "RELAY_TOKEN_LEEWAY=0s")
	mint := func(ttl time.Duration) string {
		tok, err := auth.MintHS256([]byte(secret), auth.Claims{
			RegisteredClaims: jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(time.Now().Add(ttl))},
			Channels:         []string{"news"}, Publish: []string{"news"},
		})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	var mints atomic.Int64
	refreshed := make(chan struct{}, 1)
	ev := newEvents()
	c, err := client.Dial(t.Context(), "ws://"+n.Addr, &client.Options{
		TokenFunc: func(context.Context) (string, error) {
			if mints.Add(1) == 1 {
				return mint(1500 * time.Millisecond), nil // expires soon
			}
			select {
			case refreshed <- struct{}{}:
			default:
			}
			return mint(time.Hour), nil
		},
		Echo:    true, // the client reads its own publish
		OnEvent: ev.on,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan string, 10)
	if _, err := c.Subscribe(t.Context(), "news", func(m client.Message) { got <- string(m.Bytes()) }); err != nil {
		t.Fatal(err)
	}
	// The refresh happened when TokenFunc was asked a second time; the
	// connection is the same (no second connected event) and works.
	select {
	case <-refreshed:
	case <-time.After(3 * nodetest.Timeout):
		t.Fatal("no refresh requested")
	}
	// Past the first token's expiry and the node's grace (a ping is a
	// round trip after the refresh command), the connection still works.
	if err := c.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(t.Context(), "news", []byte("after refresh")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m != "after refresh" {
			t.Fatalf("read %q", m)
		}
	case <-time.After(nodetest.Timeout):
		t.Fatal("the message published after the refresh did not come back")
	}
	ev.mu.Lock()
	for _, e := range ev.all {
		if e.Type == client.EventDisconnected {
			t.Errorf("disconnected around the refresh: %+v", e)
		}
	}
	ev.mu.Unlock()

	// Without TokenFunc: the node closes with 4001 and the client stops.
	ev2 := newEvents()
	c2, err := client.Dial(t.Context(), "ws://"+n.Addr, &client.Options{Token: mint(time.Second), OnEvent: ev2.on})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	e, _ := ev2.await(t, 0, func(e client.Event) bool { return e.Type == client.EventClosed })
	var ce websocket.CloseError
	if !errors.As(e.Err, &ce) || ce.Code != 4001 {
		t.Fatalf("closed with %v, want a 4001 close", e.Err)
	}
}

// TestGapPush: when the node's Redis is killed and started again, the
// client stays connected and reports the node's gap push as an EventGap
// of the channel, after the messages received before it.
func TestGapPush(t *testing.T) {
	r := testenv.StartRedis(t)
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL="+r.URL(), "RELAY_NODE_ID=a")
	ctx := t.Context()
	ev := newEvents()
	c, err := client.Dial(ctx, "ws://"+n.Addr, &client.Options{OnEvent: ev.on})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan string, 16)
	if _, err := c.Subscribe(ctx, "news", func(m client.Message) {
		ev.on(client.Event{Channel: "message " + string(m.Bytes())})
		got <- string(m.Bytes())
	}); err != nil {
		t.Fatal(err)
	}
	pub, err := client.Dial(ctx, "ws://"+n.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := pub.Publish(ctx, "news", []byte("before")); err != nil {
		t.Fatal(err)
	}
	<-got // a client does not get its own messages
	r.Stop()
	r.Start()
	_, i := ev.await(t, 0, func(e client.Event) bool { return e.Channel == "message before" })
	gap, _ := ev.await(t, i, func(e client.Event) bool { return e.Type == client.EventGap })
	if gap.Channel != "news" || gap.Node != "a" {
		t.Errorf("gap event %+v, want channel news on node a", gap)
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, e := range ev.all {
		if e.Type == client.EventDisconnected {
			t.Errorf("event %+v: the connection should have stayed", e)
		}
	}
}
