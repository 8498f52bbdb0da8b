package pubsub

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Positioner is implemented by Historians whose handlers can miss a
// message without a gap event (Redis: a PUBLISH that never reached a
// subscriber connection that stayed up). Memory delivers every message
// before PublishHistory returns, so it needs none.
type Positioner interface {
	// Positions returns the position of each channel's history, in the
	// order of channels, as History with a limit of 0 would, but without
	// starting an epoch: a channel with no history now (never published
	// to, expired, flushed) has the zero Position. It is one round trip
	// however many channels it reads.
	Positions(ctx context.Context, channels []string) ([]Position, error)
}

// Positions implements Positioner: one HMGET of each channel's hash,
// pipelined.
func (b *Redis) Positions(ctx context.Context, channels []string) ([]Position, error) {
	select {
	case <-b.closing:
		return nil, ErrClosed
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	pipe := b.client.Pipeline()
	cmds := make([]*redis.SliceCmd, len(channels))
	for i, ch := range channels {
		cmds[i] = pipe.HMGet(ctx, b.historyKeys(ch)[0], "e", "o")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("positions: %w: %w", ErrUnavailable, err)
	}
	out := make([]Position, len(channels))
	for i, c := range cmds {
		v := c.Val()
		e, ok1 := v[0].(string)
		o, ok2 := v[1].(string)
		if !ok1 || !ok2 {
			continue // no history now
		}
		off, err := strconv.ParseUint(o, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("positions: channel %q: offset %q", channels[i], o)
		}
		out[i] = Position{Offset: off, Epoch: e}
	}
	return out, nil
}
