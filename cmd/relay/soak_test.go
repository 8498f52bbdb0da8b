package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/client"
	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
)

// Soak tolerances: after the run and a forced GC, each node's figures are
// back within these of their values before it.
const (
	soakGoroutines = 5       // goroutines
	soakFDs        = 3       // open file descriptors
	soakHeap       = 8 << 20 // bytes of heap in use
)

// TestSoak: a bounded mixed-traffic run across three nodes, 60 s (or
// RELAY_SOAK, e.g. RELAY_SOAK=10m): Go SDK publishers and subscribers on
// every node that stay, with every acknowledged message delivered to
// every one of them exactly once and in order, and around them clients
// that keep connecting and leaving, raw and protocol mode. After it, each
// node's goroutines, open file descriptors and heap are back to their
// baseline within the tolerances above.
func TestSoak(t *testing.T) {
	d := 60 * time.Second
	if v := os.Getenv("RELAY_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("RELAY_SOAK=%q: %v", v, err)
		}
	}
	r := testenv.StartRedis(t)
	var nodes []*testenv.Relay
	var pprofs, addrs []string
	for i := range 3 {
		n := testenv.StartRelay(t, relayEnv(r.URL(), fmt.Sprintf("soak-%d", i), "RELAY_PPROF_ADDR=127.0.0.1:0")...)
		l := n.WaitLog(t, nodetest.Timeout, func(l map[string]any) bool { _, ok := l["pprof"]; return ok })
		nodes, addrs = append(nodes, n), append(addrs, n.Addr)
		pprofs = append(pprofs, l["pprof"].(string))
	}
	type figures struct {
		goroutines, heap float64
		fds              float64
	}
	measure := func(i int) figures {
		resp, err := http.Get(pprofs[i] + "heap?gc=1") // collects garbage first
		if err != nil {
			t.Fatalf("GC on node %d: %v", i, err)
		}
		resp.Body.Close()
		m := testenv.Metrics(t, "http://"+addrs[i])
		return figures{m["go_goroutines"], m["go_memstats_heap_inuse_bytes"], m["process_open_fds"]}
	}
	// The baseline is taken warm: after each node has served a raw pair
	// (its Redis connections are open) and been measured once (the
	// test's keep-alive connections to its listeners are open).
	var base []figures
	for i := range nodes {
		if err := rawPair(addrs[i], addrs[(i+1)%3], "soak-warm"); err != nil {
			t.Fatal(err)
		}
		measure(i)
	}
	for i := range nodes {
		base = append(base, measure(i))
	}

	tr := newTraffic(t, "soak", 1_000_000)
	for i := range nodes {
		tr.subscribe(fmt.Sprintf("sub on %d", i), addrs[i], addrs[(i+1)%3])
	}
	for i := range nodes {
		tr.publish(addrs[i], addrs[(i+1)%3])
	}
	tr.start()
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	var churned, rawPairs atomic.Int64
	errs := make(chan error, 6)
	for w := range 3 {
		// A protocol-mode client that subscribes, reads a few messages
		// of the running traffic and leaves, in a loop.
		wg.Go(func() {
			for i := 0; i < 100_000 && time.Now().Before(deadline); i++ {
				if err := churnSDK(addrs[rand.IntN(3)]); err != nil {
					errs <- fmt.Errorf("churning client %d, round %d: %w", w, i, err)
					return
				}
				churned.Add(1)
			}
		})
		// A raw-mode pair on a channel of its own, across two nodes: one
		// message each way, then both leave, one of them abruptly.
		wg.Go(func() {
			for i := 0; i < 100_000 && time.Now().Before(deadline); i++ {
				ch := fmt.Sprintf("soak-raw-%d-%d", w, i)
				if err := rawPair(addrs[w], addrs[(w+1)%3], ch); err != nil {
					errs <- fmt.Errorf("raw pair %d, round %d: %w", w, i, err)
					return
				}
				rawPairs.Add(1)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	x := tr.finish()
	t.Logf("soak %v: %d churning clients, %d raw pairs; %v", d, churned.Load(), rawPairs.Load(), x)
	x.check(t)
	if x.Announced != 0 {
		t.Errorf("%d messages announced as gaps, want none: no fault was injected", x.Announced)
	}
	tr.close()
	for i := range nodes {
		var now figures
		testenv.WaitFor(t, time.Minute, fmt.Sprintf("node %d back to its baseline", i), func() bool {
			now = measure(i)
			return now.goroutines <= base[i].goroutines+soakGoroutines && now.fds <= base[i].fds+soakFDs && now.heap <= base[i].heap+soakHeap
		})
		t.Logf("node %d: goroutines %v → %v, fds %v → %v, heap in use %.1f → %.1f MiB",
			i, base[i].goroutines, now.goroutines, base[i].fds, now.fds, base[i].heap/(1<<20), now.heap/(1<<20))
	}
}

// close closes every client of the traffic.
func (tr *traffic) close() {
	for _, p := range tr.pubs {
		p.c.Close()
	}
	for _, s := range tr.subs {
		s.c.Close()
	}
}

// churnSDK connects a Go SDK client to addr, subscribes to the soak
// channel, reads three messages and closes.
func churnSDK(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, "ws://"+addr, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	got := make(chan struct{}, 3)
	if _, err := c.Subscribe(ctx, "soak", func(client.Message) {
		select {
		case got <- struct{}{}:
		default:
		}
	}); err != nil {
		return err
	}
	for range 3 {
		select {
		case <-got:
		case <-ctx.Done():
			return fmt.Errorf("no message on soak: %w", ctx.Err())
		}
	}
	return nil
}

// rawPair opens raw-mode connections to ch on nodes a and b, sends one
// message each way, and closes them: one with a close frame, one without.
func rawPair(a, b, ch string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ca, _, err := websocket.Dial(ctx, "ws://"+a+"/ws/"+ch, nil)
	if err != nil {
		return err
	}
	defer ca.CloseNow()
	cb, _, err := websocket.Dial(ctx, "ws://"+b+"/ws/"+ch, nil)
	if err != nil {
		return err
	}
	defer cb.CloseNow()
	// A raw upgrade returns once its subscription is live, on every node.
	if err := cb.Write(ctx, websocket.MessageText, []byte("from b")); err != nil {
		return err
	}
	if _, data, err := ca.Read(ctx); err != nil || string(data) != "from b" {
		return fmt.Errorf("a read %q, %v; want from b", data, err)
	}
	if err := ca.Write(ctx, websocket.MessageText, []byte("from a")); err != nil {
		return err
	}
	if _, data, err := cb.Read(ctx); err != nil || string(data) != "from a" {
		return fmt.Errorf("b read %q, %v; want from a", data, err)
	}
	return ca.Close(websocket.StatusNormalClosure, "")
}
