package pubsub

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// Memory is the embedded broker of a single node: it delivers every message
// inside the process, with no backend. The zero value is not usable; call
// NewMemory.
//
// Publish calls the channel's handlers on the publisher's goroutine, so
// messages of one publisher arrive in order.
type Memory struct {
	mu       sync.RWMutex
	closed   bool
	channels map[string]*memChannel
}

type memChannel struct {
	subs []*memSub
}

type memSub struct{ h Handler }

// NewMemory returns an empty in-memory broker.
func NewMemory() *Memory {
	return &Memory{channels: make(map[string]*memChannel)}
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

// Close stops all delivery; later calls return ErrClosed.
func (b *Memory) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.channels = nil
	return nil
}
