package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
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
	addrs           []string // the sentinels'
}

// StartSentinel starts a master, its replica once it is in sync, and
// three sentinels, and returns once every sentinel knows the replica and
// the two other sentinels: a failover can then happen. It fails t with an
// install hint without redis-server.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(redisHint)
	}
	// Without a delay before the first sync (5 s by default), the replica
	// is in sync at once.
	noDelay := []string{"--repl-diskless-sync-delay", "0"}
	s := &Sentinel{Master: startRedis(t, bin, noDelay...)}
	master := strconv.Itoa(s.Master.Port())
	s.Replica = startRedis(t, bin, append(noDelay, "--replicaof", "127.0.0.1", master)...)
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
			SentinelMaster, master, SentinelDownAfter.Milliseconds(), SentinelFailoverTimeout.Milliseconds())
		// Sentinel rewrites its file: it must be its own and writable.
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		s.addrs = append(s.addrs, startSentinel(t, bin, conf))
	}
	for i := range s.addrs {
		c := s.Client(t, i)
		// Sentinels find each other through hello messages on the master
		// every 2 s, and the replica in the master's INFO.
		WaitFor(t, 30*time.Second, "every sentinel to know the replica and the other sentinels", func() bool {
			peers, err := c.Sentinels(ctx, SentinelMaster).Result()
			if err != nil || len(peers) != len(s.addrs)-1 {
				return false
			}
			replicas, err := c.Replicas(ctx, SentinelMaster).Result()
			return err == nil && len(replicas) == 1 && replicas[0]["flags"] == "slave"
		})
	}
	return s
}

// startSentinel runs redis-server in sentinel mode with the configuration
// file conf on a free port until the end of the test, and returns its
// host:port once it monitors the master.
func startSentinel(t testing.TB, bin, conf string) string {
	t.Helper()
	var lastErr error
	for range 5 { // a free port may be taken before the sentinel binds it
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t)))
		if lastErr = runSentinel(t, bin, conf, addr); lastErr == nil {
			return addr
		}
	}
	t.Fatalf("start redis-server --sentinel: %v", lastErr)
	return ""
}

func runSentinel(t testing.TB, bin, conf, addr string) error {
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, conf, "--sentinel", "--port", port, "--bind", "127.0.0.1", "--logfile", "", "--loglevel", "notice")
	done, err := startUntil(cmd, "+monitor master "+SentinelMaster, "redis-server --sentinel", "monitoring")
	if err != nil {
		return err
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return nil
}

// Addrs are the sentinels' host:port.
func (s *Sentinel) Addrs() []string { return slices.Clone(s.addrs) }

// Client returns a go-redis client of the i-th sentinel, closed at the
// end of the test.
func (s *Sentinel) Client(t testing.TB, i int) *redis.SentinelClient {
	c := redis.NewSentinelClient(&redis.Options{Addr: s.addrs[i], MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

// SwitchMaster returns a channel that receives the new master's host:port
// each time a sentinel announces a failover (+switch-master). It listens
// from before it returns.
func (s *Sentinel) SwitchMaster(t testing.TB) <-chan string {
	t.Helper()
	ps := s.Client(t, 0).Subscribe(context.Background(), "+switch-master")
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
