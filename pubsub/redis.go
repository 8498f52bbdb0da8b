package pubsub

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"slices"
	"strconv"
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
	URL string `envconfig:"REDIS_URL" desc:"Redis URL (redis://host:6379/0, rediss:// for TLS); empty, with no other Redis mode set, runs the embedded in-memory broker (one node)"`
	// SentinelAddrs, instead of URL, runs the broker on the master that
	// Redis Sentinel names: the sentinels to ask, host:port each. The
	// broker follows the master through failovers.
	SentinelAddrs []string `envconfig:"REDIS_SENTINEL_ADDRS" desc:"Sentinel mode, instead of RELAY_REDIS_URL: comma-separated host:port of the Redis Sentinels that name the master"`
	// SentinelMaster is the name the sentinels monitor the master under.
	SentinelMaster string `envconfig:"REDIS_SENTINEL_MASTER" desc:"Sentinel mode: the master's name in the sentinels' configuration (sentinel monitor NAME ...)"`
	// SentinelPassword authenticates the broker to the sentinels.
	SentinelPassword string `envconfig:"REDIS_SENTINEL_PASSWORD" desc:"Sentinel mode: password of the sentinels (their requirepass); empty = none"`
	// Username, Password and DB are those of the Redis servers in Sentinel
	// mode; in standalone mode they are part of URL.
	Username string `envconfig:"REDIS_USERNAME" desc:"Sentinel mode: ACL user of the Redis servers; empty = default (standalone: put it in RELAY_REDIS_URL)"`
	Password string `envconfig:"REDIS_PASSWORD" desc:"Sentinel mode: password of the Redis servers; empty = none (standalone: put it in RELAY_REDIS_URL)"`
	DB       int    `envconfig:"REDIS_DB" default:"0" desc:"Sentinel mode: database number (standalone: put it in RELAY_REDIS_URL)"`
	// ClusterAddrs are the seed nodes of a Redis Cluster, comma-separated:
	// host:port, or redis://[user:password@]host:port (rediss:// for TLS),
	// whose user, password and TLS, from the first seed, apply to every
	// node. The broker then uses sharded pub/sub (cluster.go).
	ClusterAddrs string `envconfig:"REDIS_CLUSTER_ADDRS" desc:"Redis Cluster seed nodes, comma-separated host:port or redis://[user:password@]host:port (rediss:// for TLS; credentials and TLS of the first seed apply to all); uses sharded pub/sub (SPUBLISH); excludes RELAY_REDIS_URL"`
	// Prefix is put before every channel name to form the Redis channel.
	Prefix string `envconfig:"CHANNEL_PREFIX" default:"relay:" desc:"prefix of the Redis channel of every Relay channel (PUBLISH {prefix}{channel}; SPUBLISH on a Redis Cluster)"`
	// Subscribers is the number of dedicated Redis connections that carry
	// the node's subscriptions; channels are spread over them by hash. In
	// cluster mode it is not used: one connection per master carries the
	// channels of that master's slots.
	Subscribers int `envconfig:"REDIS_SUBSCRIBERS" default:"2" desc:"Redis connections that carry this node's channel subscriptions (1-64); on a Redis Cluster, one per master instead"`
	// Pipelines is the number of Redis connections that send publishes;
	// each sends whatever is pending as one pipeline.
	Pipelines int `envconfig:"REDIS_PIPELINES" default:"2" desc:"Redis connections that send publishes, each pipelining all that is pending (1-64); on a standalone Redis as many again send raw-mode publishes without waiting for the answers"`
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

// Validate reports the first invalid field, naming its variable. No Redis
// mode at all (no URL, SentinelAddrs nor ClusterAddrs) is valid: the node
// then runs the in-memory broker.
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
	if err := c.validateCluster(); err != nil {
		return err
	}
	if c.URL != "" {
		if _, err := redis.ParseURL(c.URL); err != nil {
			return fmt.Errorf("RELAY_REDIS_URL: %w; want redis://host:port/db, rediss:// or unix://", err)
		}
	}
	return c.validateSentinel()
}

// validateSentinel checks the Sentinel mode's variables: one mode at a
// time, and a master name with the sentinels.
func (c *RedisConfig) validateSentinel() error {
	sentinel := len(c.SentinelAddrs) > 0
	switch {
	case sentinel && c.URL != "":
		return errors.New("RELAY_REDIS_URL and RELAY_REDIS_SENTINEL_ADDRS are both set; want one Redis mode: RELAY_REDIS_URL (standalone) or RELAY_REDIS_SENTINEL_ADDRS with RELAY_REDIS_SENTINEL_MASTER (Sentinel)")
	case sentinel && c.SentinelMaster == "":
		return errors.New("RELAY_REDIS_SENTINEL_ADDRS is set without RELAY_REDIS_SENTINEL_MASTER; want the master's name in the sentinels' configuration (sentinel monitor NAME ...)")
	case !sentinel && c.SentinelMaster != "":
		return errors.New("RELAY_REDIS_SENTINEL_MASTER is set without RELAY_REDIS_SENTINEL_ADDRS; want the sentinels' host:port, comma-separated")
	case !sentinel && c.SentinelPassword != "":
		return errors.New("RELAY_REDIS_SENTINEL_PASSWORD is set without RELAY_REDIS_SENTINEL_ADDRS")
	case c.URL != "" && (c.Username != "" || c.Password != "" || c.DB != 0):
		return errors.New("RELAY_REDIS_USERNAME, RELAY_REDIS_PASSWORD or RELAY_REDIS_DB is set with RELAY_REDIS_URL; want them in the URL: redis://user:password@host:port/db")
	case c.DB < 0:
		return fmt.Errorf("RELAY_REDIS_DB: %d; want a database number, 0 or more", c.DB)
	}
	for _, a := range c.SentinelAddrs {
		if _, port, err := net.SplitHostPort(strings.TrimSpace(a)); err != nil || port == "" {
			return fmt.Errorf("RELAY_REDIS_SENTINEL_ADDRS: %q; want host:port, comma-separated", a)
		}
	}
	return nil
}

// Enabled reports whether a Redis is configured, in any mode; without one
// a node runs the in-memory broker.
func (c *RedisConfig) Enabled() bool {
	return c.URL != "" || len(c.SentinelAddrs) > 0 || c.ClusterAddrs != ""
}

// probePrefix starts the name of every probe channel (after the prefix).
// Channels named so are the broker's own: Publish and Subscribe refuse them.
const probePrefix = "__relay_probe:"

var errReserved = errors.New("channel name reserved for the broker's probes (" + probePrefix + "...)")

// admit is the check every publish and subscribe starts with: ErrClosed
// after Close, and a refusal, naming op, of the probes' channels.
func (b *Redis) admit(op, channel string) error {
	select {
	case <-b.closing:
		return ErrClosed
	default:
	}
	if strings.HasPrefix(channel, probePrefix) {
		return fmt.Errorf("%s %q: %w", op, channel, errReserved)
	}
	return nil
}

// Redis is a Broker that relays through Redis PUBLISH and SUBSCRIBE, or on
// a Redis Cluster through SPUBLISH and SSUBSCRIBE (cluster.go).
//
// A node holds one Redis subscription per channel with local interest,
// reference-counted over all handlers of that channel, on one of a fixed
// number of subscriber connections (shards), or in cluster mode on the
// connection to the master of the channel's hash slot. Publishes from many goroutines
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
	client redis.UniversalClient
	// cluster is the view of a Redis Cluster (cluster.go); nil for a
	// standalone Redis.
	cluster *clusterState
	shards  []*shard // standalone: the fixed subscriber connections
	pipes   []*pipeline
	// later are the lanes of PublishLater (later.go), none where it
	// cannot run; laterDial opens their connections and laterAuth is
	// what each sends first.
	later     []*laterLane
	laterDial func(context.Context) (net.Conn, error)
	laterAuth []byte
	nonce     string        // tells this broker's probes from any other's
	epochs    atomic.Uint64 // names new epochs of history (history.go)

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

	// master is the address of the master dialed last, in Sentinel mode
	// (sentinel.go).
	masterMu sync.Mutex
	master   string
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
	// Moves counts, in cluster mode, live channels moved to the
	// subscriber connection of another master (or subscribed again on the
	// same one) because their hash slot moved or their master failed
	// over: each one is a gap, reported to its handlers as Resubscribes'.
	Moves uint64
}

type redisCounters struct {
	reconnects, resubscribes, probeFailures, teardowns atomic.Uint64
	publishErrors, pipelines, published, moves         atomic.Uint64
}

// NewRedis validates cfg and returns a broker for the Redis at cfg.URL, or
// for the master the sentinels of cfg.SentinelAddrs name, or for the Redis
// Cluster of cfg.ClusterAddrs. It does not wait for Redis: a broker made
// while Redis is down answers ErrUnavailable until Redis is back.
func NewRedis(cfg RedisConfig, log *slog.Logger) (*Redis, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
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
	var cluster *clusterState
	var clusterClient *redis.ClusterClient
	if cfg.ClusterAddrs != "" {
		cc, cl, err := newClusterClient(cfg)
		if err != nil {
			return nil, err
		}
		clusterClient, cluster = cc, cl
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var opt *redis.Options
	if cfg.URL != "" {
		var err error
		if opt, err = redis.ParseURL(cfg.URL); err != nil {
			return nil, fmt.Errorf("RELAY_REDIS_URL: %w", err)
		}
		opt.DialTimeout = cfg.Timeout
		opt.ReadTimeout = cfg.Timeout
		opt.WriteTimeout = cfg.Timeout
		opt.PoolSize = cfg.poolSize()
		opt.MaxRetries = -1 // a publish is acknowledged once, never replayed
		// The broker owns its connections' lives: it replaces a failed or
		// silent subscriber connection itself and reports the gap. go-redis's
		// maintenance notifications (a Redis Enterprise handoff of connections
		// during upgrades, on by default) would move connections behind its
		// back, cost every new connection a refused command on other servers,
		// and start goroutines in redis.NewClient, before Run.
		opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		opt.PoolTimeout = cfg.Timeout // a publish's wait for a connection (pipeline.go)
		opt.Dialer = rawDialer(redis.NewDialer(opt))
	}
	cfg.SentinelAddrs = slices.Clone(cfg.SentinelAddrs)
	for i, a := range cfg.SentinelAddrs {
		cfg.SentinelAddrs[i] = strings.TrimSpace(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Redis{
		cfg:       cfg,
		log:       log,
		cluster:   cluster,
		nonce:     nonce,
		probeBack: make(chan struct{}, 1),
		metrics:   newRedisMetrics(),
		ctx:       ctx,
		cancel:    cancel,
		closing:   make(chan struct{}),
	}
	switch {
	case clusterClient != nil:
		b.client = clusterClient
	case opt != nil:
		b.client = redis.NewClient(opt)
	default:
		b.client = newFailoverClient(b)
	}
	for range cfg.Pipelines {
		b.pipes = append(b.pipes, &pipeline{b: b, pipe: b.client.Pipeline()})
	}
	// Later lanes need a socket of their own: a standalone Redis, not
	// behind TLS (Sentinel's master can move, which only go-redis
	// follows; Cluster's publishes go to each slot's master).
	if laterSupported && opt != nil && opt.TLSConfig == nil {
		dial, network, addr := redis.NewDialer(opt), opt.Network, opt.Addr
		b.laterDial = func(ctx context.Context) (net.Conn, error) { return dial(ctx, network, addr) }
		b.laterAuth = laterAuth(opt.Username, opt.Password)
		for range cfg.Pipelines {
			b.later = append(b.later, &laterLane{b: b})
		}
	}
	if cluster == nil {
		for i := range cfg.Subscribers {
			sh := newShard(b, i)
			sh.probeChan = cfg.Prefix + probePrefix + cfg.Instance + ":" + strconv.Itoa(i)
			b.shards = append(b.shards, sh)
		}
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
	if b.cluster != nil {
		b.wg.Go(b.topology)
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
		for _, sh := range b.shardList() {
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
	if err := b.admit("subscribe", channel); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	sub := &redisSub{h: h}
	var sh *shard
	var rc *redisChan
	var down <-chan struct{}
	var stop func()
	if b.cluster != nil {
		var err error
		if sh, rc, down, err = b.clusterSubscribe(ctx, channel, sub); err != nil {
			return nil, fmt.Errorf("subscribe %q: %w", channel, err)
		}
		stop = sync.OnceFunc(func() { b.clusterUnsubscribe(channel, sub) })
	} else {
		sh = b.shards[shardOf(channel, len(b.shards))]
		rc, down = sh.add(channel, sub)
		stop = sync.OnceFunc(func() { sh.remove(channel, sub) })
	}
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
	if b.cluster != nil {
		why = b.clusterHealth(why)
	}
	for _, sh := range b.shardList() {
		sh.hmu.Lock()
		if sh.status != "" {
			why = append(why, fmt.Sprintf("subscriber connection %s: %s", sh.name(), sh.status))
		}
		if sh.probeErr != nil {
			why = append(why, fmt.Sprintf("subscriber connection %s: probe: %v", sh.name(), sh.probeErr))
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
		Moves:         s.moves.Load(),
	}
}

// Close stops the broker's goroutines, waits for them and closes its Redis
// connections. Publishes and Subscribes waiting for Redis get ErrClosed.
func (b *Redis) Close() error {
	b.closeOnce.Do(func() {
		b.stop()
		b.wg.Wait()
		for _, l := range b.later {
			l.close()
		}
		b.client.Close()
		if b.cluster != nil {
			b.cluster.closeSeeds()
		}
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

// rawDialer makes the connections of dial read and write with raw system
// calls (internal/rawio), in every Redis mode: each message wakes a node
// from idle, and Go's own reads and writes would wake the runtime's
// monitor thread too (docs/BENCHMARKS.md, issue #10).
func rawDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return rawio.Wrap(c), nil
	}
}
