package pubsub

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/redis/go-redis/v9"
)

// newFailoverClient returns the client of the Sentinel mode: a
// *redis.Client whose every new connection goes to the master the
// sentinels name at that moment, so that the shards, pipelines, probes
// and history work on it as on one Redis.
//
// On a failover, go-redis learns the new master from the sentinels'
// +switch-master event (or from its next dial) and closes the connections
// of its command pools that lead elsewhere; those in use fail, and their
// publishes are answered ErrOutcomeUnknown. It leaves the subscriber
// connections alone, so the broker moves them itself: a dial hook sees
// the server of every new connection to a master (the sentinels' have
// clients of their own, without it). When a connection goes to a master
// other than the last one, every shard connected to another server is
// torn down and resubscribes on the new master with a gap event. Without
// that, a shard would stay on an old master that Sentinel demoted while
// alive, a replica that gets what the master publishes only while its
// replication link holds. A shard connected to a master that died fails
// at once, or, if its host vanished without a word, within the probe's
// timeout; one on an old master still up and cut off from the sentinels
// stops receiving what the pipelines publish on the new master, and the
// prober tears it down.
//
// go-redis turns maintenance notifications off for failover clients
// itself (see NewRedis for why the broker wants them off).
func newFailoverClient(b *Redis) *redis.Client {
	cfg := b.cfg
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:       cfg.SentinelMaster,
		SentinelAddrs:    cfg.SentinelAddrs,
		SentinelPassword: cfg.SentinelPassword,
		Username:         cfg.Username,
		Password:         cfg.Password,
		DB:               cfg.DB,
		DialTimeout:      cfg.Timeout,
		ReadTimeout:      cfg.Timeout,
		WriteTimeout:     cfg.Timeout,
		PoolSize:         cfg.poolSize(),
		PoolTimeout:      cfg.Timeout, // a publish's wait for a connection (pipeline.go)
		MaxRetries:       -1,          // a publish is acknowledged once, never replayed
		Dialer:           rawDialer(redis.NewDialer(&redis.Options{DialTimeout: cfg.Timeout})),
	})
	c.AddHook(masterHook{b})
	return c
}

// dialedKey is the context key of a shard's dial: its value, a
// *dialedAddr, receives the address of the server dialed.
type dialedKey struct{}

type dialedAddr struct {
	mu   sync.Mutex
	addr string
}

// masterHook watches the dials of the Sentinel mode's client: each one
// goes to the master go-redis asked the sentinels for.
type masterHook struct{ b *Redis }

func (h masterHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		cn, err := next(ctx, network, addr)
		if err == nil {
			h.b.dialed(ctx, cn.RemoteAddr().String())
		}
		return cn, err
	}
}

func (masterHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (masterHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// dialed records that a connection to the master at addr was opened. When
// the master moved, it has the shards connected elsewhere torn down and
// cuts short the backoff of those waiting to reconnect.
func (b *Redis) dialed(ctx context.Context, addr string) {
	if at, ok := ctx.Value(dialedKey{}).(*dialedAddr); ok {
		at.mu.Lock()
		at.addr = addr
		at.mu.Unlock()
	}
	b.masterMu.Lock()
	moved := b.master != "" && b.master != addr
	b.master = addr
	b.masterMu.Unlock()
	if !moved {
		return
	}
	b.log.Warn("redis master moved: subscriber connections follow", "master", addr)
	// Each shard's run goroutine tears its connection down: this dial may
	// come from inside a shard's PubSub, which holds its lock, and
	// PubSub.Close takes it. A shard that lost the old master retries
	// now, not after its backoff (up to 2 s).
	for _, sh := range b.shards {
		signal(sh.follow)
		signal(sh.retry)
	}
}

// currentMaster returns the address of the master dialed last, "" before
// the first dial or outside the Sentinel mode.
func (b *Redis) currentMaster() string {
	b.masterMu.Lock()
	defer b.masterMu.Unlock()
	return b.master
}

// leave tears down the shard's connection if it leads to a server other
// than master; only run calls it.
func (sh *shard) leave(master string) {
	sh.mu.Lock()
	ps, addr := sh.ps, sh.psAddr
	sh.mu.Unlock()
	if ps != nil && addr != master {
		sh.breakConn(ps, fmt.Errorf("the Redis master moved from %s to %s", addr, master), false)
	}
}

// poolSize is the size of the client's connection pool: the pipelines',
// the shards' and a few for history reads and pings.
func (c *RedisConfig) poolSize() int { return c.Pipelines + c.Subscribers + 4 }
