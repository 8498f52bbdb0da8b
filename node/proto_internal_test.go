package node

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/pubsub"
)

func TestJoinPushes(t *testing.T) {
	text := func(s string) *frame { return newFrame(websocket.MessageText, []byte(s)) }
	big := strings.Repeat("x", maxJoinBytes-2)
	batch := []*frame{
		text("a"), text("b"),
		newFrame(websocket.MessageBinary, []byte("bin")),
		text("cc"), text(big), text("d"), text("e"),
	}
	tests := []struct {
		name  string
		proto *protoConn
		want  []string
	}{
		{"raw mode", nil, []string{"a", "b", "bin", "cc", big, "d", "e"}},
		{"batch=false", &protoConn{batch: false}, []string{"a", "b", "bin", "cc", big, "d", "e"}},
		// cc and big would exceed maxJoinBytes; big and d fit exactly.
		{"batch=true", &protoConn{batch: true}, []string{"a\nb", "bin", "cc", big + "\nd", "e"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &conn{proto: tt.proto}
			w := writevPool.Get().(*writev)
			defer w.release()
			var got []string
			for rest := batch; len(rest) > 0; {
				hdr, data, n := w.next(c, rest)
				if n < 1 || n > len(rest) {
					t.Fatalf("next consumed %d of %d frames", n, len(rest))
				}
				if want := appendFrameHeader(nil, rest[0].typ, len(data)); string(hdr) != string(want) {
					t.Errorf("message %d header %x, want %x", len(got), hdr, want)
				}
				got = append(got, string(data))
				rest = rest[n:]
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("messages %.80q, want %.80q", got, tt.want)
			}
		})
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
// with n protocol-mode subscribers whose writers never start (writerOpening).
func protoSubscribers(n int) (*hubChannel, []*conn) {
	nd := &Node{cfg: Config{QueueMessages: 1 << 20, QueueBytes: 1 << 30}}
	hc := &hubChannel{hub: &hub{nodeID: "here"}, name: "chat:lobby", index: make(map[*conn]int)}
	var conns []*conn
	for i := range n {
		c := &conn{n: nd, id: uint64(i + 1), mode: modeProto, proto: &protoConn{batch: true}}
		hc.add(c, nil)
		conns = append(conns, c)
	}
	return hc, conns
}

func drain(conns []*conn) {
	for _, c := range conns {
		clear(c.queue)
		c.queue, c.queued = c.queue[:0], 0
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
			for b.Loop() {
				hc.deliver(benchMessage)
				drain(conns)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/delivery")
		})
	}
}
