package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// A shard is one subscriber connection and the channels it carries. Its run
// goroutine owns the connection: it opens it, reads it and replaces it.
//
// mu guards the fields below it and is held while handlers run and while
// SUBSCRIBE and UNSUBSCRIBE are written, so that the commands for one channel
// reach Redis in the order the handlers came and went. hmu guards what
// Health reads, so that Health never waits on mu; it is taken after mu, or
// alone.
type shard struct {
	b         *Redis
	idx       int
	probeChan string // the full Redis channel
	// probeWant is the sequence number of the probe in flight, 0 for none.
	probeWant atomic.Uint64

	mu    sync.Mutex
	ps    *redis.PubSub // the live connection; nil when there is none
	state shardState
	// cause is why the broker closed ps itself, nil if it did not.
	cause error
	torn  bool // cause is a probe failure
	// downc is closed, and replaced, whenever a connection attempt fails:
	// it fails Subscribe calls waiting for the connection.
	downc chan struct{}
	// retry cuts run's backoff short when a Subscribe waits (buffer 1).
	retry chan struct{}
	chans map[string]*redisChan
	// pending counts, per channel, the subscribe confirmations Redis still
	// owes on this connection for SUBSCRIBE commands already sent.
	pending map[string]int
	// resub holds the channels subscribed when ps was opened whose
	// confirmation has not come yet; gap those that were live before.
	resub           map[string]struct{}
	gap             []string
	probeSubscribed bool
	live            bool // connected and every subscription confirmed
	connectedAt     time.Time

	hmu      sync.Mutex
	status   string // why the shard is not live; "" when it is
	err      error  // last connection error
	probeErr error  // last probe failure, nil after a probe came back
}

type shardState int

const (
	stateConnecting shardState = iota // opening a connection
	stateDown                         // the last attempt failed; retrying
	stateUp                           // connected
)

type redisChan struct {
	subs  []*redisSub
	need  int           // confirmations to see before the channel is live
	ready chan struct{} // closed once live
}

type redisSub struct{ h Handler }

func (sh *shard) setStatus(status string, err error) {
	sh.hmu.Lock()
	sh.status = status
	if err != nil {
		sh.err = err
	}
	sh.hmu.Unlock()
}

func (sh *shard) setProbeErr(err error) {
	sh.hmu.Lock()
	sh.probeErr = err
	sh.hmu.Unlock()
}

func (sh *shard) lastErr() error {
	sh.hmu.Lock()
	defer sh.hmu.Unlock()
	if sh.err == nil {
		return errors.New("no connection to Redis")
	}
	return sh.err
}

// add registers sub for channel. When the channel is new on the shard, it
// sends SUBSCRIBE, or leaves that to the next connection. It returns the
// channel closed when the next connection attempt fails.
func (sh *shard) add(channel string, sub *redisSub) (*redisChan, <-chan struct{}) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if rc := sh.chans[channel]; rc != nil {
		rc.subs = append(rc.subs, sub)
		return rc, sh.downc
	}
	rc := &redisChan{subs: []*redisSub{sub}, need: 1, ready: make(chan struct{})}
	sh.chans[channel] = rc
	if sh.state != stateUp || sh.cause != nil {
		// The next connection subscribes it; while Redis is down, try
		// that now rather than after the backoff.
		select {
		case sh.retry <- struct{}{}:
		default:
		}
		return rc, sh.downc
	}
	sh.pending[channel]++
	rc.need = sh.pending[channel]
	ctx, cancel := context.WithTimeout(sh.b.ctx, sh.b.cfg.Timeout)
	defer cancel()
	if err := sh.ps.Subscribe(ctx, sh.b.cfg.Prefix+channel); err != nil {
		// The connection is broken: replace it. The channel stays, and
		// the caller waits for the next connection to subscribe it.
		sh.breakLocked(fmt.Errorf("subscribe: %w", err), false)
	}
	return rc, sh.downc
}

func (sh *shard) unpend(channel string) {
	if sh.pending[channel]--; sh.pending[channel] <= 0 {
		delete(sh.pending, channel)
	}
}

func (sh *shard) remove(channel string, sub *redisSub) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	rc := sh.chans[channel]
	if rc == nil {
		return
	}
	for i, s := range rc.subs {
		if s == sub {
			rc.subs = append(rc.subs[:i], rc.subs[i+1:]...)
			break
		}
	}
	if len(rc.subs) > 0 {
		return
	}
	delete(sh.chans, channel)
	if sh.state != stateUp || sh.cause != nil {
		return // the next connection does not subscribe it
	}
	ctx, cancel := context.WithTimeout(sh.b.ctx, sh.b.cfg.Timeout)
	defer cancel()
	if err := sh.ps.Unsubscribe(ctx, sh.b.cfg.Prefix+channel); err != nil {
		sh.breakLocked(fmt.Errorf("unsubscribe: %w", err), false)
	}
}

// breakLocked closes the shard's connection so that run replaces it; sh.mu
// is held. It reports whether it did.
func (sh *shard) breakLocked(cause error, torn bool) bool {
	if sh.state != stateUp || sh.cause != nil {
		return false
	}
	sh.cause, sh.torn = cause, torn
	sh.setStatus("closed: "+cause.Error(), nil)
	sh.ps.Close() // run's Receive returns an error
	return true
}

// run owns the shard's connection until the broker closes: it opens it,
// receives from it, and replaces it with backoff when it fails or is torn
// down.
func (sh *shard) run() {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	log := sh.b.log
	opened := false // a connection was open before: the next is a reconnect
	outage := false // the current outage is logged
	for {
		ps, err := sh.connect()
		if err != nil {
			if sh.closed() {
				return
			}
			sh.down(err)
			if !outage {
				outage = true
				log.Warn("redis subscriber connection failed", "shard", sh.idx, "err", err)
			}
			// A waiting Subscribe cuts the backoff short, but attempts
			// stay minBackoff apart however many come.
			if !sh.wait(minBackoff, nil) || !sh.wait(backoff-minBackoff, sh.retry) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		if opened {
			sh.b.stats.reconnects.Add(1)
		}
		live, err := sh.receive(ps, opened, outage)
		opened = true
		if live {
			outage = false
		}
		if sh.closed() {
			return
		}
		cause, torn := sh.lost(ps, err)
		switch {
		case torn:
			log.Warn("redis subscriber connection torn down", "shard", sh.idx, "err", cause)
		case !outage:
			log.Warn("redis subscriber connection lost", "shard", sh.idx, "err", cause)
		}
		outage = true
	}
}

// wait waits for d to pass or a value on cut, and reports false if the
// broker closed first.
func (sh *shard) wait(d time.Duration, cut <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-cut:
	case <-sh.b.closing:
		return false
	}
	return true
}

func (sh *shard) closed() bool {
	select {
	case <-sh.b.closing:
		return true
	default:
		return false
	}
}

// connect opens a connection, subscribes the probe channel and every
// channel of the shard on it, and makes it the shard's connection.
func (sh *shard) connect() (*redis.PubSub, error) {
	b := sh.b
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.Timeout)
	defer cancel()
	ps := b.client.Subscribe(ctx) // no I/O without channels
	// Dial outside mu: Subscribe and stop go on meanwhile, with the
	// channels they change subscribed below.
	if err := ps.Subscribe(ctx, sh.probeChan); err != nil {
		ps.Close()
		return nil, err
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.closed() { // Close did not see ps
		ps.Close()
		return nil, ErrClosed
	}
	full := make([]string, 0, len(sh.chans))
	sh.pending = make(map[string]int, len(sh.chans))
	sh.resub = make(map[string]struct{}, len(sh.chans))
	sh.gap = sh.gap[:0]
	for ch, rc := range sh.chans {
		full = append(full, b.cfg.Prefix+ch)
		sh.pending[ch] = 1
		sh.resub[ch] = struct{}{}
		if rc.need > 0 {
			rc.need = 1 // a waiting Subscribe: no gap, this is its first
		} else {
			sh.gap = append(sh.gap, ch)
		}
	}
	if len(full) > 0 {
		if err := ps.Subscribe(ctx, full...); err != nil {
			ps.Close()
			return nil, err
		}
	}
	sh.ps, sh.state, sh.cause, sh.torn = ps, stateUp, nil, false
	sh.probeSubscribed, sh.live = false, false
	sh.connectedAt = time.Now()
	sh.setStatus(fmt.Sprintf("subscribing %d channels", len(full)), nil)
	return ps, nil
}

// down records a failed connection attempt and fails the Subscribe calls
// waiting for it.
func (sh *shard) down(err error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.state = stateDown
	close(sh.downc)
	sh.downc = make(chan struct{})
	sh.setStatus("down: "+err.Error(), err)
}

// lost forgets the shard's connection ps after receiving from it failed
// with err, and returns why it ended: the broker's own cause if it closed
// ps, else err.
func (sh *shard) lost(ps *redis.PubSub, err error) (cause error, torn bool) {
	sh.mu.Lock()
	cause, torn = sh.cause, sh.torn
	if cause == nil {
		cause = err
	}
	sh.ps, sh.state, sh.cause, sh.torn = nil, stateConnecting, nil, false
	sh.live = false
	sh.setStatus("reconnecting after: "+cause.Error(), cause)
	sh.mu.Unlock()
	ps.Close()
	return cause, torn
}

// receive reads ps until it fails: it dispatches messages, hands probes to
// the prober and counts subscribe confirmations. It reports whether the
// connection went live, every subscription confirmed: that is when an
// outage ends and, on a reconnect, when the gap is reported.
func (sh *shard) receive(ps *redis.PubSub, reconnect, outage bool) (live bool, err error) {
	for {
		msg, err := ps.Receive(sh.b.ctx)
		if err != nil {
			return live, err
		}
		switch msg := msg.(type) {
		case *redis.Message:
			if msg.Channel == sh.probeChan {
				sh.probeBack(msg.Payload)
				continue
			}
			sh.dispatch(msg)
		case *redis.Subscription:
			if msg.Kind != "subscribe" {
				continue
			}
			if gap, ok := sh.confirm(msg.Channel); ok {
				live = true
				sh.wentLive(gap, reconnect, outage)
			}
		}
	}
}

func (sh *shard) wentLive(gap []string, reconnect, outage bool) {
	if outage {
		sh.b.log.Info("redis subscriber connection restored", "shard", sh.idx, "channels", len(gap))
	}
	if !reconnect || len(gap) == 0 {
		return
	}
	sh.b.stats.resubscribes.Add(1)
	if sh.b.cfg.OnGap != nil {
		sh.b.cfg.OnGap(gap)
	}
}

// confirm counts a subscribe confirmation of the Redis channel full. It
// returns true, with the channels of the gap, when it was the last the
// connection was waiting for.
func (sh *shard) confirm(full string) (gap []string, live bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if full == sh.probeChan {
		sh.probeSubscribed = true
	} else if channel, ok := strings.CutPrefix(full, sh.b.cfg.Prefix); ok {
		if sh.pending[channel] > 0 {
			sh.unpend(channel)
		}
		delete(sh.resub, channel)
		if rc := sh.chans[channel]; rc != nil && rc.need > 0 {
			if rc.need--; rc.need == 0 {
				close(rc.ready)
			}
		}
	}
	if sh.live || !sh.probeSubscribed || len(sh.resub) > 0 {
		return nil, false
	}
	sh.live = true
	sh.setStatus("", nil)
	for _, ch := range sh.gap {
		if sh.chans[ch] != nil {
			gap = append(gap, ch)
		}
	}
	sh.gap = sh.gap[:0]
	return gap, true
}

func (sh *shard) dispatch(msg *redis.Message) {
	channel, ok := strings.CutPrefix(msg.Channel, sh.b.cfg.Prefix)
	if !ok {
		return
	}
	m := DecodeEnvelope([]byte(msg.Payload))
	sh.mu.Lock()
	defer sh.mu.Unlock()
	rc := sh.chans[channel]
	if rc == nil || rc.need > 0 {
		return
	}
	for _, s := range rc.subs {
		s.h(m)
	}
}
