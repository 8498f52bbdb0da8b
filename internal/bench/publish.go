package bench

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// stream is one publisher's sequence of messages on one channel.
type stream struct {
	id      uint32
	channel int
	conn    *conn // raw mode: the stream's own connection
	seq     uint64
	dead    bool // a write failed; the stream sends no more

	sent      atomic.Int64 // every message written
	sentWin   atomic.Int64 // written with a send time inside the window
	rejectWin atomic.Int64 // protocol: in-window publishes answered with an error
}

// publisher paces its streams from one goroutine: every tick it writes the
// messages that are due, so the total rate holds whatever the tick.
type publisher struct {
	idx     int
	streams []*stream
	conn    *conn // protocol mode: the one connection for all streams
	rate    float64
	phase   time.Duration // when the first message goes, after the start

	// Protocol mode: scratch space for a publish's data, used by run's
	// goroutine only; outstanding publishes by command id.
	data    []byte
	mu      sync.Mutex
	ring    []pending
	nextID  uint64
	acked   atomic.Int64
	lagMax  atomic.Int64 // ns: the furthest behind schedule a tick found it
	unknown atomic.Int64 // replies whose id is not outstanding
}

type pending struct {
	id     uint64
	stream *stream
	sent   int64
	inWin  bool
}

// ringSize bounds outstanding protocol publishes per publisher; a reply to
// an older one is counted unknown.
const ringSize = 1 << 16

// tick returns the publisher's pacing interval: -tick, or the interval
// between its messages when that is longer (up to a second), so that a
// slow publisher does not wake up for nothing.
func (p *publisher) tick(least time.Duration) time.Duration {
	total := p.rate * float64(len(p.streams))
	if total <= 0 {
		return time.Second
	}
	return min(max(least, time.Duration(float64(time.Second)/total)), time.Second)
}

// run publishes until the window ends or stop is closed.
func (p *publisher) run(r *runner, stop <-chan struct{}) {
	end := time.NewTimer(time.Duration(r.win.end.Load() - r.clk.now()))
	defer end.Stop()
	if p.phase > 0 {
		first := time.NewTimer(p.phase)
		select {
		case <-stop:
			first.Stop()
			return
		case <-end.C:
			first.Stop()
			return
		case <-first.C:
		}
	}
	t := time.NewTicker(p.tick(r.cfg.Tick))
	defer t.Stop()
	start := r.clk.now()
	buf := make([]byte, 0, r.cfg.Size+256)
	for {
		now := r.clk.now()
		if end := r.win.end.Load(); now >= end {
			return
		}
		var due int64 // messages per stream due by now; the first at start
		if p.rate > 0 {
			due = int64(float64(now-start)/1e9*p.rate) + 1
		}
		if lag := p.lag(due, now, start); lag > p.lagMax.Load() {
			p.lagMax.Store(lag)
		}
		limit, active := int64(r.cfg.Messages), false
		for _, s := range p.streams {
			for !s.dead && int64(s.seq) < due && (limit == 0 || s.sentWin.Load() < limit) {
				buf = p.publish(r, s, buf)
			}
			active = active || !s.dead && (limit == 0 || s.sentWin.Load() < limit)
		}
		if !active {
			return
		}
		select {
		case <-stop:
			return
		case <-end.C:
			return
		case <-t.C:
		}
	}
}

// lag returns how long ago, in ns, the oldest message due at now was due:
// how far behind schedule writes that block have put the publisher. A tick
// itself adds up to one tick.
func (p *publisher) lag(due, now, start int64) int64 {
	if p.rate <= 0 {
		return 0
	}
	var lag int64
	for _, s := range p.streams {
		if s.dead || int64(s.seq) >= due {
			continue
		}
		// Message number seq was due at start + seq/rate.
		at := start + int64(float64(s.seq)/p.rate*1e9)
		lag = max(lag, now-at)
	}
	return lag
}

// publish writes the next message of s.
func (p *publisher) publish(r *runner, s *stream, buf []byte) []byte {
	h := Header{Stream: s.id, Seq: s.seq, Sent: r.clk.now()}
	s.seq++
	inWin := r.win.contains(h.Sent)
	var err error
	if r.cfg.Mode == Raw {
		buf = AppendPayload(buf[:0], h, r.cfg.Size)
		err = s.conn.ws.Write(bg, websocket.MessageText, buf)
	} else {
		p.mu.Lock()
		p.nextID++
		id := p.nextID
		p.ring[id%ringSize] = pending{id: id, stream: s, sent: h.Sent, inWin: inWin}
		p.mu.Unlock()
		buf, p.data = appendPublish(buf[:0], p.data, id, r.channelName(s.channel), h, r.cfg.Size)
		err = p.conn.ws.Write(bg, websocket.MessageText, buf)
	}
	if err != nil {
		s.dead = true
		if !r.closing.Load() {
			r.pubErrors.add("write: "+errorClass(err, nil), 1)
		}
		return buf
	}
	s.sent.Add(1)
	if inWin {
		s.sentWin.Add(1)
	}
	return buf
}

// ack handles one reply line on a protocol publisher's connection.
func (p *publisher) ack(r *runner, line []byte, now int64) {
	rep := parseReply(line)
	if !rep.ok {
		p.unknown.Add(1)
		return
	}
	p.mu.Lock()
	pd := p.ring[rep.id%ringSize]
	p.mu.Unlock()
	if pd.id != rep.id || pd.stream == nil {
		p.unknown.Add(1)
		return
	}
	p.acked.Add(1)
	if rep.code != "" {
		r.pubErrors.add("publish: "+rep.code, 1)
		if pd.inWin {
			pd.stream.rejectWin.Add(1)
		}
		return
	}
	if pd.inWin {
		r.ackLat.record(0, []int64{(now - pd.sent) / 1000})
	}
}
