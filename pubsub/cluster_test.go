package pubsub_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

func clusterConfig(c *testenv.Cluster) pubsub.RedisConfig {
	return pubsub.RedisConfig{ClusterAddrs: c.Addrs(), Prefix: "relay:", Subscribers: 2, Pipelines: 2, Timeout: 3 * time.Second}
}

// TestRedisCluster runs the conformance suite on a three-master Redis
// Cluster, with sharded pub/sub.
func TestRedisCluster(t *testing.T) {
	c := testenv.StartCluster(t, 3)
	pubsubtest.Run(t, func(t *testing.T) pubsub.Broker { return newRedis(t, clusterConfig(c)) })
}

// TestRedisClusterPlainSPublish: a plain SPUBLISH {prefix}{channel} from
// any Redis client reaches the subscribers, as PUBLISH does standalone.
func TestRedisClusterPlainSPublish(t *testing.T) {
	c := testenv.StartCluster(t, 3)
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
		{"redis://127.0.0.1:6379/0", "127.0.0.1:7000", "relay:", "RELAY_REDIS_URL and RELAY_REDIS_CLUSTER_ADDRS are both set; set exactly one"},
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
