package pubsub

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Message is one message on a channel.
//
// A Message is immutable once published: the broker and every handler share
// its Payload and must not modify it.
type Message struct {
	// Origin is the ID of the node that published the message, empty for a
	// message that did not come from a Relay node (a plain PUBLISH).
	Origin string
	// Conn identifies the publishing connection on its origin node, so that
	// the origin can leave the sender out of the delivery; 0 for none.
	Conn uint64
	// Binary is true for a binary WebSocket message, false for text.
	Binary bool
	// Time is when the origin node accepted the message, in Unix
	// nanoseconds; 0 when unknown.
	Time int64
	// Payload is the message body, delivered unchanged.
	Payload []byte
	// Offset is the message's place in its channel's history, set by the
	// broker on delivery of a message published with history
	// (Historian.PublishHistory); 0 for a message without.
	Offset uint64
	// Epoch names the channel's history that Offset counts in; empty when
	// Offset is 0.
	Epoch string
	// Gap marks an event that carries no message: the broker's
	// subscription of the channel was lost and is live again, and messages
	// published in between may never have reached the handler. Only Gap is
	// set. A handler of a channel with history recovers what it missed
	// from the history (Historian.History); others tell their subscribers.
	Gap bool
}

// Handler receives the messages of a subscription. It runs on a goroutine of
// the broker, must not block and must not call back into the broker.
type Handler func(Message)

// Broker moves messages between nodes. It is safe for concurrent use.
//
// Ordering: messages published to one channel by one goroutine, each Publish
// returning before the next starts, reach every handler of that channel in the
// order published. Delivery: every handler subscribed (Subscribe returned) on
// any node connected to the same backend before a Publish starts receives the
// message once, unless the broker loses its backend in between.
type Broker interface {
	// Publish returns once the broker holds m: after it returns nil, m is on
	// its way to every subscriber. It takes ownership of m.Payload.
	// It returns an error wrapping ErrUnavailable when the backend cannot
	// take the message (m was not published), ErrOutcomeUnknown when m may
	// or may not have been published (the backend's answer did not come,
	// or ctx ended while m was on its way), and ErrClosed after Close.
	Publish(ctx context.Context, channel string, m Message) error

	// Subscribe registers h for the messages of channel and returns once
	// the subscription is live upstream. stop removes h; it is idempotent,
	// does not block on the network, and h is not called after it returns:
	// it waits for a call of h in progress, so h must not call it.
	Subscribe(ctx context.Context, channel string, h Handler) (stop func(), err error)

	// Close stops delivery and releases the broker's connections.
	Close() error
}

// Position is where a channel's history stands.
type Position struct {
	// Offset is the offset of the last message published to the channel:
	// offsets start at 1 and grow by 1 per message; 0 when none was.
	Offset uint64
	// Epoch names one unbroken history of the channel. It changes when the
	// history is lost (it expired, or Redis lost its data): offsets of an
	// older epoch mean nothing in the new one.
	Epoch string
}

// HistoryOptions say how much of a channel's history the broker keeps.
type HistoryOptions struct {
	// Size is how many of the latest messages are kept, at least: Redis
	// trims a stream approximately (MAXLEN ~), so it may keep up to about
	// a hundred more. It must be positive.
	Size int
	// TTL is how long the history is kept after the last publish; it then
	// expires, and the next publish starts a new epoch. It must be at
	// least a millisecond.
	TTL time.Duration
}

// Historian is implemented by brokers that keep the history of channels:
// both Memory and Redis do. Which channels keep history, and how much, is
// the caller's choice, given with each call; a channel should be published
// to either always with history or never.
//
// Ordering and delivery are those of Broker; in addition, every message
// published with history is delivered with its Offset and Epoch, and on
// one channel offsets reach each handler in increasing order.
type Historian interface {
	// PublishHistory is Publish for a channel that keeps history: in one
	// atomic step it appends m to the channel's history, trims it to
	// opts, renews its expiry and publishes m with its offset. It returns
	// the position of m. A channel without history, or whose history was
	// lost, starts a new epoch at offset 1.
	PublishHistory(ctx context.Context, channel string, m Message, opts HistoryOptions) (Position, error)

	// History returns the channel's position and up to limit of its
	// messages with an offset above since, oldest first, each with Offset
	// and Epoch set. A limit of 0 reads only the position. The messages
	// reach back to since+1 only if the history still holds them: the
	// caller compares the first offset. A channel with no history yet gets
	// an epoch (at offset 0, kept for opts.TTL), so that a subscriber can
	// tell later whether it lost it.
	History(ctx context.Context, channel string, opts HistoryOptions, since uint64, limit int) ([]Message, Position, error)
}

// HealthChecker is implemented by brokers that depend on a backend.
type HealthChecker interface {
	// Health returns nil when the broker can take publishes and deliver
	// messages, or an error saying why not. It does not block on the network.
	Health() error
}

var (
	// ErrClosed is returned by a broker's methods after Close.
	ErrClosed = errors.New("broker closed")
	// ErrUnavailable means the backend (Redis) cannot be reached now; the
	// same call may succeed later.
	ErrUnavailable = errors.New("broker unavailable")
	// ErrOutcomeUnknown means a publish may or may not have taken effect:
	// it may have reached the backend before the connection failed, or
	// before the wait for its answer ended. A retry may duplicate it.
	ErrOutcomeUnknown = errors.New("publish outcome unknown")
)

// checkHistory reports invalid HistoryOptions.
func checkHistory(opts HistoryOptions) error {
	if opts.Size <= 0 || opts.TTL < time.Millisecond {
		return fmt.Errorf("history of %d messages for %v: want a positive size and a TTL of at least 1ms", opts.Size, opts.TTL)
	}
	return nil
}
