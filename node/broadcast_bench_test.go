//go:build unix

package node_test

import (
	"bufio"
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/wsclient"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub"
)

// BenchmarkBroadcastSockets measures the whole delivery path on real
// loopback sockets: a message published to the node's broker reaches n
// raw-mode subscribers, each a bare TCP client in this process that counts
// frames. cpu-ns/delivery is this process's CPU time (node and clients)
// per delivery; compare runs of it, not with figures of other tools.
func BenchmarkBroadcastSockets(b *testing.B) {
	for _, n := range []int{100, 1000} {
		for _, delay := range []time.Duration{0, 5 * time.Millisecond} {
			b.Run(fmt.Sprintf("subs=%d/delay=%v", n, delay), func(b *testing.B) {
				benchBroadcast(b, n, delay)
			})
		}
	}
}

func benchBroadcast(b *testing.B, n int, delay time.Duration) {
	broker := pubsub.NewMemory()
	cfg := nodetest.Config()
	cfg.MaxConnections = 0
	cfg.QueueMessages = 1 << 20
	cfg.QueueBytes = 1 << 30
	cfg.WriteDelay = delay
	s := nodetest.Start(b, cfg, broker)
	addr := strings.TrimPrefix(s.URL, "http://")

	var delivered atomic.Int64
	progress := make(chan struct{}, 1)
	var wg sync.WaitGroup
	for range n {
		nc := handshake(b, addr, "/ws/bench")
		wg.Go(func() { countFrames(bufio.NewReaderSize(nc, 32<<10), &delivered, progress) })
		b.Cleanup(func() { nc.Close() })
	}
	m := pubsub.Message{Origin: "elsewhere", Payload: make([]byte, 128)}
	// Paced in bursts: a publisher far ahead of the sockets would only
	// measure queueing. One failure bound for the whole run: a timer per
	// wait would be most of the allocations counted.
	const burst = 64
	fail := time.NewTimer(time.Hour)
	defer fail.Stop()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := cpuTime()
	b.ResetTimer()
	sent := 0
	for b.Loop() {
		broker.Publish(context.Background(), "bench", m)
		if sent++; sent%burst == 0 {
			awaitDelivered(b, &delivered, progress, fail.C, int64((sent-burst)*n))
		}
	}
	awaitDelivered(b, &delivered, progress, fail.C, int64(sent*n))
	b.StopTimer()
	runtime.ReadMemStats(&after)
	d := float64(sent * n)
	b.ReportMetric(d/b.Elapsed().Seconds(), "deliveries/s")
	b.ReportMetric(float64(cpuTime()-start)/d, "cpu-ns/delivery")
	// Node and clients together; the clients allocate nothing per frame.
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/d, "allocs/delivery")
	b.ReportMetric(0, "ns/op")
}

// awaitDelivered waits until count reaches want, failing when fail fires.
func awaitDelivered(b *testing.B, count *atomic.Int64, progress <-chan struct{}, fail <-chan time.Time, want int64) {
	for count.Load() < want {
		select {
		case <-progress:
		case <-fail:
			b.Fatalf("delivered %d of %d", count.Load(), want)
		}
	}
}

// countFrames reads unmasked server frames and counts them until EOF,
// signalling progress.
func countFrames(r *bufio.Reader, count *atomic.Int64, progress chan<- struct{}) {
	for {
		h, err := wsclient.ReadHeader(r)
		if err != nil {
			return
		}
		if _, err := r.Discard(int(h.Len)); err != nil {
			return
		}
		if !h.Control() { // data frames, not ping or close
			count.Add(1)
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
