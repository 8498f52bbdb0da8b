package pubsub

// Idempotent publishes: a publish that carries a key takes effect once per
// key and channel within a window, however many times it is retried and on
// whichever node. The check and the publish are one atomic step: in Redis
// one script that sets the key (SET NX PX) and publishes, or for a channel
// with history one script that checks the key and runs the history
// publish script; in Memory, under one lock.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Once makes a publish idempotent.
type Once struct {
	// Key names the publish, chosen by the publisher: a retry carries the
	// same key. It is not empty; the node checks its form and length.
	Key string
	// Window is how long after the first publish a retry with the same key
	// on the same channel publishes nothing. It must be at least a
	// millisecond.
	Window time.Duration
}

// OncePublisher is implemented by brokers that publish idempotently: both
// Memory and Redis do.
type OncePublisher interface {
	// PublishOnce is Publish, or with hist not nil PublishHistory, unless a
	// publish with once.Key on channel took effect within once.Window: then
	// it publishes nothing and reports duplicate, with (for history) the
	// position that first publish got. The check, the publish and the
	// record of the key are one atomic step, across the nodes of one
	// backend. Its errors are those of Publish: after ErrOutcomeUnknown a
	// retry with the same key is safe.
	PublishOnce(ctx context.Context, channel string, m Message, once Once, hist *HistoryOptions) (pos Position, duplicate bool, err error)
}

// checkOnce reports invalid Once values.
func checkOnce(once Once) error {
	if once.Key == "" || once.Window < time.Millisecond {
		return fmt.Errorf("idempotency key %q for %v: want a key and a window of at least 1ms", once.Key, once.Window)
	}
	return nil
}

// onceSrc publishes unless the key exists, and sets it. KEYS: idempotency
// key. ARGV: Redis channel, envelope, window in milliseconds. It returns 1
// when it published, 0 for a duplicate.
const onceSrc = `
if not redis.call('SET', KEYS[1], '', 'NX', 'PX', ARGV[3]) then
  return 0
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
`

// onceHistorySrc runs the history publish script pub (publishSrc or
// spublishSrc, unchanged) unless the key exists, and records its position
// in the key. KEYS: hash, stream, idempotency key. ARGV: those of
// publishSrc, then the window in milliseconds. It returns {offset, epoch},
// or {-1, "<offset>:<epoch>"} for a duplicate.
func onceHistorySrc(pub string) string {
	return `
local d = redis.call('GET', KEYS[3])
if d then
  return {-1, d}
end
local r = (function()
` + pub + `
end)()
redis.call('SET', KEYS[3], r[1] .. ':' .. r[2], 'PX', ARGV[6])
return r
`
}

// The scripts of idempotent publishes, with PUBLISH and, for Redis Cluster,
// SPUBLISH.
var (
	onceScript         = redis.NewScript(onceSrc)
	sonceScript        = redis.NewScript(strings.Replace(onceSrc, "'PUBLISH'", "'SPUBLISH'", 1))
	onceHistoryScript  = redis.NewScript(onceHistorySrc(publishSrc))
	sonceHistoryScript = redis.NewScript(onceHistorySrc(spublishSrc))
)

// onceWith returns the idempotent publish scripts of the broker's mode:
// without and with history.
func (b *Redis) onceWith() (plain, hist *redis.Script) {
	if b.cluster != nil {
		return sonceScript, sonceHistoryScript
	}
	return onceScript, onceHistoryScript
}

// onceKey is the Redis key of an idempotency key of channel, in the hash
// slot of its history keys (keyBase), so that one script may use them all
// on Redis Cluster.
func (b *Redis) onceKey(channel, key string) string {
	return b.keyBase(channel) + "i:" + key
}

// PublishOnce implements OncePublisher with one script run. Idempotent
// publishes are not pipelined with others: they are retries and backend
// calls, not the bulk of the traffic.
func (b *Redis) PublishOnce(ctx context.Context, channel string, m Message, once Once, hist *HistoryOptions) (Position, bool, error) {
	if err := checkOnce(once); err != nil {
		return Position{}, false, fmt.Errorf("publish %q: %w", channel, err)
	}
	if hist != nil {
		if err := checkHistory(*hist); err != nil {
			return Position{}, false, fmt.Errorf("publish %q: %w", channel, err)
		}
	}
	if err := b.admit("publish", channel); err != nil {
		return Position{}, false, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	data := m.AppendEnvelope(nil)
	window := once.Window.Milliseconds()
	var pos Position
	var dup bool
	var err error
	plain, histScript := b.onceWith()
	if hist == nil {
		var v int64
		v, err = plain.Run(ctx, b.client, []string{b.onceKey(channel, once.Key)},
			b.cfg.Prefix+channel, data, window).Int64()
		dup = v == 0
	} else {
		h := histReq{keys: b.historyKeys(channel), size: hist.Size, ttl: hist.TTL.Milliseconds(), epoch: b.newEpoch()}
		keys := append(h.keys, b.onceKey(channel, once.Key))
		var v any
		if v, err = histScript.Run(ctx, b.client, keys, b.cfg.Prefix+channel, data, h.size, h.ttl, h.epoch, window).Result(); err == nil {
			pos, dup, err = parseOnceHistory(v)
		}
	}
	if err != nil {
		b.stats.publishErrors.Add(1)
		return Position{}, false, fmt.Errorf("publish %q: %w", channel, publishErr(err))
	}
	if !dup {
		b.stats.published.Add(1)
	}
	return pos, dup, nil
}

// parseOnceHistory reads the answer of onceHistoryScript.
func parseOnceHistory(v any) (Position, bool, error) {
	a, ok := v.([]any)
	if ok && len(a) == 2 && a[0] == int64(-1) {
		s, _ := a[1].(string)
		off, epoch, _ := strings.Cut(s, ":")
		// A key set by a publish without history (the channel's options
		// changed within the window) holds no position.
		o, _ := strconv.ParseUint(off, 10, 64)
		return Position{Offset: o, Epoch: epoch}, true, nil
	}
	var h histReq
	if err := h.parse(v); err != nil {
		return Position{}, false, err
	}
	return h.pos, false, nil
}

// maxMemoryOnce bounds the idempotency keys Memory keeps: beyond it, the
// oldest are forgotten before their window ends.
const maxMemoryOnce = 100_000

// memOnce is Memory's record of idempotency keys.
type memOnce struct {
	mu    sync.Mutex // held across the publish: the check and it are one step
	seen  map[memOnceID]memOnceEntry
	order []memOnceID // in the order recorded: with one window, of expiry
}

type memOnceID struct{ channel, key string }

type memOnceEntry struct {
	pos     Position
	expires time.Time
}

// PublishOnce implements OncePublisher: the publish and the record of the
// key happen under one lock, so concurrent retries publish once.
func (b *Memory) PublishOnce(ctx context.Context, channel string, m Message, once Once, hist *HistoryOptions) (Position, bool, error) {
	if err := checkOnce(once); err != nil {
		return Position{}, false, fmt.Errorf("publish %q: %w", channel, err)
	}
	o := &b.once
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	id := memOnceID{channel, once.Key}
	if e, ok := o.seen[id]; ok && now.Before(e.expires) {
		return e.pos, true, nil
	}
	var pos Position
	var err error
	if hist != nil {
		pos, err = b.PublishHistory(ctx, channel, m, *hist)
	} else {
		err = b.Publish(ctx, channel, m)
	}
	if err != nil {
		return Position{}, false, err
	}
	o.record(id, memOnceEntry{pos: pos, expires: now.Add(once.Window)}, now)
	return pos, false, nil
}

// record keeps e for id, dropping the expired keys at the front of the
// order and, over maxMemoryOnce, the oldest; o.mu is held.
func (o *memOnce) record(id memOnceID, e memOnceEntry, now time.Time) {
	if o.seen == nil {
		o.seen = make(map[memOnceID]memOnceEntry)
	}
	drop := 0
	for ; drop < len(o.order); drop++ {
		old := o.order[drop]
		if now.Before(o.seen[old].expires) && len(o.order)-drop < maxMemoryOnce {
			break
		}
		delete(o.seen, old)
	}
	o.order = o.order[drop:]
	if _, ok := o.seen[id]; !ok {
		o.order = append(o.order, id)
	}
	o.seen[id] = e
}
