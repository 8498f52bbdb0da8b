package node

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-pubsub/relay/pubsub"
)

// A connection's writes are paced by its own last write, not by its
// flusher's: on a node whose flusher holds a busy connection's next write
// for WriteDelay, a message to a quiet connection goes out at once.
func TestQuietConnectionNotHeldBehindBusyOne(t *testing.T) {
	const delay = time.Second // the longest RELAY_WRITE_DELAY allowed
	b := pubsub.NewMemory()
	n, err := New(Config{
		Addr: "127.0.0.1:0", MaxMessageBytes: 1 << 16, QueueMessages: 64, QueueBytes: 1 << 20,
		WriteTimeout: 10 * time.Second, WriteDelay: delay, PingInterval: time.Minute, PongTimeout: time.Minute,
		DrainSeconds: 1,
	}, b, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	n.flushers = []*flusher{newFlusher(delay)} // both connections on one
	// Served as nodetest.Start does (it cannot be imported here): Serve's
	// drain waits for the connections' writers at the end.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx, ln) }()
	defer func() {
		cancel()
		<-done
		b.Close()
	}()

	tctx, tcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer tcancel()
	dial := func(ch string) *websocket.Conn {
		c, _, err := websocket.Dial(tctx, "ws://"+ln.Addr().String()+"/ws/"+ch, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	read := func(c *websocket.Conn, want string) {
		t.Helper()
		_, got, err := c.Read(tctx)
		if err != nil || string(got) != want {
			t.Fatalf("read %q, %v; want %q", got, err, want)
		}
	}
	publish := func(ch, msg string) {
		t.Helper()
		if err := b.Publish(tctx, ch, pubsub.Message{Origin: "elsewhere", Payload: []byte(msg)}); err != nil {
			t.Fatal(err)
		}
	}
	busy, quiet := dial("busy"), dial("quiet")
	defer busy.CloseNow()
	defer quiet.CloseNow()

	publish("busy", "1")
	read(busy, "1") // written at once: the connection had not been written to
	publish("busy", "2")
	// "2" is due a second after "1"; "q" is due now.
	publish("quiet", "q")
	read(quiet, "q")
	var pending int
	n.mu.Lock()
	for c := range n.conns {
		if c.channel == "busy" {
			c.mu.Lock()
			pending = len(c.queue)
			c.mu.Unlock()
		}
	}
	n.mu.Unlock()
	if pending != 1 {
		t.Fatalf("the busy connection has %d messages queued when the quiet one got its own; want 1 (held for its delay)", pending)
	}
	read(busy, "2")
}
