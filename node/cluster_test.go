package node_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

// onCluster starts n nodes named node-1 … node-n on the Redis Cluster c,
// each with its own broker in cluster mode (cmd/relay's defaults but its
// probeInterval and a longer Timeout), and returns them with their
// brokers.
func onCluster(t *testing.T, c *testenv.Cluster, n int, probeInterval time.Duration, configure func(*node.Config)) ([]*nodetest.Server, []*pubsub.Redis) {
	t.Helper()
	var nodes []*nodetest.Server
	var brokers []*pubsub.Redis
	for i := range n {
		rcfg := nodetest.RedisConfig("")
		rcfg.ClusterAddrs = c.Addrs()
		rcfg.ProbeInterval = probeInterval
		// A failure bound: see clusterConfig in pubsub/cluster_test.go.
		rcfg.Timeout = 10 * time.Second
		rcfg.Instance = fmt.Sprintf("node-%d", i+1)
		b, err := pubsubtest.RunRedis(t, rcfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() }) // registered first, so it runs after the node's
		cfg := nodetest.Config()
		cfg.NodeID = rcfg.Instance
		if configure != nil {
			configure(&cfg)
		}
		nodes = append(nodes, nodetest.Start(t, cfg, b))
		brokers = append(brokers, b)
	}
	return nodes, brokers
}

// TestClusterShardedDelivery: two nodes on a three-master Redis Cluster,
// 50 channels spread over every master, a raw-mode client per channel on
// each node exchanging messages: every message reaches the other client
// exactly once and in order, and each master carries its own channels'
// traffic only, as INFO commandstats (SPUBLISH calls) and PUBSUB
// SHARDNUMSUB on each master show.
func TestClusterShardedDelivery(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	// No probe during the test: SPUBLISH calls are the clients' alone.
	nodes, _ := onCluster(t, c, 2, time.Hour, nil)
	const channels, each = 50, 20
	owned := make([]int, len(c.Nodes)) // channels per master
	owner := make([]int, channels)
	// The nodes' own control channel (membership announcements) is
	// SPUBLISHed too, on the master of its slot: a subscriber of it there
	// counts those, and a marker in the same slot, published after the
	// count, proves it has read all that went before.
	ctlName := "relay:" + protocol.ReservedPrefix + ":control"
	ctlMaster := c.Owner(t, pubsub.Slot(ctlName))
	ctlClient := c.Nodes[ctlMaster].Client(t)
	marker := "{" + ctlName + "}:marker"
	ctl := ctlClient.SSubscribe(context.Background(), ctlName, marker)
	t.Cleanup(func() { ctl.Close() })
	if _, err := ctl.Receive(context.Background()); err != nil { // the first confirmation
		t.Fatal(err)
	}
	if _, err := ctl.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := make([]int64, len(c.Nodes))
	for i, r := range c.Nodes {
		before[i] = r.CommandCalls(t, "spublish")
	}
	conns := make([][2]*websocket.Conn, channels)
	for ch := range channels {
		owner[ch] = c.Owner(t, pubsub.Slot(fmt.Sprintf("relay:ch%d", ch)))
		owned[owner[ch]]++
		for i, s := range nodes {
			conns[ch][i] = nodetest.Dial(t, fmt.Sprintf("%s/ws/ch%d", s.WS, ch), nil)
		}
	}
	for i, n := range owned {
		if n == 0 {
			t.Fatalf("master %d owns none of the %d channels: %v", i, channels, owned)
		}
	}
	// Each raw subscription is live once a message crosses it; the
	// marker exchange proves both directions before the counted traffic.
	for ch := range channels {
		for i := range 2 {
			nodetest.Write(t, conns[ch][i], "ready")
			if got := nodetest.ReadText(t, conns[ch][1-i]); got != "ready" {
				t.Fatalf("ch%d: read %q, want ready", ch, got)
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, channels*2)
	for ch := range channels {
		for i := range 2 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
				defer cancel()
				for j := range each {
					if err := conns[ch][i].Write(ctx, websocket.MessageText, fmt.Appendf(nil, "ch%d from %d #%d", ch, i, j)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	for ch := range channels {
		for i := range 2 {
			for j := range each {
				want := fmt.Sprintf("ch%d from %d #%d", ch, 1-i, j)
				if got := nodetest.ReadText(t, conns[ch][i]); got != want {
					t.Fatalf("ch%d node %d read %q, want %q", ch, i, got, want)
				}
			}
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Exactly once: a marker is the next message; a duplicate would come
	// first.
	for ch := range channels {
		nodetest.Write(t, conns[ch][0], "marker")
		if got := nodetest.ReadText(t, conns[ch][1]); got != "marker" {
			t.Fatalf("ch%d: after all messages read %q, want marker", ch, got)
		}
	}
	got := make([]int64, len(c.Nodes))
	for i, r := range c.Nodes {
		got[i] = r.CommandCalls(t, "spublish") - before[i]
	}
	if err := ctlClient.SPublish(context.Background(), marker, "end").Err(); err != nil {
		t.Fatal(err)
	}
	var ctlSeen int64
	for {
		m, err := ctl.ReceiveMessage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if m.Channel == marker {
			break
		}
		ctlSeen++
	}
	for i, r := range c.Nodes {
		want := int64(owned[i] * (2*each + 3)) // ready ×2, messages, marker
		t.Logf("master %d (%s): %d channels, %d SPUBLISH", i, r.Addr(), owned[i], got[i])
		switch {
		case i == ctlMaster && (got[i] < want || got[i] > want+ctlSeen):
			t.Errorf("master %d ran SPUBLISH %d times, want %d for its %d channels' messages and at most %d of the control channel", i, got[i], want, owned[i], ctlSeen)
		case i != ctlMaster && got[i] != want:
			t.Errorf("master %d ran SPUBLISH %d times, want %d: its %d channels' messages only", i, got[i], want, owned[i])
		}
		var names []string
		for ch := range channels {
			names = append(names, fmt.Sprintf("relay:ch%d", ch))
		}
		for name, n := range r.ShardNumSub(t, names...) {
			var ch int
			fmt.Sscanf(name, "relay:ch%d", &ch)
			want := int64(0)
			if owner[ch] == i {
				want = 2 // one subscription per node
			}
			if n != want {
				t.Errorf("master %d: PUBSUB SHARDNUMSUB %s = %d, want %d", i, name, n, want)
			}
		}
	}
}

// TestClusterSlotMigration moves the hash slots of two busy channels, one
// with history and one without, to another master while publishers and
// subscribers on two nodes run: subscribers keep receiving, and every
// acknowledged message is delivered, recovered from history, or announced
// by a gap notice, never lost silently.
func TestClusterSlotMigration(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	ns := filepath.Join(t.TempDir(), "namespaces.yaml")
	if err := os.WriteFile(ns, []byte("namespaces:\n  plain:\n    history_size: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nodes, brokers := onCluster(t, c, 2, 100*time.Millisecond, func(cfg *node.Config) {
		withHistory(10000)(cfg)
		cfg.ProtoCommandRate = 0
		cfg.NamespacesFile = ns
	})
	f := startFeedTraffic(t, []string{nodes[0].WS, nodes[1].WS}, false, 30)
	for _, ch := range []string{"relay:feed", "relay:plain:feed"} {
		slot := pubsub.Slot(ch)
		from := c.Owner(t, slot)
		to := (from + 1) % len(c.Nodes)
		c.MoveSlot(t, slot, from, to)
		t.Logf("moved slot %d of %s from master %d to %d", slot, ch, from, to)
		// Both nodes follow: subscribed on the new master, on no other.
		// Redis has no event for it: poll.
		testenv.WaitFor(t, 30*time.Second, ch+" subscribed by both nodes on master "+fmt.Sprint(to)+" only", func() bool {
			for i, r := range c.Nodes {
				want := int64(0)
				if i == to {
					want = 2
				}
				if r.ShardNumSub(t, ch)[ch] != want {
					return false
				}
			}
			return true
		})
	}
	f.finish(t, f.acked(), 100)
	delivered, recovered, announced, silent := f.count(t, nil)
	var moves uint64
	for _, b := range brokers {
		moves += b.Stats().Moves
	}
	var unavailable int64
	for _, p := range f.pubs {
		unavailable += p.errs.Load()
	}
	t.Logf("acknowledged messages × subscribers: delivered %d, recovered %d, announced %d, lost silently %d; channels moved %d; publishes answered unavailable or unknown %d",
		delivered, recovered, announced, silent, moves, unavailable)
	if silent != 0 {
		t.Errorf("%d acknowledged messages lost silently", silent)
	}
	if moves < 4 {
		t.Errorf("brokers moved %d channels, want both channels moved on both nodes", moves)
	}
}
