package pubsub

// History in Redis: a channel that keeps history has two keys in the hash
// slot of its Redis channel {Prefix}<channel>, so that the publish script
// may SPUBLISH to it on Redis Cluster (see historyKeys):
// {{Prefix}<channel>}:h, a hash with the epoch ("e") and the last offset
// ("o"), and {{Prefix}<channel>}:s, a stream whose entry IDs are the
// offsets (<offset>-0), so that reading from an offset is one XRANGE. Both
// expire TTL after the last publish. A missing hash (expired, flushed, or
// lost in a failover) starts a new epoch, whose name the caller supplies:
// scripts cannot make random values that replicate.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// publishScript appends to the stream, trims it, renews the expiry, counts
// the offset and publishes the envelope with its position, in one atomic
// step. KEYS: hash, stream. ARGV: Redis channel, envelope, size, TTL in
// milliseconds, epoch to start if none. It returns {offset, epoch}.
const publishSrc = `
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
end
local o = redis.call('HINCRBY', KEYS[1], 'o', 1)
local id = tostring(o)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id .. '-0', 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], '\255RLH' .. string.char(#id) .. id .. string.char(#e) .. e .. ARGV[2])
return {o, e}
`

// spublishSrc is publishSrc with SPUBLISH, for Redis Cluster.
var spublishSrc = strings.Replace(publishSrc, "'PUBLISH'", "'SPUBLISH'", 1)

var (
	publishScript  = redis.NewScript(publishSrc)
	spublishScript = redis.NewScript(spublishSrc)
)

// publishWith returns the publish script of the broker's mode and its
// source.
func (b *Redis) publishWith() (*redis.Script, string) {
	if b.cluster != nil {
		return spublishScript, spublishSrc
	}
	return publishScript, publishSrc
}

// historyScript reads the position and the entries from an offset. KEYS:
// hash, stream. ARGV: first offset, limit, TTL in milliseconds, epoch to
// start if none. It returns {epoch, offset, entries}.
var historyScript = redis.NewScript(`
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local o = redis.call('HGET', KEYS[1], 'o')
local r = {}
if tonumber(ARGV[2]) > 0 then
  r = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {e, o, r}
`)

// historyKeys returns the keys of channel's history: hash, stream. They
// hash to the slot of the Redis channel {Prefix}<channel>: they are that
// name behind a hash tag of it, {{Prefix}<channel>}:, or, when the name
// holds a hash tag of its own (a prefix such as {relay}:), the name itself,
// whose tag then comes first. RedisConfig.Validate refuses, in cluster
// mode, a prefix with a "}" that would end the first kind early (channel
// names have no braces).
func (b *Redis) historyKeys(channel string) []string {
	base := b.keyBase(channel)
	return []string{base + "h", base + "s"}
}

// keyBase starts the name of every key of channel (history, presence,
// idempotency keys), so that they are all in the hash slot of its Redis
// channel: "{<prefix><channel>}:", or "<prefix><channel>:" when that name
// holds a hash tag of its own.
func (b *Redis) keyBase(channel string) string {
	full := b.cfg.Prefix + channel
	if hashPart(full) != full {
		return full + ":"
	}
	return "{" + full + "}:"
}

// newEpoch names an epoch that no other call of any broker names.
func (b *Redis) newEpoch() string {
	return b.nonce[:10] + strconv.FormatUint(b.epochs.Add(1), 36)
}

// PublishHistory implements Historian: one EVALSHA of the publish script,
// pipelined with other publishes (EVAL when Redis does not know the script
// yet).
func (b *Redis) PublishHistory(ctx context.Context, channel string, m Message, opts HistoryOptions) (Position, error) {
	if err := checkHistory(opts); err != nil {
		return Position{}, fmt.Errorf("publish %q: %w", channel, err)
	}
	if err := b.admit("publish", channel); err != nil {
		return Position{}, err
	}
	r := &pubReq{
		channel: b.cfg.Prefix + channel,
		data:    m.AppendEnvelope(nil),
		done:    make(chan struct{}, 1),
		hist: &histReq{
			keys:  b.historyKeys(channel),
			size:  opts.Size,
			ttl:   opts.TTL.Milliseconds(),
			epoch: b.newEpoch(),
		},
	}
	if err := b.send(ctx, r); err != nil {
		if errors.Is(err, ErrClosed) {
			return Position{}, ErrClosed
		}
		return Position{}, fmt.Errorf("publish %q: %w", channel, err)
	}
	if r.err != nil {
		return Position{}, fmt.Errorf("publish %q: %w", channel, publishErr(r.err))
	}
	return r.hist.pos, nil
}

// histReq is the history part of a publish.
type histReq struct {
	keys  []string
	size  int
	ttl   int64 // milliseconds
	epoch string
	pos   Position // the answer
}

func (h *histReq) args(r *pubReq) []any {
	return []any{r.channel, r.data, h.size, h.ttl, h.epoch}
}

// parsePublish reads the answer of the publish script.
func (h *histReq) parse(v any) error {
	a, ok := v.([]any)
	if !ok || len(a) != 2 {
		return fmt.Errorf("publish script answered %T", v)
	}
	off, ok1 := a[0].(int64)
	epoch, ok2 := a[1].(string)
	if !ok1 || !ok2 || off <= 0 {
		return fmt.Errorf("publish script answered %v", a)
	}
	h.pos = Position{Offset: uint64(off), Epoch: epoch}
	return nil
}

// History implements Historian with one run of the history script.
func (b *Redis) History(ctx context.Context, channel string, opts HistoryOptions, since uint64, limit int) ([]Message, Position, error) {
	if err := checkHistory(opts); err != nil {
		return nil, Position{}, fmt.Errorf("history %q: %w", channel, err)
	}
	select {
	case <-b.closing:
		return nil, Position{}, ErrClosed
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	first := strconv.FormatUint(since+1, 10)
	if since == 1<<64-1 {
		limit = 0 // nothing can follow
	}
	v, err := historyScript.Run(ctx, b.client, b.historyKeys(channel),
		first, max(limit, 0), opts.TTL.Milliseconds(), b.newEpoch()).Result()
	if err != nil {
		return nil, Position{}, fmt.Errorf("history %q: %w: %w", channel, ErrUnavailable, err)
	}
	msgs, pos, err := parseHistory(v)
	if err != nil {
		return nil, Position{}, fmt.Errorf("history %q: %w", channel, err)
	}
	return msgs, pos, nil
}

// parseHistory reads the answer of the history script.
func parseHistory(v any) ([]Message, Position, error) {
	a, ok := v.([]any)
	if !ok || len(a) != 3 {
		return nil, Position{}, fmt.Errorf("history script answered %T", v)
	}
	epoch, ok1 := a[0].(string)
	offs, ok2 := a[1].(string)
	entries, ok3 := a[2].([]any)
	off, err := strconv.ParseUint(offs, 10, 64)
	if !ok1 || !ok2 || !ok3 || err != nil {
		return nil, Position{}, fmt.Errorf("history script answered %v", a)
	}
	pos := Position{Offset: off, Epoch: epoch}
	msgs := make([]Message, 0, len(entries))
	for _, e := range entries {
		// [id, [field, value]]
		ea, ok := e.([]any)
		if !ok || len(ea) != 2 {
			return nil, pos, fmt.Errorf("stream entry %v", e)
		}
		id, _ := ea[0].(string)
		fv, _ := ea[1].([]any)
		ms, _, _ := strings.Cut(id, "-")
		o, err := strconv.ParseUint(ms, 10, 64)
		if err != nil || len(fv) != 2 {
			return nil, pos, fmt.Errorf("stream entry %v", e)
		}
		data, _ := fv[1].(string)
		m := DecodeEnvelope([]byte(data))
		m.Offset, m.Epoch = o, epoch
		msgs = append(msgs, m)
	}
	return msgs, pos, nil
}
