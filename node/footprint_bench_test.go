package node_test

import (
	"context"
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/relay-pubsub/relay/internal/wsclient"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub"
)

// BenchmarkIdleConnFootprint measures what an idle subscribed raw-mode
// connection costs the node: heap, goroutine stacks and goroutines per
// connection. The clients are bare TCP connections that did the handshake
// by hand, so that almost all of the difference is the server's.
func BenchmarkIdleConnFootprint(b *testing.B) {
	const conns = 2000
	cfg := nodetest.Config()
	cfg.MaxConnections = 0
	s := nodetest.Start(b, cfg, pubsub.NewMemory())
	addr := strings.TrimPrefix(s.URL, "http://")
	for b.Loop() {
		before := settle()
		clients := make([]net.Conn, 0, conns)
		for range conns {
			clients = append(clients, handshake(b, addr, "/ws/idle"))
		}
		after := settle()
		n := float64(conns)
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "heap-B/conn")
		b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n, "stack-B/conn")
		b.ReportMetric(float64(after.goroutines-before.goroutines)/n, "goroutines/conn")
		for _, c := range clients {
			c.Close()
		}
	}
}

type footprint struct {
	runtime.MemStats
	goroutines int
}

func settle() footprint {
	runtime.GC()
	runtime.GC()
	var f footprint
	runtime.ReadMemStats(&f.MemStats)
	f.goroutines = runtime.NumGoroutine()
	return f
}

// handshake opens a WebSocket to addr+path with a bare TCP connection.
func handshake(tb testing.TB, addr, path string) net.Conn {
	nc, _, err := wsclient.Dial(context.Background(), addr, path, wsclient.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	return nc
}
