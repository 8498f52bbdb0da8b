package pubsub

// Ownership and lock order of a shard.
//
// A shard is one Redis subscriber connection and the channels it carries.
//
//   - run, one goroutine per shard started by Redis.Run, owns the
//     connection. It dials it, is the only goroutine that writes to it
//     (SUBSCRIBE and UNSUBSCRIBE, batched: whatever changed since its last
//     write goes out as one command of each kind), replaces it when it
//     fails, and waits for the connection's receiver before dialing again.
//   - receive, one goroutine per connection started and waited for by run,
//     reads the connection: it calls the handlers of each message, hands
//     probes to the prober and counts subscribe confirmations, which make
//     the waiting Subscribe calls return.
//   - add and remove (Subscribe and its stop) change the shard's state
//     under mu and wake run; they never touch the connection.
//   - the prober and stop (Close, or the end of Run) close the connection
//     to make its receiver return, outside every lock of the shard.
//   - in cluster mode (cluster.go) a shard is the connection to one master;
//     the topology goroutine moves channels, handlers and all, from one
//     shard to another (takeOut, putIn) and retires a shard, and receive
//     hands it what Redis says of moved slots (redirected, unsubscribed).
//
// Locks, each held for memory only: never across a network read or write,
// nor while a handler runs.
//
//   - clusterState.mu (cluster mode) is taken before shard.mu, never after.
//   - shard.mu guards the shard's state: the connection, the channels with
//     handlers and what the connection was told about them.
//   - shard.hmu guards what Health reads, so that Health never waits on mu.
//     It is taken with mu held, or alone.
//   - Redis.masterMu (Sentinel mode) is taken with mu held, or alone.
//   - redisChan.dmu is held by receive while it calls the handlers of that
//     channel for one message, and taken and released by remove after it
//     removed its handler, so that stop returns only once no call of that
//     handler is in progress. It is never held with mu, in either order.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

type shard struct {
	b   *Redis
	idx int
	log *slog.Logger // the broker's; in cluster mode with the master's address
	// Cluster mode (cluster.go): the master this shard subscribes on, a
	// client of it, and quit, closed when the shard is retired. Empty,
	// nil and nil for a standalone Redis.
	addr string
	node *redis.Client
	quit chan struct{}
	// probeWant is the sequence number of the probe in flight, 0 for none.
	probeWant atomic.Uint64
	// wake tells run that channels came or went (buffer 1).
	wake chan struct{}
	// retry cuts run's backoff short when a Subscribe waits (buffer 1).
	retry chan struct{}
	// follow tells run that the Sentinel master moved (buffer 1).
	follow chan struct{}

	mu sync.Mutex
	// probeChan is the full Redis channel of the shard's probes, for the
	// next connection; psProbe is the one of the live connection.
	probeChan, psProbe string
	ps                 *redis.PubSub // the live connection; nil when there is none
	state              shardState
	// cause is why the broker closed ps itself, nil if it did not.
	cause error
	torn  bool // cause is a probe failure
	// downc is closed, and replaced, whenever a connection attempt fails:
	// it fails Subscribe calls waiting for the connection.
	downc chan struct{}
	// psAddr is the server ps leads to, in Sentinel mode (sentinel.go).
	psAddr string
	// chans holds the channels with handlers: those the shard wants
	// subscribed.
	chans map[string]*redisChan
	// sent holds the channels for which the last command run decided to
	// write on ps is SUBSCRIBE.
	sent map[string]struct{}
	// dirty holds the channels added or removed since run last compared
	// chans with sent.
	dirty map[string]struct{}
	// pending counts, per channel, the subscribe confirmations Redis still
	// owes on this connection for SUBSCRIBE commands already decided.
	pending map[string]int
	// resub holds the channels subscribed when ps was opened whose
	// confirmation has not come yet; gap those that were live before:
	// their handlers get the gap event at the channel's confirmation,
	// before any message the new connection carries for it.
	resub           map[string]struct{}
	gap             map[string]struct{}
	gapped          int // channels gapped on this connection
	probeSubscribed bool
	live            bool // connected and every subscription confirmed
	// Cluster mode: unsubOwed counts, per channel, the SUNSUBSCRIBE
	// confirmations Redis owes for those run wrote, so that one Redis
	// sends by itself (the slot moved away) is told apart; displaced holds
	// the channels so unsubscribed, for the topology goroutine to move.
	unsubOwed   map[string]int
	displaced   map[string]struct{}
	connectedAt time.Time

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
	// subs is replaced, never modified in place, under shard.mu; receive
	// reads it under dmu.
	subs  atomic.Pointer[[]*redisSub]
	dmu   sync.Mutex
	need  int           // under shard.mu: confirmations to see before the channel is live
	ready chan struct{} // closed once live
}

type redisSub struct{ h Handler }

func newShard(b *Redis, idx int) *shard {
	return &shard{
		b:         b,
		idx:       idx,
		log:       b.log,
		unsubOwed: make(map[string]int),
		displaced: make(map[string]struct{}),
		wake:      make(chan struct{}, 1),
		retry:     make(chan struct{}, 1),
		follow:    make(chan struct{}, 1),
		chans:     make(map[string]*redisChan),
		sent:      make(map[string]struct{}),
		dirty:     make(map[string]struct{}),
		pending:   make(map[string]int),
		downc:     make(chan struct{}),
		status:    "connecting",
	}
}

// name names the shard in logs, Health and metrics: its index, or in
// cluster mode its master's address.
func (sh *shard) name() string {
	if sh.addr != "" {
		return sh.addr
	}
	return strconv.Itoa(sh.idx)
}

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

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// up reports whether the shard has a connection it did not close; sh.mu is
// held.
func (sh *shard) up() bool { return sh.state == stateUp && sh.cause == nil }

// add registers sub for channel and returns the channel's state, whose
// ready is closed once the subscription is live upstream, and the channel
// closed when the next connection attempt fails. A new channel is
// subscribed by run, on the live connection or the next.
func (sh *shard) add(channel string, sub *redisSub) (*redisChan, <-chan struct{}) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if rc := sh.chans[channel]; rc != nil {
		subs := append(slices.Clip(*rc.subs.Load()), sub)
		rc.subs.Store(&subs)
		return rc, sh.downc
	}
	rc := &redisChan{ready: make(chan struct{})}
	rc.subs.Store(&[]*redisSub{sub})
	sh.chans[channel] = rc
	_, sent := sh.sent[channel]
	switch {
	case !sh.up():
		// The next connection subscribes it; while Redis is down, try
		// that now rather than after the backoff.
		rc.need = 1
		signal(sh.retry)
	case sent:
		// Still subscribed upstream: live once the confirmations owed
		// are in, at once if none is.
		rc.need = sh.pending[channel]
		if rc.need == 0 {
			close(rc.ready)
		}
	default:
		// Confirmations owed for earlier SUBSCRIBEs, followed by an
		// UNSUBSCRIBE, do not count: it waits for the SUBSCRIBE run
		// writes next.
		rc.need = sh.pending[channel] + 1
		sh.dirty[channel] = struct{}{}
		signal(sh.wake)
	}
	return rc, sh.downc
}

// remove unregisters sub for channel; run unsubscribes the channel when it
// was the last. It returns once no call of sub's handler is in progress:
// receive reads the handlers of a message under the channel's dmu.
func (sh *shard) remove(channel string, sub *redisSub) {
	if rc, _ := sh.detach(channel, sub); rc != nil {
		rc.wait()
	}
}

// detach is remove without the wait: it returns the channel's state, nil
// if the shard does not carry it, and whether sub was its last handler.
func (sh *shard) detach(channel string, sub *redisSub) (rc *redisChan, last bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	rc = sh.chans[channel]
	if rc == nil {
		return nil, false
	}
	subs := *rc.subs.Load()
	if i := slices.Index(subs, sub); i >= 0 {
		subs = slices.Delete(slices.Clone(subs), i, i+1)
		rc.subs.Store(&subs)
	}
	if len(subs) == 0 {
		delete(sh.chans, channel)
		delete(sh.displaced, channel)
		if sh.up() {
			sh.dirty[channel] = struct{}{}
			signal(sh.wake)
		}
	}
	return rc, len(subs) == 0
}

// wait returns once no call of the channel's handlers is in progress.
func (rc *redisChan) wait() {
	// An empty critical section: it waits for a dispatch in progress.
	rc.dmu.Lock()
	//lint:ignore SA2001 waiting is the point
	rc.dmu.Unlock()
}

func (sh *shard) unpend(channel string) {
	if sh.pending[channel]--; sh.pending[channel] <= 0 {
		delete(sh.pending, channel)
	}
}

// sync writes on ps the SUBSCRIBE and UNSUBSCRIBE commands that bring it in
// line with the channels wanted; only run calls it.
func (sh *shard) sync(ps *redis.PubSub) {
	prefix := sh.b.cfg.Prefix
	var subs, unsubs []string
	sh.mu.Lock()
	if sh.ps != ps || !sh.up() {
		sh.mu.Unlock()
		return // the next connection subscribes what is wanted then
	}
	for ch := range sh.dirty {
		_, want := sh.chans[ch]
		_, sent := sh.sent[ch]
		switch {
		case want && !sent:
			sh.sent[ch] = struct{}{}
			sh.pending[ch]++
			subs = append(subs, prefix+ch)
		case !want && sent:
			delete(sh.sent, ch)
			if sh.addr != "" {
				sh.unsubOwed[ch]++
			}
			unsubs = append(unsubs, prefix+ch)
		}
	}
	clear(sh.dirty)
	sh.mu.Unlock()

	ctx, cancel := context.WithTimeout(sh.b.ctx, sh.b.cfg.Timeout)
	defer cancel()
	var err error
	if len(unsubs) > 0 { // none would mean every channel
		if err = sh.write(ctx, ps, false, unsubs); err != nil {
			err = fmt.Errorf("unsubscribe: %w", err)
		}
	}
	if err == nil && len(subs) > 0 {
		if err = sh.write(ctx, ps, true, subs); err != nil {
			err = fmt.Errorf("subscribe: %w", err)
		}
	}
	if err != nil {
		// The connection is broken: replace it. Its channels stay, and
		// their Subscribe calls wait for the next connection.
		sh.breakConn(ps, err, false)
	}
}

// write subscribes (or unsubscribes) the Redis channels full on ps: with
// SUBSCRIBE on a standalone Redis; with SSUBSCRIBE in cluster mode, one
// command per hash slot, as Redis Cluster takes no other.
func (sh *shard) write(ctx context.Context, ps *redis.PubSub, subscribe bool, full []string) error {
	if sh.addr == "" {
		if subscribe {
			return ps.Subscribe(ctx, full...)
		}
		return ps.Unsubscribe(ctx, full...)
	}
	bySlot := make(map[int][]string)
	for _, c := range full {
		s := slotOf(c)
		bySlot[s] = append(bySlot[s], c)
	}
	for _, group := range bySlot {
		var err error
		if subscribe {
			err = ps.SSubscribe(ctx, group...)
		} else {
			err = ps.SUnsubscribe(ctx, group...)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// breakConn closes ps, if it is still the shard's live connection, so that
// run replaces it. It reports whether it did.
func (sh *shard) breakConn(ps *redis.PubSub, cause error, torn bool) bool {
	sh.mu.Lock()
	if sh.ps != ps || !sh.up() {
		sh.mu.Unlock()
		return false
	}
	sh.cause, sh.torn = cause, torn
	sh.setStatus("closed: "+cause.Error(), nil)
	sh.mu.Unlock()
	ps.Close() // its receiver returns an error
	return true
}

// run owns the shard's connection until the broker stops: it opens it,
// writes what add and remove ask, and replaces it with backoff when it
// fails or is torn down.
func (sh *shard) run() {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	log := sh.log
	opened := false // a connection was open before: the next is a reconnect
	outage := false // the current outage is logged
	if sh.node != nil {
		defer sh.node.Close()
	}
	for {
		ps, err := sh.connect()
		if err != nil {
			if sh.closed() {
				return
			}
			sh.down(err)
			if sh.addr != "" {
				// The master may have failed over: read the slot map.
				sh.b.refreshTopology()
			}
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
		live, err := sh.serve(ps, opened, outage)
		opened = true
		if live {
			outage = false
		}
		if sh.closed() {
			ps.Close()
			return
		}
		cause, torn := sh.lost(ps, err)
		if sh.addr != "" {
			sh.b.refreshTopology()
		}
		switch {
		case torn:
			log.Warn("redis subscriber connection torn down", "shard", sh.idx, "err", cause)
		case !outage:
			log.Warn("redis subscriber connection lost", "shard", sh.idx, "err", cause)
		}
		outage = true
	}
}

// serve runs the receiver of ps and writes to ps what add and remove ask,
// until the receiver returns; it reports what receive returned.
func (sh *shard) serve(ps *redis.PubSub, reconnect, outage bool) (live bool, err error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		live, err = sh.receive(ps, reconnect, outage)
	}()
	for {
		select {
		case <-sh.wake:
			sh.sync(ps)
		case <-sh.follow:
			sh.leave(sh.b.currentMaster())
		case <-done:
			return live, err
		}
	}
}

// wait waits for d to pass or a value on cut, and reports false if the
// broker stopped first.
func (sh *shard) wait(d time.Duration, cut <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-cut:
	case <-sh.b.closing:
		return false
	case <-sh.quit:
		return false
	}
	return true
}

// closed reports whether the broker stopped or retired the shard.
func (sh *shard) closed() bool {
	select {
	case <-sh.b.closing:
		return true
	case <-sh.quit:
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
	sh.mu.Lock()
	probe := sh.probeChan
	sh.mu.Unlock()
	if probe == "" {
		return nil, errors.New("the master owns no hash slot")
	}
	var ps *redis.PubSub // no I/O without channels
	if sh.node != nil {
		ps = sh.node.SSubscribe(ctx)
	} else {
		ps = b.client.(*redis.Client).Subscribe(ctx)
	}
	// The dial hook of Sentinel mode (sentinel.go) records the server
	// this connection leads to.
	dialed := new(dialedAddr)
	if err := sh.write(context.WithValue(ctx, dialedKey{}, dialed), ps, true, []string{probe}); err != nil {
		ps.Close()
		return nil, err
	}
	dialed.mu.Lock()
	addr := dialed.addr
	dialed.mu.Unlock()
	sh.mu.Lock()
	if sh.closed() { // stop did not see ps
		sh.mu.Unlock()
		ps.Close()
		return nil, ErrClosed
	}
	if master := b.currentMaster(); addr != "" && addr != master {
		// The master moved while ps was being opened: leave would not
		// have seen ps.
		sh.mu.Unlock()
		ps.Close()
		return nil, fmt.Errorf("the Redis master moved from %s to %s", addr, master)
	}
	sh.psAddr = addr
	full := make([]string, 0, len(sh.chans))
	clear(sh.sent)
	clear(sh.dirty)
	clear(sh.unsubOwed)
	clear(sh.displaced)
	sh.pending = make(map[string]int, len(sh.chans))
	sh.resub = make(map[string]struct{}, len(sh.chans))
	sh.gap, sh.gapped = make(map[string]struct{}), 0
	for ch, rc := range sh.chans {
		full = append(full, b.cfg.Prefix+ch)
		sh.sent[ch] = struct{}{}
		sh.pending[ch] = 1
		sh.resub[ch] = struct{}{}
		if rc.need > 0 {
			rc.need = 1 // a waiting Subscribe: no gap, this is its first
		} else {
			sh.gap[ch] = struct{}{}
		}
	}
	sh.ps, sh.state, sh.cause, sh.torn = ps, stateUp, nil, false
	sh.psProbe, sh.probeSubscribed, sh.live = probe, false, false
	sh.connectedAt = time.Now()
	sh.setStatus(fmt.Sprintf("subscribing %d channels", len(full)), nil)
	sh.mu.Unlock()
	// Written outside mu: add and remove go on meanwhile, and what they
	// change is written by run next, after this.
	if len(full) > 0 {
		if err := sh.write(ctx, ps, true, full); err != nil {
			sh.mu.Lock()
			sh.ps, sh.state = nil, stateConnecting
			sh.mu.Unlock()
			ps.Close()
			return nil, err
		}
	}
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
	sh.mu.Lock()
	probe := sh.psProbe
	sh.mu.Unlock()
	for {
		msg, err := ps.Receive(sh.b.ctx)
		if err != nil {
			var rerr redis.Error
			if sh.addr == "" || !errors.As(err, &rerr) || !sh.redirected(rerr) {
				return live, err
			}
			if gapped, ok := sh.maybeLive(); ok {
				live = true
				sh.wentLive(gapped, reconnect, outage)
			}
			continue
		}
		switch msg := msg.(type) {
		case *redis.Message:
			if msg.Channel == probe {
				sh.probeBack(msg.Payload)
				continue
			}
			sh.dispatch(msg)
		case *redis.Subscription:
			if msg.Kind == "sunsubscribe" {
				sh.unsubscribed(msg.Channel)
				continue
			}
			if msg.Kind != "subscribe" && msg.Kind != "ssubscribe" {
				continue
			}
			gap, gapped, ok := sh.confirm(msg.Channel)
			if gap != nil {
				sh.deliver(gap, Message{Gap: true})
			}
			if ok {
				live = true
				sh.wentLive(gapped, reconnect, outage)
			}
		}
	}
}

func (sh *shard) wentLive(gapped int, reconnect, outage bool) {
	if outage {
		sh.log.Info("redis subscriber connection restored", "shard", sh.idx, "channels", gapped)
	}
	if !reconnect || gapped == 0 {
		return
	}
	sh.b.stats.resubscribes.Add(1)
	sh.log.Warn("messages may have been lost while a Redis subscriber connection was down", "shard", sh.idx, "channels", gapped)
}

// confirm counts a subscribe confirmation of the Redis channel full. It
// returns the channel's state when its handlers are to get a gap event
// now: it was live before the connection was replaced, and this is its
// first confirmation on the new one. It returns live true, with the number
// of channels gapped, when it was the last confirmation the connection was
// waiting for.
func (sh *shard) confirm(full string) (gap *redisChan, gapped int, live bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if full == sh.psProbe {
		sh.probeSubscribed = true
	} else if channel, ok := strings.CutPrefix(full, sh.b.cfg.Prefix); ok {
		if sh.pending[channel] > 0 {
			sh.unpend(channel)
		}
		delete(sh.resub, channel)
		if _, ok := sh.gap[channel]; ok {
			delete(sh.gap, channel)
			if gap = sh.chans[channel]; gap != nil {
				sh.gapped++
			}
		}
		if rc := sh.chans[channel]; rc != nil && rc.need > 0 {
			if rc.need--; rc.need == 0 {
				close(rc.ready)
			}
		}
	}
	gapped, live = sh.liveLocked()
	return gap, gapped, live
}

// maybeLive is liveLocked for a caller without mu.
func (sh *shard) maybeLive() (gapped int, live bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.liveLocked()
}

// liveLocked makes the connection live once the probe channel and every
// channel subscribed when it opened are confirmed, and reports whether it
// just did, with the number of channels gapped; sh.mu is held.
func (sh *shard) liveLocked() (gapped int, live bool) {
	if sh.live || sh.ps == nil || !sh.probeSubscribed || len(sh.resub) > 0 {
		return 0, false
	}
	sh.live = true
	sh.setStatus("", nil)
	return sh.gapped, true
}

// dispatch calls the handlers of msg's channel, without mu held.
func (sh *shard) dispatch(msg *redis.Message) {
	channel, ok := strings.CutPrefix(msg.Channel, sh.b.cfg.Prefix)
	if !ok {
		return
	}
	sh.mu.Lock()
	rc := sh.chans[channel]
	live := rc != nil && rc.need == 0
	sh.mu.Unlock()
	if !live {
		return
	}
	sh.deliver(rc, DecodeEnvelope([]byte(msg.Payload)))
}

// deliver calls the handlers of rc with m, without mu held.
func (sh *shard) deliver(rc *redisChan, m Message) {
	rc.dmu.Lock()
	defer rc.dmu.Unlock()
	for _, s := range *rc.subs.Load() {
		s.h(m)
	}
}
