package pubsub_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

func redisConfig(r *testenv.Redis) pubsub.RedisConfig {
	return pubsub.RedisConfig{URL: r.URL(), Prefix: "relay:", Subscribers: 2, Pipelines: 2, Timeout: 3 * time.Second}
}

// probing shortens the probe period so that fault tests see probes act.
// The timeout leaves a loaded machine running -race ample margin: a probe
// that is merely slow must not tear a healthy connection down mid-test.
func probing(cfg pubsub.RedisConfig) pubsub.RedisConfig {
	cfg.ProbeInterval = 100 * time.Millisecond
	cfg.ProbeTimeout = time.Second
	return cfg
}

func newRedis(t testing.TB, cfg pubsub.RedisConfig) *pubsub.Redis {
	t.Helper()
	return newRedisLog(t, cfg, nil)
}

func newRedisLog(t testing.TB, cfg pubsub.RedisConfig, log *slog.Logger) *pubsub.Redis {
	t.Helper()
	b, err := pubsubtest.RunRedis(t, cfg, log)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
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
	a, b := newRedis(t, redisConfig(r)), newRedis(t, probing(redisConfig(r)))
	channels := []string{"r1", "r2", "r3", "r4"}
	recs := map[string]*pubsubtest.Recorder{}
	for _, ch := range channels {
		recs[ch] = pubsubtest.NewRecorder()
		pubsubtest.Subscribe(t, b, ch, recs[ch].Handle)
	}
	// Health reads cached state: there is no event to await, so poll.
	testenv.WaitFor(t, 20*time.Second, "b healthy", func() bool { return b.Health() == nil })
	before := b.Stats()
	r.Stop()
	if err := a.Publish(context.Background(), "r1", pubsub.Message{Payload: []byte("lost")}); !errors.Is(err, pubsub.ErrUnavailable) {
		t.Fatalf("Publish with Redis down = %v, want ErrUnavailable", err)
	}
	testenv.WaitFor(t, 20*time.Second, "b unhealthy with Redis down", func() bool { return b.Health() != nil })
	if err := b.Health(); !errors.Is(err, pubsub.ErrUnavailable) {
		t.Errorf("Health() with Redis down = %v, want ErrUnavailable", err)
	}
	r.Start()
	testenv.WaitFor(t, 20*time.Second, "b healthy again", func() bool { return b.Health() == nil })
	after := b.Stats()
	if after.Reconnects < before.Reconnects+2 {
		t.Errorf("Reconnects = %d after a restart under 2 subscriber connections, want at least %d", after.Reconnects, before.Reconnects+2)
	}
	if after.Resubscribes <= before.Resubscribes {
		t.Errorf("Resubscribes = %d after a restart, want more than %d", after.Resubscribes, before.Resubscribes)
	}
	// Health says every shard confirmed its channels; Redis agrees.
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

// TestRedisProbeTearsDownFrozenSubscriber freezes the broker's subscriber
// connections, as a stalled link would, without any error: the probes stop
// coming back, the broker tears the connections down, opens new ones and
// subscribes every channel again, and delivery resumes without a restart.
func TestRedisProbeTearsDownFrozenSubscriber(t *testing.T) {
	r := testenv.StartRedis(t)
	p := testenv.StartProxy(t, r.Addr())
	type gap struct {
		channels []string
		health   error
	}
	gaps := make(chan gap, 16)
	var self atomic.Pointer[pubsub.Redis]
	cfg := probing(redisConfig(r))
	cfg.URL = p.URL()
	cfg.Timeout = 20 * time.Second // a Subscribe below waits out a teardown
	var logs lockedBuffer
	b := newRedisLog(t, cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
	self.Store(b)
	pub := newRedis(t, redisConfig(r)) // straight to Redis

	channels := []string{"f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8"}
	recs := map[string]*pubsubtest.Recorder{}
	for _, ch := range channels {
		rec := pubsubtest.NewRecorder()
		recs[ch] = rec
		pubsubtest.Subscribe(t, b, ch, func(m pubsub.Message) {
			if !m.Gap {
				rec.Handle(m)
				return
			}
			// The shard is live again but no probe has proved it yet.
			gaps <- gap{[]string{ch}, self.Load().Health()}
		})
	}
	for _, ch := range channels {
		pubsubtest.Publish(t, pub, ch, "before")
	}
	for _, ch := range channels {
		recs[ch].WaitN(t, 1)
	}
	testenv.WaitFor(t, 20*time.Second, "healthy before the freeze", func() bool { return b.Health() == nil })
	before := b.Stats()

	for len(gaps) > 0 { // a slow machine may have missed a probe already
		<-gaps
	}
	if n := p.FreezeSubscribers(); n != cfg.Subscribers {
		t.Fatalf("FreezeSubscribers() = %d, want the broker's %d subscriber connections", n, cfg.Subscribers)
	}
	// A Subscribe on a frozen connection is confirmed by its replacement.
	late := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "late", late.Handle)
	// Each shard reports its gap once it resubscribed on a new connection.
	gapped := map[string]bool{}
	for len(gapped) < len(channels) {
		select {
		case g := <-gaps:
			if g.health == nil {
				t.Errorf("Health() = nil when shard of %q resubscribed, before a probe proved it", g.channels)
			}
			for _, ch := range g.channels {
				if !slices.Contains(channels, ch) {
					t.Errorf("gap reported for %q, which was never subscribed", ch)
				}
				gapped[ch] = true
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("gaps reported for %v after the freeze, want all of %q", gapped, channels)
		}
	}
	testenv.WaitFor(t, 20*time.Second, "healthy after the teardown", func() bool { return b.Health() == nil })
	after := b.Stats()
	for _, c := range []struct {
		name          string
		before, after uint64
	}{
		{"Teardowns", before.Teardowns, after.Teardowns},
		{"ProbeFailures", before.ProbeFailures, after.ProbeFailures},
		{"Reconnects", before.Reconnects, after.Reconnects},
		{"Resubscribes", before.Resubscribes, after.Resubscribes},
	} {
		if c.after < c.before+uint64(cfg.Subscribers) {
			t.Errorf("Stats().%s = %d after freezing %d connections, want at least %d", c.name, c.after, cfg.Subscribers, c.before+uint64(cfg.Subscribers))
		}
	}

	// Delivery resumes on the new connections, and no probe ever reached a
	// handler: each got exactly what was published to it.
	for _, ch := range append(channels, "late") {
		pubsubtest.Publish(t, pub, ch, "after")
	}
	if got := payloadsOf(late.WaitN(t, 1)); len(got) != 1 || got[0] != "after" {
		t.Errorf("late received %q, want [after]", got)
	}
	for _, ch := range channels {
		got := recs[ch].WaitN(t, 2)
		if len(got) != 2 || string(got[0].Payload) != "before" || string(got[1].Payload) != "after" {
			t.Errorf("%s received %d messages %q, want [before after]", ch, len(got), payloadsOf(got))
		}
	}
	out := logs.String()
	for _, want := range []string{
		`"level":"WARN","msg":"redis subscriber connection torn down","shard":`,
		`"level":"INFO","msg":"redis subscriber connection restored","shard":`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, "before") || strings.Contains(out, "after") {
		t.Errorf("logs carry a payload:\n%s", out)
	}
}

func TestRedisPublishErrors(t *testing.T) {
	r := testenv.StartRedis(t)
	b := newRedis(t, probing(redisConfig(r)))
	pubsubtest.Publish(t, b, "counted", "one")
	if s := b.Stats(); s.Published != 1 || s.PublishErrors != 0 || s.Pipelines < 1 {
		t.Errorf("after one publish, Stats() = %+v; want Published 1, PublishErrors 0, Pipelines >= 1", s)
	}
	r.Stop()
	if err := b.Publish(t.Context(), "counted", pubsub.Message{Payload: []byte("two")}); !errors.Is(err, pubsub.ErrUnavailable) {
		t.Fatalf("Publish with Redis down = %v, want ErrUnavailable", err)
	}
	if s := b.Stats(); s.Published != 1 || s.PublishErrors != 1 {
		t.Errorf("after a failed publish, Stats() = %+v; want Published 1, PublishErrors 1", s)
	}
	if err := b.Health(); !errors.Is(err, pubsub.ErrUnavailable) || !strings.Contains(err.Error(), "publish") {
		t.Errorf("Health() after a failed publish = %v, want ErrUnavailable naming the publish", err)
	}
	r.Start()
	testenv.WaitFor(t, 20*time.Second, "healthy with Redis back", func() bool { return b.Health() == nil })
	pubsubtest.Publish(t, b, "counted", "three")
	if s := b.Stats(); s.Published != 2 || s.PublishErrors != 1 {
		t.Errorf("after Redis returned, Stats() = %+v; want Published 2, PublishErrors 1", s)
	}
}

// TestRedisProbeChannels shows the probe channel of each shard in Redis,
// named after the configured Instance.
func TestRedisProbeChannels(t *testing.T) {
	r := testenv.StartRedis(t)
	cfg := redisConfig(r)
	cfg.Instance = "node-a"
	b := newRedis(t, cfg)
	testenv.WaitFor(t, 20*time.Second, "healthy", func() bool { return b.Health() == nil })
	want := []string{"relay:__relay_probe:node-a:0", "relay:__relay_probe:node-a:1"}
	for ch, n := range r.NumSub(t, want...) {
		if n != 1 {
			t.Errorf("NUMSUB %s = %d, want 1", ch, n)
		}
	}
	r.Stop()
	testenv.WaitFor(t, 20*time.Second, "unhealthy", func() bool { return b.Health() != nil })
	t.Logf("Health() with Redis down = %v", b.Health())
}

func TestRedisProbeChannelsReserved(t *testing.T) {
	r := testenv.StartRedis(t)
	b := newRedis(t, redisConfig(r))
	if _, err := b.Subscribe(t.Context(), "__relay_probe:x:0", func(pubsub.Message) {}); err == nil {
		t.Error("Subscribe to a probe channel succeeded, want an error")
	}
	if err := b.Publish(t.Context(), "__relay_probe:x:0", pubsub.Message{}); err == nil {
		t.Error("Publish to a probe channel succeeded, want an error")
	}
}

func TestRedisHealthAfterClose(t *testing.T) {
	r := testenv.StartRedis(t)
	b := newRedis(t, redisConfig(r))
	var _ pubsub.HealthChecker = b
	b.Close()
	if err := b.Health(); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Health() after Close = %v, want ErrClosed", err)
	}
}

func TestRedisProbeConfigErrors(t *testing.T) {
	base := pubsub.RedisConfig{URL: "redis://x", Subscribers: 1, Pipelines: 1, Timeout: time.Second}
	for _, tt := range []struct {
		interval, timeout time.Duration
		want              string
	}{
		{-time.Second, 0, "RELAY_REDIS_PROBE_INTERVAL"},
		{time.Millisecond, 0, "RELAY_REDIS_PROBE_INTERVAL"},
		{0, -time.Second, "RELAY_REDIS_PROBE_TIMEOUT"},
		{time.Second, time.Millisecond, "RELAY_REDIS_PROBE_TIMEOUT"},
	} {
		cfg := base
		cfg.ProbeInterval, cfg.ProbeTimeout = tt.interval, tt.timeout
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate() with ProbeInterval %v, ProbeTimeout %v = %v, want an error naming %s", tt.interval, tt.timeout, err, tt.want)
		}
	}
	if err := base.Validate(); err != nil {
		t.Errorf("Validate() with zero probe durations (the defaults) = %v", err)
	}
}

// lockedBuffer is a log destination safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func payloadsOf(msgs []pubsub.Message) []string {
	s := make([]string, len(msgs))
	for i, m := range msgs {
		s[i] = string(m.Payload)
	}
	return s
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

// BenchmarkRedisPublish measures publishes per second against a real
// redis-server, from one publisher (each publish alone, the shape of chat
// traffic: its cost is the hand-offs between goroutines) and from 64
// concurrent publishers (pipelining lets them share round trips).
func BenchmarkRedisPublish(b *testing.B) {
	r := testenv.StartRedis(b)
	for _, publishers := range []int{1, 64} {
		b.Run(fmt.Sprintf("publishers=%d", publishers), func(b *testing.B) {
			benchPublish(b, newRedis(b, redisConfig(r)), publishers)
		})
	}
}

// benchPublish publishes b.N messages of 128 bytes on br from publishers
// goroutines and reports publishes per second.
func benchPublish(b *testing.B, br *pubsub.Redis, publishers int) {
	m := pubsub.Message{Origin: "bench", Payload: make([]byte, 128)}
	benchPublishers(b, publishers, func(int) error { return br.Publish(context.Background(), "bench", m) }, nil)
}

// benchPublishers makes b.N publishes or a few more, spread over
// publishers goroutines, publish(i) making one on goroutine i, and reports
// publishes/s; settle, when not nil, runs before the clock stops, told how
// many were made.
func benchPublishers(b *testing.B, publishers int, publish func(i int) error, settle func(n int)) {
	per := b.N/publishers + 1
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range publishers {
		wg.Go(func() {
			for range per {
				if err := publish(i); err != nil {
					panic(fmt.Sprint(err))
				}
			}
		})
	}
	wg.Wait()
	if settle != nil {
		settle(per * publishers)
	}
	b.ReportMetric(float64(per*publishers)/time.Since(start).Seconds(), "publishes/s")
}

// TestRedisGoroutinesOwned proves that NewRedis starts no goroutine, that
// Run's goroutines are the ones goleak would report if they were left
// behind, and that Close stops every one of them before Run returns.
func TestRedisGoroutinesOwned(t *testing.T) {
	r := testenv.StartRedis(t)
	before := goleak.IgnoreCurrent()
	b, err := pubsub.NewRedis(redisConfig(r), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := goleak.Find(before); err != nil {
		t.Errorf("NewRedis started goroutines:\n%v", err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(context.Background()) }()
	rec := pubsubtest.NewRecorder()
	stop := pubsubtest.Subscribe(t, b, "owned", rec.Handle)
	pubsubtest.Publish(t, b, "owned", "m")
	rec.WaitN(t, 1)
	if err := goleak.Find(before); err == nil {
		t.Error("goleak.Find found no goroutine of a running broker: it would not catch a leak")
	}
	stop()
	b.Close()
	if err := <-done; err != nil {
		t.Errorf("Run() = %v after Close, want nil", err)
	}
	if err := goleak.Find(before); err != nil {
		t.Errorf("goroutines left after Close and Run returned:\n%v", err)
	}
}

// TestRedisRunEndsWithContext stops a broker by ending Run's context: its
// methods then answer ErrClosed.
func TestRedisRunEndsWithContext(t *testing.T) {
	r := testenv.StartRedis(t)
	b, err := pubsub.NewRedis(redisConfig(r), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	pubsubtest.Subscribe(t, b, "ctx", func(pubsub.Message) {})
	if err := b.Run(ctx); err == nil {
		t.Error("a second Run() = nil, want an error")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run() = %v after its ctx ended, want nil", err)
	}
	if err := b.Publish(t.Context(), "ctx", pubsub.Message{}); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Publish after Run's ctx ended = %v, want ErrClosed", err)
	}
}

// TestRedisStopWhileHandlerRuns holds a handler of one channel while a
// handler of another channel on the same subscriber connection stops: stop
// needs neither the connection nor the running handler, and the stopped
// handler is not called again.
func TestRedisStopWhileHandlerRuns(t *testing.T) {
	r := testenv.StartRedis(t)
	cfg := redisConfig(r)
	cfg.Subscribers = 1 // both channels on one connection
	b := newRedis(t, cfg)
	other := pubsubtest.NewRecorder()
	stopOther := pubsubtest.Subscribe(t, b, "other", other.Handle)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	pubsubtest.Subscribe(t, b, "held", func(pubsub.Message) {
		once.Do(func() {
			close(entered)
			<-release
		})
	})
	pubsubtest.Publish(t, b, "held", "hold")
	<-entered
	stopped := make(chan struct{})
	go func() {
		stopOther()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second): // a failure bound, not a measure
		close(release)
		t.Fatal("stop of one channel waited for a handler of another")
	}
	if err := b.Health(); err != nil {
		t.Errorf("Health() while a handler runs = %v", err)
	}
	close(release)
	pubsubtest.Publish(t, b, "other", "after stop")
	// The marker, published after "other" on the same connection, proves
	// absence: once it arrived, a message to "other" would have too.
	marker := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "other2", marker.Handle)
	pubsubtest.Publish(t, b, "other2", "marker")
	marker.WaitN(t, 1)
	if got := other.Messages(); len(got) != 0 {
		t.Errorf("stopped handler received %q", payloadsOf(got))
	}
}

// TestRedisMetrics registers the broker as a Prometheus collector, as
// cmd/relay does: its counters appear under the names the dashboard and
// docs/OPERATIONS.md use, and follow Stats.
func TestRedisMetrics(t *testing.T) {
	r := testenv.StartRedis(t)
	b := newRedis(t, redisConfig(r))
	reg := prometheus.NewRegistry()
	if err := reg.Register(b); err != nil {
		t.Fatalf("Register(broker) = %v", err)
	}
	pubsubtest.Publish(t, b, "metered", "one")
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	shards := 0
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "relay_broker_shard_") {
			if f.GetType() != dto.MetricType_GAUGE {
				t.Errorf("%s is a %v, want a gauge", f.GetName(), f.GetType())
			}
			shards += len(f.GetMetric())
			continue
		}
		if f.GetType() != dto.MetricType_COUNTER {
			t.Errorf("%s is a %v, want a counter", f.GetName(), f.GetType())
		}
		got[f.GetName()] = f.GetMetric()[0].GetCounter().GetValue()
	}
	s := b.Stats()
	for name, want := range map[string]uint64{
		"relay_broker_reconnects_total":     s.Reconnects,
		"relay_broker_resubscribes_total":   s.Resubscribes,
		"relay_broker_probe_failures_total": s.ProbeFailures,
		"relay_broker_teardowns_total":      s.Teardowns,
		"relay_broker_publish_errors_total": s.PublishErrors,
		"relay_broker_published_total":      s.Published,
		"relay_broker_pipelines_total":      s.Pipelines,
		"relay_broker_slot_moves_total":     s.Moves,
	} {
		if v, ok := got[name]; !ok || v != float64(want) {
			t.Errorf("%s = %v (exported: %v), want %d as in Stats", name, v, ok, want)
		}
	}
	if len(got) != 8 || got["relay_broker_published_total"] != 1 {
		t.Errorf("gathered %v, want the 8 broker counters with 1 published", got)
	}
	if shards != 2*2 {
		t.Errorf("gathered %d shard gauges, want up and channels of each of 2 subscriber connections", shards)
	}
}

// TestRedisPublishAbandoned has many publishers give up while they wait in
// a pipeline's queue, or as they are made its leader: no publish is left
// hanging, every acknowledged one is delivered, and the pipelines still
// carry publishes afterwards.
func TestRedisPublishAbandoned(t *testing.T) {
	r := testenv.StartRedis(t)
	b := newRedis(t, redisConfig(r))
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "abandoned", rec.Handle)
	const publishers, each = 32, 100
	var acked atomic.Int64
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range each {
				ctx, cancel := context.WithCancel(t.Context())
				if (p+i)%3 == 0 {
					// Gives up at a random point: before queueing, while
					// queued, or as it is made the leader (a round trip
					// on loopback takes some 50-500 us).
					ctx, cancel = context.WithTimeout(t.Context(), time.Duration(rand.IntN(500))*time.Microsecond)
				}
				err := b.Publish(ctx, "abandoned", pubsub.Message{Payload: []byte("m")})
				cancel()
				switch {
				case err == nil:
					acked.Add(1)
				case !errors.Is(err, context.DeadlineExceeded):
					t.Errorf("Publish = %v, want nil or context.DeadlineExceeded", err)
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second): // a failure bound, not a measure
		t.Fatal("publishers still waiting: a pipeline stalled")
	}
	// Acknowledged publishes reached Redis before this one: the marker
	// comes after them. Several in a row go through every pipeline.
	for range 4 {
		pubsubtest.Publish(t, b, "abandoned", "marker")
	}
	var got, markers int64
	for seen := 0; markers < 4; {
		msgs := rec.WaitN(t, seen+1)
		seen, got, markers = len(msgs), 0, 0
		for _, m := range msgs {
			if string(m.Payload) == "marker" {
				markers++
			} else if markers == 0 {
				got++
			}
		}
	}
	if n := acked.Load(); got < n {
		t.Errorf("%d messages delivered before the marker, want at least the %d acknowledged", got, n)
	}
	t.Logf("%d of %d publishes acknowledged", acked.Load(), publishers*each)
}

// TestRedisHistoryFlushed proves that a history Redis lost (FLUSHALL), and
// a script it forgot (SCRIPT FLUSH), start a new epoch and load the script
// again, and that a channel's keys share its hash tag.
func TestRedisHistoryFlushed(t *testing.T) {
	r := testenv.StartRedis(t)
	b := newRedis(t, redisConfig(r))
	opts := pubsub.HistoryOptions{Size: 100, TTL: time.Minute}
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "ns:flush", rec.Handle)
	old := pubsubtest.PublishHistory(t, b, "ns:flush", "a", opts)
	pubsubtest.PublishHistory(t, b, "ns:flush", "b", opts)
	rc := r.Client(t)
	keys, err := rc.Keys(t.Context(), "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	if want := []string{"{relay:ns:flush}:h", "{relay:ns:flush}:s"}; !slices.Equal(keys, want) {
		t.Errorf("keys = %q, want %q", keys, want)
	}
	if err := rc.FlushAll(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rc.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	pos := pubsubtest.PublishHistory(t, b, "ns:flush", "c", opts)
	if pos.Offset != 1 || pos.Epoch == old.Epoch {
		t.Errorf("PublishHistory after FLUSHALL = %+v, want offset 1 in an epoch other than %q", pos, old.Epoch)
	}
	got := rec.WaitN(t, 3)
	if got[2].Offset != 1 || got[2].Epoch != pos.Epoch || string(got[2].Payload) != "c" {
		t.Errorf("delivered after FLUSHALL: %+v, want c at offset 1 of %q", got[2], pos.Epoch)
	}
}
