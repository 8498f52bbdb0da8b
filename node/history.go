package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// historyOf returns the history options of channel and whether it keeps
// history: its namespace's history_size and history_ttl when the namespace
// file gives them (a missing TTL is RELAY_HISTORY_TTL), else
// RELAY_HISTORY_SIZE and RELAY_HISTORY_TTL. A broker that keeps no history
// keeps none for any channel.
func (n *Node) historyOf(channel string) (pubsub.Historian, pubsub.HistoryOptions, bool) {
	h, ok := n.broker.(pubsub.Historian)
	if !ok {
		return nil, pubsub.HistoryOptions{}, false
	}
	opts := pubsub.HistoryOptions{Size: n.cfg.HistorySize, TTL: n.cfg.HistoryTTL}
	if ns := n.namespaces.For(channel); ns.HistorySet {
		opts.Size = ns.HistorySize
		if ns.HistoryTTL > 0 {
			opts.TTL = ns.HistoryTTL
		}
	}
	return h, opts, opts.Size > 0 && opts.TTL > 0
}

// History in the hub: offsets, recovery and gaps.
//
// A subscriber that asks for history it missed (subscribe with "since", or
// GET /ws/{channel}?since=) is added to the channel with a recovery: from
// then on deliver holds its live messages back in the recovery. The
// history is read once the subscription is live, so that live and read
// messages overlap rather than leave a hole; finish then queues the reply,
// the history after since and the held messages in offset order, each
// offset once, and from then on deliver passes the subscriber only
// messages above the last offset it got. Once a live message beyond that
// arrives, the recovery is dropped; if that message is not the next offset
// (the node missed some meanwhile, and a repair of the channel skipped this
// recovery as busy), the subscriber is told of the gap first.
//
// A channel with history is also watched as a whole (sequence): an offset
// that skips ahead, or a gap event of the broker (its subscription was
// lost and restored), makes the node recover the missed messages for every
// subscriber the same way, on a goroutine of the hub (repair). When that
// is not possible (the history does not reach back, the epoch changed, or
// more than RELAY_HISTORY_RECOVER_MAX are missing), and on channels
// without history, each subscriber is told: a protocol-mode connection gets
// a gap push, a raw-mode connection is closed with 4005.

// recovery is one subscriber catching up on a channel's history.
type recovery struct {
	mu     sync.Mutex
	done   bool             // finish ran: messages go straight through
	last   uint64           // the highest offset queued to the subscriber
	epoch  string           // the epoch of last
	held   []pubsub.Message // live messages while !done, in order
	over   bool             // more than the bound arrived while !done
	caught bool             // a live message beyond last passed after done
}

// take decides, for deliver, about a live message m: hold it back (or drop
// it as a duplicate), or let it through. caught reports the first message
// let through after finish: the recovery has done its work. hole reports
// that this first message is not the one after the last that finish
// queued: messages the node missed after the recovery's history read and
// before this one, which a repair of the channel running meanwhile left to
// this recovery (repair skips busy ones); the subscriber must be told.
func (r *recovery) take(m pubsub.Message, max int) (hold, caught, hole bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.done {
		if len(r.held) < max {
			r.held = append(r.held, m)
		} else {
			r.over = true
		}
		return true, false, false
	}
	if m.Offset != 0 && m.Epoch == r.epoch && m.Offset <= r.last {
		return true, false, false
	}
	first := !r.caught
	r.caught = true
	hole = first && m.Offset != 0 && r.epoch != "" && (m.Epoch != r.epoch || m.Offset > r.last+1)
	return false, first, hole
}

// recovering returns c's recovery, nil when it has none; hc.mu is held.
// Most channels have no recovery: that costs a length check.
func (hc *hubChannel) recovering(c *conn) *recovery {
	if len(hc.recs) == 0 {
		return nil
	}
	return hc.recs[c]
}

// dropCaught forgets the recoveries whose subscriber caught up.
func (hc *hubChannel) dropCaught() {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	for c, r := range hc.recs {
		r.mu.Lock()
		if r.caught {
			delete(hc.recs, c)
		}
		r.mu.Unlock()
	}
}

// channelSeq is the position of a channel's history as its live messages
// showed it.
type channelSeq struct {
	mu        sync.Mutex
	pos       pubsub.Position
	repairing bool            // a repair is running: it covers further gaps
	checked   pubsub.Position // the latest position the last check read (position.go)
}

// seed sets the position of a channel whose live messages have not shown
// one yet, from a history read.
func (hc *hubChannel) seed(pos pubsub.Position) {
	hc.seq.mu.Lock()
	if hc.seq.pos.Epoch == "" {
		hc.seq.pos = pos
	}
	hc.seq.mu.Unlock()
}

// sequence watches the channel's live history and gap events, on the
// broker's goroutine, before deliver hands m out. It reports whether m is
// a message to deliver (false for a gap event).
func (hc *hubChannel) sequence(m pubsub.Message) bool {
	s := &hc.seq
	s.mu.Lock()
	prev := s.pos
	var gap bool
	if m.Gap {
		gap = true
	} else {
		switch {
		case prev.Epoch == "":
		case m.Epoch != prev.Epoch:
			gap = true
			prev = pubsub.Position{} // nothing to recover from
		case m.Offset > prev.Offset+1:
			gap = true
		}
		if m.Epoch != s.pos.Epoch || m.Offset > s.pos.Offset {
			s.pos = pubsub.Position{Offset: m.Offset, Epoch: m.Epoch}
		}
	}
	start := gap && !s.repairing
	if start {
		s.repairing = true
	}
	s.mu.Unlock()
	if start {
		hc.repair(prev)
	}
	return !m.Gap
}

// repair recovers, for every subscriber, the messages of the channel after
// from: each is put in recovery before this returns (so the message that
// revealed the gap is held too), and a goroutine reads the history and
// finishes them. Without history, or from nowhere, it announces the gap.
func (hc *hubChannel) repair(from pubsub.Position) {
	h := hc.hub
	hist, opts, ok := h.history(hc.name)
	type sub struct {
		c *conn
		r *recovery
	}
	var subs []sub
	hc.mu.Lock()
	for _, c := range hc.subs {
		if !ok || from.Epoch == "" {
			hc.announce(c)
			continue
		}
		r := &recovery{last: from.Offset, epoch: from.Epoch}
		if old := hc.recs[c]; old != nil {
			old.mu.Lock()
			busy, last, epoch := !old.done, old.last, old.epoch
			old.mu.Unlock()
			if busy {
				continue // catching up already: its finish announces a hole
			}
			// Finished, and no live message has passed since: it may
			// have queued more than from, which must not come twice.
			if epoch == from.Epoch && last > from.Offset {
				r.last = last
			}
		}
		if hc.recs == nil {
			hc.recs = make(map[*conn]*recovery)
		}
		hc.recs[c] = r
		subs = append(subs, sub{c, r})
	}
	hc.mu.Unlock()
	if len(subs) == 0 {
		hc.seq.mu.Lock()
		hc.seq.repairing = false
		hc.seq.mu.Unlock()
		return
	}
	h.repairs.Go(func() {
		ctx, cancel := context.WithTimeout(h.ctx, repairTimeout)
		defer cancel()
		msgs, pos, err := hist.History(ctx, hc.name, opts, from.Offset, h.recoverMax+1)
		recovered := err == nil && reaches(from, pos, msgs, h.recoverMax)

		if !recovered {
			msgs = nil
		}
		hc.seq.mu.Lock()
		hc.seq.repairing = false
		// Every subscriber gets up to pos, or is told: a later live
		// message right after pos is no gap.
		if err == nil && pos.Epoch == hc.seq.pos.Epoch && pos.Offset > hc.seq.pos.Offset {
			hc.seq.pos = pos
		}
		hc.seq.mu.Unlock()
		frames := make([]msgFrames, len(msgs))
		for _, s := range subs {
			hc.finish(s.c, s.r, msgs, frames, nil, !recovered)
		}
	})
}

// defaultRecoverMax is HistoryRecoverMax when it is zero.
const defaultRecoverMax = 1000

// repairTimeout bounds the history read of a repair.
const repairTimeout = 10 * time.Second

// reaches reports whether msgs, read from since with the position pos, are
// every message after since: the same epoch, at most max of them, and the
// first one right after since.
func reaches(since, pos pubsub.Position, msgs []pubsub.Message, max int) bool {
	if since.Epoch != pos.Epoch || pos.Offset < since.Offset || pos.Offset-since.Offset > uint64(max) {
		return false
	}
	return pos.Offset == since.Offset || (len(msgs) > 0 && msgs[0].Offset == since.Offset+1)
}

// msgFrames are the frames of one message of a recovery, built for the
// first subscriber that needs each form and shared by the others.
type msgFrames struct{ push, raw *wsout.Frame }

func (hc *hubChannel) frameOf(c *conn, m pubsub.Message, f *msgFrames) *wsout.Frame {
	if c.mode == modeProto {
		if f.push == nil {
			f.push = newPushFrame(hc.name, m)
		}
		return f.push
	}
	if f.raw == nil {
		f.raw = newRawFrame(m)
	}
	return f.raw
}

// finish ends r: it queues reply (when not nil), announces a gap first if
// lost, then the messages of msgs and those r held, in offset order and
// each once; a hole between them, or a new epoch, is announced too. From
// then on deliver passes c only messages above the last offset queued, or
// of another epoch.
func (hc *hubChannel) finish(c *conn, r *recovery, msgs []pubsub.Message, frames []msgFrames, reply *wsout.Frame, lost bool) {
	fromHere := func(m pubsub.Message) bool { return m.Origin == hc.hub.nodeID && m.Conn == c.id && !c.echo }
	r.mu.Lock()
	defer r.mu.Unlock()
	if reply != nil {
		c.out.Enqueue(reply)
	}
	if lost {
		hc.announce(c)
	}
	for i, m := range msgs {
		if m.Epoch == r.epoch && m.Offset <= r.last {
			continue
		}
		if !fromHere(m) {
			c.out.Enqueue(hc.frameOf(c, m, &frames[i]))
		}
		r.last, r.epoch = m.Offset, m.Epoch
	}
	announced := lost // covers the hole before the next message
	for _, m := range r.held {
		if m.Epoch == r.epoch && m.Offset <= r.last {
			continue
		}
		if hole := m.Epoch != r.epoch || m.Offset > r.last+1; hole && !announced {
			hc.announce(c)
		}
		if !fromHere(m) {
			var f msgFrames
			c.out.Enqueue(hc.frameOf(c, m, &f))
		}
		r.last, r.epoch, announced = m.Offset, m.Epoch, false
	}
	if r.over {
		c.close(errRecoveryOverflow)
	}
	r.done, r.held = true, nil
}

// errRecoveryOverflow closes a subscriber that was sent more live messages
// during its recovery than the recovery bound: a slow consumer.
var errRecoveryOverflow = &wsout.CloseError{Code: protocol.CloseTryAgainLater, Reason: "slow consumer: too many messages during recovery"}

// errMessagesLost closes a raw-mode subscriber of a channel that lost
// messages the node could not recover.
var errMessagesLost = &wsout.CloseError{Code: protocol.CloseMessagesLost, Reason: "messages lost: reconnect (with since on a channel with history)", Flush: true}

// announce tells c that messages of the channel may have been lost.
func (hc *hubChannel) announce(c *conn) {
	if c.mode == modeProto {
		c.out.Enqueue(wsout.NewFrame(websocket.MessageText, protocol.AppendGap(nil, hc.name)))
		return
	}
	c.close(errMessagesLost)
}

// channel returns the hub's state of channel, nil when it has no local
// subscriber.
func (h *hub) channel(name string) *hubChannel {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.channels[name]
}

// recoverFor subscribes c to channel with a recovery from since (nil: from
// the channel's current position) and reads the history. It returns the
// channel's position, whether the messages after since follow, and a
// finish that queues reply and them; or an error reply, with c not
// subscribed.
func (n *Node) recoverFor(c *conn, channel string, hist pubsub.Historian, opts pubsub.HistoryOptions, since *protocol.Since) (pubsub.Position, bool, func(reply *wsout.Frame), *protocol.Error) {
	r := &recovery{}
	if err := n.hub.subscribe(n.ctx, channel, c, r); err != nil {
		return pubsub.Position{}, false, nil, n.brokerError(c, "subscribe failed", channel, err)
	}
	from, limit := uint64(0), 0
	if since != nil {
		from, limit = since.Offset, n.cfg.HistoryRecoverMax+1
	}
	msgs, pos, err := hist.History(n.ctx, channel, opts, from, limit)
	if err != nil {
		n.hub.unsubscribe(channel, c)
		return pubsub.Position{}, false, nil, n.brokerError(c, "history failed", channel, err)
	}
	recovered := false
	if since != nil {
		if since.Epoch == pos.Epoch && since.Offset > pos.Offset {
			n.hub.unsubscribe(channel, c)
			return pubsub.Position{}, false, nil, &protocol.Error{Code: protocol.CodeBadPosition, Message: fmt.Sprintf(
				"offset %d is beyond the latest of channel %q, %d", since.Offset, channel, pos.Offset)}
		}
		recovered = reaches(pubsub.Position{Offset: since.Offset, Epoch: since.Epoch}, pos, msgs, n.cfg.HistoryRecoverMax)
	}
	r.epoch = pos.Epoch
	if recovered {
		r.last = since.Offset
	} else {
		msgs, r.last = nil, pos.Offset
	}
	hc := n.hub.channel(channel)
	if hc != nil {
		hc.seed(pos)
	}
	finish := func(reply *wsout.Frame) {
		if hc == nil { // cannot be: c is subscribed
			return
		}
		hc.finish(c, r, msgs, make([]msgFrames, len(msgs)), reply, false)
	}
	return pos, recovered, finish, nil
}

// subscribeHistory runs a protocol-mode subscribe to a channel with
// history (ok), or one with "since" (refused without history): it queues
// the reply, with the channel's position, and the recovered messages.
func (n *Node) subscribeHistory(c *conn, cmd protocol.Command, hist pubsub.Historian, opts pubsub.HistoryOptions, ok bool) *protocol.Error {
	if !ok {
		return &protocol.Error{Code: protocol.CodeNoHistory, Message: fmt.Sprintf("channel %q keeps no history to recover from", cmd.Channel)}
	}
	pos, recovered, finish, perr := n.recoverFor(c, cmd.Channel, hist, opts, cmd.Since)
	if perr != nil {
		return perr
	}
	c.proto.subs[cmd.Channel] = struct{}{}
	res := protocol.SubscribeResult{Offset: pos.Offset, Epoch: pos.Epoch}
	if cmd.Since != nil {
		res.Recovered = &recovered
	}
	var reply *wsout.Frame
	if cmd.ID != nil {
		b, _ := json.Marshal(res) // cannot fail
		reply = wsout.NewFrame(websocket.MessageText, protocol.AppendResult(nil, cmd.ID, b))
	}
	finish(reply)
	c.proto.replied = true
	return nil
}

// rawSince reads ?since=<offset>&epoch=<epoch> of a raw-mode upgrade: nil
// when neither is given.
func rawSince(r *http.Request) (*protocol.Since, error) {
	q := r.URL.Query()
	if !q.Has("since") && !q.Has("epoch") {
		return nil, nil
	}
	off, err := strconv.ParseUint(q.Get("since"), 10, 64)
	if err != nil {
		return nil, errors.New("since: want the offset of the last message received, an integer from 0, with epoch")
	}
	// The same rules as protocol mode's since, through its decoder.
	cmd, err := protocol.DecodeCommand(protocol.AppendCommand(nil, protocol.Command{
		Cmd: protocol.CmdSubscribe, Channel: "c", Since: &protocol.Since{Offset: off, Epoch: q.Get("epoch")}}))
	if err != nil {
		return nil, errors.New("epoch: want the epoch of the channel's history that since counts in")
	}
	return cmd.Since, nil
}

// subscribeRawSince subscribes the raw-mode c to channel, replaying the
// messages after since first. It refuses the upgrade and reports false
// when it cannot: 400 no_history, 409 bad_position or not_recovered, 503
// unavailable. The 101 carries the channel's position in X-Relay-Offset
// and X-Relay-Epoch.
func (n *Node) subscribeRawSince(w http.ResponseWriter, c *conn, since *protocol.Since) bool {
	hist, opts, ok := n.historyOf(c.channel)
	if !ok {
		n.refuse(w, http.StatusBadRequest, protocol.CodeNoHistory, fmt.Sprintf("channel %q keeps no history to recover from", c.channel))
		return false
	}
	pos, recovered, finish, perr := n.recoverFor(c, c.channel, hist, opts, since)
	switch {
	case perr != nil && perr.Code == protocol.CodeBadPosition:
		n.refuse(w, http.StatusConflict, perr.Code, perr.Message)
		return false
	case perr != nil:
		w.Header().Set("Retry-After", "1")
		n.refuse(w, http.StatusServiceUnavailable, perr.Code, perr.Message)
		return false
	case !recovered:
		n.hub.unsubscribe(c.channel, c)
		n.refuse(w, http.StatusConflict, protocol.CodeNotRecovered, fmt.Sprintf(
			"history does not reach back to offset %d of epoch %q: the channel is at offset %d of epoch %q; reconnect without since",
			since.Offset, since.Epoch, pos.Offset, pos.Epoch))
		return false
	}
	w.Header().Set("X-Relay-Offset", strconv.FormatUint(pos.Offset, 10))
	w.Header().Set("X-Relay-Epoch", pos.Epoch)
	finish(nil)
	return true
}
