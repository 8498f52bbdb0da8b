package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the name the sentinels of StartSentinel monitor the
// master under.
const SentinelMaster = "mymaster"

// Sentinel settings of StartSentinel, short so that a failover takes
// seconds: a sentinel deems the master down after DownAfter without a
// valid answer, and a failover that stalls is retried after twice
// FailoverTimeout. docs/OPERATIONS.md explains how they bound a failover.
const (
	SentinelDownAfter       = time.Second
	SentinelFailoverTimeout = 3 * time.Second
)

// Sentinel is a Redis Sentinel set-up on loopback: a master, one replica
// of it and three sentinels that monitor it as SentinelMaster with a
// quorum of two, each a process on a free port, stopped at the end of
// the test.
type Sentinel struct {
	// Master and Replica are the servers as they started; after a
	// failover the replica is the master.
	Master, Replica *Redis
	// Sentinels are the three sentinel processes.
	Sentinels []*Redis
}

// StartSentinel starts a master, its replica once it is in sync, and
// three sentinels, and returns once every sentinel knows the replica and
// the two other sentinels: a failover can then happen. It fails t with an
// install hint without redis-server.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	// Without a delay before the first sync (5 s by default), the replica
	// is in sync at once.
	noDelay := []string{"--repl-diskless-sync-delay", "0"}
	s := &Sentinel{Master: startRedis(t, &Redis{args: noDelay})}
	s.Replica = startRedis(t, &Redis{args: append(noDelay, "--replicaof", "127.0.0.1", portOf(s.Master))})
	ctx := context.Background()
	rc := s.Replica.Client(t)
	WaitFor(t, 30*time.Second, "the replica in sync with the master", func() bool {
		info, err := rc.Info(ctx, "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	dir := t.TempDir()
	for i := range 3 {
		conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", i))
		text := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]s 2\n"+
			"sentinel down-after-milliseconds %[1]s %[3]d\n"+
			"sentinel failover-timeout %[1]s %[4]d\n",
			SentinelMaster, portOf(s.Master), SentinelDownAfter.Milliseconds(), SentinelFailoverTimeout.Milliseconds())
		// Sentinel rewrites its file: it must be its own and writable.
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		s.Sentinels = append(s.Sentinels, startRedis(t, &Redis{
			conf: []string{conf}, args: []string{"--sentinel"}, ready: "+monitor master " + SentinelMaster,
		}))
	}
	for _, sn := range s.Sentinels {
		c := sn.SentinelClient(t)
		// Sentinels find each other through hello messages on the master
		// every 2 s, and the replica in the master's INFO.
		WaitFor(t, 30*time.Second, "every sentinel to know the replica and the other sentinels", func() bool {
			peers, err := c.Sentinels(ctx, SentinelMaster).Result()
			if err != nil || len(peers) != len(s.Sentinels)-1 {
				return false
			}
			replicas, err := c.Replicas(ctx, SentinelMaster).Result()
			return err == nil && len(replicas) == 1 && replicas[0]["flags"] == "slave"
		})
	}
	return s
}

// Addrs are the sentinels' host:port.
func (s *Sentinel) Addrs() []string {
	var addrs []string
	for _, sn := range s.Sentinels {
		addrs = append(addrs, sn.Addr())
	}
	return addrs
}

// SwitchMaster returns a channel that receives the new master's host:port
// each time a sentinel announces a failover (+switch-master). It listens
// from before it returns.
func (s *Sentinel) SwitchMaster(t testing.TB) <-chan string {
	t.Helper()
	ps := s.Sentinels[0].SentinelClient(t).Subscribe(context.Background(), "+switch-master")
	if _, err := ps.Receive(context.Background()); err != nil {
		t.Fatalf("subscribe +switch-master: %v", err)
	}
	t.Cleanup(func() { ps.Close() })
	out := make(chan string, 4)
	go func() {
		// +switch-master <name> <old ip> <old port> <new ip> <new port>
		for m := range ps.Channel() {
			if f := strings.Fields(m.Payload); len(f) == 5 && f[0] == SentinelMaster {
				select {
				case out <- f[3] + ":" + f[4]:
				default:
				}
			}
		}
	}()
	return out
}

// SentinelClient returns a go-redis client of r, a sentinel process,
// closed at the end of the test.
func (r *Redis) SentinelClient(t testing.TB) *redis.SentinelClient {
	c := redis.NewSentinelClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

func portOf(r *Redis) string { return fmt.Sprint(r.port) }
