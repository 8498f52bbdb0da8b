package node

import (
	"context"
	"time"

	"github.com/relay-pubsub/relay/pubsub"
)

// Positioning: a node can miss a message of a channel with history
// without any gap event of the broker, for instance when Redis drops a
// PUBLISH to a subscriber connection that stays up (its output buffer
// limit, a failover that kept the connection). So every
// RELAY_HISTORY_CHECK_INTERVAL the node reads the latest position of each
// channel with history it has subscribers for, in batches of
// positionBatch channels, one round trip each (pubsub.Positioner), and
// compares it with what the channel's live messages showed (channelSeq).
//
// A message in flight is not a miss: a position is held against the node
// only at the next check, one interval later. If by then the node has
// still not delivered up to the offset the previous check read, in the
// same epoch, it repairs the channel as it does a gap (history.go):
// every subscriber recovers from the stream, or is told when that is not
// possible. If the stream went on in an epoch the node has seen no
// message of, the subscribers are told of a gap. A broker reconnect needs
// no check of its own: the gap event it sends each channel makes the node
// read the history, and with it the position, at once.

// positionBatch bounds the channels read in one round trip.
const positionBatch = 1000

// runPositioning checks the positions of the node's channels with history
// every HistoryCheckInterval, until stop is called. It does nothing when
// the interval is 0 or the broker needs no check.
func (n *Node) runPositioning() (stop func()) {
	p, ok := n.broker.(pubsub.Positioner)
	if !ok || n.cfg.HistoryCheckInterval <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(n.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(n.cfg.HistoryCheckInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			n.checkPositions(ctx, p)
		}
	}()
	return func() { cancel(); <-done }
}

// checkPositions runs one check of every channel with history that has
// local subscribers. A failed read ends the round: the broker is
// unreachable, and its gap events will cover what was lost meanwhile.
func (n *Node) checkPositions(ctx context.Context, p pubsub.Positioner) {
	hcs := n.hub.historyChannels()
	names := make([]string, 0, min(len(hcs), positionBatch))
	for len(hcs) > 0 {
		batch := hcs[:min(len(hcs), positionBatch)]
		hcs = hcs[len(batch):]
		names = names[:0]
		for _, hc := range batch {
			names = append(names, hc.name)
		}
		pos, err := p.Positions(ctx, names)
		if err != nil {
			return
		}
		for i, hc := range batch {
			hc.position(pos[i])
		}
	}
}

// historyChannels returns the channels with local subscribers that keep
// history.
func (h *hub) historyChannels() []*hubChannel {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*hubChannel
	for name, hc := range h.channels {
		if _, _, ok := h.history(name); ok {
			out = append(out, hc)
		}
	}
	return out
}

// position takes the channel's latest position in the broker, read by a
// check, and repairs the channel when its live messages have not reached
// the position the previous check read.
func (hc *hubChannel) position(latest pubsub.Position) {
	if latest.Epoch == "" {
		// No history now: the next publish starts a new epoch, which
		// sequence announces.
		return
	}
	s := &hc.seq
	s.mu.Lock()
	target := s.checked
	s.checked = latest
	var from pubsub.Position
	repair := false
	switch {
	case s.pos.Epoch == "":
		// No live message yet: from here on, what the stream gets must
		// reach the node.
		s.pos = latest
	case s.repairing || target.Epoch != latest.Epoch:
		// A repair covers it, or the epoch changed since the previous
		// check: the next check tells.
	case s.pos.Epoch == target.Epoch:
		if s.pos.Offset < target.Offset {
			repair, from = true, s.pos
		}
	default:
		// The stream went on in an epoch the node never saw a message
		// of: tell every subscriber, and go on from here.
		repair = true
		s.pos = latest
	}
	if repair {
		s.repairing = true
	}
	s.mu.Unlock()
	if repair {
		hc.hub.positionRepairs.Add(1)
		hc.repair(from)
	}
}
