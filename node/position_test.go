package node_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
)

// TestPositionRepair makes a node miss messages without any broker gap:
// entries written into a channel's stream, and its offset raised, straight
// in Redis, without a PUBLISH. The position check finds each miss and the
// node repairs it: subscribers in both modes get the missed messages in
// order and then the live ones, once each; when the stream moves to an
// epoch the node never saw a message of, they are told of a gap.
func TestPositionRepair(t *testing.T) {
	r := testenv.StartRedis(t)
	nodes := nodetest.ClusterWith(t, r.URL(), 1, nodetest.Options{Config: func(cfg *node.Config) {
		withHistory(100)(cfg)
		cfg.HistoryCheckInterval = 20 * time.Millisecond
	}})
	n := nodes[0]
	rc := r.Client(t)
	ctx := context.Background()
	sub := dialProto(t, n.WS+"/ws")
	sub.subscribeAt(1, "pos")
	raw := nodetest.Dial(t, n.WS+"/ws/pos", nil)
	pub := dialProto(t, n.WS+"/ws")
	pub.do(`{"id":1,"cmd":"publish","channel":"pos","data":1}`, `{"id":1,"result":{}}`)
	sub.expect(`{"channel":"pos","offset":1,"data":1}`)
	if got := nodetest.ReadText(t, raw); got != "1" {
		t.Fatalf("raw subscriber read %q, want 1", got)
	}

	// Offsets 2 and 3 go into the stream only.
	for _, o := range []string{"2", "3"} {
		if err := rc.XAdd(ctx, &redis.XAddArgs{Stream: "{relay:pos}:s", ID: o + "-0", Values: []string{"d", o}}).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rc.HIncrBy(ctx, "{relay:pos}:h", "o", 1).Err(); err != nil {
			t.Fatal(err)
		}
	}
	sub.expect(`{"channel":"pos","offset":2,"data":2}`)
	sub.expect(`{"channel":"pos","offset":3,"data":3}`)
	for _, want := range []string{"2", "3"} {
		if got := nodetest.ReadText(t, raw); got != want {
			t.Fatalf("raw subscriber read %q, want %q", got, want)
		}
	}
	pub.do(`{"id":2,"cmd":"publish","channel":"pos","data":4}`, `{"id":2,"result":{}}`)
	sub.expect(`{"channel":"pos","offset":4,"data":4}`)
	if got := nodetest.ReadText(t, raw); got != "4" {
		t.Fatalf("raw subscriber read %q, want 4", got)
	}
	if got := testenv.Metrics(t, n.URL)["relay_history_position_repairs_total"]; got != 1 {
		t.Errorf("relay_history_position_repairs_total = %v, want 1", got)
	}

	// A new epoch (the stream lost and started again), of which no
	// message reached the node.
	if err := rc.Del(ctx, "{relay:pos}:s").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rc.HSet(ctx, "{relay:pos}:h", "e", "elsewhere", "o", 1).Err(); err != nil {
		t.Fatal(err)
	}
	sub.expect(`{"gap":{"channel":"pos"}}`)
	if code, reason := nodetest.ReadClose(t, raw); code != 4005 {
		t.Errorf("raw subscriber closed with %d %q, want 4005", code, reason)
	}
	pub.do(`{"id":3,"cmd":"publish","channel":"pos","data":5}`, `{"id":3,"result":{}}`)
	sub.expect(`{"channel":"pos","offset":2,"data":5}`)
}
