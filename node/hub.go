package node

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/pubsub"
)

// hub fans the messages of each channel out to the node's local
// subscribers. It holds one broker subscription per channel with at least
// one local subscriber: subscribed with the first, stopped after the last.
//
// The broker calls a channel's deliver on its own goroutine; deliver never
// blocks: it encodes the message once and puts the same frame in each
// subscriber's bounded queue, under the channel's read lock, which it holds
// for memory only. The subscribers of a small channel whose write is due
// are then written by deliver itself, without blocking, once the lock is
// released (wsout.Inline); the others are left to their flushers.
type hub struct {
	broker  pubsub.Broker
	nodeID  string
	latency prometheus.Observer // delivery latency from envelope timestamps

	subscriptions atomic.Int64 // connection and channel pairs

	// history tells which channels keep history; recoverMax bounds a
	// recovery; repairs are the goroutines recovering gaps (history.go),
	// bounded by ctx and waited for by the node after its connections.
	history    func(channel string) (pubsub.Historian, pubsub.HistoryOptions, bool)
	recoverMax int
	ctx        context.Context
	repairs    sync.WaitGroup
	// positionRepairs counts the repairs started by a position check
	// (position.go).
	positionRepairs atomic.Int64

	mu       sync.Mutex
	channels map[string]*hubChannel
}

type hubChannel struct {
	hub  *hub
	name string

	// mu guards subs and index; deliver holds it for reading while it
	// enqueues. Lock order: hub.mu, then hubChannel.mu, then the locks of
	// node/internal/wsout.
	// (Copy-on-write would cost O(n²) garbage as n subscribers arrive.)
	mu    sync.RWMutex
	subs  []*conn
	index map[*conn]int // position in subs
	// recs holds the subscribers catching up on history (history.go):
	// deliver holds their messages back, then drops duplicates.
	// Lock order: hubChannel.mu, then recovery.mu, then conn.mu.
	recs map[*conn]*recovery

	seq channelSeq // the channel's history as seen live (history.go)

	ready chan struct{} // closed once the broker subscription is settled
	stop  func()        // set before ready closes; nil if err
	err   error
}

func newHub(b pubsub.Broker, nodeID string, latency prometheus.Observer) *hub {
	return &hub{broker: b, nodeID: nodeID, latency: latency, channels: make(map[string]*hubChannel)}
}

// subscribe adds c to the subscribers of channel and returns once the
// node's broker subscription of it is live. With r, c catches up on
// history first: deliver holds its messages in r until finish.
func (h *hub) subscribe(ctx context.Context, channel string, c *conn, r *recovery) error {
	h.mu.Lock()
	hc := h.channels[channel]
	first := hc == nil
	if first {
		hc = &hubChannel{hub: h, name: channel, ready: make(chan struct{}), index: make(map[*conn]int)}
		h.channels[channel] = hc
	}
	hc.add(c, r)
	h.mu.Unlock()
	h.subscriptions.Add(1)

	if first {
		hc.stop, hc.err = h.broker.Subscribe(ctx, channel, hc.deliver)
		close(hc.ready)
	} else {
		select {
		case <-hc.ready:
		case <-ctx.Done():
			h.unsubscribe(channel, c)
			return ctx.Err()
		}
	}
	if hc.err != nil {
		h.unsubscribe(channel, c)
		return hc.err
	}
	return nil
}

// unsubscribe removes c from channel's subscribers, stopping the broker
// subscription after the last one.
func (h *hub) unsubscribe(channel string, c *conn) {
	h.mu.Lock()
	hc := h.channels[channel]
	if hc == nil {
		h.mu.Unlock()
		return
	}
	removed, last := hc.remove(c)
	if !removed {
		h.mu.Unlock()
		return
	}
	if last {
		delete(h.channels, channel)
	}
	h.mu.Unlock()
	h.subscriptions.Add(-1)
	if last {
		<-hc.ready
		if hc.stop != nil {
			hc.stop()
		}
	}
}

// channelCount reports the channels with local subscribers.
func (h *hub) channelCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.channels)
}

func (hc *hubChannel) add(c *conn, r *recovery) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if r != nil {
		if hc.recs == nil {
			hc.recs = make(map[*conn]*recovery)
		}
		hc.recs[c] = r
	}
	hc.index[c] = len(hc.subs)
	hc.subs = append(hc.subs, c)
}

// remove takes c out of the subscribers, reporting whether it was one and
// whether none are left.
func (hc *hubChannel) remove(c *conn) (removed, empty bool) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	i, ok := hc.index[c]
	if !ok {
		return false, len(hc.subs) == 0
	}
	last := len(hc.subs) - 1
	hc.subs[i] = hc.subs[last]
	hc.index[hc.subs[i]] = i
	hc.subs[last] = nil
	hc.subs = hc.subs[:last]
	delete(hc.index, c)
	delete(hc.recs, c)
	return true, len(hc.subs) == 0
}

// deliver hands m to every local subscriber of the channel. It runs on the
// broker's goroutine. The frame is built once, lazily per wire form, and
// shared: enqueueing it allocates nothing per subscriber. Up to
// wsout.InlineMax subscribers whose write is due are written here, after
// the read lock is released and without blocking; the others, and all of a
// larger channel's, are left to their flushers' sweeps.
func (hc *hubChannel) deliver(m pubsub.Message) {
	if (m.Gap || m.Offset != 0) && !hc.sequence(m) {
		return
	}
	if m.Time != 0 {
		hc.hub.latency.Observe(time.Duration(time.Now().UnixNano() - m.Time).Seconds())
	}
	var in wsout.Inline
	caught := false // a recovering subscriber caught up: drop its recovery
	defer func() {
		if caught {
			hc.dropCaught()
		}
	}()
	hc.mu.RLock()
	inline := len(hc.subs) <= wsout.InlineMax
	fromHere := m.Origin == hc.hub.nodeID
	var raw, push *wsout.Frame
	for _, c := range hc.subs {
		// A recovering subscriber's own messages pass its recovery too,
		// which counts their offsets (finish does not send them back).
		if r := hc.recovering(c); r != nil {
			hold, done, hole := r.take(m, hc.hub.recoverMax)
			caught = caught || done
			if hold {
				continue
			}
			if hole {
				hc.announce(c)
			}
		}
		if fromHere && m.Conn == c.id && !c.echo {
			continue
		}
		var f *wsout.Frame
		if c.mode == modeProto {
			if push == nil {
				push = newPushFrame(hc.name, m)
			}
			f = push
		} else {
			if raw == nil {
				raw = newRawFrame(m)
			}
			f = raw
		}
		if inline {
			in.Add(&c.out, f)
		} else {
			c.out.Enqueue(f)
		}
	}
	hc.mu.RUnlock()
	in.Flush()
}
