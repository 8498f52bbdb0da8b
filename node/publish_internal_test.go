package node

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

// TestRawPublishAfterFailure: once the broker reported a raw-mode message
// of a connection as failed (PublishFailed), the connection is closing with
// 1013 and what it sends next is not published, neither later nor by
// waiting for Redis (PROTOCOL.md, "Ordering and delivery").
func TestRawPublishAfterFailure(t *testing.T) {
	r := testenv.StartRedis(t)
	b, err := pubsubtest.RunRedis(t, pubsub.RedisConfig{URL: r.URL(), Prefix: "relay:", Subscribers: 1, Pipelines: 1, Timeout: 3 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{
		Addr: "127.0.0.1:0", MaxMessageBytes: 1 << 16, QueueMessages: 64, QueueBytes: 1 << 20,
		WriteTimeout: 10 * time.Second, WriteDelay: time.Millisecond, PingInterval: time.Minute, PongTimeout: time.Minute,
	}, b, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{n: n, id: 1, mode: modeRaw, channel: "x"}
	c.init(n, wsout.NewFlusher(0))
	m := pubsub.Message{Origin: n.id, Conn: c.id, Payload: []byte("first")}
	if err := n.publishRaw(c, m); err != nil {
		t.Fatalf("publishRaw before any failure: %v", err)
	}
	c.PublishFailed("x", pubsub.ErrOutcomeUnknown)
	if cause := c.out.Cause(); !errors.Is(cause, errBrokerDown) {
		t.Errorf("connection closing for %v after PublishFailed, want %v", cause, errBrokerDown)
	}
	before := b.Stats()
	m.Payload = []byte("next")
	if err := n.publishRaw(c, m); !errors.Is(err, errEarlierFailed) {
		t.Errorf("publishRaw after a failure = %v, want %v", err, errEarlierFailed)
	}
	if after := b.Stats(); after.Pipelines != before.Pipelines {
		t.Errorf("a round trip to Redis after the failure: Stats %+v, then %+v", before, after)
	}
}
