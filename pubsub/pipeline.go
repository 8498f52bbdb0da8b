package pubsub

// Publishing: no goroutine of the broker sits between a publisher and
// Redis. Each pipeline stands for one Redis connection's worth of round
// trips, one at a time. A publisher that finds a pipeline idle leads it: it
// sends the round trip itself, with its own message first and whatever other
// publishers queued behind it meanwhile (at most maxPipeline), so that under
// load one round trip still carries many publishes. When the round trip is
// back, the leader wakes the publishers it carried and, if more are queued,
// makes the first of them the next leader; a publisher is woken once, either
// with its answer or to lead. A lone publisher, the shape of chat traffic,
// therefore publishes with no hand-off between goroutines at all, where a
// dedicated pipeline goroutine cost two wake-ups per message (to it, and back
// to the publisher).
//
// pipeline.mu guards the queue and the leader flag, for memory only: no
// round trip is made under it. It is never held with any other lock.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"

	"github.com/redis/go-redis/v9"
)

// maxPipeline is the most publishes one round trip carries.
const maxPipeline = 512

type pubReq struct {
	channel string
	data    []byte
	probe   bool
	hist    *histReq // nil for a plain PUBLISH
	// err is the answer of Redis, set before done is signalled.
	err error
	// lead is set, under pipeline.mu and before done is signalled, when the
	// publisher is to send the next round trip (with r first in it).
	lead bool
	// done is signalled (buffer 1) once, when the round trip that carried
	// the request is back or when the request is to lead.
	done chan struct{}
}

var pubReqPool = sync.Pool{New: func() any { return &pubReq{done: make(chan struct{}, 1)} }}

// pipeline is one lane of publish round trips; see the comment at the top
// of this file.
type pipeline struct {
	b *Redis

	mu    sync.Mutex
	busy  bool      // a publisher leads: it sends, or is about to
	queue []*pubReq // publishes waiting for the next round trip, in order
	batch []*pubReq // the leader's; reused by each leader in turn
	// pipe is the leader's go-redis pipeline, reused by each leader in
	// turn: a new one per round trip was a tenth of a node's allocations
	// on chat-shaped traffic, where most round trips carry one publish.
	pipe redis.Pipeliner
}

// Publish pipelines m to Redis with whatever else is pending and returns
// once Redis has answered. When the caller sends the round trip itself, it
// waits for it however ctx ends: each step of it up to the configured
// Timeout (see roundTrip).
func (b *Redis) Publish(ctx context.Context, channel string, m Message) error {
	if err := b.admit("publish", channel); err != nil {
		return err
	}
	r := pubReqPool.Get().(*pubReq)
	r.channel = b.cfg.Prefix + channel
	r.data = m.AppendEnvelope(r.data[:0])
	if err := b.send(ctx, r); err != nil {
		// r may still be in a round trip: it is left to the garbage
		// collector.
		if errors.Is(err, ErrClosed) {
			return ErrClosed
		}
		return fmt.Errorf("publish %q: %w", channel, err)
	}
	err := r.err
	pubReqPool.Put(r)
	if err != nil {
		return fmt.Errorf("publish %q: %w", channel, publishErr(err))
	}
	return nil
}

// publishErr wraps the error of a publish's round trip: ErrUnavailable
// when the publish cannot have taken effect (Redis answered it with an
// error, or no connection could be had), ErrOutcomeUnknown when it may
// have (the connection failed or timed out once the command may have gone
// out).
func publishErr(err error) error {
	var rerr redis.Error
	var op *net.OpError
	switch {
	case errors.As(err, &rerr),
		errors.As(err, &op) && op.Op == "dial",
		errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrClosed):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
}

// send publishes r and returns nil once Redis answered it, the answer in
// r.err. It returns ctx's error, or ErrClosed, when it stopped waiting
// first: r then belongs to the round trip that may still carry it.
func (b *Redis) send(ctx context.Context, r *pubReq) error {
	r.err, r.lead = nil, false
	p, lead := b.enqueue(r)
	if lead {
		p.lead(r)
		return nil
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		if lead, inFlight := p.abandon(r); !lead {
			if inFlight {
				return fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
			}
			return ctx.Err()
		}
	case <-b.closing:
		if lead, _ := p.abandon(r); !lead {
			return ErrClosed
		}
	}
	if r.lead {
		p.lead(r)
	}
	return nil
}

// enqueue queues r on an idle pipeline, which r then leads, or else on the
// pipeline with the shortest queue.
func (b *Redis) enqueue(r *pubReq) (p *pipeline, lead bool) {
	shortest := -1
	for _, q := range b.pipes {
		q.mu.Lock()
		if !q.busy {
			q.busy = true
			q.queue = append(q.queue, r)
			q.mu.Unlock()
			return q, true
		}
		if n := len(q.queue); shortest < 0 || n < shortest {
			p, shortest = q, n
		}
		q.mu.Unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	lead = !p.busy // it went idle since
	p.busy = true
	p.queue = append(p.queue, r)
	return p, lead
}

// abandon takes r, whose publisher stopped waiting, out of the queue.
// inFlight reports that r was not there any more: a round trip carries it.
// lead reports that r was made the leader meanwhile: its publisher must
// lead all the same, or the queue would wait forever; done is then
// signalled.
func (p *pipeline) abandon(r *pubReq) (lead, inFlight bool) {
	p.mu.Lock()
	lead = r.lead
	i := slices.Index(p.queue, r)
	if i >= 0 && !lead {
		p.queue = slices.Delete(p.queue, i, i+1)
	}
	p.mu.Unlock()
	if lead {
		<-r.done // sent right after lead was set
	}
	return lead, i < 0 && !lead
}

// lead sends one round trip, with r (first in the queue) and the publishes
// queued behind it, then wakes them and hands the pipeline to the next
// publisher queued, if any.
func (p *pipeline) lead(r *pubReq) {
	p.mu.Lock()
	n := min(len(p.queue), maxPipeline)
	batch := append(p.batch[:0], p.queue[:n]...)
	p.queue = p.queue[:copy(p.queue, p.queue[n:])]
	p.mu.Unlock()

	p.b.roundTrip(p.pipe, batch)
	for i, q := range batch {
		batch[i] = nil
		if q != r {
			q.done <- struct{}{} // q belongs to its publisher from here on
		}
	}

	p.mu.Lock()
	p.batch = batch[:0]
	var next *pubReq
	if len(p.queue) == 0 {
		p.busy = false
	} else {
		next = p.queue[0]
		next.lead = true
	}
	p.mu.Unlock()
	if next != nil {
		next.done <- struct{}{}
	}
}

// roundTrip sends batch to Redis as one pipeline, through pipe (empty,
// and left empty), and sets the answer of each request.
//
// Each step is bounded by go-redis's own timeouts, the broker's Timeout
// each (NewRedis): the wait for a pooled connection, a dial, the write and
// the read of the answers. go-redis takes no deadline from a context (its
// ContextTimeoutEnabled is off), so a context.WithTimeout per round trip
// bounded only the first two, at the cost of a timer and a channel per
// publish: the context is the broker's, which Close cancels.
func (b *Redis) roundTrip(pipe redis.Pipeliner, batch []*pubReq) {
	ctx := b.ctx
	hist := false
	script, _ := b.publishWith()
	for _, r := range batch {
		switch {
		case b.cluster != nil && r.hist != nil:
			hist = true
			pipe.Process(ctx, noRetry{evalCmd(ctx, "evalsha", script.Hash(), r)})
		case b.cluster != nil:
			c := redis.NewIntCmd(ctx, "spublish", r.channel, r.data)
			c.SetFirstKeyPos(1)
			pipe.Process(ctx, noRetry{c})
		case r.hist != nil:
			hist = true
			pipe.EvalSha(ctx, script.Hash(), r.hist.keys, r.hist.args(r)...)
		default:
			pipe.Publish(ctx, r.channel, r.data)
		}
	}
	cmds, err := pipe.Exec(ctx)
	if hist {
		b.evalUnknown(ctx, batch, cmds)
	}
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
	// Counted before any publisher returns, so that a caller reading Stats
	// after Publish sees its message.
	b.stats.pipelines.Add(1)
	b.stats.published.Add(ok)
	b.stats.publishErrors.Add(failed)
	b.pubMu.Lock()
	b.pubErr = firstErr
	b.pubMu.Unlock()
}

// evalCmd returns the EVAL or EVALSHA (name) of the publish script (script:
// its source or hash) for r.
func evalCmd(ctx context.Context, name, script string, r *pubReq) *redis.Cmd {
	args := make([]any, 0, 3+len(r.hist.keys)+5)
	args = append(args, name, script, len(r.hist.keys))
	for _, k := range r.hist.keys {
		args = append(args, k)
	}
	args = append(args, r.hist.args(r)...)
	c := redis.NewCmd(ctx, args...)
	c.SetFirstKeyPos(3)
	return c
}

// evalUnknown runs again with EVAL, in one more round trip and in order, the
// publishes with history that Redis refused with NOSCRIPT (a Redis that
// restarted, or was flushed with SCRIPT FLUSH, forgot the script), and parses
// the answers of all of them into their requests.
func (b *Redis) evalUnknown(ctx context.Context, batch []*pubReq, cmds []redis.Cmder) {
	var again []int
	for i, r := range batch {
		if r.hist == nil || i >= len(cmds) {
			continue
		}
		if err := cmds[i].Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			again = append(again, i)
		}
	}
	if len(again) > 0 {
		_, src := b.publishWith()
		pipe := b.client.Pipeline()
		for _, i := range again {
			c := evalCmd(ctx, "eval", src, batch[i])
			if b.cluster != nil {
				pipe.Process(ctx, noRetry{c})
			} else {
				pipe.Process(ctx, c)
			}
			cmds[i] = c
		}
		pipe.Exec(ctx) // each command carries its own error
	}
	for i, r := range batch {
		if r.hist == nil || i >= len(cmds) || cmds[i].Err() != nil {
			continue
		}
		c, ok := unwrap(cmds[i]).(*redis.Cmd)
		if !ok {
			cmds[i].SetErr(fmt.Errorf("publish script: answer of type %T", cmds[i]))
			continue
		}
		if err := r.hist.parse(c.Val()); err != nil {
			cmds[i].SetErr(err)
		}
	}
}
