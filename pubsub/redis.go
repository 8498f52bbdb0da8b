package pubsub

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/relay-pubsub/relay/internal/rawio"
)

// RedisConfig configures the Redis broker. Field tags document the
// environment variables of cmd/relay.
type RedisConfig struct {
	// URL is the Redis to connect to: redis://[user:password@]host:port/db,
	// rediss:// for TLS, or unix:///path.
	URL string `envconfig:"REDIS_URL" desc:"Redis URL (redis://host:6379/0, rediss:// for TLS); empty runs the embedded in-memory broker (one node)"`
	// Prefix is put before every channel name to form the Redis channel.
	Prefix string `envconfig:"CHANNEL_PREFIX" default:"relay:" desc:"prefix of the Redis channel of every Relay channel (PUBLISH {prefix}{channel})"`
	// Subscribers is the number of dedicated Redis connections that carry
	// the node's subscriptions; channels are spread over them by hash.
	Subscribers int `envconfig:"REDIS_SUBSCRIBERS" default:"2" desc:"Redis connections that carry this node's channel subscriptions (1-64)"`
	// Pipelines is the number of Redis connections that send publishes;
	// each sends whatever is pending as one pipeline.
	Pipelines int `envconfig:"REDIS_PIPELINES" default:"2" desc:"Redis connections that send publishes, each pipelining all that is pending (1-64)"`
	// Timeout bounds one Redis operation (dial, publish round trip).
	Timeout time.Duration `envconfig:"REDIS_TIMEOUT" default:"3s" desc:"bound on one Redis operation: dial, publish round trip, subscribe"`
	// ProbeInterval is how often the broker publishes a probe to each of
	// its subscriber connections, through the same pipelines as every
	// publish, and expects it back on that connection. Zero means 5s.
	ProbeInterval time.Duration `envconfig:"REDIS_PROBE_INTERVAL" default:"5s" desc:"how often a probe goes through each Redis subscriber connection to prove it still delivers (at least 10ms)"`
	// ProbeTimeout is how long a probe may take to come back. A subscriber
	// connection whose probe does not is torn down, opened again and
	// every channel it carries subscribed again. Zero means 3s.
	ProbeTimeout time.Duration `envconfig:"REDIS_PROBE_TIMEOUT" default:"3s" desc:"a Redis subscriber connection whose probe is not back within this is torn down, reconnected and resubscribed (at least 10ms)"`
	// Instance names this broker in its probe channels,
	// {Prefix}__relay_probe:{Instance}:{shard}; it should be unique among
	// the brokers of one Redis, such as the node ID. Empty means a random ID.
	Instance string `ignored:"true"`
}

// Defaults of RedisConfig's zero durations.
const (
	defaultProbeInterval = 5 * time.Second
	defaultProbeTimeout  = 3 * time.Second
	minProbe             = 10 * time.Millisecond
)

// Validate reports the first invalid field, naming its variable. An empty
// URL is valid: the node then runs the in-memory broker.
func (c *RedisConfig) Validate() error {
	if c.Subscribers < 1 || c.Subscribers > 64 {
		return fmt.Errorf("RELAY_REDIS_SUBSCRIBERS: %d; want 1-64", c.Subscribers)
	}
	if c.Pipelines < 1 || c.Pipelines > 64 {
		return fmt.Errorf("RELAY_REDIS_PIPELINES: %d; want 1-64", c.Pipelines)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("RELAY_REDIS_TIMEOUT: %v; want a positive duration such as 3s", c.Timeout)
	}
	if c.ProbeInterval != 0 && c.ProbeInterval < minProbe {
		return fmt.Errorf("RELAY_REDIS_PROBE_INTERVAL: %v; want a duration of at least %v such as 5s", c.ProbeInterval, minProbe)
	}
	if c.ProbeTimeout != 0 && c.ProbeTimeout < minProbe {
		return fmt.Errorf("RELAY_REDIS_PROBE_TIMEOUT: %v; want a duration of at least %v such as 3s", c.ProbeTimeout, minProbe)
	}
	if c.URL != "" {
		if _, err := redis.ParseURL(c.URL); err != nil {
			return fmt.Errorf("RELAY_REDIS_URL: %w; want redis://host:port/db, rediss:// or unix://", err)
		}
	}
	return nil
}

// probePrefix starts the name of every probe channel (after the prefix).
// Channels named so are the broker's own: Publish and Subscribe refuse them.
const probePrefix = "__relay_probe:"

var errReserved = errors.New("channel name reserved for the broker's probes (" + probePrefix + "...)")

// Redis is a Broker that relays through Redis PUBLISH and SUBSCRIBE.
//
// A node holds one Redis subscription per channel with local interest,
// reference-counted over all handlers of that channel, on one of a fixed
// number of subscriber connections (shards). Publishes from many goroutines
// are pipelined over a few connections.
//
// Run starts the broker's goroutines: one per subscriber connection
// (shard), which owns that connection and replaces it when it fails, and a
// prober. The prober publishes a probe to each shard's own probe channel
// every ProbeInterval; a shard whose probe is not back within ProbeTimeout is
// torn down and reconnected the same way, so a connection that stopped
// delivering without an error does not go unnoticed. A shard that
// resubscribes reports the gap: once its new connection has every
// subscription confirmed, each handler of every channel that was live
// before the loss receives a Message with Gap set, however many connection
// attempts it took; messages published to those channels between the loss
// and the gap event may never have been delivered. Stats.Resubscribes
// counts the gaps. Health and Stats report the state without touching the
// network.
//
// Publishing needs no goroutine of the broker: a publisher that finds a
// pipeline idle sends the round trip itself, carrying whatever other
// publishers queued meanwhile (see pipeline.go).
//
// NewRedis starts no goroutine; Run runs them until its ctx ends or Close,
// and waits for them; Close releases the Redis connections.
type Redis struct {
	cfg    RedisConfig
	log    *slog.Logger
	client *redis.Client
	shards []*shard
	pipes  []*pipeline
	nonce  string        // tells this broker's probes from any other's
	epochs atomic.Uint64 // names new epochs of history (history.go)

	// probeBack wakes the prober when a probe came back.
	probeBack chan struct{}
	stats     redisCounters
	metrics   []redisMetric // Stats for Prometheus (metrics.go)

	pubMu  sync.Mutex
	pubErr error // error of the last publish round trip, nil after a success

	ctx      context.Context // canceled by stop; bounds dials and writes
	cancel   context.CancelFunc
	closing  chan struct{} // closed by stop
	stopOnce sync.Once

	runMu   sync.Mutex
	started bool           // Run was called
	stopped bool           // stop was called: Run starts nothing
	wg      sync.WaitGroup // Run's goroutines; added to under runMu while !stopped

	closeOnce sync.Once
}

// RedisStats are the Redis broker's counters since NewRedis. Every field
// only grows.
type RedisStats struct {
	// Reconnects counts subscriber connections opened again after one was
	// lost or torn down.
	Reconnects uint64
	// Resubscribes counts the times a shard subscribed its channels again
	// on a new connection: each one is a gap in which messages of those
	// channels may have been lost (each handler gets a Message with Gap set).
	Resubscribes uint64
	// ProbeFailures counts probes that did not come back in time, could not
	// be published, or subscriber connections whose subscriptions were not
	// confirmed within ProbeTimeout.
	ProbeFailures uint64
	// Teardowns counts subscriber connections closed by the broker because
	// of a probe failure.
	Teardowns uint64
	// PublishErrors counts messages whose Publish failed at Redis (probes
	// not included).
	PublishErrors uint64
	// Pipelines counts publish round trips to Redis, each carrying one or
	// more messages (probes included).
	Pipelines uint64
	// Published counts messages Redis accepted (probes not included).
	Published uint64
}

type redisCounters struct {
	reconnects, resubscribes, probeFailures, teardowns atomic.Uint64
	publishErrors, pipelines, published                atomic.Uint64
}

// NewRedis validates cfg and returns a broker for the Redis at cfg.URL. It
// does not wait for Redis: a broker made while Redis is down answers
// ErrUnavailable until Redis is back.
func NewRedis(cfg RedisConfig, log *slog.Logger) (*Redis, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opt, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("RELAY_REDIS_URL: %w", err)
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = defaultProbeInterval
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = defaultProbeTimeout
	}
	nonce := rand.Text()
	if cfg.Instance == "" {
		cfg.Instance = nonce[:12]
	}
	opt.DialTimeout = cfg.Timeout
	opt.ReadTimeout = cfg.Timeout
	opt.WriteTimeout = cfg.Timeout
	opt.PoolTimeout = cfg.Timeout // a publish's wait for a connection (pipeline.go)
	opt.PoolSize = cfg.Pipelines + cfg.Subscribers + 4
	opt.MaxRetries = -1 // a publish is acknowledged once, never replayed
	// The broker owns its connections' lives: it replaces a failed or
	// silent subscriber connection itself and reports the gap. go-redis's
	// maintenance notifications (a Redis Enterprise handoff of connections
	// during upgrades, on by default) would move connections behind its
	// back, cost every new connection a refused command on other servers,
	// and start goroutines in redis.NewClient, before Run.
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	// Publish round trips and subscriber connections read and write with
	// raw system calls (internal/rawio): each message wakes a node from
	// idle, and Go's own reads would wake the runtime's monitor thread too.
	dial := redis.NewDialer(opt)
	opt.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return rawio.Wrap(c), nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Redis{
		cfg:       cfg,
		log:       log,
		client:    redis.NewClient(opt),
		nonce:     nonce,
		probeBack: make(chan struct{}, 1),
		metrics:   newRedisMetrics(),
		ctx:       ctx,
		cancel:    cancel,
		closing:   make(chan struct{}),
	}
	for range cfg.Pipelines {
		b.pipes = append(b.pipes, &pipeline{b: b, pipe: b.client.Pipeline()})
	}
	for i := range cfg.Subscribers {
		b.shards = append(b.shards, newShard(b, i))
	}
	return b, nil
}

// Run runs the broker's goroutines until ctx ends or Close is called, and
// returns nil once they all exited. When ctx ends, the broker stops as on
// Close: its methods return ErrClosed, and Close still releases its Redis
// connections. Subscribe needs Run (a subscription is confirmed on a shard's
// goroutine); Publish does not. Called after Close, Run returns nil at
// once; called twice, it returns an error.
func (b *Redis) Run(ctx context.Context) error {
	b.runMu.Lock()
	switch {
	case b.stopped:
		b.runMu.Unlock()
		return nil // closed before it ran: nothing to run
	case b.started:
		b.runMu.Unlock()
		return errors.New("redis broker: Run called twice")
	}
	b.started = true
	for _, sh := range b.shards {
		b.wg.Go(sh.run)
	}
	b.wg.Go(b.prober)
	b.runMu.Unlock()
	select {
	case <-ctx.Done():
	case <-b.closing:
	}
	b.stop()
	b.wg.Wait()
	return nil
}

// stop makes every goroutine of the broker return and fails the calls
// waiting for Redis; it does not wait.
func (b *Redis) stop() {
	b.stopOnce.Do(func() {
		b.runMu.Lock()
		b.stopped = true
		b.runMu.Unlock()
		close(b.closing)
		b.cancel()
		for _, sh := range b.shards {
			sh.mu.Lock()
			ps := sh.ps
			sh.mu.Unlock()
			if ps != nil {
				// Its receiver returns. Outside mu: PubSub.Close waits
				// for a write in flight.
				ps.Close()
			}
		}
	})
}

// Subscribe registers h for channel; it returns once Redis confirmed the
// node's subscription of the channel. While a subscriber connection is
// being replaced, it waits for the new one, up to the configured Timeout;
// while Redis cannot be reached, it makes the shard try at once and fails
// with ErrUnavailable when that attempt fails. Before Run, nothing confirms
// it: it fails with ErrUnavailable after the Timeout. stop writes nothing:
// the shard's goroutine unsubscribes the channel after its last handler.
func (b *Redis) Subscribe(ctx context.Context, channel string, h Handler) (func(), error) {
	select {
	case <-b.closing:
		return nil, ErrClosed
	default:
	}
	if strings.HasPrefix(channel, probePrefix) {
		return nil, fmt.Errorf("subscribe %q: %w", channel, errReserved)
	}
	sh := b.shards[shardOf(channel, len(b.shards))]
	sub := &redisSub{h: h}
	rc, down := sh.add(channel, sub)
	stop := sync.OnceFunc(func() { sh.remove(channel, sub) })
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	select {
	case <-rc.ready:
		return stop, nil
	case <-down:
		stop()
		return nil, fmt.Errorf("subscribe %q: %w: %w", channel, ErrUnavailable, sh.lastErr())
	case <-ctx.Done():
		stop()
		return nil, fmt.Errorf("subscribe %q: %w: no confirmation from Redis: %w", channel, ErrUnavailable, ctx.Err())
	case <-b.closing:
		stop()
		return nil, ErrClosed
	}
}

// Ping reports whether Redis answers.
func (b *Redis) Ping(ctx context.Context) error {
	if err := b.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

// Health implements HealthChecker from cached state, without I/O. It
// returns an error wrapping ErrUnavailable when a subscriber connection is
// down, being replaced or not yet resubscribed, when the last probe of a
// subscriber connection failed, or when the last publish round trip
// failed; and ErrClosed after Close.
func (b *Redis) Health() error {
	select {
	case <-b.closing:
		return ErrClosed
	default:
	}
	var why []string
	for _, sh := range b.shards {
		sh.hmu.Lock()
		if sh.status != "" {
			why = append(why, fmt.Sprintf("subscriber connection %d: %s", sh.idx, sh.status))
		}
		if sh.probeErr != nil {
			why = append(why, fmt.Sprintf("subscriber connection %d: probe: %v", sh.idx, sh.probeErr))
		}
		sh.hmu.Unlock()
	}
	b.pubMu.Lock()
	if b.pubErr != nil {
		why = append(why, fmt.Sprintf("publish: %v", b.pubErr))
	}
	b.pubMu.Unlock()
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrUnavailable, strings.Join(why, "; "))
}

// Stats returns the broker's counters. It is cheap: a few atomic loads.
func (b *Redis) Stats() RedisStats {
	s := &b.stats
	return RedisStats{
		Reconnects:    s.reconnects.Load(),
		Resubscribes:  s.resubscribes.Load(),
		ProbeFailures: s.probeFailures.Load(),
		Teardowns:     s.teardowns.Load(),
		PublishErrors: s.publishErrors.Load(),
		Pipelines:     s.pipelines.Load(),
		Published:     s.published.Load(),
	}
}

// Close stops the broker's goroutines, waits for them and closes its Redis
// connections. Publishes and Subscribes waiting for Redis get ErrClosed.
func (b *Redis) Close() error {
	b.closeOnce.Do(func() {
		b.stop()
		b.wg.Wait()
		b.client.Close()
	})
	return nil
}

func shardOf(channel string, n int) int {
	if n == 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(channel))
	return int(h.Sum32() % uint32(n))
}
