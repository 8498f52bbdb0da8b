package pubsub

import (
	"context"
	"errors"
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
	// take the message, and ErrClosed after Close.
	Publish(ctx context.Context, channel string, m Message) error

	// Subscribe registers h for the messages of channel and returns once
	// the subscription is live upstream. stop removes h; it is idempotent,
	// does not block on the network, and h is not called after it returns:
	// it waits for a call of h in progress, so h must not call it.
	Subscribe(ctx context.Context, channel string, h Handler) (stop func(), err error)

	// Close stops delivery and releases the broker's connections.
	Close() error
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
)
