package bench

import (
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/wsclient"
)

// BenchmarkLeanFrames measures the lean subscribers' frame parser and
// payload accounting on a buffer of raw-mode frames, as one read of an
// epoll loop hands it over: ns/op is per frame.
func BenchmarkLeanFrames(b *testing.B) {
	const frames = 1024
	r := &runner{cfg: &Config{Mode: Raw, Size: 128, DialTimeout: 10 * time.Second}, clk: newClock(), lat: newHistShards(1)}
	r.win.start.Store(1)
	r.win.end.Store(1 << 62)
	c := &conn{rcv: newReceiver(1, &r.win, r.clk, r.lat, 0), done: make(chan struct{})}
	s := &leanSub{c: c}
	var buf, payload []byte
	seq := uint64(0)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		buf = buf[:0]
		for range frames {
			payload = AppendPayload(payload[:0], Header{Seq: seq, Sent: 1}, 128)
			seq++
			buf = wsclient.AppendFrame(buf, wsclient.OpText, payload, false)
		}
		b.StartTimer()
		if rest, ok := s.frames(r, buf, 2); !ok || len(rest) != 0 {
			b.Fatalf("frames = %d bytes left, %v", len(rest), ok)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
}
