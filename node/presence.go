package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// Presence (docs/PROTOCOL.md, "Presence"): in a channel whose namespace
// keeps it, every subscribed connection has an entry in the broker
// (pubsub.PresenceKeeper), added when it subscribes, removed when it
// leaves, and renewed by its node every RELAY_PRESENCE_INTERVAL for
// RELAY_PRESENCE_LEASE, so that the entries of a node that crashed lapse.
//
// Join and leave pushes (namespace option join_leave) travel through the
// broker on a channel of their own per channel, eventsPrefix+channel,
// which a node subscribes to while it has members of the channel: a push
// is built once, by the node whose broker call reported the change, and
// every node hands it to its protocol-mode subscribers of the channel.
// The broker reports each join and leave to exactly one call; a leave
// held in the grace is reported by the first call after the grace, which
// the node that removed the entry makes (a sweep), or, had it crashed,
// the next renewal of any node with members of the channel.

// eventsPrefix starts the broker channel of a channel's join and leave
// pushes. It has protocol.ReservedPrefix: no client can use it.
const eventsPrefix = protocol.ReservedPrefix + ":presence:"

// sweepMargin is added to a grace before the sweep that reports its leave,
// so that the broker's clock has passed the grace's end too.
const sweepMargin = 20 * time.Millisecond

// presence is a node's part of presence: its members of each channel.
type presence struct {
	n     *Node
	store pubsub.PresenceKeeper // nil when the broker keeps no presence

	// mu guards chans and sweeps, for memory only: no broker call is made
	// under it.
	mu     sync.Mutex
	chans  map[string]*presenceChannel
	sweeps map[string]time.Time // channels whose leave grace ends then
	wake   chan struct{}        // buffer 1: sweeps has an earlier time
	// renewing is set while a renewal's broker call is out. It may write
	// back an entry that left meanwhile: such entries are kept in
	// departed, by channel, and removed again after it.
	renewing bool
	departed map[string][]pubsub.PresenceEntry

	// failures counts the broker calls that failed to add, renew or remove
	// entries: the entries are right again after the next renewal, or
	// lapse.
	failures prometheus.Counter
}

// presenceChannel is the node's members of one channel.
type presenceChannel struct {
	members map[*conn]pubsub.PresenceEntry
	// ready is closed once the join and leave subscription is settled;
	// stop ends it, nil when there is none (no join_leave, or the
	// subscribe failed: the renewal tries again).
	ready chan struct{}
	stop  func()
}

// newPresence returns the presence of n and registers its metrics.
func newPresence(n *Node) *presence {
	p := &presence{n: n, chans: make(map[string]*presenceChannel), sweeps: make(map[string]time.Time), wake: make(chan struct{}, 1)}
	p.store, _ = n.broker.(pubsub.PresenceKeeper)
	p.failures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "relay_presence_errors_total",
		Help: "Presence joins, renewals and leaves the broker failed (the entries lapse, or are right after the next renewal).",
	})
	n.metrics.reg.MustRegister(p.failures, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "relay_presence_entries",
		Help: "Presence entries this node keeps: connection and channel pairs in channels with presence.",
	}, p.count))
	return p
}

// count returns the node's entries.
func (p *presence) count() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, pc := range p.chans {
		n += len(pc.members)
	}
	return float64(n)
}

// presenceOf returns the presence options of channel, whether its
// namespace asks for join and leave pushes, and whether it keeps presence
// at all.
func (n *Node) presenceOf(channel string) (opts pubsub.PresenceOptions, joinLeave, ok bool) {
	ns := n.namespaces.For(channel)
	if !ns.Presence || n.presence.store == nil {
		return pubsub.PresenceOptions{}, false, false
	}
	return pubsub.PresenceOptions{Lease: n.cfg.PresenceLease, Grace: ns.PresenceLeaveGrace}, ns.JoinLeave, true
}

// join makes c, subscribed to channel, present in it; the reader of c
// calls it. A broker that cannot be reached does not fail the subscribe:
// the next renewal adds the entry.
func (p *presence) join(c *conn, channel string) {
	n := p.n
	opts, joinLeave, ok := n.presenceOf(channel)
	if !ok {
		return
	}
	e := pubsub.PresenceEntry{Client: c.clientID(), User: c.sess.id.User, Node: n.id, Info: compactInfo(c.sess.id.Info)}
	p.mu.Lock()
	pc := p.chans[channel]
	first := pc == nil
	if first {
		pc = &presenceChannel{members: make(map[*conn]pubsub.PresenceEntry), ready: make(chan struct{})}
		p.chans[channel] = pc
	}
	pc.members[c] = e
	p.mu.Unlock()
	if first {
		if joinLeave {
			p.listen(channel, pc)
		}
		close(pc.ready)
	} else {
		<-pc.ready
	}
	changes, err := p.store.AddPresence(n.ctx, []pubsub.PresenceUpdate{{Channel: channel, Entries: []pubsub.PresenceEntry{e}, Opts: opts}})
	if err != nil {
		p.failures.Inc()
		n.log.Debug("presence join failed", "conn", c.id, "channel", channel, "err", err)
		return
	}
	p.announce(channel, changes[0])
}

// listen subscribes the node to the join and leave pushes of channel.
func (p *presence) listen(channel string, pc *presenceChannel) {
	stop, err := p.n.broker.Subscribe(p.n.ctx, eventsPrefix+channel, func(m pubsub.Message) { p.deliver(channel, m) })
	if err != nil {
		p.n.log.Debug("presence subscribe failed", "channel", channel, "err", err)
		return
	}
	p.mu.Lock()
	pc.stop = stop
	p.mu.Unlock()
}

// leave ends c's presence in channel; the reader of c calls it when c
// unsubscribes or ends.
func (p *presence) leave(c *conn, channel string) {
	n := p.n
	p.mu.Lock()
	pc := p.chans[channel]
	e, ok := pc.member(c)
	if !ok {
		p.mu.Unlock()
		return
	}
	delete(pc.members, c)
	last := len(pc.members) == 0
	if last {
		delete(p.chans, channel)
	}
	if p.renewing {
		p.departed[channel] = append(p.departed[channel], e)
	}
	p.mu.Unlock()
	opts, joinLeave, _ := n.presenceOf(channel)
	ch, err := p.store.RemovePresence(n.ctx, channel, []string{e.Client}, opts)
	if err != nil {
		// The entry lapses after its lease.
		p.failures.Inc()
		n.log.Debug("presence leave failed", "conn", c.id, "channel", channel, "err", err)
	} else {
		p.announce(channel, ch)
	}
	if joinLeave && opts.Grace > 0 && e.User != "" {
		p.sweepAt(channel, time.Now().Add(opts.Grace+sweepMargin))
	}
	if last {
		<-pc.ready
		p.mu.Lock()
		stop := pc.stop
		pc.stop = nil
		p.mu.Unlock()
		if stop != nil {
			stop()
		}
	}
}

func (pc *presenceChannel) member(c *conn) (pubsub.PresenceEntry, bool) {
	if pc == nil {
		return pubsub.PresenceEntry{}, false
	}
	e, ok := pc.members[c]
	return e, ok
}

// sweepAt has the node look at channel's presence at t, when a leave
// grace ends, to report the leave.
func (p *presence) sweepAt(channel string, t time.Time) {
	p.mu.Lock()
	if old, ok := p.sweeps[channel]; !ok || t.Before(old) {
		p.sweeps[channel] = t
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// runPresence runs the renewal of the node's presence until the returned
// stop is called; stop waits for it.
func (n *Node) runPresence() (stop func()) {
	if n.presence.store == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(n.ctx)
	done := make(chan struct{})
	go func() { n.presence.run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

// run renews the node's entries every RELAY_PRESENCE_INTERVAL and sweeps
// the channels whose leave grace ends, until ctx ends.
func (p *presence) run(ctx context.Context) {
	tick := time.NewTicker(p.n.cfg.PresenceInterval)
	defer tick.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		timer.Stop()
		if next, ok := p.nextSweep(); ok {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p.renew(ctx, false)
		case <-timer.C:
			p.renew(ctx, true)
		case <-p.wake:
		}
	}
}

func (p *presence) nextSweep() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var next time.Time
	for _, t := range p.sweeps {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	return next, !next.IsZero()
}

// renew writes the node's entries of every channel (sweepOnly: only of the
// channels whose sweep is due) with one pipelined broker call, and
// announces what changed. Channels that are due a sweep and have no
// member left here are swept with an update without entries.
func (p *presence) renew(ctx context.Context, sweepOnly bool) {
	n := p.n
	now := time.Now()
	var updates []pubsub.PresenceUpdate
	var relisten []string
	p.mu.Lock()
	p.renewing, p.departed = true, make(map[string][]pubsub.PresenceEntry)
	for ch, t := range p.sweeps {
		if !t.After(now) {
			delete(p.sweeps, ch)
			if p.chans[ch] == nil {
				updates = append(updates, pubsub.PresenceUpdate{Channel: ch})
			} else if sweepOnly {
				updates = append(updates, pubsub.PresenceUpdate{Channel: ch, Entries: p.chans[ch].entries()})
			}
		}
	}
	if !sweepOnly {
		for ch, pc := range p.chans {
			updates = append(updates, pubsub.PresenceUpdate{Channel: ch, Entries: pc.entries()})
			if pc.stop == nil {
				relisten = append(relisten, ch)
			}
		}
	}
	p.mu.Unlock()
	for i := range updates {
		updates[i].Opts, _, _ = n.presenceOf(updates[i].Channel)
	}
	updates = slices.DeleteFunc(updates, func(u pubsub.PresenceUpdate) bool { return u.Opts.Lease == 0 })
	var changes []pubsub.PresenceChange
	if len(updates) > 0 {
		var err error
		if changes, err = p.store.AddPresence(ctx, updates); err != nil {
			p.failures.Inc()
			n.log.Debug("presence renewal failed", "channels", len(updates), "err", err)
		}
	}
	p.mu.Lock()
	departed := p.departed
	p.renewing, p.departed = false, nil
	p.mu.Unlock()
	for i, ch := range changes {
		p.announce(updates[i].Channel, departedOut(ch, departed[updates[i].Channel]))
	}
	// What the renewal wrote back of the connections that left during it
	// goes again; their join and leave were told already.
	for channel, gone := range departed {
		opts, _, _ := n.presenceOf(channel)
		clients := make([]string, len(gone))
		for i, e := range gone {
			clients[i] = e.Client
		}
		ch, err := p.store.RemovePresence(ctx, channel, clients, opts)
		if err != nil {
			p.failures.Inc()
			n.log.Debug("presence leave failed", "channel", channel, "err", err)
			continue
		}
		p.announce(channel, departedOut(ch, gone))
	}
	for _, ch := range relisten {
		if _, joinLeave, _ := n.presenceOf(ch); joinLeave {
			p.relisten(ch)
		}
	}
}

// departedOut returns ch without the joins and leaves of the entries gone.
func departedOut(ch pubsub.PresenceChange, gone []pubsub.PresenceEntry) pubsub.PresenceChange {
	if len(gone) == 0 {
		return ch
	}
	isGone := func(client, user string) bool {
		return slices.ContainsFunc(gone, func(e pubsub.PresenceEntry) bool {
			return client != "" && e.Client == client || user != "" && e.User == user
		})
	}
	ch.Joined = slices.DeleteFunc(ch.Joined, func(e pubsub.PresenceEntry) bool { return isGone(e.Client, "") })
	ch.Left = slices.DeleteFunc(ch.Left, func(l pubsub.PresenceLeave) bool { return isGone(l.Client, l.User) })
	return ch
}

// relisten subscribes again to the pushes of channel, if the node still
// has members of it and no subscription.
func (p *presence) relisten(channel string) {
	p.mu.Lock()
	pc := p.chans[channel]
	p.mu.Unlock()
	if pc == nil {
		return
	}
	<-pc.ready // the first join's own attempt is over
	p.mu.Lock()
	again := p.chans[channel] == pc && pc.stop == nil
	p.mu.Unlock()
	if !again {
		return
	}
	p.listen(channel, pc)
	p.mu.Lock()
	if p.chans[channel] != pc && pc.stop != nil { // left meanwhile
		pc.stop()
		pc.stop = nil
	}
	p.mu.Unlock()
}

func (pc *presenceChannel) entries() []pubsub.PresenceEntry {
	es := make([]pubsub.PresenceEntry, 0, len(pc.members))
	for _, e := range pc.members {
		es = append(es, e)
	}
	return es
}

// announce publishes the join and leave pushes of ch, when channel's
// namespace asks for them. A push that cannot be published is lost: the
// presence command stays right.
func (p *presence) announce(channel string, ch pubsub.PresenceChange) {
	if len(ch.Joined) == 0 && len(ch.Left) == 0 {
		return
	}
	n := p.n
	if _, joinLeave, _ := n.presenceOf(channel); !joinLeave {
		return
	}
	for _, e := range ch.Joined {
		// Published as from the joining connection: it gets no push of
		// its own join.
		node, conn, _ := parseClientID(e.Client)
		m := pubsub.Message{Origin: node, Conn: conn, Payload: protocol.AppendJoin(nil, channel, clientInfo(e))}
		p.publish(channel, m)
	}
	for _, l := range ch.Left {
		p.publish(channel, pubsub.Message{Origin: n.id, Payload: protocol.AppendLeave(nil, channel, l.User, l.Client)})
	}
}

func (p *presence) publish(channel string, m pubsub.Message) {
	if err := p.n.broker.Publish(p.n.ctx, eventsPrefix+channel, m); err != nil {
		p.n.log.Debug("presence push failed", "channel", channel, "err", err)
	}
}

// deliver hands a join or leave push of channel to the node's
// protocol-mode subscribers of it, except the connection it is about. It
// runs on the broker's goroutine and does not block.
func (p *presence) deliver(channel string, m pubsub.Message) {
	// A gap loses pushes only: presence itself is in the broker. Anything
	// but a push object on one line (a stray PUBLISH) is not passed on.
	if m.Gap || !json.Valid(m.Payload) || bytes.IndexByte(m.Payload, '\n') >= 0 ||
		!(bytes.HasPrefix(m.Payload, []byte(`{"join":`)) || bytes.HasPrefix(m.Payload, []byte(`{"leave":`))) {
		return
	}
	hc := p.n.hub.channel(channel)
	if hc == nil {
		return
	}
	f := wsout.NewFrame(websocket.MessageText, m.Payload)
	self := m.Origin == p.n.id
	hc.mu.RLock()
	for _, c := range hc.subs {
		if c.mode == modeProto && !(self && m.Conn == c.id) {
			c.out.Enqueue(f)
		}
	}
	hc.mu.RUnlock()
}

// compactInfo returns the info claim in compact form, to travel in pushes
// of one line; nil for none.
func compactInfo(info json.RawMessage) []byte {
	if len(info) == 0 {
		return nil
	}
	var buf bytes.Buffer
	if json.Compact(&buf, info) != nil || buf.String() == "null" {
		return nil
	}
	return buf.Bytes()
}

// clientInfo is the wire form of e. An info that is not JSON (the entry
// was written by something else than a node) is left out, so that the
// reply stays JSON.
func clientInfo(e pubsub.PresenceEntry) protocol.ClientInfo {
	ci := protocol.ClientInfo{Client: e.Client, User: e.User, Node: e.Node, Info: e.Info}
	if !json.Valid(ci.Info) {
		ci.Info = nil
	}
	return ci
}

// presenceCommand runs the presence and presence_stats commands, queueing
// their reply itself.
func (n *Node) presenceCommand(c *conn, cmd protocol.Command) *protocol.Error {
	if perr := n.allowSubscribe(n.ctx, c, cmd.Channel, "read the presence of"); perr != nil {
		return perr
	}
	res, perr := n.readPresence(cmd.Channel, cmd.Cmd == protocol.CmdPresenceStats)
	if perr != nil {
		return perr
	}
	if cmd.ID != nil {
		b, _ := json.Marshal(res) // cannot fail: built of strings, numbers and valid JSON
		c.out.Send(wsout.NewFrame(websocket.MessageText, protocol.AppendResult(nil, cmd.ID, b)))
	}
	c.proto.replied = true
	return nil
}

// readPresence reads the presence of channel, or its counts: a
// protocol.PresenceResult or protocol.PresenceStatsResult.
func (n *Node) readPresence(channel string, stats bool) (any, *protocol.Error) {
	opts, _, ok := n.presenceOf(channel)
	if !ok {
		return nil, &protocol.Error{Code: protocol.CodeNoPresence, Message: fmt.Sprintf("channel %q keeps no presence: its namespace does not set presence: true", channel)}
	}
	if stats {
		st, ch, err := n.presence.store.PresenceStats(n.ctx, channel, opts)
		if err != nil {
			return nil, n.presenceError(channel, err)
		}
		n.presence.announce(channel, ch)
		return protocol.PresenceStatsResult{NumClients: st.Clients, NumUsers: st.Users}, nil
	}
	entries, ch, err := n.presence.store.Presence(n.ctx, channel, opts)
	if err != nil {
		return nil, n.presenceError(channel, err)
	}
	n.presence.announce(channel, ch)
	res := protocol.PresenceResult{Clients: make([]protocol.ClientInfo, 0, len(entries))}
	for _, e := range entries {
		res.Clients = append(res.Clients, clientInfo(e))
	}
	slices.SortFunc(res.Clients, func(a, b protocol.ClientInfo) int { return strings.Compare(a.Client, b.Client) })
	return res, nil
}

// presenceError is the error answer of a failed presence read: unavailable
// when the broker cannot be reached or the node is stopping (logged at
// debug level: an outage is the broker's to report), else internal.
func (n *Node) presenceError(channel string, err error) *protocol.Error {
	if errors.Is(err, pubsub.ErrUnavailable) || errors.Is(err, pubsub.ErrClosed) || errors.Is(err, context.Canceled) {
		n.log.Debug("presence read failed", "channel", channel, "err", err)
		return &protocol.Error{Code: protocol.CodeUnavailable, Message: "the broker is unavailable, try again later"}
	}
	n.log.Error("presence read failed", "channel", channel, "err", err)
	return &protocol.Error{Code: protocol.CodeInternal, Message: "internal error"}
}
