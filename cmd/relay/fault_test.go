package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/internal/wsclient"
	"github.com/relay-pubsub/relay/node/nodetest"
)

// The fault-injection suite (docs/RELIABILITY.md): relay processes, a
// redis-server and links broken on purpose, with publishers and
// subscribers running through each fault and every acknowledged message
// accounted for. Each test logs its figures; docs/RELIABILITY.md quotes
// them.

// TestFaultNodeKilled: a node is SIGKILLed while its clients publish and
// subscribe. Its clients reconnect to the other node and are told of the
// gap; every message acknowledged reaches every subscriber of the other
// node, once and in order.
func TestFaultNodeKilled(t *testing.T) {
	r := testenv.StartRedis(t)
	a := testenv.StartRelay(t, relayEnv(r.URL(), "a")...)
	b := testenv.StartRelay(t, relayEnv(r.URL(), "b")...)
	tr := newTraffic(t, "fault:kill", 5000)
	tr.subscribe("sub on a", a.Addr, b.Addr)
	tr.subscribe("sub on a", a.Addr, b.Addr)
	onB := []*subscriber{tr.subscribe("sub on b", b.Addr, a.Addr), tr.subscribe("sub on b", b.Addr, a.Addr)}
	tr.publish(a.Addr, b.Addr)
	tr.publish(a.Addr, b.Addr)
	tr.publish(b.Addr, a.Addr)
	tr.start()
	tr.awaitReceived(100)
	a.Signal(t, syscall.SIGKILL)
	a.Wait(t, nodetest.Timeout)
	// Every client of a is back, on b, and traffic flows again.
	for _, s := range tr.subs[:2] {
		s.await(t, 30*time.Second, "gap after the kill", func(s *subscriber) bool { return s.gaps > 0 })
	}
	tr.awaitReceived(100)
	x := tr.finish()
	t.Logf("node SIGKILL: %v", x)
	x.check(t)
	if got := tr.steady(); len(got) != len(onB) {
		t.Errorf("%d subscribers kept their connection, want the %d on b", len(got), len(onB))
	}
	if x.Unknown > len(tr.pubs[:2]) {
		t.Errorf("%d publishes of unknown outcome, want at most one per publisher on the killed node", x.Unknown)
	}
}

// TestFaultSlowConsumer: a subscriber that stops reading is closed with
// 1013 once its queue is full; the other subscribers of the channel, on
// the same node and another, receive every message.
func TestFaultSlowConsumer(t *testing.T) {
	r := testenv.StartRedis(t)
	small := []string{"RELAY_QUEUE_MESSAGES=64", "RELAY_QUEUE_BYTES=262144"}
	a := testenv.StartRelay(t, relayEnv(r.URL(), "a", small...)...)
	b := testenv.StartRelay(t, relayEnv(r.URL(), "b", small...)...)
	tr := newTraffic(t, "fault-slow", 20000)
	tr.subscribe("sub on a", a.Addr)
	tr.subscribe("sub on b", b.Addr)
	slow := dialSmallBuffer(t, "ws://"+a.Addr+"/ws/fault-slow")
	tr.publish(b.Addr)
	tr.publish(a.Addr)
	tr.start()
	// Large messages fill the slow client's queue fast.
	big := dialSDK(t, []string{b.Addr}, nil)
	payload := []byte(strings.Repeat("x", 16<<10))
	testenv.WaitFor(t, time.Minute, "the slow consumer closed", func() bool {
		for range 10 {
			ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
			err := big.Publish(ctx, "fault-slow", payload)
			cancel()
			if err != nil {
				t.Fatalf("publish a large message: %v", err)
			}
		}
		return gauge(t, a, "relay_slow_consumer_disconnects_total") == 1
	})
	tr.awaitReceived(100)
	x := tr.finish()
	t.Logf("slow consumer: %v", x)
	x.check(t)
	if got := tr.steady(); len(got) != len(tr.subs) {
		t.Errorf("%d subscribers kept their connection, want all %d", len(got), len(tr.subs))
	}
	if code, reason := nodetest.ReadClose(t, slow); code != websocket.StatusTryAgainLater {
		t.Errorf("slow client closed with %d %q, want 1013", code, reason)
	}
}

// TestFaultDeadClient: a client that vanishes without a FIN (its link
// black-holed) is dropped after the pong timeout; traffic of the channel
// goes on unaffected.
func TestFaultDeadClient(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	a := testenv.StartRelay(t, relayEnv(r.URL(), "a", "RELAY_PING_INTERVAL=500ms", "RELAY_PONG_TIMEOUT=2s")...)
	b := testenv.StartRelay(t, relayEnv(r.URL(), "b")...)
	tr := crossTraffic(t, "fault-dead", 20000, a, b)
	tr.start()
	link := testenv.StartLink(t, a.Addr)
	dead := testenv.DialWebSocket(t, link.Addr(), "/ws/fault-dead", wsclient.Options{})
	dead.SetReadDeadline(time.Now().Add(nodetest.Timeout))
	if _, _, err := wsclient.ReadMessage(bufio.NewReader(dead)); err != nil {
		t.Fatalf("the client to be lost reads nothing: %v", err)
	}
	raw := `relay_connections{mode="raw"}`
	if n := gauge(t, a, raw); n != 1 {
		t.Fatalf("%s = %v, want 1", raw, n)
	}
	before := gauge(t, a, `relay_connections_closed_total{code="1006"}`)
	link.BlackHole()
	testenv.WaitFor(t, 30*time.Second, "the node to drop the vanished client", func() bool { return gauge(t, a, raw) == 0 })
	if got := gauge(t, a, `relay_connections_closed_total{code="1006"}`); got != before+1 {
		t.Errorf("closes without a close frame = %v, want %v (the pong timeout)", got, before+1)
	}
	tr.awaitReceived(100)
	x := tr.finish()
	t.Logf("dead client: %v", x)
	x.check(t)
	if got := tr.steady(); len(got) != len(tr.subs) {
		t.Errorf("%d subscribers kept their connection, want all %d", len(got), len(tr.subs))
	}
}

// TestFaultSlowloris: clients that trickle their request headers are cut
// by the header timeout (10 s), and meanwhile the node serves: new
// connections, publishes and deliveries.
func TestFaultSlowloris(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	a := testenv.StartRelay(t, relayEnv(r.URL(), "a")...)
	b := testenv.StartRelay(t, relayEnv(r.URL(), "b")...)
	tr := crossTraffic(t, "fault-loris", 40000, a, b)
	tr.start()
	const attackers = 50
	cut := make(chan error, attackers)
	for range attackers {
		nc, err := net.Dial("tcp", a.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		go func() { cut <- trickle(nc) }()
	}
	// While they trickle, the node takes new clients.
	late := tr.subscribe("late sub on a", a.Addr)
	late.await(t, 30*time.Second, "messages", func(s *subscriber) bool { return s.received >= 50 })
	for range attackers {
		if err := <-cut; err != nil {
			t.Error(err)
		}
	}
	tr.awaitReceived(100)
	x := tr.finish()
	t.Logf("slowloris: %v", x)
	x.check(t)
	if got := tr.steady(); len(got) != len(tr.subs) {
		t.Errorf("%d subscribers kept their connection, want all %d", len(got), len(tr.subs))
	}
}

// trickle sends an upgrade request one header byte every 100 ms, for at
// most 60 s, and returns nil once the node ends the connection.
func trickle(nc net.Conn) error {
	req := "GET /ws/fault-loris HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Slow: " + strings.Repeat("a", 1000)
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, nc) // ends when the node closes
		done <- err
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < len(req) && i < 600; i++ {
		select {
		case <-done:
			return nil
		case <-tick.C:
		}
		if _, err := nc.Write([]byte{req[i]}); err != nil {
			return nil // closed by the node
		}
	}
	nc.Close()
	<-done
	return fmt.Errorf("slowloris connection still open after 60 s of trickled headers")
}

// TestFaultConnectionLoop: connections opened and closed in a loop, in
// every mode and both politely and abruptly, leave no file descriptor and
// no goroutine behind on the node, while traffic flows.
func TestFaultConnectionLoop(t *testing.T) {
	r := testenv.StartRedis(t)
	a := testenv.StartRelay(t, relayEnv(r.URL(), "a")...)
	b := testenv.StartRelay(t, relayEnv(r.URL(), "b")...)
	tr := crossTraffic(t, "fault-loop", 40000, a, b)
	tr.start()
	tr.awaitReceived(20)
	fds0, gr0 := gauge(t, a, "process_open_fds"), gauge(t, a, "go_goroutines")
	const loops = 600
	paths := []string{"/ws/fault-loop", "/ws", "/echo", "/ws/other"}
	for i := range loops {
		ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
		c, _, err := websocket.Dial(ctx, "ws://"+a.Addr+paths[i%len(paths)], nil)
		cancel()
		if err != nil {
			t.Fatalf("loop %d: %v", i, err)
		}
		if i%2 == 0 {
			c.Close(websocket.StatusNormalClosure, "")
		} else {
			c.CloseNow()
		}
	}
	// A few more plain HTTP requests that never upgrade.
	for range loops / 10 {
		resp, err := http.Get("http://" + a.Addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	const slack = 4
	var fds, gr float64
	testenv.WaitFor(t, 30*time.Second, "fds and goroutines back to their baseline", func() bool {
		fds, gr = gauge(t, a, "process_open_fds"), gauge(t, a, "go_goroutines")
		return fds <= fds0+slack && gr <= gr0+slack
	})
	t.Logf("connection loop: %d connections: fds %v → %v, goroutines %v → %v", loops, fds0, fds, gr0, gr)
	tr.awaitReceived(20)
	x := tr.finish()
	t.Logf("connection loop: %v", x)
	x.check(t)
}

// TestFaultRedisBlackHole: the link between a node and Redis goes silent
// (no FIN, no RST) for several seconds and comes back. The node reports itself
// unready within its probe timeout and ready again after; its clients
// stay connected, and every acknowledged message reaches every subscriber.
func TestFaultRedisBlackHole(t *testing.T) {
	r := testenv.StartRedis(t)
	link := testenv.StartLink(t, r.Addr())
	fast := []string{"RELAY_REDIS_TIMEOUT=500ms", "RELAY_REDIS_PROBE_INTERVAL=200ms", "RELAY_REDIS_PROBE_TIMEOUT=500ms"}
	a := testenv.StartRelay(t, relayEnv("redis://"+link.Addr()+"/0", "a", fast...)...)
	b := testenv.StartRelay(t, relayEnv(r.URL(), "b", fast...)...)
	tr := crossTraffic(t, "fault-hole", 40000, a, b)
	tr.start()
	tr.awaitReceived(100)
	link.BlackHole()
	testenv.WaitFor(t, 30*time.Second, "node a unready", func() bool { return ready(t, a) == http.StatusServiceUnavailable })
	// The publisher on b goes on; the one on a waits or is refused.
	// Long enough for node a to tear down its Redis connections (probe
	// timeout) and fail to reconnect.
	tr.subs[1].mu.Lock()
	want := tr.subs[1].received + 400
	tr.subs[1].mu.Unlock()
	tr.subs[1].await(t, 30*time.Second, "messages during the black hole", func(s *subscriber) bool { return s.received >= want })
	link.Restore()
	testenv.WaitFor(t, 30*time.Second, "node a ready again", func() bool { return ready(t, a) == http.StatusOK })
	tr.awaitReceived(100)
	x := tr.finish()
	t.Logf("node–Redis link black-holed: %v", x)
	m := testenv.Metrics(t, "http://"+a.Addr)
	t.Logf("node a: %v probe failures, %v teardowns, %v reconnects, %v resubscribes",
		m["relay_broker_probe_failures_total"], m["relay_broker_teardowns_total"], m["relay_broker_reconnects_total"], m["relay_broker_resubscribes_total"])
	// The node keeps its subscriber connections through a hole of this
	// length (no teardown), and what Redis sent meanwhile arrives once
	// the link is back: every subscriber keeps its connection. On a
	// loaded machine a probe can time out anyway and the node tear a
	// connection down and resubscribe: its subscriber is then told of the
	// gap, which x.check counts as announced.
	if m["relay_broker_resubscribes_total"] == 0 {
		if got := tr.steady(); len(got) != len(tr.subs) {
			t.Errorf("%d subscribers kept their connection, want all %d", len(got), len(tr.subs))
		}
	}
	// Nothing is lost silently. A publish whose answer did not come in
	// time is answered unknown_outcome (it may be delivered), never
	// unavailable.
	x.check(t)
}

// ready returns the status of the node's /readyz.
func ready(t *testing.T, n *testenv.Relay) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+n.Addr+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestFaultRollingRestart: three nodes drained (SIGTERM) and started again
// one after the other, as a rolling update does, while clients publish and
// subscribe. Each drained client reconnects to another node at once (1012)
// and is told of a gap; every acknowledged message reaches every
// subscriber or is announced to it.
func TestFaultRollingRestart(t *testing.T) {
	r := testenv.StartRedis(t)
	var addrs []string
	for range 3 {
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)))
	}
	start := func(i int) *testenv.Relay {
		return testenv.StartRelay(t, relayEnv(r.URL(), fmt.Sprintf("roll-%d", i), "RELAY_ADDR="+addrs[i], "RELAY_DRAIN_SECONDS=1")...)
	}
	var nodes []*testenv.Relay
	for i := range addrs {
		nodes = append(nodes, start(i))
	}
	// Each client starts on node i and knows the others.
	order := func(i int) []string { return []string{addrs[i], addrs[(i+1)%3], addrs[(i+2)%3]} }
	tr := newTraffic(t, "fault-roll", 40000)
	for i := range addrs {
		tr.subscribe(fmt.Sprintf("sub on %d", i), order(i)...)
	}
	for i := range addrs {
		tr.publish(order(i)...)
	}
	tr.start()
	tr.awaitReceived(50)
	for i := range nodes {
		nodes[i].Signal(t, syscall.SIGTERM)
		if code := nodes[i].Wait(t, 30*time.Second); code != 0 {
			t.Fatalf("node %d exited with %d after SIGTERM, want 0", i, code)
		}
		nodes[i] = start(i)
		tr.awaitReceived(50)
	}
	x := tr.finish()
	t.Logf("rolling restart of 3 nodes: %v", x)
	x.check(t)
	for _, s := range tr.subs {
		s.mu.Lock()
		if s.gaps == 0 {
			t.Errorf("%s was never told of a gap, want one per drain it went through", s.name)
		}
		s.mu.Unlock()
	}
}
