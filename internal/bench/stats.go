package bench

import (
	"sync"
	"sync/atomic"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// windowBits is how far back, in sequence numbers, a stream remembers which
// messages it has seen. A message older than that is counted late (out of
// order) without a duplicate check.
const windowBits = 1024

// streamState detects duplicates and reordering of one stream at one
// subscriber, with a sliding bitmap like IPsec's anti-replay window
// (RFC 6479). Loss is not derived from gaps here: it is expected minus
// unique deliveries, computed over the run.
type streamState struct {
	max  int64 // highest sequence seen, -1 before the first
	bits [windowBits / 64]uint64
}

// verdict classifies one received sequence number.
type verdict uint8

const (
	inOrder   verdict = iota // higher than every sequence seen before
	reordered                // lower than one seen before, not seen itself
	duplicate                // seen before
	late                     // too old for the window: reordered, unchecked
)

func newStreamState() *streamState { return &streamState{max: -1} }

func (s *streamState) observe(seq uint64) verdict {
	q := int64(seq)
	if q > s.max {
		shift := q - s.max
		if s.max < 0 || shift >= windowBits {
			s.bits = [windowBits / 64]uint64{}
		} else {
			for i := s.max + 1; i <= q; i++ {
				// Clear the slots that now stand for the new sequences.
				b := i % windowBits
				s.bits[b/64] &^= 1 << (b % 64)
			}
		}
		s.max = q
		b := q % windowBits
		s.bits[b/64] |= 1 << (b % 64)
		return inOrder
	}
	if s.max-q >= windowBits {
		return late
	}
	b := q % windowBits
	m := uint64(1) << (b % 64)
	if s.bits[b/64]&m != 0 {
		return duplicate
	}
	s.bits[b/64] |= m
	return reordered
}

// Latencies are recorded in microseconds, from 1 µs to 10 minutes, with 3
// significant digits.
const (
	histMin  = 1
	histMax  = 10 * 60 * 1e6
	histSigs = 3
)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, histSigs) }

// histShards collects latencies from many goroutines: each records into a
// small local batch and flushes it into one of a few locked histograms.
type histShards struct {
	shards []histShard
}

type histShard struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
	_  [40]byte // keep shards on separate cache lines
}

func newHistShards(n int) *histShards {
	hs := &histShards{shards: make([]histShard, n)}
	for i := range hs.shards {
		hs.shards[i].h = newHist()
	}
	return hs
}

// record adds values (microseconds) to shard i mod the shard count.
func (hs *histShards) record(i int, values []int64) {
	s := &hs.shards[i%len(hs.shards)]
	s.mu.Lock()
	for _, v := range values {
		recordClamped(s.h, v)
	}
	s.mu.Unlock()
}

// merged returns one histogram of every shard's values.
func (hs *histShards) merged() *hdrhistogram.Histogram {
	out := newHist()
	for i := range hs.shards {
		s := &hs.shards[i]
		s.mu.Lock()
		out.Merge(s.h)
		s.mu.Unlock()
	}
	return out
}

func recordClamped(h *hdrhistogram.Histogram, v int64) {
	if v < histMin {
		v = histMin
	} else if v > histMax {
		v = histMax
	}
	_ = h.RecordValue(v) // in range by construction
}

// latencyBatch is a subscriber's local buffer of latencies.
type latencyBatch struct {
	vals  []int64
	shard int
	hs    *histShards
}

func (b *latencyBatch) add(us int64) {
	b.vals = append(b.vals, us)
	if len(b.vals) == cap(b.vals) {
		b.flush()
	}
}

func (b *latencyBatch) flush() {
	if len(b.vals) > 0 {
		b.hs.record(b.shard, b.vals)
		b.vals = b.vals[:0]
	}
}

// window is the measurement window in run-epoch nanoseconds. Messages sent
// inside it are measured; those sent before (warm-up) or after are not.
type window struct {
	start, end atomic.Int64
}

func (w *window) contains(t int64) bool {
	s := w.start.Load()
	return s != 0 && t >= s && t < w.end.Load()
}

// subCounters are one receiving connection's counters. The owning reader
// goroutine is the only writer; the coordinator reads them at any time.
type subCounters struct {
	received   atomic.Int64 // every data message, by receive time
	measured   atomic.Int64 // unique messages sent inside the window
	duplicates atomic.Int64 // inside the window
	reordered  atomic.Int64 // inside the window, including late ones
	foreign    atomic.Int64 // messages that are not this run's payloads
}

// receiver is the per-connection state of a subscriber's read loop.
type receiver struct {
	c       subCounters
	streams []*streamState // by stream id; nil until the first message
	lat     latencyBatch
	win     *window
	clock   *clock
}

func newReceiver(nStreams int, win *window, clk *clock, hs *histShards, shard int) *receiver {
	return &receiver{
		streams: make([]*streamState, nStreams),
		lat:     latencyBatch{vals: make([]int64, 0, 64), shard: shard, hs: hs},
		win:     win,
		clock:   clk,
	}
}

// message accounts one received payload, received at now (run-epoch ns).
func (r *receiver) message(p []byte, now int64) {
	r.c.received.Add(1)
	h, err := ParsePayload(p)
	if err != nil || int(h.Stream) >= len(r.streams) {
		r.c.foreign.Add(1)
		return
	}
	st := r.streams[h.Stream]
	if st == nil {
		st = newStreamState()
		r.streams[h.Stream] = st
	}
	v := st.observe(h.Seq)
	if !r.win.contains(h.Sent) {
		return
	}
	switch v {
	case duplicate:
		r.c.duplicates.Add(1)
		return
	case reordered, late:
		r.c.reordered.Add(1)
	}
	r.c.measured.Add(1)
	r.lat.add((now - h.Sent) / 1000)
}
