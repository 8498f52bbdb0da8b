package pubsub

import (
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
