package node

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-pubsub/relay/pubsub"
)

// BenchmarkHubBroadcast measures the fan-out of one message to n local
// subscribers through the hub: the broker's handler encodes the frame once
// and enqueues it to each subscriber. Writers are held back (the conns are
// not open) so that only the hub is measured; queues are emptied every
// queueCap messages.
func BenchmarkHubBroadcast(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) {
			const queueCap = 1024
			broker := pubsub.NewMemory()
			defer broker.Close()
			nd, err := New(Config{
				Addr: ":0", NodeID: "bench", MaxMessageBytes: 1 << 16,
				QueueMessages: queueCap + 1, QueueBytes: 1 << 30, WriteTimeout: time.Second,
				PingInterval: time.Minute, PongTimeout: time.Minute,
			}, broker, prometheus.NewRegistry(), nil)
			if err != nil {
				b.Fatal(err)
			}
			conns := make([]*conn, n)
			for i := range conns {
				conns[i] = &conn{n: nd, id: uint64(i + 1), mode: modeRaw}
				conns[i].init(nd, nd.flushers[0]) // never opened: never written
				if err := nd.hub.subscribe(context.Background(), "bench", conns[i], nil); err != nil {
					b.Fatal(err)
				}
			}
			m := pubsub.Message{Origin: "elsewhere", Time: 1, Payload: make([]byte, 128)}
			ctx := context.Background()
			empty := func() {
				for _, c := range conns {
					c.out.Discard()
				}
			}
			// Warm up: the queues reach their working size, as on a live node.
			for range queueCap {
				broker.Publish(ctx, "bench", m)
			}
			empty()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				broker.Publish(ctx, "bench", m)
				if i++; i%queueCap == 0 {
					empty()
				}
			}
			b.ReportMetric(float64(b.N)*float64(n)/b.Elapsed().Seconds(), "deliveries/s")
			empty()
			b.ReportMetric(testing.AllocsPerRun(100, func() { broker.Publish(ctx, "bench", m) })/float64(n), "allocs/delivery")
			for _, c := range conns {
				if err := c.out.Cause(); err != nil {
					b.Fatalf("conn %d closed: %v", c.id, err)
				}
			}
		})
	}
}
