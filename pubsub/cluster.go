package pubsub

// Redis Cluster: sharded pub/sub.
//
// With RedisConfig.ClusterAddrs the broker publishes with SPUBLISH through
// a go-redis ClusterClient, so that a channel's messages reach only the
// master that owns the channel's hash slot, and subscribes with SSUBSCRIBE
// on one subscriber connection (shard, shard.go) per master that owns
// slots. Which master owns a channel comes from the broker's own slot map,
// which the topology goroutine keeps:
//
//   - it reads CLUSTER SLOTS at start, every ProbeInterval, and when a shard
//     asks: a master sent SUNSUBSCRIBE for a channel it no longer owns (the
//     slot moved), answered SSUBSCRIBE with MOVED (whose address it takes
//     at once, before the next read), or a subscriber connection failed (a
//     failover may have promoted a replica);
//   - it opens a shard for each master that owns slots, and retires the
//     shard of an address that owns none any more once no channel is left
//     on it;
//   - it moves every channel whose slot's master changed, or that its
//     master unsubscribed, to the shard of the slot's master, which
//     subscribes it there and gives the channel's handlers a Message with
//     Gap set, as on a reconnect (Stats.Moves counts them);
//   - it names each shard's probe channel so that its slot belongs to the
//     shard's master, and gives the shard a new one when that slot moves.
//
// clusterState.mu guards the slot map and which shard carries each
// channel. It is taken before shard.mu, never after: Subscribe, its stop
// and the topology goroutine hold it while they change a shard's channels.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// numSlots is the number of hash slots of a Redis Cluster.
const numSlots = 16384

// clusterState is the broker's view of a Redis Cluster.
type clusterState struct {
	// node is the template of the options of each shard's client: the
	// credentials, TLS and timeouts of the seeds.
	node  redis.Options
	seeds []*redis.Client // asked for the slot map when no shard answers
	// refresh asks the topology goroutine to read the slot map (buffer 1).
	refresh chan struct{}
	// ready is closed once the first slot map is in.
	ready chan struct{}

	mu     sync.Mutex
	slots  [numSlots]string // master address of each slot; "" for none
	byAddr map[string]*shard
	order  []*shard          // byAddr's shards, in the order they came
	route  map[string]*shard // the shard carrying each channel with handlers
	hints  map[int]string    // slot → master, from MOVED, for the next map
	err    error             // why the last slot map could not be read
	next   int               // index of the next shard
	known  bool              // a slot map was read
}

// validateCluster checks ClusterAddrs, and the exclusion of URL.
func (c *RedisConfig) validateCluster() error {
	if c.ClusterAddrs == "" {
		return nil
	}
	switch {
	case c.URL != "":
		return errors.New("RELAY_REDIS_URL and RELAY_REDIS_CLUSTER_ADDRS are both set; want one Redis mode: RELAY_REDIS_URL (standalone), RELAY_REDIS_SENTINEL_ADDRS (Sentinel) or RELAY_REDIS_CLUSTER_ADDRS (Cluster)")
	case len(c.SentinelAddrs) > 0:
		return errors.New("RELAY_REDIS_SENTINEL_ADDRS and RELAY_REDIS_CLUSTER_ADDRS are both set; want one Redis mode: RELAY_REDIS_URL (standalone), RELAY_REDIS_SENTINEL_ADDRS (Sentinel) or RELAY_REDIS_CLUSTER_ADDRS (Cluster)")
	case c.Username != "" || c.Password != "" || c.DB != 0:
		return errors.New("RELAY_REDIS_USERNAME, RELAY_REDIS_PASSWORD or RELAY_REDIS_DB is set with RELAY_REDIS_CLUSTER_ADDRS; want the credentials in the first seed: redis://user:password@host:port (a Redis Cluster has database 0 only)")
	}
	if _, _, err := parseSeeds(c.ClusterAddrs); err != nil {
		return fmt.Errorf("RELAY_REDIS_CLUSTER_ADDRS: %w", err)
	}
	if strings.Contains(hashPart(c.Prefix+"x"), "}") {
		return fmt.Errorf("RELAY_CHANNEL_PREFIX: %q: a \"}\" must close a non-empty \"{...}\" hash tag in cluster mode", c.Prefix)
	}
	return nil
}

// parseSeeds reads ClusterAddrs: the seed addresses, and the options
// (credentials, TLS) of the first seed.
func parseSeeds(s string) ([]string, *redis.Options, error) {
	var addrs []string
	var first *redis.Options
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		opt := &redis.Options{Addr: f}
		if strings.Contains(f, "://") {
			var err error
			if opt, err = redis.ParseURL(f); err != nil {
				return nil, nil, fmt.Errorf("seed %d: %w; want host:port or redis://[user:password@]host:port", len(addrs)+1, err)
			}
		} else if _, port, err := splitHostPort(f); err != nil || port == "" {
			return nil, nil, fmt.Errorf("seed %q; want host:port or redis://[user:password@]host:port", f)
		}
		if first == nil {
			first = opt
		}
		addrs = append(addrs, opt.Addr)
	}
	return addrs, first, nil
}

func splitHostPort(s string) (host, port string, err error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", "", errors.New("no port")
	}
	if _, err := strconv.ParseUint(s[i+1:], 10, 16); err != nil {
		return "", "", err
	}
	return s[:i], s[i+1:], nil
}

// newClusterClient returns the ClusterClient that carries publishes, and
// the broker's view of the cluster, without I/O.
func newClusterClient(cfg RedisConfig) (*redis.ClusterClient, *clusterState, error) {
	addrs, first, err := parseSeeds(cfg.ClusterAddrs)
	if err != nil {
		return nil, nil, fmt.Errorf("RELAY_REDIS_CLUSTER_ADDRS: %w", err)
	}
	off := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	dial := rawDialer(redis.NewDialer(&redis.Options{DialTimeout: cfg.Timeout, TLSConfig: first.TLSConfig}))
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:        addrs,
		Username:     first.Username,
		Password:     first.Password,
		TLSConfig:    first.TLSConfig,
		DialTimeout:  cfg.Timeout,
		ReadTimeout:  cfg.Timeout,
		WriteTimeout: cfg.Timeout,
		PoolTimeout:  cfg.Timeout, // a publish's wait for a connection (pipeline.go)
		Dialer:       dial,
		PoolSize:     cfg.Pipelines + 4,
		// A publish is acknowledged once, never replayed: pipelines mark
		// their commands noRetry, so that only a MOVED or ASK, which
		// Redis answers without running the command, sends one again.
		MaxRetries:               -1,
		MaintNotificationsConfig: off,
	})
	cl := &clusterState{
		node: redis.Options{
			Username:     first.Username,
			Password:     first.Password,
			TLSConfig:    first.TLSConfig,
			DialTimeout:  cfg.Timeout,
			ReadTimeout:  cfg.Timeout,
			WriteTimeout: cfg.Timeout,
			PoolTimeout:  cfg.Timeout,
			Dialer:       dial,
			PoolSize:     2, // the shard's subscriber connection and slot map reads
			MaxRetries:   -1,
			// See NewRedis.
			MaintNotificationsConfig: off,
		},
		refresh: make(chan struct{}, 1),
		ready:   make(chan struct{}),
		byAddr:  make(map[string]*shard),
		route:   make(map[string]*shard),
		hints:   make(map[int]string),
	}
	for _, a := range addrs {
		cl.seeds = append(cl.seeds, cl.client(a))
	}
	return cc, cl, nil
}

// client returns a client of the node at addr with the seeds' options.
func (cl *clusterState) client(addr string) *redis.Client {
	opt := cl.node
	opt.Addr = addr
	if opt.TLSConfig != nil {
		opt.TLSConfig = opt.TLSConfig.Clone()
	}
	return redis.NewClient(&opt)
}

// noRetry marks a pipelined command as never to be sent again after it
// may have reached Redis: the ClusterClient then only re-sends it after a
// MOVED or ASK answer, which says it did not run.
type noRetry struct{ redis.Cmder }

func (noRetry) NoRetry() bool { return true }

// unwrap returns the command a noRetry carries.
func unwrap(c redis.Cmder) redis.Cmder {
	if n, ok := c.(noRetry); ok {
		return n.Cmder
	}
	return c
}

// hashPart returns the part of a key or shard channel name that Redis
// Cluster hashes: the content of the first {...} when it is not empty,
// else the whole name.
func hashPart(s string) string {
	if i := strings.IndexByte(s, '{'); i >= 0 {
		if j := strings.IndexByte(s[i+1:], '}'); j > 0 {
			return s[i+1 : i+1+j]
		}
	}
	return s
}

// slotOf returns the hash slot of a key or shard channel name.
func slotOf(s string) int { return int(crc16(hashPart(s)) % numSlots) }

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial value 0), the
// checksum of Redis Cluster's key hashing.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// topology keeps the slot map and the shards in line with the cluster
// until the broker stops; see the top of this file.
func (b *Redis) topology() {
	const minBackoff, maxBackoff = 50 * time.Millisecond, 2 * time.Second
	cl := b.cluster
	backoff := minBackoff
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-cl.refresh:
			t.Stop()
		case <-b.closing:
			return
		}
		slots, err := b.readSlots()
		if err != nil {
			cl.mu.Lock()
			if cl.err == nil {
				b.log.Warn("redis cluster slot map unreadable", "err", err)
			}
			cl.err = err
			cl.mu.Unlock()
			t.Reset(backoff)
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		b.reconcile(slots)
		// Reads stay minBackoff apart however many shards ask.
		if !b.sleep(minBackoff) {
			return
		}
		t.Reset(b.cfg.ProbeInterval)
	}
}

// sleep waits for d and reports false if the broker stopped first.
func (b *Redis) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-b.closing:
		return false
	}
}

// refreshTopology asks the topology goroutine to read the slot map.
func (b *Redis) refreshTopology() { signal(b.cluster.refresh) }

// hint records that slot belongs to addr, from a MOVED answer, and asks
// for a new slot map; the hint wins over that map.
func (b *Redis) hint(slot int, addr string) {
	cl := b.cluster
	cl.mu.Lock()
	cl.hints[slot] = addr
	cl.mu.Unlock()
	b.refreshTopology()
}

// readSlots reads CLUSTER SLOTS from the first node that answers: the
// shards' masters, then the seeds.
func (b *Redis) readSlots() (*[numSlots]string, error) {
	cl := b.cluster
	cl.mu.Lock()
	clients := make([]*redis.Client, 0, len(cl.order)+len(cl.seeds))
	for _, sh := range cl.order {
		clients = append(clients, sh.node)
	}
	cl.mu.Unlock()
	clients = append(clients, cl.seeds...)
	var errs []error
	for _, c := range clients {
		ctx, cancel := context.WithTimeout(b.ctx, b.cfg.Timeout)
		// CLUSTER SLOTS gives each master's address as clients reach it,
		// TLS or not, as go-redis's ClusterClient reads it too; CLUSTER
		// SHARDS would leave the choice of port to us.
		//lint:ignore SA1019 see above
		ranges, err := c.ClusterSlots(ctx).Result()
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.Options().Addr, err))
			continue
		}
		var slots [numSlots]string
		for _, r := range ranges {
			if len(r.Nodes) == 0 || r.Start < 0 || r.End >= numSlots {
				continue
			}
			for s := r.Start; s <= r.End; s++ {
				slots[s] = r.Nodes[0].Addr
			}
		}
		return &slots, nil
	}
	return nil, fmt.Errorf("cluster slots: %w", errors.Join(errs...))
}

// reconcile brings the shards and the channels they carry in line with
// slots, and the hints that came since it was read.
func (b *Redis) reconcile(slots *[numSlots]string) {
	cl := b.cluster
	var closing []*redis.PubSub // closed after cl.mu: see Redis.stop
	defer func() {
		for _, ps := range closing {
			ps.Close()
		}
	}()
	cl.mu.Lock()
	defer cl.mu.Unlock()
	for s, addr := range cl.hints {
		slots[s] = addr
	}
	clear(cl.hints)
	if cl.known && cl.slots != *slots {
		// The ClusterClient of publishes learns a moved slot from a MOVED
		// answer, but nothing tells it of a failover: its publishes to the
		// dead master would fail until it reloads.
		b.client.(*redis.ClusterClient).ReloadState(b.ctx)
	}
	cl.slots, cl.err = *slots, nil
	owners := make(map[string]bool)
	for _, a := range cl.slots {
		if a != "" {
			owners[a] = true
		}
	}
	for a := range owners {
		if cl.byAddr[a] == nil && !b.startShard(a) {
			return // the broker stopped
		}
	}
	for _, sh := range cl.order {
		if !owners[sh.addr] {
			continue
		}
		if p := sh.wantedProbe(); p == "" || cl.slots[slotOf(p)] != sh.addr {
			if ps := sh.setProbe(b.probeChannel(sh)); ps != nil {
				closing = append(closing, ps)
			}
		}
	}
	for ch, from := range cl.route {
		to := cl.byAddr[cl.slots[slotOf(b.cfg.Prefix+ch)]]
		if to != nil && (to != from || from.isDisplaced(ch)) {
			b.move(ch, from, to)
		}
	}
	kept := cl.order[:0]
	for _, sh := range cl.order {
		retired, ps := false, (*redis.PubSub)(nil)
		if !owners[sh.addr] {
			retired, ps = sh.retire()
		}
		if !retired {
			kept = append(kept, sh)
			continue
		}
		if ps != nil {
			closing = append(closing, ps)
		}
		delete(cl.byAddr, sh.addr)
		sh.log.Info("redis cluster master's subscriber connection retired")
	}
	clear(cl.order[len(kept):])
	cl.order = kept
	if !cl.known {
		cl.known = true
		close(cl.ready)
	}
}

// startShard opens a shard for the master at addr and starts its
// goroutine; cl.mu is held. It reports false when the broker stopped.
func (b *Redis) startShard(addr string) bool {
	cl := b.cluster
	b.runMu.Lock()
	defer b.runMu.Unlock()
	if b.stopped {
		return false
	}
	sh := newShard(b, cl.next)
	cl.next++
	sh.addr = addr
	sh.log = b.log.With("master", addr)
	sh.node = cl.client(addr)
	sh.quit = make(chan struct{})
	sh.probeChan = b.probeChannel(sh)
	cl.byAddr[addr] = sh
	cl.order = append(cl.order, sh)
	b.wg.Go(sh.run)
	sh.log.Info("redis cluster master's subscriber connection opened")
	return true
}

// probeChannel names a probe channel of sh whose slot belongs to sh's
// master in the slot map, or "" if it owns none; cl.mu is held.
func (b *Redis) probeChannel(sh *shard) string {
	base := b.cfg.Prefix + probePrefix + b.cfg.Instance + ":" + strconv.Itoa(sh.idx) + ":"
	for i := range 16 * numSlots { // enough to hit any one slot, on average 16 times
		p := base + strconv.Itoa(i)
		if b.cluster.slots[slotOf(p)] == sh.addr {
			return p
		}
	}
	return ""
}

// move hands channel, with its handlers, from one shard to another (or
// back to the same one) which subscribes it anew and reports the gap;
// cl.mu is held.
func (b *Redis) move(channel string, from, to *shard) {
	rc := from.takeOut(channel)
	if rc == nil {
		delete(b.cluster.route, channel)
		return
	}
	if to.putIn(channel, rc) {
		b.stats.moves.Add(1)
	}
	b.cluster.route[channel] = to
}

// clusterSubscribe registers sub for channel on the shard of the channel's
// master, once a slot map is in.
func (b *Redis) clusterSubscribe(ctx context.Context, channel string, sub *redisSub) (*shard, *redisChan, <-chan struct{}, error) {
	cl := b.cluster
	select {
	case <-cl.ready:
	case <-ctx.Done():
		cl.mu.Lock()
		err := cl.err
		cl.mu.Unlock()
		if err == nil {
			err = ctx.Err()
		}
		return nil, nil, nil, fmt.Errorf("%w: no slot map from the cluster: %w", ErrUnavailable, err)
	case <-b.closing:
		return nil, nil, nil, ErrClosed
	}
	cl.mu.Lock()
	defer cl.mu.Unlock()
	sh := cl.route[channel]
	if sh == nil {
		slot := slotOf(b.cfg.Prefix + channel)
		if sh = cl.byAddr[cl.slots[slot]]; sh == nil {
			return nil, nil, nil, fmt.Errorf("%w: hash slot %d has no master", ErrUnavailable, slot)
		}
		cl.route[channel] = sh
	}
	rc, down := sh.add(channel, sub)
	return sh, rc, down, nil
}

// clusterUnsubscribe removes sub from channel's shard, wherever the
// channel moved meanwhile.
func (b *Redis) clusterUnsubscribe(channel string, sub *redisSub) {
	cl := b.cluster
	cl.mu.Lock()
	sh := cl.route[channel]
	var rc *redisChan
	if sh != nil {
		var last bool
		rc, last = sh.detach(channel, sub)
		if last {
			delete(cl.route, channel)
		}
	}
	cl.mu.Unlock()
	if rc != nil {
		rc.wait()
	}
}

// shardList returns the broker's shards.
func (b *Redis) shardList() []*shard {
	if b.cluster == nil {
		return b.shards
	}
	b.cluster.mu.Lock()
	defer b.cluster.mu.Unlock()
	return append([]*shard(nil), b.cluster.order...)
}

// clusterHealth adds to why what keeps the cluster view from being whole.
func (b *Redis) clusterHealth(why []string) []string {
	cl := b.cluster
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.err != nil {
		why = append(why, "slot map: "+cl.err.Error())
	}
	if !cl.known {
		return append(why, "no slot map read yet")
	}
	free := 0
	for _, a := range cl.slots {
		if a == "" {
			free++
		}
	}
	if free > 0 {
		why = append(why, fmt.Sprintf("%d hash slots have no master", free))
	}
	return why
}

// closeSeeds closes the seed clients.
func (cl *clusterState) closeSeeds() {
	for _, c := range cl.seeds {
		c.Close()
	}
}

// redirected takes a MOVED answer to an SSUBSCRIBE (or SUNSUBSCRIBE) of
// the shard: the shard's channels of that slot are displaced, and the
// slot's new master hinted to the topology goroutine. It reports false for
// any other error, which ends the connection. (A slot being migrated
// answers no ASK to shard channel commands: its old master serves them
// until the slot is handed over.)
func (sh *shard) redirected(rerr redis.Error) bool {
	f := strings.Fields(rerr.Error())
	if len(f) != 3 || f[0] != "MOVED" {
		return false
	}
	slot, err := strconv.Atoi(f[1])
	if err != nil || slot < 0 || slot >= numSlots {
		return false
	}
	prefix := sh.b.cfg.Prefix
	sh.mu.Lock()
	for ch := range sh.chans {
		if slotOf(prefix+ch) != slot {
			continue
		}
		// The answer stands for the confirmations of that slot's
		// channels: none is coming.
		delete(sh.sent, ch)
		delete(sh.pending, ch)
		delete(sh.unsubOwed, ch)
		delete(sh.resub, ch)
		sh.displaced[ch] = struct{}{}
	}
	sh.mu.Unlock()
	sh.log.Debug("redis cluster redirect", "slot", slot, "to", f[2])
	sh.b.hint(slot, f[2])
	return true
}

// unsubscribed takes a SUNSUBSCRIBE confirmation of the Redis channel
// full: one the shard asked for, or one Redis sent by itself because the
// channel's slot moved to another master, which displaces the channel.
func (sh *shard) unsubscribed(full string) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if full == sh.psProbe {
		// The probe's slot moved: the topology goroutine names another.
		sh.b.refreshTopology()
		return
	}
	ch, ok := strings.CutPrefix(full, sh.b.cfg.Prefix)
	if !ok {
		return
	}
	if sh.unsubOwed[ch] > 0 {
		if sh.unsubOwed[ch]--; sh.unsubOwed[ch] == 0 {
			delete(sh.unsubOwed, ch)
		}
		return
	}
	if _, sent := sh.sent[ch]; !sent || sh.chans[ch] == nil {
		return
	}
	delete(sh.sent, ch)
	sh.displaced[ch] = struct{}{}
	sh.b.refreshTopology()
}

// isDisplaced reports whether Redis unsubscribed channel from the shard.
func (sh *shard) isDisplaced(channel string) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	_, ok := sh.displaced[channel]
	return ok
}

// takeOut removes channel from the shard, handlers and all, and returns
// its state, nil if the shard does not carry it. The shard does not
// unsubscribe it: the master that lost the slot did, or will.
func (sh *shard) takeOut(channel string) *redisChan {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	rc := sh.chans[channel]
	if rc == nil {
		return nil
	}
	delete(sh.chans, channel)
	delete(sh.sent, channel)
	delete(sh.dirty, channel)
	delete(sh.resub, channel)
	delete(sh.gap, channel)
	delete(sh.displaced, channel)
	// It may have been the last confirmation the connection waited for.
	sh.liveLocked()
	return rc
}

// putIn adds channel, with the state takeOut returned, to the shard, which
// subscribes it. It reports whether the channel was live: its handlers
// then get a gap event at the subscription's confirmation.
func (sh *shard) putIn(channel string, rc *redisChan) (gap bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.chans[channel] = rc
	delete(sh.sent, channel)
	delete(sh.displaced, channel)
	gap = rc.need == 0
	if !sh.up() {
		// connect gaps the live channels, and waits for the others.
		if !gap {
			rc.need = 1
		}
		signal(sh.retry)
		return gap
	}
	if gap {
		sh.gap[channel] = struct{}{}
	} else {
		rc.need = sh.pending[channel] + 1
	}
	sh.dirty[channel] = struct{}{}
	signal(sh.wake)
	return gap
}

// retire stops the shard if it carries no channel, and reports whether it
// did, with its connection for the caller to close; its goroutine then
// returns and closes the master's client.
func (sh *shard) retire() (bool, *redis.PubSub) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if len(sh.chans) > 0 {
		return false, nil
	}
	close(sh.quit)
	return true, sh.ps
}

// wantedProbe returns the probe channel of the shard's next connection.
func (sh *shard) wantedProbe() string {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.probeChan
}

// setProbe gives the shard the probe channel p, and returns its
// connection, whose probe's slot moved away, for the caller to close so
// that the next one subscribes p.
func (sh *shard) setProbe(p string) *redis.PubSub {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.probeChan = p
	if sh.ps == nil || !sh.up() {
		return nil
	}
	sh.cause, sh.torn = errors.New("the probe channel's hash slot moved"), false
	sh.setStatus("closed: "+sh.cause.Error(), nil)
	return sh.ps
}

// Slot returns the Redis Cluster hash slot of a key or shard channel name
// (CLUSTER KEYSLOT), such as {Prefix}<channel>.
func Slot(name string) int { return slotOf(name) }
