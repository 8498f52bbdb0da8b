package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// runner holds the state of one run.
type runner struct {
	cfg    *Config
	runID  string
	clk    *clock
	win    window
	dialer *dialer
	lat    *histShards // end-to-end latency, µs
	ackLat *histShards // publish-ack latency, µs
	conLat *histShards // handshake (and subscribe) latency, µs

	lean       leanLoops // read lean subscribers (lean_linux.go)
	dialErrors tally
	closes     tally
	pubErrors  tally
	nodes      tally
	closing    atomic.Bool // set when the generator starts closing connections

	mu    sync.Mutex
	subs  []*conn
	pubs  []*publisher
	side  atomic.Int64 // messages delivered to raw publishers' connections
	conns atomic.Int64 // established connections
	peakG atomic.Int64 // most goroutines progress sampling saw
	fails atomic.Int64 // failed handshakes
}

func (r *runner) channelName(i int) string {
	return channelName(r.cfg.ChannelPrefix, r.runID, i)
}

// channelName names channel i of the run runID: PREFIX.RUNID.N.
func channelName(prefix, runID string, i int) string {
	return fmt.Sprintf("%s.%s.%d", prefix, runID, i)
}

// runIDLen is the length of a run ID: 4 random bytes in hex.
const runIDLen = 8

// Run performs one run of cfg and returns its result. progress, when not
// nil, gets a line a second. The result is returned also when the run was
// cut short, with Result.Aborted saying why, together with the error.
func Run(ctx context.Context, cfg *Config, progress io.Writer) (*Result, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("no URL to load")
	}
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	limit, lerr := raiseFileLimit()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	id := make([]byte, runIDLen/2)
	_, _ = rand.Read(id)
	shards := max(4, 2*runtime.GOMAXPROCS(0))
	r := &runner{
		cfg:    cfg,
		runID:  hex.EncodeToString(id),
		clk:    newClock(),
		dialer: newDialer(cfg.AllowRemote, cfg.SpreadAfter, cfg.DialTimeout),
		lat:    newHistShards(shards),
		ackLat: newHistShards(1),
		conLat: newHistShards(shards),
	}
	r.lean.r = r
	res := newResult(cfg, r.runID)
	res.FileLimit = limit
	if lerr != nil {
		res.Warnings = append(res.Warnings, lerr.Error())
	}
	need := cfg.Subscribers + cfg.Publishers*max(1, cfg.Channels)
	if limit > 0 && uint64(need)+64 > limit {
		res.Warnings = append(res.Warnings, fmt.Sprintf("%d connections need more file descriptors than the limit %d", need, limit))
	}
	// When the run is cut short, drop every connection at once: a write
	// blocked on a server that stopped reading returns only then.
	aborted := make(chan struct{})
	stopAbort := context.AfterFunc(ctx, func() { r.abortAll(); close(aborted) })
	defer func() {
		if !stopAbort() {
			<-aborted
		}
	}()
	pr := newProgress(progress, r)
	stopProgress := pr.start("connect")
	var err error
	switch cfg.Scenario {
	case Fanout, Channels:
		err = r.publishRun(ctx, res, pr)
	case Idle:
		err = r.idleRun(ctx, res, pr)
	case Connect:
		err = r.connectRun(ctx, res, pr)
	}
	pr.setPhase("close")
	r.closeAll(ctx.Err() == nil)
	r.lean.close()
	stopProgress()
	r.collect(res)
	if err == nil && ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	if err != nil {
		res.Aborted = err.Error()
	}
	return res, err
}

// connectSubs opens cfg.Subscribers connections, subscriber i on channel
// i mod Channels through URL i mod len(URLs), DialConcurrency at a time and
// at most ConnectRate per second, until all are done, until stopAt (run
// epoch ns, 0 for none) or until ctx ends. Each established subscriber
// starts its read loop.
func (r *runner) connectSubs(ctx context.Context, nStreams int, stopAt int64) {
	cfg := r.cfg
	var next atomic.Int64
	var pace <-chan time.Time
	if cfg.ConnectRate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / cfg.ConnectRate))
		defer t.Stop()
		pace = t.C
	}
	var wg sync.WaitGroup
	for range min(cfg.DialConcurrency, max(cfg.Subscribers, 1)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= cfg.Subscribers || ctx.Err() != nil || r.closing.Load() {
					return
				}
				if pace != nil {
					select {
					case <-pace:
					case <-ctx.Done():
						return
					}
				}
				if stopAt > 0 && r.clk.now() >= stopAt {
					return
				}
				r.openSub(ctx, i, nStreams)
			}
		})
	}
	wg.Wait()
}

func (r *runner) openSub(ctx context.Context, i, nStreams int) {
	cfg := r.cfg
	ch := i % cfg.Channels
	base := cfg.URLs[i%len(cfg.URLs)]
	t0 := r.clk.now()
	rcv := newReceiver(nStreams, &r.win, r.clk, r.lat, i)
	c := &conn{channel: ch, rcv: rcv, done: make(chan struct{})}
	if r.leanSubs(base) {
		s, node, err := r.dialLean(ctx, base, r.channelName(ch))
		if err != nil {
			r.fails.Add(1)
			return
		}
		c.lean, c.node = s, node
		if err := r.attach(s, c); err != nil {
			r.dialErrors.add(err.Error(), 1)
			r.fails.Add(1)
			s.release()
			return
		}
	} else {
		ws, node, err := r.dial(ctx, base, r.channelName(ch))
		if err != nil {
			r.fails.Add(1)
			return
		}
		if cfg.Mode == Protocol {
			if err := r.subscribe(ctx, ws, r.channelName(ch), rcv); err != nil {
				r.fails.Add(1)
				ws.CloseNow()
				return
			}
		}
		c.ws, c.node = ws, node
	}
	r.conLat.record(i, []int64{(r.clk.now() - t0) / 1000})
	r.mu.Lock()
	if r.closing.Load() {
		r.mu.Unlock()
		c.closeNow()
		return
	}
	r.subs = append(r.subs, c)
	r.mu.Unlock()
	r.conns.Add(1)
	r.nodes.add(c.node, 1)
	if c.ws != nil {
		go r.readLoop(c, nil)
	}
}

// leanSubs reports whether subscribers of base are lean (lean_linux.go).
func (r *runner) leanSubs(base *url.URL) bool {
	return leanSupported && r.cfg.Lean && r.cfg.Mode == Raw && base.Scheme == "ws"
}

// openPublishers builds the streams and opens the publishers' connections.
// There are max(Publishers, Channels) streams: publisher p owns channels p,
// p+P, … when P <= C, or channel p mod C when P > C.
func (r *runner) openPublishers(ctx context.Context) (int, error) {
	cfg := r.cfg
	nStreams := max(cfg.Publishers, cfg.Channels)
	perStream := cfg.Rate / float64(nStreams)
	pubs := make([]*publisher, cfg.Publishers)
	for p := range pubs {
		pubs[p] = &publisher{idx: p, rate: perStream}
		if perStream > 0 {
			// Spread the publishers' phases over one message interval, so that
			// the total rate arrives evenly rather than in synchronised bursts
			// (20 publishers at 0.5 msg/s would otherwise all send at once
			// every 2 s).
			pubs[p].phase = time.Duration(float64(p) / float64(cfg.Publishers) / perStream * float64(time.Second))
		}
		if cfg.Mode == Protocol {
			pubs[p].ring = make([]pending, ringSize)
		}
	}
	for s := range nStreams {
		ch, p := s%cfg.Channels, s%cfg.Publishers
		pubs[p].streams = append(pubs[p].streams, &stream{id: uint32(s), channel: ch})
	}
	r.mu.Lock()
	r.pubs = pubs
	r.mu.Unlock()
	open := func(idx, ch int) (*conn, error) {
		base := cfg.URLs[idx%len(cfg.URLs)]
		ws, node, err := r.dial(ctx, base, r.channelName(ch))
		if err != nil {
			return nil, fmt.Errorf("publisher connection to %s: %w", base.Redacted(), err)
		}
		r.conns.Add(1)
		c := &conn{ws: ws, channel: ch, node: node, side: &r.side, done: make(chan struct{})}
		return c, nil
	}
	for _, p := range pubs {
		if cfg.Mode == Protocol {
			c, err := open(p.idx, p.streams[0].channel)
			if err != nil {
				return nStreams, err
			}
			r.mu.Lock()
			p.conn = c
			r.mu.Unlock()
			go r.readLoop(c, func(line []byte, now int64) { p.ack(r, line, now) })
			continue
		}
		for _, s := range p.streams {
			c, err := open(int(s.id), s.channel)
			if err != nil {
				return nStreams, err
			}
			r.mu.Lock()
			s.conn = c
			r.mu.Unlock()
			go r.readLoop(c, nil)
		}
	}
	return nStreams, nil
}

// allAcked reports whether every protocol-mode publish has had its reply
// (always true in raw mode).
func (r *runner) allAcked() bool {
	for _, p := range r.pubs {
		if p.conn == nil {
			continue
		}
		var sent int64
		for _, s := range p.streams {
			sent += s.sent.Load()
		}
		if p.acked.Load() < sent {
			return false
		}
	}
	return true
}

// pubConns returns every publisher connection.
func (r *runner) pubConns() []*conn {
	var out []*conn
	for _, p := range r.pubs {
		if p.conn != nil {
			out = append(out, p.conn)
		}
		for _, s := range p.streams {
			if s.conn != nil {
				out = append(out, s.conn)
			}
		}
	}
	return out
}

// abortAll drops every connection without a close handshake.
func (r *runner) abortAll() {
	r.mu.Lock()
	r.closing.Store(true)
	conns := append(r.pubConns(), r.subs...)
	r.mu.Unlock()
	for _, c := range conns {
		c.closeNow()
	}
}

// closeAll closes every connection, with the close handshake (1000) when
// graceful, a bounded number at a time, then waits for their read loops.
// Connections that do not finish the handshake in time are dropped. A run
// cut short drops them all at once (graceful false).
func (r *runner) closeAll(graceful bool) {
	r.mu.Lock()
	r.closing.Store(true)
	conns := append(r.pubConns(), r.subs...)
	r.mu.Unlock()
	var next atomic.Int64
	var wg sync.WaitGroup
	dropped := make(chan struct{})
	deadline := time.AfterFunc(10*time.Second, func() {
		for _, c := range conns {
			c.closeNow()
		}
		close(dropped)
	})
	defer func() {
		if !deadline.Stop() {
			<-dropped
		}
	}()
	for range min(256, len(conns)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(conns) {
					return
				}
				c := conns[i]
				if !graceful || c.closeGraceful() != nil {
					c.closeNow()
				}
				<-c.done
			}
		})
	}
	wg.Wait()
}

// counters sums the subscribers' counters.
func (r *runner) counters() (received, measured, dups, reordered, foreign int64) {
	r.mu.Lock()
	subs := r.subs
	r.mu.Unlock()
	for _, c := range subs {
		received += c.rcv.c.received.Load()
		measured += c.rcv.c.measured.Load()
		dups += c.rcv.c.duplicates.Load()
		reordered += c.rcv.c.reordered.Load()
		foreign += c.rcv.c.foreign.Load()
	}
	return
}

// expected is the number of unique in-window deliveries the subscribers
// connected at the start of publishing should get.
func (r *runner) expected(subsOn []int64) (published, expected int64) {
	for _, p := range r.pubs {
		for _, s := range p.streams {
			n := s.sentWin.Load() - s.rejectWin.Load()
			published += s.sentWin.Load()
			expected += n * subsOn[s.channel]
		}
	}
	return
}

// snapshot is what is sampled at both ends of the measurement window.
type snapshot struct {
	at       int64
	received int64
	side     int64
	procs    []ProcSample
	procErr  []error
	self     float64 // the generator's CPU seconds
	busy     uint64  // machine's busy clock ticks, all CPUs
	total    uint64  // machine's clock ticks, all CPUs
}

func (r *runner) sample() snapshot {
	s := snapshot{at: r.clk.now(), side: r.side.Load()}
	s.received, _, _, _, _ = r.counters()
	for _, pid := range r.cfg.PIDs {
		p, err := readProc("/proc", pid)
		s.procs = append(s.procs, p)
		s.procErr = append(s.procErr, err)
	}
	s.self = selfCPUSeconds()
	s.busy, s.total = machineCPU()
	return s
}

// sleepUntil waits until run-epoch time t; it returns false when ctx ended
// first.
func (r *runner) sleepUntil(ctx context.Context, t int64) bool {
	d := time.Duration(t - r.clk.now())
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

func (r *runner) publishRun(ctx context.Context, res *Result, pr *progress) error {
	cfg := r.cfg
	nStreams := max(cfg.Publishers, cfg.Channels)
	r.connectSubs(ctx, nStreams, 0)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if r.conns.Load() == 0 && cfg.Subscribers > 0 {
		return errNoSubscribers
	}
	if _, err := r.openPublishers(ctx); err != nil {
		return err
	}
	subsOn := make([]int64, cfg.Channels)
	r.mu.Lock()
	for _, c := range r.subs {
		subsOn[c.channel]++
	}
	r.mu.Unlock()

	t0 := r.clk.now()
	r.win.end.Store(t0 + int64(cfg.Warmup) + int64(cfg.Duration))
	r.win.start.Store(t0 + int64(cfg.Warmup))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range r.pubs {
		wg.Go(func() { p.run(r, stop) })
	}
	pubsDone := make(chan struct{})
	go func() { wg.Wait(); close(pubsDone) }()
	defer func() { close(stop); <-pubsDone }() // the publishers and their waiter

	pr.setPhase("warm-up")
	if !r.sleepUntil(ctx, r.win.start.Load()) {
		return context.Cause(ctx)
	}
	before := r.sample()
	pr.setPhase("measure")
	// The window ends at its planned end or, with -messages, when every
	// publisher has sent its count, whichever comes first.
	tm := time.NewTimer(time.Duration(r.win.end.Load() - r.clk.now()))
	select {
	case <-ctx.Done():
		tm.Stop()
		return context.Cause(ctx)
	case <-tm.C:
	case <-pubsDone:
		tm.Stop()
		if now := r.clk.now(); now < r.win.end.Load() {
			r.win.end.Store(now) // nothing is sent any more
		}
	}
	after := r.sample()
	<-pubsDone // publishers stop at the end of the window

	// Drain: wait for in-flight messages of the window, or give up.
	pr.setPhase("drain")
	drainEnd := r.clk.now() + int64(cfg.Drain)
	for {
		_, want := r.expected(subsOn) // rejected publishes lower it as replies come
		_, got, _, _, _ := r.counters()
		if got >= want && r.allAcked() || r.clk.now() >= drainEnd {
			break
		}
		if !r.sleepUntil(ctx, min(r.clk.now()+int64(20*time.Millisecond), drainEnd)) {
			return context.Cause(ctx)
		}
	}
	res.setWindow(r, before, after)
	res.Published, res.Expected = r.expected(subsOn)
	return nil
}

func (r *runner) idleRun(ctx context.Context, res *Result, pr *progress) error {
	before := r.sample()
	r.connectSubs(ctx, 0, 0)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if r.conns.Load() == 0 && r.cfg.Subscribers > 0 {
		return errNoSubscribers
	}
	pr.setPhase("hold")
	holdStart := r.clk.now()
	if !r.sleepUntil(ctx, holdStart+int64(r.cfg.Duration)) {
		return context.Cause(ctx)
	}
	after := r.sample()
	res.setIdle(r, before, after, holdStart)
	return nil
}

func (r *runner) connectRun(ctx context.Context, res *Result, pr *progress) error {
	before := r.sample()
	pr.setPhase("storm")
	r.connectSubs(ctx, 0, before.at+int64(r.cfg.Duration))
	after := r.sample()
	res.setConnect(r, before, after)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// errNoSubscribers is returned when no subscriber could connect.
var errNoSubscribers = errors.New("no subscriber connected")
