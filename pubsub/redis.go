package pubsub

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
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
}

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
	if c.URL != "" {
		if _, err := redis.ParseURL(c.URL); err != nil {
			return fmt.Errorf("RELAY_REDIS_URL: %w; want redis://host:port/db, rediss:// or unix://", err)
		}
	}
	return nil
}

// maxPipeline is the most publishes one pipeline carries.
const maxPipeline = 512

// Redis is a Broker that relays through Redis PUBLISH and SUBSCRIBE.
//
// A node holds one Redis subscription per channel with local interest,
// reference-counted over all handlers of that channel, on one of a fixed
// number of subscriber connections. Publishes from many goroutines are
// pipelined over a few connections. When Redis goes away, subscriber
// connections reconnect with backoff and every channel is subscribed again.
//
// NewRedis starts the broker's goroutines; Close stops them and waits.
type Redis struct {
	cfg    RedisConfig
	log    *slog.Logger
	client *redis.Client
	shards []*shard
	pubs   chan *pubReq

	closing chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

type pubReq struct {
	channel string
	data    []byte
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
	opt.DialTimeout = cfg.Timeout
	opt.ReadTimeout = cfg.Timeout
	opt.WriteTimeout = cfg.Timeout
	opt.PoolSize = cfg.Pipelines + cfg.Subscribers + 4
	opt.MaxRetries = -1 // a publish is acknowledged once, never replayed
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Redis{
		cfg:     cfg,
		log:     log,
		client:  redis.NewClient(opt),
		pubs:    make(chan *pubReq, maxPipeline),
		closing: make(chan struct{}),
	}
	for i := range cfg.Pipelines {
		b.wg.Go(func() { b.pipeline(i) })
	}
	for i := range cfg.Subscribers {
		sh := &shard{
			b:       b,
			idx:     i,
			chans:   make(map[string]*redisChan),
			pending: make(map[string]int),
		}
		sh.ps = b.client.Subscribe(context.Background())
		b.shards = append(b.shards, sh)
		b.wg.Go(sh.receive)
	}
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
		ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
		pipe := b.client.Pipeline()
		for _, r := range batch {
			pipe.Publish(ctx, r.channel, r.data)
		}
		cmds, err := pipe.Exec(ctx)
		cancel()
		for i, r := range batch {
			r.err = err
			if i < len(cmds) {
				r.err = cmds[i].Err()
			}
			r.done <- struct{}{}
		}
	}
}

// Subscribe registers h for channel; it returns once Redis confirmed the
// node's subscription of the channel.
func (b *Redis) Subscribe(ctx context.Context, channel string, h Handler) (func(), error) {
	select {
	case <-b.closing:
		return nil, ErrClosed
	default:
	}
	sh := b.shards[shardOf(channel, len(b.shards))]
	sub := &redisSub{h: h}
	rc, err := sh.add(ctx, channel, sub)
	if err != nil {
		return nil, fmt.Errorf("subscribe %q: %w: %w", channel, ErrUnavailable, err)
	}
	stop := sync.OnceFunc(func() { sh.remove(channel, sub) })
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	select {
	case <-rc.ready:
		return stop, nil
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

// Close stops the broker's goroutines, waits for them and closes its Redis
// connections. Publishes waiting for Redis get ErrClosed.
func (b *Redis) Close() error {
	b.once.Do(func() {
		close(b.closing)
		for _, sh := range b.shards {
			sh.ps.Close()
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

// A shard is one subscriber connection and the channels it carries.
//
// mu guards chans and pending and is held while handlers run and while
// SUBSCRIBE and UNSUBSCRIBE are written, so that the commands for one channel
// reach Redis in the order the handlers came and went.
type shard struct {
	b   *Redis
	idx int
	ps  *redis.PubSub

	mu    sync.Mutex
	chans map[string]*redisChan
	// pending counts, per channel, the subscribe confirmations Redis still
	// owes for SUBSCRIBE commands already sent.
	pending map[string]int
}

type redisChan struct {
	subs  []*redisSub
	need  int           // confirmations to see before the channel is live
	ready chan struct{} // closed once live
}

type redisSub struct{ h Handler }

func (sh *shard) add(ctx context.Context, channel string, sub *redisSub) (*redisChan, error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if rc := sh.chans[channel]; rc != nil {
		rc.subs = append(rc.subs, sub)
		return rc, nil
	}
	full := sh.b.cfg.Prefix + channel
	sh.pending[channel]++
	if err := sh.ps.Subscribe(ctx, full); err != nil {
		sh.unpend(channel)
		// Forget it upstream too, or the next reconnect would subscribe it.
		_ = sh.ps.Unsubscribe(ctx, full)
		return nil, err
	}
	rc := &redisChan{subs: []*redisSub{sub}, need: sh.pending[channel], ready: make(chan struct{})}
	sh.chans[channel] = rc
	return rc, nil
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
	ctx, cancel := context.WithTimeout(context.Background(), sh.b.cfg.Timeout)
	defer cancel()
	// On error the connection is broken; go-redis has already forgotten the
	// channel, so the reconnect does not subscribe it again.
	_ = sh.ps.Unsubscribe(ctx, sh.b.cfg.Prefix+channel)
}

// receive owns the shard's receive loop: it dispatches messages, counts
// subscribe confirmations and reconnects with backoff when Redis goes away.
func (sh *shard) receive() {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	down := false
	ctx := context.Background()
	for {
		msg, err := sh.ps.Receive(ctx)
		if err != nil {
			select {
			case <-sh.b.closing:
				return
			default:
			}
			if !down {
				down = true
				sh.b.log.Warn("redis subscriber connection lost", "shard", sh.idx, "err", err)
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-sh.b.closing:
				t.Stop()
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		switch msg := msg.(type) {
		case *redis.Message:
			sh.dispatch(msg)
		case *redis.Subscription:
			if msg.Kind != "subscribe" {
				continue
			}
			if down {
				down = false
				sh.b.log.Info("redis subscriber connection restored", "shard", sh.idx)
			}
			sh.confirm(strings.TrimPrefix(msg.Channel, sh.b.cfg.Prefix))
		}
	}
}

func (sh *shard) confirm(channel string) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.pending[channel] > 0 {
		sh.unpend(channel)
	}
	if rc := sh.chans[channel]; rc != nil && rc.need > 0 {
		if rc.need--; rc.need == 0 {
			close(rc.ready)
		}
	}
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
