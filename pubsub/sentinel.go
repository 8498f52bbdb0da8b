package pubsub

import (
	"context"
	"fmt"
	"net"
	"slices"
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
// connections alone, so the broker moves them itself: every connection
// goes through b.dial, which sees the address of each server dialed. When
// a dial goes to a master other than the last one, every shard connected
// to another server is torn down and resubscribes on the new master with
// a gap event. Without that, a shard would stay on an old master that
// Sentinel demoted while alive, a replica that gets what the master
// publishes only while its replication link holds. A shard connected to
// a master that died fails at once, or, if its host vanished without a
// word, within the probe's timeout; one on an old master still up and
// cut off from the sentinels stops receiving what the pipelines publish
// on the new master, and the prober tears it down.
//
// go-redis turns maintenance notifications off for failover clients
// itself (see NewRedis for why the broker wants them off).
func newFailoverClient(b *Redis) *redis.Client {
	cfg := b.cfg
	return redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:       cfg.SentinelMaster,
		SentinelAddrs:    slices.Clone(cfg.SentinelAddrs),
		SentinelPassword: cfg.SentinelPassword,
		Username:         cfg.Username,
		Password:         cfg.Password,
		DB:               cfg.DB,
		DialTimeout:      cfg.Timeout,
		ReadTimeout:      cfg.Timeout,
		WriteTimeout:     cfg.Timeout,
		PoolSize:         cfg.poolSize(),
		MaxRetries:       -1, // a publish is acknowledged once, never replayed
		Dialer:           b.dial,
	})
}

// dialedKey is the context key of a shard's dial: its value, a
// *dialedAddr, receives the address of the server dialed.
type dialedKey struct{}

type dialedAddr struct {
	mu   sync.Mutex
	addr string
}

// dial opens every connection of the Sentinel mode's client, to a
// sentinel or to the master go-redis asked the sentinels for. It
// remembers the master's address, and when that changed, it tears down
// the shards connected elsewhere and cuts short the backoff of those
// waiting to reconnect. A sentinel missing from SentinelAddrs
// (go-redis also dials those the sentinels name) is taken for a master:
// the shards then resubscribe once more than needed, with a gap event.
func (b *Redis) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: b.cfg.Timeout}
	cn, err := d.DialContext(ctx, network, addr)
	if err != nil || slices.Contains(b.cfg.SentinelAddrs, addr) {
		return cn, err
	}
	if at, ok := ctx.Value(dialedKey{}).(*dialedAddr); ok {
		at.mu.Lock()
		at.addr = addr
		at.mu.Unlock()
	}
	b.masterMu.Lock()
	moved := b.master != "" && b.master != addr
	b.master = addr
	b.masterMu.Unlock()
	if moved {
		b.log.Warn("redis master moved: subscriber connections follow", "master", addr)
		for _, sh := range b.shards {
			sh.leave(addr)
			// A shard that lost the old master retries now, not after
			// its backoff (up to 2 s).
			signal(sh.retry)
		}
	}
	return cn, nil
}

// currentMaster returns the address of the master dialed last, "" before
// the first dial or outside the Sentinel mode.
func (b *Redis) currentMaster() string {
	b.masterMu.Lock()
	defer b.masterMu.Unlock()
	return b.master
}

// leave tears down the shard's connection if it leads to a server other
// than master.
func (sh *shard) leave(master string) {
	sh.mu.Lock()
	ps, addr := sh.ps, sh.addr
	sh.mu.Unlock()
	if ps != nil && addr != master {
		sh.breakConn(ps, fmt.Errorf("the Redis master moved from %s to %s", addr, master), false)
	}
}

// poolSize is the size of the client's connection pool: the pipelines',
// the shards' and a few for history reads and pings.
func (c *RedisConfig) poolSize() int { return c.Pipelines + c.Subscribers + 4 }
