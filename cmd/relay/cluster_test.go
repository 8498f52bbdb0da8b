package main

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub"
)

// TestClusterPlainSPublish: the relay binary on a Redis Cluster, by
// configuration alone; a plain SPUBLISH from redis-cli reaches a raw-mode
// WebSocket client.
func TestClusterPlainSPublish(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	// RELAY_REDIS_TIMEOUT: a failure bound for a loaded test machine.
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_CLUSTER_ADDRS="+c.Nodes[1].Addr(), "RELAY_REDIS_TIMEOUT=10s")
	ws := nodetest.Dial(t, "ws://"+n.Addr+"/ws/lobby", nil)
	owner := c.Nodes[c.Owner(t, pubsub.Slot("relay:lobby"))]
	// The raw subscription has no acknowledgement: ask the master.
	testenv.WaitFor(t, nodetest.Timeout, "relay:lobby subscribed", func() bool {
		return owner.ShardNumSub(t, "relay:lobby")["relay:lobby"] == 1
	})
	out, err := exec.Command("redis-cli", "-p", strconv.Itoa(owner.Port()), "SPUBLISH", "relay:lobby", "hello from redis-cli").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("redis-cli SPUBLISH = %q, %v; want 1 receiver", out, err)
	}
	if got := nodetest.ReadText(t, ws); got != "hello from redis-cli" {
		t.Errorf("WebSocket client read %q, want hello from redis-cli", got)
	}
}
