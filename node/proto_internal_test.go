package node

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/pubsub"
)

func TestJoinLines(t *testing.T) {
	text := func(s string) *wsout.Frame { return wsout.NewFrame(websocket.MessageText, []byte(s)) }
	big := strings.Repeat("x", maxJoinBytes-2)
	batch := []*wsout.Frame{
		text("a"), text("b"),
		wsout.NewFrame(websocket.MessageBinary, []byte("bin")),
		text("cc"), text(big), text("d"), text("e"),
	}
	// cc and big would exceed maxJoinBytes; big and d fit exactly.
	want := []string{"a\nb", "bin", "cc", big + "\nd", "e"}
	var got []string
	for rest := batch; len(rest) > 0; {
		joined, n := joinLines([]byte("earlier"), rest)
		if n < 1 || n > len(rest) {
			t.Fatalf("joinLines consumed %d of %d frames", n, len(rest))
		}
		if n == 1 {
			got = append(got, string(rest[0].Payload()))
		} else {
			if !strings.HasPrefix(string(joined), "earlier") {
				t.Fatalf("joinLines did not append to dst: %.20q", joined)
			}
			got = append(got, strings.TrimPrefix(string(joined), "earlier"))
		}
		rest = rest[n:]
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("messages %.80q, want %.80q", got, want)
	}
}

func TestErrorWindow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	w := errorWindow{max: 3, window: 10 * time.Second}
	steps := []struct {
		at   time.Duration
		want bool
	}{
		{0, false}, {time.Second, false},
		{11 * time.Second, false}, // 3 errors, but over 11 s
		{12 * time.Second, false}, // 1 s, 11 s, 12 s: 11 s apart
		{13 * time.Second, true},  // 11, 12, 13
	}
	for i, s := range steps {
		if got := w.add(t0.Add(s.at)); got != s.want {
			t.Errorf("step %d: add(t0+%v) = %v, want %v", i, s.at, got, s.want)
		}
	}
	never := errorWindow{}
	for range 100 {
		if never.add(t0) {
			t.Fatal("a zero max closed the connection")
		}
	}
}

// protoSubscribers returns a channel of the hub of a node without a network
// with n protocol-mode subscribers that never open, so are never written.
func protoSubscribers(n int) (*hubChannel, []*conn) {
	nd := &Node{outCfg: wsout.Config{QueueMessages: 1 << 20, QueueBytes: 1 << 30}}
	f := wsout.NewFlusher(0)
	hc := &hubChannel{hub: &hub{nodeID: "here"}, name: "chat:lobby", index: make(map[*conn]int)}
	var conns []*conn
	for i := range n {
		c := &conn{n: nd, id: uint64(i + 1), mode: modeProto, proto: &protoConn{}}
		c.out.Init(&nd.outCfg, f, c)
		c.out.SetJoin(joinLines)
		hc.add(c, nil)
		conns = append(conns, c)
	}
	return hc, conns
}

func drain(conns []*conn) {
	for _, c := range conns {
		c.out.Discard()
	}
}

var benchMessage = pubsub.Message{Origin: "there", Conn: 1, Payload: []byte(`{"user":"ada","text":"hello, world","n":12345}`)}

// TestDeliverProtoAllocs: a protocol-mode push is encoded once per message
// per node, so allocations per message do not grow with subscribers (the
// race detector adds a little noise, hence the slack of 2).
func TestDeliverProtoAllocs(t *testing.T) {
	allocs := func(n int) float64 {
		hc, conns := protoSubscribers(n)
		hc.deliver(benchMessage) // grow the queues
		drain(conns)
		return testing.AllocsPerRun(100, func() {
			hc.deliver(benchMessage)
			drain(conns)
		})
	}
	one, many := allocs(1), allocs(1000)
	if many > one+2 {
		t.Errorf("deliver: %v allocations to 1000 protocol subscribers, %v to 1; want as many", many, one)
	}
}

// BenchmarkDeliverProto measures the protocol-mode broadcast path: one push
// encoding per message, enqueued for every subscriber.
func BenchmarkDeliverProto(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			hc, conns := protoSubscribers(n)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				hc.deliver(benchMessage)
				if i++; i%1024 == 0 { // as a sweep would, now and then
					drain(conns)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/delivery")
		})
	}
}
