package testenv

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Cluster is a private Redis Cluster, each node a redis-server with
// --cluster-enabled yes on a loopback port, the 16384 hash slots spread
// evenly over the masters by redis-cli --cluster create. It is stopped at
// the end of the test.
type Cluster struct {
	// Nodes are the masters, in the order of their slot ranges, then the
	// replicas, which redis-cli assigned to masters as it chose.
	Nodes []*Redis
	ids   []string
}

// StartCluster starts a Redis Cluster of n masters (at least 3, the least
// redis-cli creates), each with replicas replicas, and waits until every
// node reports cluster_state:ok, or fails t with an install hint.
func StartCluster(t testing.TB, n, replicas int) *Cluster {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(redisHint)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal("redis-cli not found on PATH: install it with `apt-get install redis-tools`")
	}
	c := &Cluster{}
	args := []string{"create"}
	for range n * (1 + replicas) {
		r := startRedis(t, bin, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "1000",
			// A replica may take over however long ago it last heard
			// from its master: tests kill masters at any moment.
			"--cluster-replica-validity-factor", "0")
		c.Nodes = append(c.Nodes, r)
		args = append(args, r.Addr())
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	out, err := exec.Command(cli, append([]string{"--cluster"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, r := range c.Nodes {
		id, err := r.Client(t).ClusterMyID(context.Background()).Result()
		if err != nil {
			t.Fatalf("CLUSTER MYID %s: %v", r.Addr(), err)
		}
		c.ids = append(c.ids, id)
	}
	c.WaitOK(t)
	return c
}

// Addrs returns the masters' host:port, comma-separated, as
// RELAY_REDIS_CLUSTER_ADDRS takes them.
func (c *Cluster) Addrs() string {
	var a []string
	for _, r := range c.Nodes {
		a = append(a, r.Addr())
	}
	return strings.Join(a, ",")
}

// WaitOK waits until every node reports cluster_state:ok and agrees on the
// owner of every slot.
func (c *Cluster) WaitOK(t testing.TB) {
	t.Helper()
	WaitFor(t, 30*time.Second, "cluster_state:ok on every node", func() bool {
		var first []redis.ClusterSlot
		for i, r := range c.Nodes {
			cl := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
			info, err := cl.ClusterInfo(context.Background()).Result()
			//lint:ignore SA1019 the map the broker reads (pubsub/cluster.go)
			slots, err2 := cl.ClusterSlots(context.Background()).Result()
			cl.Close()
			if err != nil || err2 != nil || !strings.Contains(info, "cluster_state:ok") {
				return false
			}
			if i == 0 {
				first = slots
			} else if !sameSlots(first, slots) {
				return false
			}
		}
		return true
	})
}

func sameSlots(a, b []redis.ClusterSlot) bool {
	own := func(s []redis.ClusterSlot) map[int]string {
		m := make(map[int]string)
		for _, r := range s {
			m[r.Start] = strconv.Itoa(r.End) + r.Nodes[0].Addr
		}
		return m
	}
	ma, mb := own(a), own(b)
	if len(ma) != len(mb) {
		return false
	}
	for k, v := range ma {
		if mb[k] != v {
			return false
		}
	}
	return true
}

// Owner returns the index in Nodes of the master that owns slot, as the
// first node that answers sees it; -1 if no master does.
func (c *Cluster) Owner(t testing.TB, slot int) int {
	t.Helper()
	var slots []redis.ClusterSlot
	var err error
	for _, r := range c.Nodes {
		cl := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
		//lint:ignore SA1019 the map the broker reads (pubsub/cluster.go)
		slots, err = cl.ClusterSlots(context.Background()).Result()
		cl.Close()
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("CLUSTER SLOTS: %v", err)
	}
	for _, r := range slots {
		if r.Start <= slot && slot <= r.End {
			for i, n := range c.Nodes {
				if n.Addr() == r.Nodes[0].Addr {
					return i
				}
			}
		}
	}
	return -1
}

// MoveSlot moves slot from master from to master to as redis-cli
// --cluster reshard does: IMPORTING on to, MIGRATING on from, MIGRATE of
// its keys in batches, then SETSLOT NODE on to, from and the others. Keys
// written meanwhile follow ASK redirects to the new master.
func (c *Cluster) MoveSlot(t testing.TB, slot, from, to int) {
	t.Helper()
	ctx := context.Background()
	src, dst := c.Nodes[from].Client(t), c.Nodes[to].Client(t)
	must := func(what string, err error) {
		if err != nil {
			t.Fatalf("move slot %d: %s: %v", slot, what, err)
		}
	}
	must("IMPORTING", dst.Do(ctx, "cluster", "setslot", slot, "importing", c.ids[from]).Err())
	must("MIGRATING", src.Do(ctx, "cluster", "setslot", slot, "migrating", c.ids[to]).Err())
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, 100).Result()
		must("GETKEYSINSLOT", err)
		if len(keys) == 0 {
			break
		}
		args := []any{"migrate", "127.0.0.1", c.Nodes[to].port, "", 0, 5000, "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		must("MIGRATE", src.Do(ctx, args...).Err())
	}
	must("NODE on the target", dst.Do(ctx, "cluster", "setslot", slot, "node", c.ids[to]).Err())
	must("NODE on the source", src.Do(ctx, "cluster", "setslot", slot, "node", c.ids[to]).Err())
	for i, r := range c.Nodes {
		if i != from && i != to {
			must("NODE", r.Client(t).Do(ctx, "cluster", "setslot", slot, "node", c.ids[to]).Err())
		}
	}
}

// CommandCalls returns how many times the node ran cmd (a lowercase
// command name such as spublish), from INFO commandstats.
func (r *Redis) CommandCalls(t testing.TB, cmd string) int64 {
	t.Helper()
	return r.Traffic(t, cmd).Calls[cmd]
}

// ShardNumSub returns PUBSUB SHARDNUMSUB of channels on the node.
func (r *Redis) ShardNumSub(t testing.TB, channels ...string) map[string]int64 {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer c.Close()
	n, err := c.PubSubShardNumSub(context.Background(), channels...).Result()
	if err != nil {
		t.Fatalf("PUBSUB SHARDNUMSUB: %v", err)
	}
	return n
}

// Traffic is what one Redis node handled, from INFO and CLUSTER INFO.
type Traffic struct {
	// Calls counts the runs of each command asked of Traffic.
	Calls map[string]int64
	// In and Out are the bytes read from and written to clients.
	In, Out int64
	// BusPublishes counts publishes other masters sent over the cluster
	// bus (cluster_stats_messages_publish_received): each classic PUBLISH
	// in a cluster reaches every node so.
	BusPublishes int64
}

// Traffic returns what the node handled since it started.
func (r *Redis) Traffic(t testing.TB, commands ...string) Traffic {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	defer c.Close()
	info, err := c.Info(context.Background(), "commandstats", "stats").Result()
	if err != nil {
		t.Fatalf("INFO: %v", err)
	}
	cinfo, err := c.ClusterInfo(context.Background()).Result()
	if err != nil {
		t.Fatalf("CLUSTER INFO: %v", err)
	}
	tr := Traffic{Calls: make(map[string]int64)}
	field := func(line, name string) (int64, bool) {
		rest, ok := strings.CutPrefix(line, name)
		if !ok {
			return 0, false
		}
		rest, _, _ = strings.Cut(rest, ",")
		n, _ := strconv.ParseInt(rest, 10, 64)
		return n, true
	}
	for line := range strings.SplitSeq(info+"\n"+cinfo, "\n") {
		line = strings.TrimSpace(line)
		for _, cmd := range commands {
			if n, ok := field(line, "cmdstat_"+cmd+":calls="); ok {
				tr.Calls[cmd] = n
			}
		}
		if n, ok := field(line, "total_net_input_bytes:"); ok {
			tr.In = n
		}
		if n, ok := field(line, "total_net_output_bytes:"); ok {
			tr.Out = n
		}
		if n, ok := field(line, "cluster_stats_messages_publish_received:"); ok {
			tr.BusPublishes = n
		}
	}
	return tr
}
