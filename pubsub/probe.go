package pubsub

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

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
	}
	timeout := b.cfg.ProbeTimeout
	ctx, cancel := context.WithDeadline(b.ctx, start.Add(timeout))
	defer cancel()
	data := []byte(b.nonce + ":" + strconv.FormatUint(seq, 10))
	var probes []probe
	for _, sh := range b.shardList() {
		ps, channel, err := sh.probeTarget(start)
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
		r := &pubReq{channel: channel, data: data, probe: true, done: make(chan struct{}, 1)}
		err = b.send(ctx, r)
		if err == nil {
			err = r.err
		}
		if err != nil {
			if sh.closed() {
				return
			}
			// The publish side failed, not necessarily this connection.
			b.stats.probeFailures.Add(1)
			sh.probeWant.CompareAndSwap(seq, 0)
			if ctx.Err() != nil {
				sh.setProbeErr(fmt.Errorf("publish not answered within %v", timeout))
			} else {
				sh.setProbeErr(fmt.Errorf("publish: %w", err))
			}
			continue
		}
		probes = append(probes, probe{sh, ps})
	}
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
		case <-ctx.Done():
			break wait
		}
	}
	select {
	case <-b.closing:
		return
	default:
	}
	for _, p := range probes {
		if !p.sh.probeWant.CompareAndSwap(seq, 0) {
			p.sh.setProbeErr(nil) // it came back
			continue
		}
		b.stats.probeFailures.Add(1)
		err := fmt.Errorf("published but not back within %v", timeout)
		p.sh.setProbeErr(err)
		p.sh.teardown(p.ps, err)
	}
}

// teardown closes ps, if it is still the shard's connection, because its
// probe failed.
func (sh *shard) teardown(ps *redis.PubSub, cause error) {
	if ps != nil && sh.breakConn(ps, cause, true) {
		sh.b.stats.teardowns.Add(1)
	}
}

// probeTarget returns the connection to probe and its probe channel, or
// nil when the shard has none; or an error with the connection when it has
// not confirmed its subscriptions within ProbeTimeout of opening.
func (sh *shard) probeTarget(now time.Time) (*redis.PubSub, string, error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.state != stateUp || sh.cause != nil {
		return nil, "", nil
	}
	if !sh.live && now.Sub(sh.connectedAt) > sh.b.cfg.ProbeTimeout {
		return sh.ps, "", fmt.Errorf("subscriptions not confirmed within %v", sh.b.cfg.ProbeTimeout)
	}
	if !sh.probeSubscribed {
		return nil, "", nil
	}
	return sh.ps, sh.psProbe, nil
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
