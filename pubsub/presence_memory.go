package pubsub

import (
	"container/heap"
	"context"
	"fmt"
	"time"
)

// Presence in memory: the model of presence_redis.go, with a heap of
// expiries in place of the sorted set. Memory.presMu guards it.

type memPresence struct {
	entries map[string]*memPresenceEntry // by client
	users   map[string]int               // entries per non-empty user
	held    map[string]time.Time         // users in the leave grace, until
	expiry  expiryHeap                   // one item per add or renewal
}

type memPresenceEntry struct {
	e       PresenceEntry
	expires time.Time
}

// expiryHeap orders renewals by expiry. A renewal leaves the older item
// in the heap: popped, it no longer matches its entry's expiry and is
// dropped, so the heap holds about Lease/interval items per entry.
type expiryHeap []expiryItem

type expiryItem struct {
	at     time.Time
	client string
}

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryItem)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// presence returns channel's presence, dropping what expired by now into
// ch.Left; presMu is held.
func (b *Memory) presence(channel string, opts PresenceOptions, now time.Time, ch *PresenceChange) *memPresence {
	if b.pres == nil {
		b.pres = make(map[string]*memPresence)
	}
	p := b.pres[channel]
	if p == nil {
		p = &memPresence{entries: make(map[string]*memPresenceEntry), users: make(map[string]int), held: make(map[string]time.Time)}
		b.pres[channel] = p
	}
	for len(p.expiry) > 0 && !p.expiry[0].at.After(now) {
		it := heap.Pop(&p.expiry).(expiryItem)
		if e := p.entries[it.client]; e != nil && e.expires.Equal(it.at) {
			p.remove(it.client, opts, now, ch)
		}
	}
	for u, until := range p.held {
		if !until.After(now) {
			delete(p.held, u)
			ch.Left = append(ch.Left, PresenceLeave{User: u})
		}
	}
	return p
}

// remove drops client's entry: its user leaves, or is held in the grace.
func (p *memPresence) remove(client string, opts PresenceOptions, now time.Time, ch *PresenceChange) {
	e := p.entries[client]
	if e == nil {
		return
	}
	delete(p.entries, client)
	p.gone(e.e, opts, now, ch)
}

func (p *memPresence) gone(e PresenceEntry, opts PresenceOptions, now time.Time, ch *PresenceChange) {
	if e.User == "" {
		ch.Left = append(ch.Left, PresenceLeave{Client: e.Client})
		return
	}
	if p.users[e.User]--; p.users[e.User] > 0 {
		return
	}
	delete(p.users, e.User)
	if opts.Grace > 0 {
		p.held[e.User] = now.Add(opts.Grace)
	} else {
		ch.Left = append(ch.Left, PresenceLeave{User: e.User})
	}
}

// tidy forgets channel's presence when nothing is left of it.
func (b *Memory) tidy(channel string, p *memPresence) {
	if len(p.entries) == 0 && len(p.held) == 0 {
		delete(b.pres, channel)
	}
}

func (b *Memory) presenceClosed() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.closed
}

// AddPresence implements PresenceKeeper.
func (b *Memory) AddPresence(ctx context.Context, updates []PresenceUpdate) ([]PresenceChange, error) {
	for _, u := range updates {
		if err := checkPresence(u.Opts); err != nil {
			return nil, fmt.Errorf("presence %q: %w", u.Channel, err)
		}
	}
	b.presMu.Lock()
	defer b.presMu.Unlock()
	if b.presenceClosed() {
		return nil, ErrClosed
	}
	now := time.Now()
	changes := make([]PresenceChange, len(updates))
	for i, u := range updates {
		ch := &changes[i]
		p := b.presence(u.Channel, u.Opts, now, ch)
		for _, e := range u.Entries {
			e.Info = append([]byte(nil), e.Info...)
			exp := now.Add(u.Opts.Lease)
			heap.Push(&p.expiry, expiryItem{at: exp, client: e.Client})
			old := p.entries[e.Client]
			p.entries[e.Client] = &memPresenceEntry{e: e, expires: exp}
			if old != nil && old.e.User == e.User {
				continue
			}
			if old != nil {
				p.gone(old.e, u.Opts, now, ch)
			}
			if e.User == "" {
				ch.Joined = append(ch.Joined, e)
				continue
			}
			p.users[e.User]++
			if _, held := p.held[e.User]; held {
				delete(p.held, e.User)
			} else if p.users[e.User] == 1 {
				ch.Joined = append(ch.Joined, e)
			}
		}
		b.tidy(u.Channel, p)
	}
	return changes, nil
}

// RemovePresence implements PresenceKeeper.
func (b *Memory) RemovePresence(ctx context.Context, channel string, clients []string, opts PresenceOptions) (PresenceChange, error) {
	var ch PresenceChange
	if err := checkPresence(opts); err != nil {
		return ch, fmt.Errorf("presence %q: %w", channel, err)
	}
	b.presMu.Lock()
	defer b.presMu.Unlock()
	if b.presenceClosed() {
		return ch, ErrClosed
	}
	now := time.Now()
	p := b.presence(channel, opts, now, &ch)
	for _, c := range clients {
		p.remove(c, opts, now, &ch)
	}
	b.tidy(channel, p)
	return ch, nil
}

// Presence implements PresenceKeeper.
func (b *Memory) Presence(ctx context.Context, channel string, opts PresenceOptions) ([]PresenceEntry, PresenceChange, error) {
	var ch PresenceChange
	if err := checkPresence(opts); err != nil {
		return nil, ch, fmt.Errorf("presence %q: %w", channel, err)
	}
	b.presMu.Lock()
	defer b.presMu.Unlock()
	if b.presenceClosed() {
		return nil, ch, ErrClosed
	}
	p := b.presence(channel, opts, time.Now(), &ch)
	entries := make([]PresenceEntry, 0, len(p.entries))
	for _, e := range p.entries {
		entries = append(entries, e.e)
	}
	b.tidy(channel, p)
	return entries, ch, nil
}

// PresenceStats implements PresenceKeeper.
func (b *Memory) PresenceStats(ctx context.Context, channel string, opts PresenceOptions) (PresenceStats, PresenceChange, error) {
	var ch PresenceChange
	if err := checkPresence(opts); err != nil {
		return PresenceStats{}, ch, fmt.Errorf("presence %q: %w", channel, err)
	}
	b.presMu.Lock()
	defer b.presMu.Unlock()
	if b.presenceClosed() {
		return PresenceStats{}, ch, ErrClosed
	}
	p := b.presence(channel, opts, time.Now(), &ch)
	st := PresenceStats{Clients: len(p.entries), Users: len(p.users)}
	b.tidy(channel, p)
	return st, ch, nil
}
