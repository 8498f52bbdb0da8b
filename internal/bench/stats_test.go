package bench

import (
	"testing"
	"time"
)

func TestStreamStateObserve(t *testing.T) {
	tests := []struct {
		name string
		seqs []uint64
		want []verdict
	}{
		{"in order", []uint64{0, 1, 2, 3}, []verdict{inOrder, inOrder, inOrder, inOrder}},
		{"gap is not reordering", []uint64{0, 5, 6}, []verdict{inOrder, inOrder, inOrder}},
		{"late arrival", []uint64{0, 2, 1, 3}, []verdict{inOrder, inOrder, reordered, inOrder}},
		{"duplicate", []uint64{0, 1, 1, 0}, []verdict{inOrder, inOrder, duplicate, duplicate}},
		{"duplicate of a late one", []uint64{3, 1, 1}, []verdict{inOrder, reordered, duplicate}},
		{"first message mid-stream", []uint64{100, 99, 100}, []verdict{inOrder, reordered, duplicate}},
		{"older than the window", []uint64{0, windowBits, 0}, []verdict{inOrder, inOrder, late}},
		{"edge of the window", []uint64{1, windowBits, 1, 1}, []verdict{inOrder, inOrder, duplicate, duplicate}},
		{"slot reused after a jump", []uint64{5, 5 + windowBits, 5 + windowBits - 1}, []verdict{inOrder, inOrder, reordered}},
		{"slot reused after a big jump", []uint64{5, 5 + 3*windowBits, 5 + 2*windowBits + 1}, []verdict{inOrder, inOrder, reordered}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStreamState()
			for i, q := range tt.seqs {
				if got := s.observe(q); got != tt.want[i] {
					t.Errorf("observe(%d) at step %d = %d, want %d", q, i, got, tt.want[i])
				}
			}
		})
	}
}

// TestReceiverCounts checks the receiver's accounting: only messages sent
// inside the window count, duplicates are not deliveries, foreign messages
// are set apart.
func TestReceiverCounts(t *testing.T) {
	var win window
	win.start.Store(1000)
	win.end.Store(2000)
	hs := newHistShards(2)
	r := newReceiver(2, &win, newClock(), hs, 0)
	msg := func(stream uint32, seq uint64, sent int64) []byte {
		return AppendPayload(nil, Header{Stream: stream, Seq: seq, Sent: sent}, 64)
	}
	r.message(msg(0, 0, 500), 600)   // warm-up: not measured
	r.message(msg(0, 1, 1000), 3000) // measured, 2 µs
	r.message(msg(0, 3, 1100), 3000) // measured
	r.message(msg(0, 2, 1050), 3000) // measured, reordered
	r.message(msg(0, 3, 1100), 3000) // duplicate
	r.message(msg(1, 0, 1500), 3000) // second stream
	r.message(msg(0, 4, 2000), 3000) // after the window
	r.message(msg(5, 0, 1500), 3000) // unknown stream: foreign
	r.message([]byte("hello"), 3000) // foreign
	r.lat.flush()
	c := &r.c
	for name, got := range map[string]int64{
		"received": c.received.Load(), "measured": c.measured.Load(), "duplicates": c.duplicates.Load(),
		"reordered": c.reordered.Load(), "foreign": c.foreign.Load(),
	} {
		want := map[string]int64{"received": 9, "measured": 4, "duplicates": 1, "reordered": 1, "foreign": 2}[name]
		if got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	if h := hs.merged(); h.TotalCount() != 4 || h.Min() != 1 || h.Max() != 2 {
		t.Errorf("latency histogram: count %d min %d max %d, want 4, 1, 2", h.TotalCount(), h.Min(), h.Max())
	}
}

func TestReceiverNoAlloc(t *testing.T) {
	var win window
	win.start.Store(1)
	win.end.Store(1 << 62)
	r := newReceiver(1, &win, newClock(), newHistShards(1), 0)
	p := AppendPayload(nil, Header{Sent: 10}, 128)
	r.message(p, 20) // allocates the stream's state once
	var seq uint64
	n := testing.AllocsPerRun(1000, func() {
		seq++
		AppendPayload(p[:0], Header{Seq: seq, Sent: 10}, 128)
		r.message(p, 20)
	})
	if n != 0 {
		t.Errorf("receiver.message allocates %v times per message, want 0", n)
	}
}

func BenchmarkReceiverMessage(b *testing.B) {
	b.ReportAllocs()
	var win window
	win.start.Store(1)
	win.end.Store(1 << 62)
	r := newReceiver(1, &win, newClock(), newHistShards(1), 0)
	p := AppendPayload(nil, Header{Sent: 10}, 128)
	var seq uint64
	for b.Loop() {
		seq++
		AppendPayload(p[:0], Header{Seq: seq, Sent: 10}, 128)
		r.message(p, 20)
	}
}

func TestPublisherTick(t *testing.T) {
	tests := []struct {
		rate    float64
		streams int
		want    time.Duration
	}{
		{1000, 1, 10 * time.Millisecond}, // faster than -tick: -tick
		{10, 1, 100 * time.Millisecond},  // one message per tick
		{5, 2, 100 * time.Millisecond},   // 10/s over two streams
		{0.1, 1, time.Second},            // at most a second
		{0, 1, time.Second},
	}
	for _, tt := range tests {
		p := &publisher{rate: tt.rate, streams: make([]*stream, tt.streams)}
		if got := p.tick(10 * time.Millisecond); got != tt.want {
			t.Errorf("tick(rate %v × %d streams) = %v, want %v", tt.rate, tt.streams, got, tt.want)
		}
	}
}
