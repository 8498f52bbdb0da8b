package pubsub_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/pubsub"
)

// BenchmarkClusterShards offers the same load, b.N 128-byte messages
// spread evenly over 300 channels by 64 publishing goroutines, to one
// broker publishing and another (a second node) subscribed to every
// channel, on a standalone Redis and on a three-master Redis Cluster, and
// reports the messages delivered per second. On the cluster it reports, per
// master, its share of the pub/sub commands (SPUBLISH calls) and of the
// client bytes in and out; "classic" does the same load with plain
// PUBLISH and SUBSCRIBE through go-redis's ClusterClient, for comparison,
// and reports each master's share of the messages it handled, as a PUBLISH
// or over the cluster bus.
//
//	go test -run '^$' -bench BenchmarkClusterShards -benchtime 100000x ./pubsub
func BenchmarkClusterShards(b *testing.B) {
	const channels, publishers = 300, 64
	names := make([]string, channels)
	for i := range names {
		names[i] = fmt.Sprintf("load%d", i)
	}
	m := pubsub.Message{Origin: "bench", Payload: make([]byte, 128)}
	run := func(b *testing.B, publish func(ch string) error, wait func(n int64)) float64 {
		var next atomic.Int64
		start := time.Now()
		var wg sync.WaitGroup
		for range publishers {
			wg.Go(func() {
				for {
					i := next.Add(1) - 1
					if i >= int64(b.N) {
						return
					}
					if err := publish(names[i%channels]); err != nil {
						panic(fmt.Sprint(err))
					}
				}
			})
		}
		wg.Wait()
		wait(int64(b.N))
		rate := float64(b.N) / time.Since(start).Seconds()
		b.ReportMetric(rate, "delivered/s")
		return rate
	}
	brokers := func(b *testing.B, cfg pubsub.RedisConfig) (pub *pubsub.Redis, wait func(int64)) {
		cfg.ProbeInterval = time.Hour // the load alone on the masters
		pub, sub := newRedis(b, cfg), newRedis(b, cfg)
		var got atomic.Int64
		done := make(chan struct{}, 1)
		var want atomic.Int64
		for _, ch := range names {
			stop, err := sub.Subscribe(context.Background(), ch, func(pubsub.Message) {
				if got.Add(1) == want.Load() {
					done <- struct{}{}
				}
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(stop)
		}
		return pub, func(n int64) {
			want.Store(n)
			if got.Load() >= n {
				return
			}
			select {
			case <-done:
			case <-time.After(time.Minute):
				b.Fatalf("delivered %d of %d", got.Load(), n)
			}
		}
	}
	// shares reports each master's share of what report counts.
	shares := func(b *testing.B, unit string, v []int64, total int64) {
		top := 0.0
		for i, n := range v {
			s := 100 * float64(n) / float64(total)
			b.ReportMetric(s, fmt.Sprintf("shard%d-%s-%%", i, unit))
			top = max(top, s)
		}
		b.ReportMetric(top, "max-"+unit+"-%")
	}

	b.Run("standalone", func(b *testing.B) {
		pub, wait := brokers(b, redisConfig(testenv.StartRedis(b)))
		b.ResetTimer()
		run(b, func(ch string) error { return pub.Publish(context.Background(), ch, m) }, wait)
	})
	b.Run("cluster=3/sharded", func(b *testing.B) {
		c := testenv.StartCluster(b, 3, 0)
		pub, wait := brokers(b, clusterConfig(c))
		before := traffic(b, c)
		b.ResetTimer()
		run(b, func(ch string) error { return pub.Publish(context.Background(), ch, m) }, wait)
		b.StopTimer()
		after := traffic(b, c)
		var cmds, bytes []int64
		var allCmds, allBytes int64
		for i := range c.Nodes {
			n := after[i].Calls["spublish"] - before[i].Calls["spublish"]
			nb := after[i].In + after[i].Out - before[i].In - before[i].Out
			cmds, bytes = append(cmds, n), append(bytes, nb)
			allCmds, allBytes = allCmds+n, allBytes+nb
		}
		shares(b, "cmd", cmds, allCmds)
		shares(b, "bytes", bytes, allBytes)
	})
	b.Run("cluster=3/classic", func(b *testing.B) {
		c := testenv.StartCluster(b, 3, 0)
		cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{c.Nodes[0].Addr()}, PoolSize: publishers})
		b.Cleanup(func() { cc.Close() })
		var full []string
		for _, ch := range names {
			full = append(full, "relay:"+ch)
		}
		ps := cc.Subscribe(context.Background(), full...)
		b.Cleanup(func() { ps.Close() })
		for range full {
			if _, err := ps.ReceiveTimeout(context.Background(), 10*time.Second); err != nil {
				b.Fatal(err)
			}
		}
		var got atomic.Int64
		more := make(chan struct{}, 1) // a message arrived
		go func() {
			for range ps.Channel(redis.WithChannelSize(1 << 16)) {
				got.Add(1)
				select {
				case more <- struct{}{}:
				default:
				}
			}
		}()
		before := traffic(b, c)
		data := m.AppendEnvelope(nil)
		b.ResetTimer()
		run(b, func(ch string) error { return cc.Publish(context.Background(), "relay:"+ch, data).Err() }, func(n int64) {
			deadline := time.NewTimer(time.Minute)
			defer deadline.Stop()
			for got.Load() < n {
				select {
				case <-more:
				case <-deadline.C:
					b.Fatalf("delivered %d of %d", got.Load(), n)
				}
			}
		})
		b.StopTimer()
		after := traffic(b, c)
		var handled []int64
		for i := range c.Nodes {
			handled = append(handled, after[i].Calls["publish"]-before[i].Calls["publish"]+after[i].BusPublishes-before[i].BusPublishes)
		}
		shares(b, "msgs", handled, int64(b.N))
	})
}

func traffic(b *testing.B, c *testenv.Cluster) []testenv.Traffic {
	var t []testenv.Traffic
	for _, r := range c.Nodes {
		t = append(t, r.Traffic(b, "spublish", "publish"))
	}
	return t
}
