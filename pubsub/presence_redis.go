package pubsub

// Presence in Redis: a channel that keeps presence has four keys in one
// hash slot (the channel is the hash tag, as for history):
//
//	{Prefix}{<channel>}:p   hash: client -> entry (appendPresenceEntry)
//	{Prefix}{<channel>}:pz  sorted set: client, scored by its expiry (ms)
//	{Prefix}{<channel>}:pu  hash: user -> its number of entries
//	{Prefix}{<channel>}:pl  sorted set: user held in the leave grace,
//	                        scored by when the grace ends (ms)
//
// Every script reads the time from Redis (TIME), so that the nodes' clocks
// do not matter, drops the expired entries and the users whose grace has
// passed, and returns those leaves. The counts are HLEN of :p and :pu.
// The first three keys expire a lease after the last add (never sooner
// than they did), :pl a lease after its last grace: a channel nobody renews
// leaves nothing behind.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// presencePrelude starts every presence script. KEYS: :p, :pz, :pu, :pl.
// ARGV[1], ARGV[2]: lease and grace in milliseconds.
const presencePrelude = `
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, grace = tonumber(ARGV[1]), tonumber(ARGV[2])
local left = {}
local function userOf(v)
  local i = string.find(v, ':', 1, true)
  return string.sub(v, i + 1, i + tonumber(string.sub(v, 1, i - 1)))
end
local function gone(u, c)
  if u == '' then
    left[#left + 1] = 'c' .. c
    return
  end
  if redis.call('HINCRBY', KEYS[3], u, -1) > 0 then
    return
  end
  redis.call('HDEL', KEYS[3], u)
  if grace > 0 then
    redis.call('ZADD', KEYS[4], now + grace, u)
    redis.call('PEXPIRE', KEYS[4], grace + lease)
  else
    left[#left + 1] = 'u' .. u
  end
end
for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[2], c)
  local v = redis.call('HGET', KEYS[1], c)
  if v then
    redis.call('HDEL', KEYS[1], c)
    gone(userOf(v), c)
  end
end
for _, u in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)) do
  redis.call('ZREM', KEYS[4], u)
  left[#left + 1] = 'u' .. u
end
`

// presenceAddScript adds or renews entries. ARGV[3...]: client, user,
// entry, for each. It returns {joined clients, leaves}.
var presenceAddScript = redis.NewScript(presencePrelude + `
local joined = {}
for i = 3, #ARGV, 3 do
  local c, u, e = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', KEYS[1], c)
  redis.call('ZADD', KEYS[2], now + lease, c)
  if old ~= e then
    redis.call('HSET', KEYS[1], c, e)
  end
  local ou = old and userOf(old)
  if ou ~= u then
    if old then
      gone(ou, c)
    end
    if u == '' then
      joined[#joined + 1] = c
    elseif redis.call('HINCRBY', KEYS[3], u, 1) == 1 and redis.call('ZREM', KEYS[4], u) == 0 then
      joined[#joined + 1] = c
    end
  end
end
if #ARGV > 2 then
  for k = 1, 3 do
    if redis.call('PTTL', KEYS[k]) < lease then
      redis.call('PEXPIRE', KEYS[k], lease)
    end
  end
end
return {joined, left}
`)

// presenceRemoveScript removes entries. ARGV[3...]: clients. It returns
// {{}, leaves}.
var presenceRemoveScript = redis.NewScript(presencePrelude + `
for i = 3, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    gone(userOf(v), ARGV[i])
  end
end
return {{}, left}
`)

// presenceReadScript returns {HGETALL of :p, leaves}.
var presenceReadScript = redis.NewScript(presencePrelude + `
return {redis.call('HGETALL', KEYS[1]), left}
`)

// presenceStatsScript returns {clients, users, leaves}.
var presenceStatsScript = redis.NewScript(presencePrelude + `
return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[3]), left}
`)

// presenceChunk bounds the scripts of one pipeline of AddPresence, and
// presenceScriptEntries the entries of one script: a channel with more
// takes several, so that no script keeps Redis busy for long (a renewal
// costs about 5 µs of Redis per entry).
const (
	presenceChunk         = 256
	presenceScriptEntries = 500
)

// presenceKeys returns the keys of channel's presence: :p, :pz, :pu, :pl,
// in the hash slot of its Redis channel (keyBase).
func (b *Redis) presenceKeys(channel string) []string {
	base := b.keyBase(channel)
	return []string{base + "p", base + "pz", base + "pu", base + "pl"}
}

func presenceArgs(opts PresenceOptions, n int) []any {
	args := make([]any, 2, 2+n)
	args[0], args[1] = opts.Lease.Milliseconds(), opts.Grace.Milliseconds()
	return args
}

func (b *Redis) presenceCtx(ctx context.Context) (context.Context, context.CancelFunc, error) {
	select {
	case <-b.closing:
		return nil, nil, ErrClosed
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	return ctx, cancel, nil
}

// AddPresence implements PresenceKeeper: one EVALSHA per update (per
// presenceScriptEntries of its entries), pipelined by up to presenceChunk.
func (b *Redis) AddPresence(ctx context.Context, updates []PresenceUpdate) ([]PresenceChange, error) {
	var scripts []PresenceUpdate // updates cut to presenceScriptEntries
	var of []int                 // the update of each script
	for i, u := range updates {
		if err := checkPresence(u.Opts); err != nil {
			return nil, fmt.Errorf("presence %q: %w", u.Channel, err)
		}
		for start := 0; start == 0 || start < len(u.Entries); start += presenceScriptEntries {
			part := u
			part.Entries = u.Entries[start:min(start+presenceScriptEntries, len(u.Entries))]
			scripts, of = append(scripts, part), append(of, i)
		}
	}
	ctx, cancel, err := b.presenceCtx(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	changes := make([]PresenceChange, len(updates))
	for start := 0; start < len(scripts); start += presenceChunk {
		chunk := scripts[start:min(start+presenceChunk, len(scripts))]
		cmds, err := b.addPresence(ctx, chunk)
		if err != nil && isNoScript(err) {
			// Redis lost its scripts (restarted): load it and try again.
			if err := presenceAddScript.Load(ctx, b.client).Err(); err != nil {
				return nil, fmt.Errorf("presence: %w: %w", ErrUnavailable, err)
			}
			cmds, err = b.addPresence(ctx, chunk)
		}
		if err != nil {
			return nil, fmt.Errorf("presence: %w: %w", ErrUnavailable, err)
		}
		for i, cmd := range cmds {
			ch, err := parsePresenceChange(cmd.Val(), chunk[i].Entries)
			if err != nil {
				return nil, fmt.Errorf("presence %q: %w", chunk[i].Channel, err)
			}
			c := &changes[of[start+i]]
			c.Joined = append(c.Joined, ch.Joined...)
			c.Left = append(c.Left, ch.Left...)
		}
	}
	return changes, nil
}

func (b *Redis) addPresence(ctx context.Context, updates []PresenceUpdate) ([]*redis.Cmd, error) {
	pipe := b.client.Pipeline()
	cmds := make([]*redis.Cmd, len(updates))
	for i, u := range updates {
		args := presenceArgs(u.Opts, 3*len(u.Entries))
		for _, e := range u.Entries {
			args = append(args, e.Client, e.User, appendPresenceEntry(nil, e))
		}
		cmds[i] = presenceAddScript.EvalSha(ctx, pipe, b.presenceKeys(u.Channel), args...)
	}
	_, err := pipe.Exec(ctx)
	return cmds, err
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// RemovePresence implements PresenceKeeper with one run of a script.
func (b *Redis) RemovePresence(ctx context.Context, channel string, clients []string, opts PresenceOptions) (PresenceChange, error) {
	v, err := b.runPresence(ctx, presenceRemoveScript, channel, opts, clients)
	if err != nil {
		return PresenceChange{}, err
	}
	return parsePresenceChange(v, nil)
}

// Presence implements PresenceKeeper with one run of a script.
func (b *Redis) Presence(ctx context.Context, channel string, opts PresenceOptions) ([]PresenceEntry, PresenceChange, error) {
	v, err := b.runPresence(ctx, presenceReadScript, channel, opts, nil)
	if err != nil {
		return nil, PresenceChange{}, err
	}
	a, ok := v.([]any)
	if !ok || len(a) != 2 {
		return nil, PresenceChange{}, fmt.Errorf("presence %q: script answered %T", channel, v)
	}
	flat, _ := a[0].([]any)
	entries := make([]PresenceEntry, 0, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		c, _ := flat[i].(string)
		s, _ := flat[i+1].(string)
		e, err := parsePresenceEntry(c, []byte(s))
		if err != nil {
			return nil, PresenceChange{}, fmt.Errorf("presence %q: %w", channel, err)
		}
		entries = append(entries, e)
	}
	ch, err := parsePresenceLeaves(a[1])
	return entries, PresenceChange{Left: ch}, err
}

// PresenceStats implements PresenceKeeper with one run of a script.
func (b *Redis) PresenceStats(ctx context.Context, channel string, opts PresenceOptions) (PresenceStats, PresenceChange, error) {
	v, err := b.runPresence(ctx, presenceStatsScript, channel, opts, nil)
	if err != nil {
		return PresenceStats{}, PresenceChange{}, err
	}
	a, ok := v.([]any)
	if !ok || len(a) != 3 {
		return PresenceStats{}, PresenceChange{}, fmt.Errorf("presence %q: script answered %T", channel, v)
	}
	clients, ok1 := a[0].(int64)
	users, ok2 := a[1].(int64)
	if !ok1 || !ok2 {
		return PresenceStats{}, PresenceChange{}, fmt.Errorf("presence %q: script answered %v", channel, a)
	}
	left, err := parsePresenceLeaves(a[2])
	return PresenceStats{Clients: int(clients), Users: int(users)}, PresenceChange{Left: left}, err
}

// runPresence runs script on channel's keys with opts and the strings
// args after them (EVALSHA, or EVAL when Redis does not know it yet).
func (b *Redis) runPresence(ctx context.Context, script *redis.Script, channel string, opts PresenceOptions, args []string) (any, error) {
	if err := checkPresence(opts); err != nil {
		return nil, fmt.Errorf("presence %q: %w", channel, err)
	}
	ctx, cancel, err := b.presenceCtx(ctx)
	if err != nil {
		return nil, err
	}
	defer cancel()
	argv := presenceArgs(opts, len(args))
	for _, a := range args {
		argv = append(argv, a)
	}
	v, err := script.Run(ctx, b.client, b.presenceKeys(channel), argv...).Result()
	if err != nil {
		if errors.Is(err, context.Canceled) && b.ctx.Err() != nil {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("presence %q: %w: %w", channel, ErrUnavailable, err)
	}
	return v, nil
}

// parsePresenceChange reads {joined clients, leaves}; the joined are
// entries of those the call added.
func parsePresenceChange(v any, added []PresenceEntry) (PresenceChange, error) {
	a, ok := v.([]any)
	if !ok || len(a) != 2 {
		return PresenceChange{}, fmt.Errorf("presence script answered %T", v)
	}
	joined, _ := a[0].([]any)
	var ch PresenceChange
	for _, j := range joined {
		c, _ := j.(string)
		for _, e := range added {
			if e.Client == c {
				ch.Joined = append(ch.Joined, e)
				break
			}
		}
	}
	var err error
	ch.Left, err = parsePresenceLeaves(a[1])
	return ch, err
}

// parsePresenceLeaves reads the leaves of a script: "u<user>" or
// "c<client>".
func parsePresenceLeaves(v any) ([]PresenceLeave, error) {
	a, _ := v.([]any)
	var left []PresenceLeave
	for _, x := range a {
		s, _ := x.(string)
		switch {
		case strings.HasPrefix(s, "u"):
			left = append(left, PresenceLeave{User: s[1:]})
		case strings.HasPrefix(s, "c"):
			left = append(left, PresenceLeave{Client: s[1:]})
		default:
			return left, fmt.Errorf("presence script answered the leave %s", strconv.Quote(s))
		}
	}
	return left, nil
}
