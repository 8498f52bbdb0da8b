package pubsub

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
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
	// OnGap, when set, is called after a subscriber connection was replaced
	// (Redis went away, or a probe did not come back) and the channels it
	// carried are subscribed again. Messages published to those channels
	// between the loss and the call may never have been delivered: the
	// caller can tell the channels' subscribers so, and they can recover
	// from history. It gets the channels that were live before the loss
	// (without Prefix), runs on the shard's receive goroutine and must not
	// block or call into the broker, except Health and Stats. A gap is
	// reported once, when the new connection is live, however many
	// connection attempts it took. Stats.Resubscribes counts the gaps, set
	// or not.
	OnGap func(channels []string) `ignored:"true"`
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

// maxPipeline is the most publishes one pipeline carries.
const maxPipeline = 512

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
// Each shard's goroutine owns its connection: when Redis goes away it opens
// a new one with backoff and subscribes every channel again. A prober
// publishes a probe to each shard's own probe channel every ProbeInterval;
// a shard whose probe is not back within ProbeTimeout is torn down and
// reconnected the same way, so a connection that stopped delivering
// without an error does not go unnoticed. A shard that resubscribes reports
// the gap through Stats.Resubscribes and RedisConfig.OnGap. Health and
// Stats report the state without touching the network.
//
// NewRedis starts the broker's goroutines; Close stops them and waits.
type Redis struct {
	cfg    RedisConfig
	log    *slog.Logger
	client *redis.Client
	shards []*shard
	pubs   chan *pubReq
	nonce  string // tells this broker's probes from any other's

	// probeBack wakes the prober when a probe came back.
	probeBack chan struct{}
	stats     redisCounters

	pubMu  sync.Mutex
	pubErr error // error of the last publish round trip, nil after a success

	ctx     context.Context // canceled by Close; bounds dials and writes
	cancel  context.CancelFunc
	closing chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

// RedisStats are the Redis broker's counters since NewRedis. Every field
// only grows.
type RedisStats struct {
	// Reconnects counts subscriber connections opened again after one was
	// lost or torn down.
	Reconnects uint64
	// Resubscribes counts the times a shard subscribed its channels again
	// on a new connection: each one is a gap in which messages of those
	// channels may have been lost (see RedisConfig.OnGap).
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

type pubReq struct {
	channel string
	data    []byte
	probe   bool
	err     error
	done    chan struct{}
}

var pubReqPool = sync.Pool{New: func() any { return &pubReq{done: make(chan struct{}, 1)} }}

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
	opt.PoolSize = cfg.Pipelines + cfg.Subscribers + 4
	opt.MaxRetries = -1 // a publish is acknowledged once, never replayed
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Redis{
		cfg:       cfg,
		log:       log,
		client:    redis.NewClient(opt),
		pubs:      make(chan *pubReq, maxPipeline),
		nonce:     nonce,
		probeBack: make(chan struct{}, 1),
		ctx:       ctx,
		cancel:    cancel,
		closing:   make(chan struct{}),
	}
	for i := range cfg.Pipelines {
		b.wg.Go(func() { b.pipeline(i) })
	}
	for i := range cfg.Subscribers {
		sh := &shard{
			b:         b,
			idx:       i,
			probeChan: cfg.Prefix + probePrefix + cfg.Instance + ":" + strconv.Itoa(i),
			chans:     make(map[string]*redisChan),
			pending:   make(map[string]int),
			downc:     make(chan struct{}),
			retry:     make(chan struct{}, 1),
			status:    "connecting",
		}
		b.shards = append(b.shards, sh)
		b.wg.Go(sh.run)
	}
	b.wg.Go(b.prober)
	return b, nil
}

// Publish pipelines m to Redis with whatever else is pending and returns
// once Redis has answered.
func (b *Redis) Publish(ctx context.Context, channel string, m Message) error {
	select {
	case <-b.closing:
		return ErrClosed
	default:
	}
	if strings.HasPrefix(channel, probePrefix) {
		return fmt.Errorf("publish %q: %w", channel, errReserved)
	}
	r := pubReqPool.Get().(*pubReq)
	r.channel = b.cfg.Prefix + channel
	r.data = m.AppendEnvelope(r.data[:0])
	select {
	case b.pubs <- r:
	case <-b.closing:
		pubReqPool.Put(r)
		return ErrClosed
	case <-ctx.Done():
		pubReqPool.Put(r)
		return fmt.Errorf("publish %q: %w", channel, ctx.Err())
	}
	// Once r is queued, a pipeline owns it until it signals done; if we
	// stop waiting, r is left to the garbage collector.
	select {
	case <-r.done:
	case <-ctx.Done():
		return fmt.Errorf("publish %q: %w", channel, ctx.Err())
	case <-b.closing:
		return ErrClosed
	}
	err := r.err
	pubReqPool.Put(r)
	if err != nil {
		return fmt.Errorf("publish %q: %w: %w", channel, ErrUnavailable, err)
	}
	return nil
}

// pipeline sends pending publishes in batches until the broker closes.
func (b *Redis) pipeline(int) {
	batch := make([]*pubReq, 0, maxPipeline)
	for {
		batch = batch[:0]
		select {
		case r := <-b.pubs:
			batch = append(batch, r)
		case <-b.closing:
			return
		}
	more:
		for len(batch) < maxPipeline {
			select {
			case r := <-b.pubs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.Timeout)
		pipe := b.client.Pipeline()
		for _, r := range batch {
			pipe.Publish(ctx, r.channel, r.data)
		}
		cmds, err := pipe.Exec(ctx)
		cancel()
		var ok, failed uint64
		var firstErr error
		for i, r := range batch {
			rerr := err
			if i < len(cmds) {
				rerr = cmds[i].Err()
			}
			if rerr != nil && firstErr == nil {
				firstErr = rerr
			}
			if !r.probe {
				if rerr == nil {
					ok++
				} else {
					failed++
				}
			}
			r.err = rerr
		}
		// Counted before any publisher returns, so that a caller reading
		// Stats after Publish sees its message.
		b.stats.pipelines.Add(1)
		b.stats.published.Add(ok)
		b.stats.publishErrors.Add(failed)
		b.pubMu.Lock()
		b.pubErr = firstErr
		b.pubMu.Unlock()
		for _, r := range batch {
			r.done <- struct{}{} // r belongs to its publisher from here on
		}
	}
}

// Subscribe registers h for channel; it returns once Redis confirmed the
// node's subscription of the channel. While a subscriber connection is
// being replaced, it waits for the new one, up to the configured Timeout;
// while Redis cannot be reached, it makes the shard try at once and fails
// with ErrUnavailable when that attempt fails.
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
// connections. Publishes waiting for Redis get ErrClosed.
func (b *Redis) Close() error {
	b.once.Do(func() {
		close(b.closing)
		b.cancel()
		for _, sh := range b.shards {
			sh.mu.Lock()
			if sh.ps != nil {
				sh.ps.Close()
			}
			sh.mu.Unlock()
		}
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

// prober publishes a probe to every shard each ProbeInterval and tears down
// the shards whose probe does not come back within ProbeTimeout. A round
// lasts at most ProbeTimeout, so with a timeout above the interval rounds
// start every ProbeTimeout at worst.
func (b *Redis) prober() {
	t := time.NewTimer(b.cfg.ProbeInterval)
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-t.C:
		case <-b.closing:
			return
		}
		start := time.Now()
		b.probeRound(seq, start)
		t.Reset(time.Until(start.Add(b.cfg.ProbeInterval)))
	}
}

func (b *Redis) probeRound(seq uint64, start time.Time) {
	type probe struct {
		sh *shard
		ps *redis.PubSub
		r  *pubReq
	}
	timeout := b.cfg.ProbeTimeout
	data := []byte(b.nonce + ":" + strconv.FormatUint(seq, 10))
	var probes []probe
	for _, sh := range b.shards {
		ps, err := sh.probeTarget(start)
		if err != nil {
			b.stats.probeFailures.Add(1)
			sh.setProbeErr(err)
			sh.teardown(ps, err)
			continue
		}
		if ps == nil {
			continue // not connected: Health says so already
		}
		sh.probeWant.Store(seq)
		r := &pubReq{channel: sh.probeChan, data: data, probe: true, done: make(chan struct{}, 1)}
		select {
		case b.pubs <- r:
		case <-b.closing:
			return
		}
		probes = append(probes, probe{sh, ps, r})
	}
	deadline := time.NewTimer(timeout - time.Since(start))
	defer deadline.Stop()
wait:
	for {
		back := true
		for _, p := range probes {
			back = back && p.sh.probeWant.Load() != seq
		}
		if back {
			break
		}
		select {
		case <-b.probeBack:
		case <-deadline.C:
			break wait
		case <-b.closing:
			return
		}
	}
	for _, p := range probes {
		if !p.sh.probeWant.CompareAndSwap(seq, 0) {
			p.sh.setProbeErr(nil) // it came back
			continue
		}
		b.stats.probeFailures.Add(1)
		select {
		case <-p.r.done:
			if p.r.err != nil {
				// The publish side failed, not necessarily this connection.
				p.sh.setProbeErr(fmt.Errorf("publish: %w", p.r.err))
				continue
			}
		default:
			p.sh.setProbeErr(fmt.Errorf("publish not answered within %v", timeout))
			continue
		}
		err := fmt.Errorf("published but not back within %v", timeout)
		p.sh.setProbeErr(err)
		p.sh.teardown(p.ps, err)
	}
}

// A shard is one subscriber connection and the channels it carries. Its run
// goroutine owns the connection: it opens it, reads it and replaces it.
//
// mu guards the fields below it and is held while handlers run and while
// SUBSCRIBE and UNSUBSCRIBE are written, so that the commands for one channel
// reach Redis in the order the handlers came and went. hmu guards what
// Health reads, so that Health never waits on mu; it is taken after mu, or
// alone.
type shard struct {
	b         *Redis
	idx       int
	probeChan string // the full Redis channel
	// probeWant is the sequence number of the probe in flight, 0 for none.
	probeWant atomic.Uint64

	mu    sync.Mutex
	ps    *redis.PubSub // the live connection; nil when there is none
	state shardState
	// cause is why the broker closed ps itself, nil if it did not.
	cause error
	torn  bool // cause is a probe failure
	// downc is closed, and replaced, whenever a connection attempt fails:
	// it fails Subscribe calls waiting for the connection.
	downc chan struct{}
	// retry cuts run's backoff short when a Subscribe waits (buffer 1).
	retry chan struct{}
	chans map[string]*redisChan
	// pending counts, per channel, the subscribe confirmations Redis still
	// owes on this connection for SUBSCRIBE commands already sent.
	pending map[string]int
	// resub holds the channels subscribed when ps was opened whose
	// confirmation has not come yet; gap those that were live before.
	resub           map[string]struct{}
	gap             []string
	probeSubscribed bool
	live            bool // connected and every subscription confirmed
	connectedAt     time.Time

	hmu      sync.Mutex
	status   string // why the shard is not live; "" when it is
	err      error  // last connection error
	probeErr error  // last probe failure, nil after a probe came back
}

type shardState int

const (
	stateConnecting shardState = iota // opening a connection
	stateDown                         // the last attempt failed; retrying
	stateUp                           // connected
)

type redisChan struct {
	subs  []*redisSub
	need  int           // confirmations to see before the channel is live
	ready chan struct{} // closed once live
}

type redisSub struct{ h Handler }

func (sh *shard) setStatus(status string, err error) {
	sh.hmu.Lock()
	sh.status = status
	if err != nil {
		sh.err = err
	}
	sh.hmu.Unlock()
}

func (sh *shard) setProbeErr(err error) {
	sh.hmu.Lock()
	sh.probeErr = err
	sh.hmu.Unlock()
}

func (sh *shard) lastErr() error {
	sh.hmu.Lock()
	defer sh.hmu.Unlock()
	if sh.err == nil {
		return errors.New("no connection to Redis")
	}
	return sh.err
}

// add registers sub for channel. When the channel is new on the shard, it
// sends SUBSCRIBE, or leaves that to the next connection. It returns the
// channel closed when the next connection attempt fails.
func (sh *shard) add(channel string, sub *redisSub) (*redisChan, <-chan struct{}) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if rc := sh.chans[channel]; rc != nil {
		rc.subs = append(rc.subs, sub)
		return rc, sh.downc
	}
	rc := &redisChan{subs: []*redisSub{sub}, need: 1, ready: make(chan struct{})}
	sh.chans[channel] = rc
	if sh.state != stateUp || sh.cause != nil {
		// The next connection subscribes it; while Redis is down, try
		// that now rather than after the backoff.
		select {
		case sh.retry <- struct{}{}:
		default:
		}
		return rc, sh.downc
	}
	sh.pending[channel]++
	rc.need = sh.pending[channel]
	ctx, cancel := context.WithTimeout(sh.b.ctx, sh.b.cfg.Timeout)
	defer cancel()
	if err := sh.ps.Subscribe(ctx, sh.b.cfg.Prefix+channel); err != nil {
		// The connection is broken: replace it. The channel stays, and
		// the caller waits for the next connection to subscribe it.
		sh.breakLocked(fmt.Errorf("subscribe: %w", err), false)
	}
	return rc, sh.downc
}

func (sh *shard) unpend(channel string) {
	if sh.pending[channel]--; sh.pending[channel] <= 0 {
		delete(sh.pending, channel)
	}
}

func (sh *shard) remove(channel string, sub *redisSub) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	rc := sh.chans[channel]
	if rc == nil {
		return
	}
	for i, s := range rc.subs {
		if s == sub {
			rc.subs = append(rc.subs[:i], rc.subs[i+1:]...)
			break
		}
	}
	if len(rc.subs) > 0 {
		return
	}
	delete(sh.chans, channel)
	if sh.state != stateUp || sh.cause != nil {
		return // the next connection does not subscribe it
	}
	ctx, cancel := context.WithTimeout(sh.b.ctx, sh.b.cfg.Timeout)
	defer cancel()
	if err := sh.ps.Unsubscribe(ctx, sh.b.cfg.Prefix+channel); err != nil {
		sh.breakLocked(fmt.Errorf("unsubscribe: %w", err), false)
	}
}

// breakLocked closes the shard's connection so that run replaces it; sh.mu
// is held. It reports whether it did.
func (sh *shard) breakLocked(cause error, torn bool) bool {
	if sh.state != stateUp || sh.cause != nil {
		return false
	}
	sh.cause, sh.torn = cause, torn
	sh.setStatus("closed: "+cause.Error(), nil)
	sh.ps.Close() // run's Receive returns an error
	return true
}

// teardown closes ps, if it is still the shard's connection, because its
// probe failed.
func (sh *shard) teardown(ps *redis.PubSub, cause error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if ps == nil || sh.ps != ps {
		return
	}
	if sh.breakLocked(cause, true) {
		sh.b.stats.teardowns.Add(1)
	}
}

// probeTarget returns the connection to probe, or nil when the shard has
// none; or an error with the connection when it has not confirmed its
// subscriptions within ProbeTimeout of opening.
func (sh *shard) probeTarget(now time.Time) (*redis.PubSub, error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.state != stateUp || sh.cause != nil {
		return nil, nil
	}
	if !sh.live && now.Sub(sh.connectedAt) > sh.b.cfg.ProbeTimeout {
		return sh.ps, fmt.Errorf("subscriptions not confirmed within %v", sh.b.cfg.ProbeTimeout)
	}
	if !sh.probeSubscribed {
		return nil, nil
	}
	return sh.ps, nil
}

// run owns the shard's connection until the broker closes: it opens it,
// receives from it, and replaces it with backoff when it fails or is torn
// down.
func (sh *shard) run() {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	log := sh.b.log
	opened := false // a connection was open before: the next is a reconnect
	outage := false // the current outage is logged
	for {
		ps, err := sh.connect()
		if err != nil {
			if sh.closed() {
				return
			}
			sh.down(err)
			if !outage {
				outage = true
				log.Warn("redis subscriber connection failed", "shard", sh.idx, "err", err)
			}
			// A waiting Subscribe cuts the backoff short, but attempts
			// stay minBackoff apart however many come.
			if !sh.wait(minBackoff, nil) || !sh.wait(backoff-minBackoff, sh.retry) {
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		if opened {
			sh.b.stats.reconnects.Add(1)
		}
		live, err := sh.receive(ps, opened, outage)
		opened = true
		if live {
			outage = false
		}
		if sh.closed() {
			return
		}
		cause, torn := sh.lost(ps, err)
		switch {
		case torn:
			log.Warn("redis subscriber connection torn down", "shard", sh.idx, "err", cause)
		case !outage:
			log.Warn("redis subscriber connection lost", "shard", sh.idx, "err", cause)
		}
		outage = true
	}
}

// wait waits for d to pass or a value on cut, and reports false if the
// broker closed first.
func (sh *shard) wait(d time.Duration, cut <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-cut:
	case <-sh.b.closing:
		return false
	}
	return true
}

func (sh *shard) closed() bool {
	select {
	case <-sh.b.closing:
		return true
	default:
		return false
	}
}

// connect opens a connection, subscribes the probe channel and every
// channel of the shard on it, and makes it the shard's connection.
func (sh *shard) connect() (*redis.PubSub, error) {
	b := sh.b
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.Timeout)
	defer cancel()
	ps := b.client.Subscribe(ctx) // no I/O without channels
	// Dial outside mu: Subscribe and stop go on meanwhile, with the
	// channels they change subscribed below.
	if err := ps.Subscribe(ctx, sh.probeChan); err != nil {
		ps.Close()
		return nil, err
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.closed() { // Close did not see ps
		ps.Close()
		return nil, ErrClosed
	}
	full := make([]string, 0, len(sh.chans))
	sh.pending = make(map[string]int, len(sh.chans))
	sh.resub = make(map[string]struct{}, len(sh.chans))
	sh.gap = sh.gap[:0]
	for ch, rc := range sh.chans {
		full = append(full, b.cfg.Prefix+ch)
		sh.pending[ch] = 1
		sh.resub[ch] = struct{}{}
		if rc.need > 0 {
			rc.need = 1 // a waiting Subscribe: no gap, this is its first
		} else {
			sh.gap = append(sh.gap, ch)
		}
	}
	if len(full) > 0 {
		if err := ps.Subscribe(ctx, full...); err != nil {
			ps.Close()
			return nil, err
		}
	}
	sh.ps, sh.state, sh.cause, sh.torn = ps, stateUp, nil, false
	sh.probeSubscribed, sh.live = false, false
	sh.connectedAt = time.Now()
	sh.setStatus(fmt.Sprintf("subscribing %d channels", len(full)), nil)
	return ps, nil
}

// down records a failed connection attempt and fails the Subscribe calls
// waiting for it.
func (sh *shard) down(err error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.state = stateDown
	close(sh.downc)
	sh.downc = make(chan struct{})
	sh.setStatus("down: "+err.Error(), err)
}

// lost forgets the shard's connection ps after receiving from it failed
// with err, and returns why it ended: the broker's own cause if it closed
// ps, else err.
func (sh *shard) lost(ps *redis.PubSub, err error) (cause error, torn bool) {
	sh.mu.Lock()
	cause, torn = sh.cause, sh.torn
	if cause == nil {
		cause = err
	}
	sh.ps, sh.state, sh.cause, sh.torn = nil, stateConnecting, nil, false
	sh.live = false
	sh.setStatus("reconnecting after: "+cause.Error(), cause)
	sh.mu.Unlock()
	ps.Close()
	return cause, torn
}

// receive reads ps until it fails: it dispatches messages, hands probes to
// the prober and counts subscribe confirmations. It reports whether the
// connection went live, every subscription confirmed: that is when an
// outage ends and, on a reconnect, when the gap is reported.
func (sh *shard) receive(ps *redis.PubSub, reconnect, outage bool) (live bool, err error) {
	for {
		msg, err := ps.Receive(sh.b.ctx)
		if err != nil {
			return live, err
		}
		switch msg := msg.(type) {
		case *redis.Message:
			if msg.Channel == sh.probeChan {
				sh.probeBack(msg.Payload)
				continue
			}
			sh.dispatch(msg)
		case *redis.Subscription:
			if msg.Kind != "subscribe" {
				continue
			}
			if gap, ok := sh.confirm(msg.Channel); ok {
				live = true
				sh.wentLive(gap, reconnect, outage)
			}
		}
	}
}

func (sh *shard) wentLive(gap []string, reconnect, outage bool) {
	if outage {
		sh.b.log.Info("redis subscriber connection restored", "shard", sh.idx, "channels", len(gap))
	}
	if !reconnect || len(gap) == 0 {
		return
	}
	sh.b.stats.resubscribes.Add(1)
	if sh.b.cfg.OnGap != nil {
		sh.b.cfg.OnGap(gap)
	}
}

// probeBack takes a probe that came back on the shard's connection.
func (sh *shard) probeBack(payload string) {
	rest, ok := strings.CutPrefix(payload, sh.b.nonce+":")
	if !ok {
		return // another broker's, with the same Instance
	}
	seq, err := strconv.ParseUint(rest, 10, 64)
	if err != nil || seq == 0 || !sh.probeWant.CompareAndSwap(seq, 0) {
		return // late
	}
	select {
	case sh.b.probeBack <- struct{}{}:
	default:
	}
}

// confirm counts a subscribe confirmation of the Redis channel full. It
// returns true, with the channels of the gap, when it was the last the
// connection was waiting for.
func (sh *shard) confirm(full string) (gap []string, live bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if full == sh.probeChan {
		sh.probeSubscribed = true
	} else if channel, ok := strings.CutPrefix(full, sh.b.cfg.Prefix); ok {
		if sh.pending[channel] > 0 {
			sh.unpend(channel)
		}
		delete(sh.resub, channel)
		if rc := sh.chans[channel]; rc != nil && rc.need > 0 {
			if rc.need--; rc.need == 0 {
				close(rc.ready)
			}
		}
	}
	if sh.live || !sh.probeSubscribed || len(sh.resub) > 0 {
		return nil, false
	}
	sh.live = true
	sh.setStatus("", nil)
	for _, ch := range sh.gap {
		if sh.chans[ch] != nil {
			gap = append(gap, ch)
		}
	}
	sh.gap = sh.gap[:0]
	return gap, true
}

func (sh *shard) dispatch(msg *redis.Message) {
	channel, ok := strings.CutPrefix(msg.Channel, sh.b.cfg.Prefix)
	if !ok {
		return
	}
	m := DecodeEnvelope([]byte(msg.Payload))
	sh.mu.Lock()
	defer sh.mu.Unlock()
	rc := sh.chans[channel]
	if rc == nil || rc.need > 0 {
		return
	}
	for _, s := range rc.subs {
		s.h(m)
	}
}
