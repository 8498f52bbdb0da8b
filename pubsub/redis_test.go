package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

func redisConfig(r *testenv.Redis) pubsub.RedisConfig {
	return pubsub.RedisConfig{URL: r.URL(), Prefix: "relay:", Subscribers: 2, Pipelines: 2, Timeout: 3 * time.Second}
}

func newRedis(t testing.TB, cfg pubsub.RedisConfig) *pubsub.Redis {
	t.Helper()
	b, err := pubsub.NewRedis(cfg, nil)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestRedis(t *testing.T) {
	r := testenv.StartRedis(t)
	pubsubtest.Run(t, func(t *testing.T) pubsub.Broker { return newRedis(t, redisConfig(r)) })
}

func TestRedisAcrossNodes(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := newRedis(t, redisConfig(r)), newRedis(t, redisConfig(r))
	ra, rb := pubsubtest.NewRecorder(), pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, a, "x", ra.Handle)
	pubsubtest.Subscribe(t, b, "x", rb.Handle)
	pubsubtest.Publish(t, a, "x", "from a")
	pubsubtest.Publish(t, b, "x", "from b")
	for name, rec := range map[string]*pubsubtest.Recorder{"a": ra, "b": rb} {
		msgs := rec.WaitN(t, 2)
		if string(msgs[0].Payload) != "from a" || string(msgs[1].Payload) != "from b" {
			t.Errorf("node %s received %q, %q; want from a, from b", name, msgs[0].Payload, msgs[1].Payload)
		}
	}
}

// TestRedisOneSubscriptionPerChannel proves the node holds one Redis
// subscription per channel with local interest, and none once the last
// local handler is gone.
func TestRedisOneSubscriptionPerChannel(t *testing.T) {
	r := testenv.StartRedis(t)
	b := newRedis(t, redisConfig(r))
	stops := make([]func(), 0, 3)
	for range 3 {
		stops = append(stops, pubsubtest.Subscribe(t, b, "counted", func(pubsub.Message) {}))
	}
	if got := r.NumSub(t, "relay:counted", "relay:other")["relay:counted"]; got != 1 {
		t.Fatalf("NUMSUB relay:counted = %d with 3 local handlers, want 1", got)
	}
	if got := r.NumSub(t, "relay:other")["relay:other"]; got != 0 {
		t.Fatalf("NUMSUB relay:other = %d without local interest, want 0", got)
	}
	for _, stop := range stops {
		stop()
	}
	// UNSUBSCRIBE has no reply to await from here; Redis state is polled.
	testenv.WaitFor(t, 10*time.Second, "NUMSUB relay:counted to drop to 0", func() bool {
		return r.NumSub(t, "relay:counted")["relay:counted"] == 0
	})
}

func TestRedisPlainPublish(t *testing.T) {
	r := testenv.StartRedis(t)
	b := newRedis(t, redisConfig(r))
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "plain", rec.Handle)
	if err := r.Client(t).Publish(context.Background(), "relay:plain", "hello").Err(); err != nil {
		t.Fatal(err)
	}
	m := rec.WaitN(t, 1)[0]
	if string(m.Payload) != "hello" || m.Binary || m.Origin != "" {
		t.Errorf("plain PUBLISH delivered as %+v, want text hello with no origin", m)
	}
}

// TestRedisRestart restarts redis-server under subscribed brokers: every
// channel is subscribed again without help, and what is published after
// Redis returns is delivered.
func TestRedisRestart(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := newRedis(t, redisConfig(r)), newRedis(t, redisConfig(r))
	channels := []string{"r1", "r2", "r3", "r4"}
	recs := map[string]*pubsubtest.Recorder{}
	for _, ch := range channels {
		recs[ch] = pubsubtest.NewRecorder()
		pubsubtest.Subscribe(t, b, ch, recs[ch].Handle)
	}
	r.Stop()
	if err := a.Publish(context.Background(), "r1", pubsub.Message{Payload: []byte("lost")}); !errors.Is(err, pubsub.ErrUnavailable) {
		t.Fatalf("Publish with Redis down = %v, want ErrUnavailable", err)
	}
	r.Start()
	// The brokers reconnect by themselves; wait until Redis has them back.
	testenv.WaitFor(t, 20*time.Second, "every channel subscribed again", func() bool {
		for _, n := range r.NumSub(t, "relay:r1", "relay:r2", "relay:r3", "relay:r4") {
			if n != 1 {
				return false
			}
		}
		return true
	})
	for _, ch := range channels {
		pubsubtest.Publish(t, a, ch, "after "+ch)
	}
	for _, ch := range channels {
		if got := string(recs[ch].WaitN(t, 1)[0].Payload); got != "after "+ch {
			t.Errorf("%s received %q, want %q", ch, got, "after "+ch)
		}
	}
}

func TestRedisSubscribeWhileDown(t *testing.T) {
	r := testenv.StartRedis(t)
	b := newRedis(t, redisConfig(r))
	r.Stop()
	_, err := b.Subscribe(context.Background(), "down", func(pubsub.Message) {})
	if !errors.Is(err, pubsub.ErrUnavailable) {
		t.Fatalf("Subscribe with Redis down = %v, want ErrUnavailable", err)
	}
	r.Start()
	testenv.WaitFor(t, 20*time.Second, "Redis reachable again", func() bool { return b.Ping(context.Background()) == nil })
	// The failed channel is not subscribed behind our back.
	if got := r.NumSub(t, "relay:down")["relay:down"]; got != 0 {
		t.Errorf("NUMSUB of the channel whose Subscribe failed = %d, want 0", got)
	}
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "down", rec.Handle)
	pubsubtest.Publish(t, b, "down", "up")
	rec.WaitN(t, 1)
}

func TestRedisConfigErrors(t *testing.T) {
	for _, cfg := range []pubsub.RedisConfig{
		{URL: "http://x", Subscribers: 1, Pipelines: 1, Timeout: time.Second},
		{URL: "redis://x", Subscribers: 0, Pipelines: 1, Timeout: time.Second},
		{URL: "redis://x", Subscribers: 1, Pipelines: 65, Timeout: time.Second},
		{URL: "redis://x", Subscribers: 1, Pipelines: 1},
	} {
		if _, err := pubsub.NewRedis(cfg, nil); err == nil {
			t.Errorf("NewRedis(%+v) = nil error", cfg)
		}
	}
}

// BenchmarkRedisPublish measures publishes per second with 64 concurrent
// publishers against a real redis-server: pipelining lets them share round
// trips.
func BenchmarkRedisPublish(b *testing.B) {
	r := testenv.StartRedis(b)
	br := newRedis(b, redisConfig(r))
	const publishers = 64
	m := pubsub.Message{Origin: "bench", Payload: make([]byte, 128)}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	per := b.N/publishers + 1
	for range publishers {
		wg.Go(func() {
			for range per {
				if err := br.Publish(context.Background(), "bench", m); err != nil {
					panic(fmt.Sprint(err))
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(per*publishers)/time.Since(start).Seconds(), "publishes/s")
}
