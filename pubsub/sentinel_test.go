package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

func sentinelConfig(s *testenv.Sentinel) pubsub.RedisConfig {
	cfg := redisConfig(s.Master)
	cfg.URL = ""
	cfg.SentinelAddrs = s.Addrs()
	cfg.SentinelMaster = testenv.SentinelMaster
	return cfg
}

// TestSentinel runs the conformance suite on the master that Sentinel
// names: the shards, pipelines, probes and history of the Sentinel mode
// are those of one Redis.
func TestSentinel(t *testing.T) {
	s := testenv.StartSentinel(t)
	pubsubtest.Run(t, func(t *testing.T) pubsub.Broker { return newRedis(t, probing(sentinelConfig(s))) })
}

// TestSentinelProbes: the probes go through the master Sentinel names and
// come back on every subscriber connection.
func TestSentinelProbes(t *testing.T) {
	s := testenv.StartSentinel(t)
	b := newRedis(t, probing(sentinelConfig(s)))
	pubsubtest.Subscribe(t, b, "x", pubsubtest.NewRecorder().Handle)
	// Probe round trips only: nothing else is published.
	testenv.WaitFor(t, 30*time.Second, "ten probe rounds", func() bool { return b.Stats().Pipelines >= 10*2 })
	if st := b.Stats(); st.ProbeFailures != 0 || st.Teardowns != 0 {
		t.Errorf("after %d probe round trips: %d probe failures, %d teardowns; want none", st.Pipelines, st.ProbeFailures, st.Teardowns)
	}
	if err := b.Health(); err != nil {
		t.Errorf("Health() = %v, want nil", err)
	}
}

// TestSentinelFailover: after a failover, whether the old master died
// (SIGKILL) or was demoted while alive (SENTINEL FAILOVER), a broker's
// subscription moves to the new master with a gap event, and what another
// broker publishes there reaches it.
func TestSentinelFailover(t *testing.T) {
	for _, tt := range []struct {
		name  string
		fault func(t *testing.T, s *testenv.Sentinel)
	}{
		{"MasterKilled", func(t *testing.T, s *testenv.Sentinel) { s.Master.Stop() }},
		{"MasterDemoted", func(t *testing.T, s *testenv.Sentinel) {
			c := s.Client(t, 0)
			if err := c.Failover(context.Background(), testenv.SentinelMaster).Err(); err != nil {
				t.Fatalf("SENTINEL FAILOVER: %v", err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := testenv.StartSentinel(t)
			cfg := probing(sentinelConfig(s))
			pub, sub := newRedis(t, cfg), newRedis(t, cfg)
			rec := pubsubtest.NewRecorder()
			pubsubtest.Subscribe(t, sub, "x", rec.Handle)
			pubsubtest.Publish(t, pub, "x", "before")
			rec.WaitN(t, 1)
			switched := s.SwitchMaster(t)
			start := time.Now()
			tt.fault(t, s)
			var master string
			select {
			case master = <-switched:
			case <-time.After(time.Minute):
				t.Fatal("no +switch-master within a minute")
			}
			if master != s.Replica.Addr() {
				t.Fatalf("+switch-master to %s, want the replica %s", master, s.Replica.Addr())
			}
			switchedAfter := time.Since(start)
			// Publish until the subscriber was told of a gap and a message
			// published after that reaches it: it then listens on the new
			// master.
			pace := time.NewTicker(20 * time.Millisecond)
			defer pace.Stop()
			var refused int
			gapAt := -1 // the first publish after the gap event
			for i := 0; ; i++ {
				if gapAt < 0 && rec.Gaps() > 0 {
					gapAt = i
				}
				if i == 1500 {
					t.Fatalf("no message through the new master after %d publishes (%d refused)", i, refused)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := pub.Publish(ctx, "x", pubsub.Message{Payload: fmt.Appendf(nil, "after %d", i)})
				cancel()
				switch {
				case err == nil:
				case errors.Is(err, pubsub.ErrUnavailable), errors.Is(err, pubsub.ErrOutcomeUnknown):
					refused++
				default:
					t.Fatalf("publish during the failover: %v, want ErrUnavailable or ErrOutcomeUnknown", err)
				}
				got := rec.Messages()
				var last int
				if _, err := fmt.Sscanf(string(got[len(got)-1].Payload), "after %d", &last); err == nil && gapAt >= 0 && last >= gapAt {
					break
				}
				<-pace.C
			}
			st := sub.Stats()
			t.Logf("%s: +switch-master after %v, delivery back after %v; %d publishes refused; subscriber: %d reconnects, %d probe teardowns, %d gaps",
				tt.name, switchedAfter.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), refused, st.Reconnects, st.Teardowns, rec.Gaps())
			if st.Resubscribes == 0 {
				t.Errorf("subscriber: %d resubscribes, want its subscription moved to the new master", st.Resubscribes)
			}
			testenv.WaitFor(t, 30*time.Second, "the subscriber healthy", func() bool { return sub.Health() == nil })
		})
	}
}

func TestSentinelConfigErrors(t *testing.T) {
	base := pubsub.RedisConfig{Subscribers: 1, Pipelines: 1, Timeout: time.Second}
	for _, tt := range []struct {
		name string
		set  func(*pubsub.RedisConfig)
		want string // "" when valid
	}{
		{"sentinel", func(c *pubsub.RedisConfig) {
			c.SentinelAddrs, c.SentinelMaster = []string{"127.0.0.1:26379", " [::1]:26380"}, "m"
			c.Username, c.Password, c.DB, c.SentinelPassword = "u", "p", 2, "sp"
		}, ""},
		{"standalone", func(c *pubsub.RedisConfig) { c.URL = "redis://:p@h:6379/2" }, ""},
		{"none", func(c *pubsub.RedisConfig) {}, ""},
		{"both modes", func(c *pubsub.RedisConfig) {
			c.URL, c.SentinelAddrs, c.SentinelMaster = "redis://h:6379", []string{"h:26379"}, "m"
		}, "RELAY_REDIS_URL and RELAY_REDIS_SENTINEL_ADDRS are both set"},
		{"no master", func(c *pubsub.RedisConfig) { c.SentinelAddrs = []string{"h:26379"} }, "without RELAY_REDIS_SENTINEL_MASTER"},
		{"master alone", func(c *pubsub.RedisConfig) { c.SentinelMaster = "m" }, "without RELAY_REDIS_SENTINEL_ADDRS"},
		{"sentinel password alone", func(c *pubsub.RedisConfig) { c.SentinelPassword = "p" }, "without RELAY_REDIS_SENTINEL_ADDRS"},
		{"no port", func(c *pubsub.RedisConfig) {
			c.SentinelAddrs, c.SentinelMaster = []string{"h:26379", "h"}, "m"
		}, `RELAY_REDIS_SENTINEL_ADDRS: "h"`},
		{"password with URL", func(c *pubsub.RedisConfig) { c.URL, c.Password = "redis://h:6379", "p" }, "want them in the URL"},
		{"db with URL", func(c *pubsub.RedisConfig) { c.URL, c.DB = "redis://h:6379", 1 }, "want them in the URL"},
		{"negative db", func(c *pubsub.RedisConfig) {
			c.SentinelAddrs, c.SentinelMaster, c.DB = []string{"h:26379"}, "m", -1
		}, "RELAY_REDIS_DB: -1"},
	} {
		cfg := base
		tt.set(&cfg)
		err := cfg.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: Validate() = %v, want nil", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: Validate() = %v, want an error containing %q", tt.name, err, tt.want)
		case err != nil && strings.Contains(err.Error(), "\n"):
			t.Errorf("%s: Validate() = %q, want one line", tt.name, err)
		}
		if enabled := cfg.Enabled(); err == nil && enabled != (tt.name != "none") {
			t.Errorf("%s: Enabled() = %v", tt.name, enabled)
		}
	}
}

// BenchmarkSentinelPublish is BenchmarkRedisPublish on the master of a
// Sentinel set-up, which also sends every PUBLISH to its replica: the
// cost of the Sentinel mode per publish (docs/OPERATIONS.md).
func BenchmarkSentinelPublish(b *testing.B) {
	s := testenv.StartSentinel(b)
	for _, publishers := range []int{1, 64} {
		b.Run(fmt.Sprintf("publishers=%d", publishers), func(b *testing.B) {
			benchPublish(b, newRedis(b, sentinelConfig(s)), publishers)
		})
	}
}
