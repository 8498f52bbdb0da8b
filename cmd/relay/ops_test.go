package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/internal/wsclient"
	"github.com/relay-pubsub/relay/node/nodetest"
)

func readyStatus(t *testing.T, addr string) (int, []string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Failing []string }
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Failing
}

// TestDrain: SIGTERM to a node with 200 clients: readiness fails at once,
// new upgrades get 503, every client is closed with 1012 within the drain
// time and spread over it, the process exits 0, and what its clients
// published before the signal reached a client on another node.
func TestDrain(t *testing.T) {
	r := testenv.StartRedis(t)
	a := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL="+r.URL(), "RELAY_NODE_ID=a", "RELAY_DRAIN_SECONDS=4")
	b := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL="+r.URL(), "RELAY_NODE_ID=b")
	const clients = 200
	conns := make([]*websocket.Conn, clients)
	conns[0] = nodetest.Dial(t, "ws://"+a.Addr+"/ws/drain?echo=true", nil)
	for i := 1; i < clients; i++ {
		conns[i] = nodetest.Dial(t, "ws://"+a.Addr+"/ws/drain", nil)
	}
	other := nodetest.Dial(t, "ws://"+b.Addr+"/ws/drain", nil)

	// Published and accepted (echoed back to the publisher) before the
	// signal; the other node's client reads them after it.
	const published = 10
	for i := range published {
		nodetest.Write(t, conns[0], fmt.Sprint("before ", i))
	}
	for range published {
		nodetest.ReadText(t, conns[0])
	}

	type closed struct {
		code websocket.StatusCode
		at   time.Time
	}
	results := make(chan closed, clients)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for {
				if _, _, err := c.Read(ctx); err != nil {
					results <- closed{websocket.CloseStatus(err), time.Now()}
					return
				}
			}
		})
	}
	signalled := time.Now()
	a.Signal(t, syscall.SIGTERM)
	a.WaitLog(t, 10*time.Second, func(l map[string]any) bool { return l["msg"] == "draining" })
	if status, why := readyStatus(t, a.Addr); status != http.StatusServiceUnavailable || !slices.Contains(why, "draining") {
		t.Errorf("/readyz while draining = %d %v, want 503 draining", status, why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, resp, err := websocket.Dial(ctx, "ws://"+a.Addr+"/ws/drain", nil)
	cancel()
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("upgrade while draining: %v, want HTTP 503", err)
	}

	for i := range published {
		if got := nodetest.ReadText(t, other); got != fmt.Sprint("before ", i) {
			t.Errorf("other node read %q, want %q", got, fmt.Sprint("before ", i))
		}
	}
	wg.Wait()
	close(results)
	var times []time.Time
	for res := range results {
		if res.code != websocket.StatusServiceRestart {
			t.Errorf("client closed with %d, want 1012", res.code)
		}
		times = append(times, res.at)
	}
	slices.SortFunc(times, func(x, y time.Time) int { return x.Compare(y) })
	spread := times[len(times)-1].Sub(times[0])
	if spread < 100*time.Millisecond {
		t.Errorf("all %d closes within %v, want them spread over the drain window", len(times), spread)
	}
	if last := times[len(times)-1].Sub(signalled); last > 4*time.Second {
		t.Errorf("last close %v after the signal, after the 4 s drain time", last)
	}
	if code := a.Wait(t, 20*time.Second); code != 0 {
		t.Errorf("relay exited %d after drain, want 0", code)
	}
	t.Logf("%d closes spread over %v", len(times), spread)
}

// TestSlowConsumer: one client never reads while a publisher sends 10 MB to
// 51 subscribers: the node's heap stays bounded, the slow client is closed
// with 1013, and the other 50 receive every message.
func TestSlowConsumer(t *testing.T) {
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_QUEUE_BYTES=1048576", "RELAY_WRITE_TIMEOUT=120s")
	base := "http://" + n.Addr
	const (
		fast     = 50
		size     = 60 << 10
		messages = 10 << 20 / size // 10 MB in all
	)
	slow := dialSmallBuffer(t, "ws://"+n.Addr+"/ws/flood")
	var wg sync.WaitGroup
	errs := make(chan error, fast)
	// The publisher stays at most window messages ahead of the fast
	// subscribers, so that they never fall behind their queue and only the
	// client that does not read at all overflows.
	const window = 4
	var received atomic.Int64
	progress := make(chan struct{}, 1)
	for range fast {
		c := nodetest.Dial(t, "ws://"+n.Addr+"/ws/flood", nil)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for i := range messages {
				_, data, err := c.Read(ctx)
				if err != nil {
					errs <- err
					return
				}
				if got := binary.BigEndian.Uint32(data); got != uint32(i) || len(data) != size {
					errs <- fmt.Errorf("message %d: got #%d of %d bytes", i, got, len(data))
					return
				}
				received.Add(1)
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		})
	}
	var maxHeap float64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // the node's heap, sampled while the flood runs
		defer close(sampled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			maxHeap = max(maxHeap, testenv.Metrics(t, base)["go_memstats_heap_inuse_bytes"])
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	pub := nodetest.Dial(t, "ws://"+n.Addr+"/ws/flood", nil)
	payload := make([]byte, size)
	for i := range messages {
		for received.Load() < int64(fast*(i-window)) {
			select {
			case <-progress:
			case <-time.After(time.Minute):
				t.Fatalf("fast subscribers stuck at %d of %d messages", received.Load(), fast*(i-window))
			}
		}
		binary.BigEndian.PutUint32(payload, uint32(i))
		ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
		if err := pub.Write(ctx, websocket.MessageBinary, payload); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	wg.Wait()
	close(stop)
	<-sampled
	close(errs)
	for err := range errs {
		t.Error("fast subscriber:", err)
	}
	if code, reason := nodetest.ReadClose(t, slow); code != websocket.StatusTryAgainLater {
		t.Errorf("slow client closed with %d %q, want 1013", code, reason)
	}
	if got := testenv.Metrics(t, base)["relay_slow_consumer_disconnects_total"]; got != 1 {
		t.Errorf("relay_slow_consumer_disconnects_total = %v, want 1", got)
	}
	const bound = 64 << 20
	if maxHeap > bound {
		t.Errorf("node heap reached %.1f MiB, want under %d MiB", maxHeap/(1<<20), bound>>20)
	}
	t.Logf("node heap peaked at %.1f MiB while %.1f MB went to %d subscribers", maxHeap/(1<<20), float64(messages*size)/1e6, fast+1)
}

// dialSmallBuffer dials a client whose socket receive buffer is small, so
// that a client that does not read pushes back at once.
func dialSmallBuffer(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	d := &net.Dialer{Control: wsclient.ReadBufferControl(4096)}
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// TestSecondSignal: a second signal during the drain exits at once with
// status 1, without waiting for the drain.
func TestSecondSignal(t *testing.T) {
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_DRAIN_SECONDS=600")
	// Clients keep the drain busy: their closes are spread over 450 s.
	for range 50 {
		nodetest.Dial(t, "ws://"+n.Addr+"/ws/busy", nil)
	}
	n.Signal(t, syscall.SIGTERM)
	n.WaitLog(t, 10*time.Second, func(l map[string]any) bool { return l["msg"] == "draining" })
	n.Signal(t, syscall.SIGTERM)
	if code := n.Wait(t, 30*time.Second); code != 1 {
		t.Errorf("relay exited %d after a second signal, want 1", code)
	}
}

// The node sets the GC target to 25 unless GOGC is set (DEPLOY.md).
func TestGCTarget(t *testing.T) {
	for _, tt := range []struct {
		gogc string
		want float64
	}{{"", 25}, {"80", 80}} {
		r := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "GOGC="+tt.gogc)
		if got := testenv.Metrics(t, "http://"+r.Addr)["go_gc_gogc_percent"]; got != tt.want {
			t.Errorf("GOGC=%q: go_gc_gogc_percent = %v, want %v", tt.gogc, got, tt.want)
		}
	}
}
