package pubsub

import (
	"context"
	"fmt"
	"strings"
	"sync"
)

// maxPipeline is the most publishes one pipeline carries.
const maxPipeline = 512

type pubReq struct {
	channel string
	data    []byte
	probe   bool
	err     error
	done    chan struct{}
}

var pubReqPool = sync.Pool{New: func() any { return &pubReq{done: make(chan struct{}, 1)} }}

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
