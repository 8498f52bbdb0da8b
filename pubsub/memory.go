package pubsub

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Memory is the embedded broker of a single node: it delivers every message
// inside the process, with no backend. The zero value is not usable; call
// NewMemory.
//
// Publish calls the channel's handlers on the publisher's goroutine, so
// messages of one publisher arrive in order.
//
// It keeps history (Historian) in memory, for a channel as long as its TTL
// after the last publish; an expired history is dropped at the next access
// and the channel starts a new epoch. It keeps presence (PresenceKeeper)
// in memory too.
type Memory struct {
	// histMu guards hist and serialises the publishes with history, so
	// that offsets reach handlers in order. Lock order: histMu, then mu.
	histMu sync.Mutex
	hist   map[string]*memHistory
	epochs atomic.Uint64 // names epochs: unique within the process

	// once records idempotency keys (idempotency.go). Lock order: once.mu,
	// then histMu.
	once memOnce
	// presMu guards pres, the presence of channels (presence_memory.go).
	// Lock order: presMu, then mu.
	presMu sync.Mutex
	pres   map[string]*memPresence

	mu       sync.RWMutex
	closed   bool
	channels map[string]*memChannel
}

type memHistory struct {
	pos     Position
	msgs    []Message // the latest, oldest first, at most Size
	expires time.Time
}

type memChannel struct {
	subs []*memSub
}

type memSub struct{ h Handler }

// NewMemory returns an empty in-memory broker.
func NewMemory() *Memory {
	return &Memory{channels: make(map[string]*memChannel), hist: make(map[string]*memHistory)}
}

// memEpochBase tells the epochs of one process from those of another.
var memEpochBase = strconv.FormatInt(time.Now().UnixNano(), 36)

// history returns channel's history, started anew when there is none or it
// expired; histMu is held.
func (b *Memory) history(channel string, opts HistoryOptions, now time.Time) *memHistory {
	h := b.hist[channel]
	if h == nil || now.After(h.expires) {
		h = &memHistory{
			pos:     Position{Epoch: memEpochBase + "-" + strconv.FormatUint(b.epochs.Add(1), 36)},
			expires: now.Add(opts.TTL),
		}
		b.hist[channel] = h
	}
	return h
}

// PublishHistory implements Historian: it appends m to the channel's
// history and delivers it, with its offset, before it returns.
func (b *Memory) PublishHistory(ctx context.Context, channel string, m Message, opts HistoryOptions) (Position, error) {
	if err := checkHistory(opts); err != nil {
		return Position{}, fmt.Errorf("publish %q: %w", channel, err)
	}
	b.histMu.Lock()
	defer b.histMu.Unlock()
	b.mu.RLock()
	closed := b.closed
	b.mu.RUnlock()
	if closed {
		return Position{}, ErrClosed
	}
	now := time.Now()
	h := b.history(channel, opts, now)
	h.pos.Offset++
	h.expires = now.Add(opts.TTL)
	m.Offset, m.Epoch = h.pos.Offset, h.pos.Epoch
	if len(h.msgs) >= opts.Size {
		h.msgs = slices.Delete(h.msgs, 0, len(h.msgs)-opts.Size+1)
	}
	h.msgs = append(h.msgs, m)
	pos := h.pos
	return pos, b.Publish(ctx, channel, m)
}

// History implements Historian.
func (b *Memory) History(ctx context.Context, channel string, opts HistoryOptions, since uint64, limit int) ([]Message, Position, error) {
	if err := checkHistory(opts); err != nil {
		return nil, Position{}, fmt.Errorf("history %q: %w", channel, err)
	}
	b.histMu.Lock()
	defer b.histMu.Unlock()
	b.mu.RLock()
	closed := b.closed
	b.mu.RUnlock()
	if closed {
		return nil, Position{}, ErrClosed
	}
	h := b.history(channel, opts, time.Now())
	var msgs []Message
	for _, m := range h.msgs {
		if len(msgs) >= limit {
			break
		}
		if m.Offset > since {
			msgs = append(msgs, m)
		}
	}
	return msgs, h.pos, nil
}

// Publish delivers m to every handler of channel before it returns.
func (b *Memory) Publish(ctx context.Context, channel string, m Message) error {
	// Handlers run under the read lock, so that once stop returns (it
	// takes the write lock) its handler is never called again.
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return ErrClosed
	}
	if c := b.channels[channel]; c != nil {
		for _, s := range c.subs {
			s.h(m)
		}
	}
	return nil
}

// Subscribe registers h for channel; it is live when Subscribe returns.
func (b *Memory) Subscribe(ctx context.Context, channel string, h Handler) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("subscribe %q: %w", channel, err)
	}
	s := &memSub{h: h}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, ErrClosed
	}
	c := b.channels[channel]
	if c == nil {
		c = &memChannel{}
		b.channels[channel] = c
	}
	c.subs = append(c.subs, s)
	var once sync.Once
	return func() { once.Do(func() { b.unsubscribe(channel, s) }) }, nil
}

func (b *Memory) unsubscribe(channel string, s *memSub) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.channels[channel]
	if c == nil {
		return
	}
	c.subs = slices.DeleteFunc(c.subs, func(o *memSub) bool { return o == s })
	if len(c.subs) == 0 {
		delete(b.channels, channel)
	}
}

// Channels reports how many channels have at least one handler.
func (b *Memory) Channels() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.channels)
}

// Close stops all delivery and drops the history; later calls return
// ErrClosed.
func (b *Memory) Close() error {
	b.histMu.Lock()
	defer b.histMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.channels = nil
	b.hist = nil
	return nil
}
