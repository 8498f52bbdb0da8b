package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

// clusterConfig is the broker configuration of the tests on c. Its
// Timeout is a failure bound: a Subscribe waits for the first slot map,
// then for its master's connection, which on a machine running many
// tests under -race can take more than cmd/relay's 3 s.
func clusterConfig(c *testenv.Cluster) pubsub.RedisConfig {
	return pubsub.RedisConfig{ClusterAddrs: c.Addrs(), Prefix: "relay:", Subscribers: 2, Pipelines: 2, Timeout: 10 * time.Second}
}

// TestRedisCluster runs the conformance suite on a three-master Redis
// Cluster, with sharded pub/sub.
func TestRedisCluster(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	pubsubtest.Run(t, func(t *testing.T) pubsub.Broker { return newRedis(t, clusterConfig(c)) })
}

// TestRedisClusterPlainSPublish: a plain SPUBLISH {prefix}{channel} from
// any Redis client reaches the subscribers, as PUBLISH does standalone.
func TestRedisClusterPlainSPublish(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	b := newRedis(t, clusterConfig(c))
	for i := range 6 { // channels on every master, very likely
		ch := fmt.Sprintf("plain%d", i)
		rec := pubsubtest.NewRecorder()
		pubsubtest.Subscribe(t, b, ch, rec.Handle)
		owner := c.Nodes[c.Owner(t, pubsub.Slot("relay:"+ch))]
		if err := owner.Client(t).SPublish(context.Background(), "relay:"+ch, "hello").Err(); err != nil {
			t.Fatal(err)
		}
		if m := rec.WaitN(t, 1)[0]; string(m.Payload) != "hello" || m.Origin != "" {
			t.Errorf("plain SPUBLISH on %s delivered as %+v, want text hello with no origin", ch, m)
		}
	}
	if err := b.Health(); err != nil {
		t.Errorf("Health() = %v, want nil", err)
	}
}

// TestRedisClusterConfigErrors: a mix of modes, and bad seeds, are refused
// with one line naming the variable.
func TestRedisClusterConfigErrors(t *testing.T) {
	base := pubsub.RedisConfig{Prefix: "relay:", Subscribers: 1, Pipelines: 1, Timeout: time.Second}
	for _, tt := range []struct {
		url, addrs, prefix, want string
	}{
		{"redis://127.0.0.1:6379/0", "127.0.0.1:7000", "relay:", "RELAY_REDIS_URL and RELAY_REDIS_CLUSTER_ADDRS are both set; want one Redis mode: RELAY_REDIS_URL (standalone), RELAY_REDIS_SENTINEL_ADDRS (Sentinel) or RELAY_REDIS_CLUSTER_ADDRS (Cluster)"},
		{"", "127.0.0.1", "relay:", "RELAY_REDIS_CLUSTER_ADDRS"},
		{"", "127.0.0.1:7000,http://x:1", "relay:", "RELAY_REDIS_CLUSTER_ADDRS"},
		{"", "127.0.0.1:7000", "re}lay:", "RELAY_CHANNEL_PREFIX"},
		{"", "127.0.0.1:7000", "{}relay:", "RELAY_CHANNEL_PREFIX"},
	} {
		cfg := base
		cfg.URL, cfg.ClusterAddrs, cfg.Prefix = tt.url, tt.addrs, tt.prefix
		err := cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("Validate(URL %q, cluster %q, prefix %q) = %v, want %q...", tt.url, tt.addrs, tt.prefix, err, tt.want)
		}
	}
	for _, ok := range []string{"127.0.0.1:7000", "127.0.0.1:7000, 127.0.0.1:7001", "redis://u:p@127.0.0.1:7000,127.0.0.1:7001", "rediss://127.0.0.1:7000"} {
		cfg := base
		cfg.ClusterAddrs = ok
		if err := cfg.Validate(); err != nil {
			t.Errorf("Validate(cluster %q) = %v, want nil", ok, err)
		}
	}
	for _, ok := range []string{"{relay}:", "{relay:", "relay:"} {
		cfg := base
		cfg.ClusterAddrs, cfg.Prefix = "127.0.0.1:7000", ok
		if err := cfg.Validate(); err != nil {
			t.Errorf("Validate(prefix %q) = %v, want nil", ok, err)
		}
	}
}

// TestRedisClusterMasterRestart kills one master and starts it again: the
// broker reports that shard unavailable meanwhile, publishes to its slots
// are answered ErrUnavailable, its channels get a gap event and are
// subscribed again, and the other masters' channels are untouched.
func TestRedisClusterMasterRestart(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	b := newRedis(t, probing(clusterConfig(c)))
	recs := map[string]*pubsubtest.Recorder{}
	byMaster := make([][]string, len(c.Nodes))
	for i := 0; len(byMaster[0]) == 0 || len(byMaster[1]) == 0; i++ {
		ch := fmt.Sprintf("m%d", i)
		recs[ch] = pubsubtest.NewRecorder()
		pubsubtest.Subscribe(t, b, ch, recs[ch].Handle)
		o := c.Owner(t, pubsub.Slot("relay:"+ch))
		byMaster[o] = append(byMaster[o], ch)
	}
	testenv.WaitFor(t, 20*time.Second, "healthy", func() bool { return b.Health() == nil })
	c.Nodes[0].Stop()
	down := byMaster[0][0]
	if err := b.Publish(context.Background(), down, pubsub.Message{Payload: []byte("lost")}); !errors.Is(err, pubsub.ErrUnavailable) {
		t.Errorf("Publish to a channel of the dead master = %v, want ErrUnavailable", err)
	}
	testenv.WaitFor(t, 20*time.Second, "unhealthy with a master down", func() bool { return b.Health() != nil })
	if err := b.Health(); !strings.Contains(err.Error(), c.Nodes[0].Addr()) {
		t.Errorf("Health() = %v, want it to name the master %s", err, c.Nodes[0].Addr())
	}
	c.Nodes[0].Start()
	c.WaitOK(t)
	testenv.WaitFor(t, 20*time.Second, "healthy again", func() bool { return b.Health() == nil })
	for _, ch := range byMaster[0] {
		if recs[ch].Gaps() == 0 {
			t.Errorf("%s, on the restarted master, got no gap event", ch)
		}
	}
	for _, ch := range byMaster[1] {
		if recs[ch].Gaps() != 0 {
			t.Errorf("%s, on a master that stayed up, got %d gap events", ch, recs[ch].Gaps())
		}
	}
	for ch, rec := range recs {
		pubsubtest.Publish(t, b, ch, "after")
		if got := string(rec.WaitN(t, 1)[0].Payload); got != "after" {
			t.Errorf("%s received %q, want after", ch, got)
		}
	}
}

// TestRedisClusterFailover kills a master (SIGKILL) of a cluster with one
// replica per master: once the replica is promoted, the broker moves the
// dead master's channels to it with a gap event, retires the dead
// master's subscriber connection, is healthy again, and delivers.
func TestRedisClusterFailover(t *testing.T) {
	c := testenv.StartCluster(t, 3, 1)
	b := newRedis(t, probing(clusterConfig(c)))
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "failover", rec.Handle)
	other := pubsubtest.NewRecorder()
	slot := pubsub.Slot("relay:failover")
	dead := c.Owner(t, slot)
	var kept string // a channel of another master
	for i := 0; kept == ""; i++ {
		if ch := fmt.Sprintf("kept%d", i); c.Owner(t, pubsub.Slot("relay:"+ch)) != dead {
			kept = ch
		}
	}
	pubsubtest.Subscribe(t, b, kept, other.Handle)
	testenv.WaitFor(t, 20*time.Second, "healthy", func() bool { return b.Health() == nil })
	c.Nodes[dead].Stop()
	testenv.WaitFor(t, 30*time.Second, "a replica promoted", func() bool {
		o := c.Owner(t, slot)
		return o >= 0 && o != dead
	})
	testenv.WaitFor(t, 20*time.Second, "healthy after the failover", func() bool { return b.Health() == nil })
	if got := rec.Gaps(); got != 1 {
		t.Errorf("channel of the dead master got %d gap events, want 1", got)
	}
	if got := other.Gaps(); got != 0 {
		t.Errorf("channel of another master got %d gap events, want 0", got)
	}
	if s := b.Stats(); s.Moves != 1 {
		t.Errorf("Stats().Moves = %d, want 1", s.Moves)
	}
	pubsubtest.Publish(t, b, "failover", "after")
	if got := string(rec.WaitN(t, 1)[0].Payload); got != "after" {
		t.Errorf("received %q after the failover, want after", got)
	}
}

// TestRedisClusterHistoryPrefixes: with prefixes that hold braces, the
// history keys still share the slot of the Redis channel the publish
// script SPUBLISHes to (Redis Cluster refuses a script that reaches
// another slot), and the message is delivered with its offset.
func TestRedisClusterHistoryPrefixes(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	opts := pubsub.HistoryOptions{Size: 10, TTL: time.Minute}
	for _, prefix := range []string{"relay:", "{relay}:", "{relay:", "re}{lay}:"} {
		cfg := clusterConfig(c)
		cfg.Prefix = prefix
		b := newRedis(t, cfg)
		for _, ch := range []string{"a", "ns:b", "c.d@e"} {
			rec := pubsubtest.NewRecorder()
			pubsubtest.Subscribe(t, b, ch, rec.Handle)
			pos := pubsubtest.PublishHistory(t, b, ch, "x", opts)
			if m := rec.WaitN(t, 1)[0]; m.Offset != pos.Offset || string(m.Payload) != "x" {
				t.Errorf("prefix %q channel %q: delivered %+v, want x at offset %d", prefix, ch, m, pos.Offset)
			}
			msgs, _, err := b.History(t.Context(), ch, opts, 0, 10)
			if err != nil || len(msgs) != 1 {
				t.Errorf("prefix %q channel %q: History = %d messages, %v; want 1", prefix, ch, len(msgs), err)
			}
		}
	}
}

// TestSlot: Slot agrees with CLUSTER KEYSLOT, hash tags included.
func TestSlot(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	rc := c.Nodes[0].Client(t)
	for _, name := range []string{"", "a", "relay:lobby", "{relay}:lobby", "{relay:lobby}:h", "{}x", "x{}y{z}",
		"{{a}}", "a}b{c", "{", "}", "relay:__relay_probe:node-1:0:7", "ns:b.c@d/e=f"} {
		want, err := rc.ClusterKeySlot(t.Context(), name).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := pubsub.Slot(name); int64(got) != want {
			t.Errorf("Slot(%q) = %d, want %d (CLUSTER KEYSLOT)", name, got, want)
		}
	}
}

// TestRedisClusterProbeSlotMoved moves the slot of a master's probe
// channel to another master: the broker names that master a new probe
// channel in a slot it still owns, and is healthy and delivers again.
func TestRedisClusterProbeSlotMoved(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	cfg := probing(clusterConfig(c))
	cfg.Instance = "probed"
	b := newRedis(t, cfg)
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "watched", rec.Handle)
	testenv.WaitFor(t, 20*time.Second, "healthy", func() bool { return b.Health() == nil })
	probes := func(i int) []string {
		chans, err := c.Nodes[i].Client(t).PubSubShardChannels(t.Context(), "relay:__relay_probe:probed:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		return chans
	}
	first := probes(0)
	if len(first) != 1 {
		t.Fatalf("master 0 carries probe channels %q, want one", first)
	}
	c.MoveSlot(t, pubsub.Slot(first[0]), 0, 1)
	testenv.WaitFor(t, 20*time.Second, "a new probe channel on master 0", func() bool {
		p := probes(0)
		return len(p) == 1 && p[0] != first[0] && c.Owner(t, pubsub.Slot(p[0])) == 0
	})
	testenv.WaitFor(t, 20*time.Second, "healthy again", func() bool { return b.Health() == nil })
	pubsubtest.Publish(t, b, "watched", "after")
	if got := string(rec.WaitN(t, 1)[0].Payload); got != "after" {
		t.Errorf("received %q, want after", got)
	}
}

// TestRedisClusterSlotMoved moves a subscribed channel's slot with no
// periodic read of the slot map (ProbeInterval of an hour): the
// SUNSUBSCRIBE the old master sends makes the broker subscribe the channel
// on the new one, with one gap event.
func TestRedisClusterSlotMoved(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	cfg := clusterConfig(c)
	cfg.ProbeInterval = time.Hour
	b := newRedis(t, cfg)
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "moving", rec.Handle)
	pubsubtest.Publish(t, b, "moving", "before")
	rec.WaitN(t, 1)
	slot := pubsub.Slot("relay:moving")
	from := c.Owner(t, slot)
	to := (from + 1) % len(c.Nodes)
	c.MoveSlot(t, slot, from, to)
	testenv.WaitFor(t, 20*time.Second, "subscribed on the new master", func() bool {
		return c.Nodes[to].ShardNumSub(t, "relay:moving")["relay:moving"] == 1
	})
	testenv.WaitFor(t, 20*time.Second, "the gap event", func() bool { return rec.Gaps() == 1 })
	if n := c.Nodes[from].ShardNumSub(t, "relay:moving")["relay:moving"]; n != 0 {
		t.Errorf("old master counts %d subscribers, want 0", n)
	}
	if s := b.Stats(); s.Moves != 1 {
		t.Errorf("Stats().Moves = %d, want 1", s.Moves)
	}
	pubsubtest.Publish(t, b, "moving", "after")
	if got := rec.WaitN(t, 2); string(got[1].Payload) != "after" {
		t.Errorf("received %q after the move, want after", got[1].Payload)
	}
}

// TestRedisClusterSubscribeMoved subscribes a channel whose slot moved
// since the broker read the slot map: the old master answers MOVED, and
// the broker subscribes it on the new one before Subscribe returns.
func TestRedisClusterSubscribeMoved(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	cfg := clusterConfig(c)
	cfg.ProbeInterval = time.Hour // no read of the map but on demand
	var logs lockedBuffer
	b := newRedisLog(t, cfg, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	warm := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "warm", warm.Handle) // the map is read
	slot := pubsub.Slot("relay:late")
	from := c.Owner(t, slot)
	to := (from + 1) % len(c.Nodes)
	c.MoveSlot(t, slot, from, to)
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "late", rec.Handle)
	if n := c.Nodes[to].ShardNumSub(t, "relay:late")["relay:late"]; n != 1 {
		t.Errorf("new master counts %d subscribers once Subscribe returned, want 1", n)
	}
	pubsubtest.Publish(t, b, "late", "hello")
	if got := string(rec.WaitN(t, 1)[0].Payload); got != "hello" {
		t.Errorf("received %q, want hello", got)
	}
	if g := rec.Gaps(); g != 0 {
		t.Errorf("%d gap events for a channel that was never live elsewhere, want 0", g)
	}
	if want := fmt.Sprintf(`"msg":"redis cluster redirect","master":%q,"slot":%d,"to":%q`, c.Nodes[from].Addr(), slot, c.Nodes[to].Addr()); !strings.Contains(logs.String(), want) {
		t.Errorf("logs lack %s:\n%s", want, logs.String())
	}
}
