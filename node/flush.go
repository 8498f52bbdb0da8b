package node

import (
	"math"
	"sync"
	"time"
)

// A flusher writes the queues of its connections in sweeps: one goroutine
// takes every connection whose write is due and writes each one's batch
// with one non-blocking writev, one after the other. A node has one flusher
// per CPU, each serving a fixed share of the connections.
//
// Sweeps are what make fan-out cheap. A message to n subscribers costs n
// system calls made back to back by one goroutine, not n goroutines woken,
// scheduled and each put to sleep again; and the clients' side sees its
// sockets become readable together.
//
// A connection is written at most once per WriteDelay: its next write is
// due WriteDelay after the sweep that wrote it last, and what arrives
// meanwhile waits and goes out in that write. So a busy connection gets one
// write per WriteDelay with several messages in it, while a connection
// that gets a message now and then (or a reply to a command) gets it in the
// next sweep, at once. The connections of one channel are written in the
// same sweeps, so their writes stay together. When a sweep takes longer
// than WriteDelay (a burst, or a fan-out to thousands), the next starts as
// soon as it ends and its batches are bigger: the node writes less often
// per message as load grows.
//
// A connection whose socket cannot take its whole batch (a slow client)
// leaves the flusher: its own writer goroutine writes the rest, blocking
// within the write timeout, and hands the connection back once its queue
// is empty. No goroutine runs for a flusher with nothing to write.
type flusher struct {
	delay time.Duration
	wake  chan struct{} // a connection became due before next

	mu      sync.Mutex
	queued  []*conn // connections with something to write
	spare   []*conn // the previous sweep's array, reused
	running bool    // a goroutine runs sweeps
	next    int64   // while it waits: when it looks at queued again (monotime)
}

func newFlusher(delay time.Duration) *flusher {
	return &flusher{delay: delay, wake: make(chan struct{}, 1)}
}

// add queues c, whose write is due at due (monotime), starting the sweeps
// if none run and waking them if c is due before they look again. The
// caller holds c.mu (lock order: conn.mu, then flusher.mu).
func (f *flusher) add(c *conn, due int64) {
	f.mu.Lock()
	f.queued = append(f.queued, c)
	switch {
	case !f.running:
		f.running = true
		go f.run()
	case f.next != 0 && due < f.next:
		f.next = 0
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
	f.mu.Unlock()
}

// monotime is the node's clock for pacing writes and pings: nanoseconds
// since the process started, from the monotonic clock, so that a step of
// the wall clock neither holds writes back nor fails pongs.
func monotime() int64 { return int64(time.Since(processStart)) }

var processStart = time.Now()

// sweepSlack: a sweep also takes the connections due within this part of
// WriteDelay, so that connections due at nearly the same time share it.
const sweepSlack = 4

// run sweeps until no connection is queued.
func (f *flusher) run() {
	w := new(writev) // scratch space of the batches
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		f.mu.Lock()
		f.next = 0
		if len(f.queued) == 0 {
			f.running = false
			f.mu.Unlock()
			return
		}
		now := monotime()
		horizon := now + int64(f.delay)/sweepSlack
		sweep, keep := f.spare[:0], f.queued[:0]
		next := int64(math.MaxInt64)
		for _, c := range f.queued {
			if d := c.due.Load(); d <= horizon {
				sweep = append(sweep, c)
			} else {
				keep = append(keep, c)
				next = min(next, d)
			}
		}
		clear(f.queued[len(keep):]) // let the swept connections go
		f.queued, f.spare = keep, nil
		if len(sweep) == 0 {
			f.spare = sweep
			f.next = next
			f.mu.Unlock()
			timer.Reset(time.Duration(next - now))
			select {
			case <-timer.C:
			case <-f.wake:
				timer.Stop()
			}
			continue
		}
		f.mu.Unlock()

		for _, c := range sweep {
			if !c.flush(w, now) {
				w = new(writev) // c's own writer has it
			}
		}
		clear(sweep)
		f.mu.Lock()
		f.spare = sweep[:0]
		f.mu.Unlock()
	}
}
