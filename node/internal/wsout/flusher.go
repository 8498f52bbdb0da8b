package wsout

import (
	"math"
	"sync"
	"time"
)

// A Flusher writes the queues of its connections in sweeps: one goroutine
// takes every connection whose write is due and writes each one's batch
// with one non-blocking writev, one after the other. A node has one
// flusher per CPU, each serving a fixed share of the connections.
//
// Sweeps are what make fan-out cheap. A message to n subscribers costs n
// system calls made back to back by one goroutine, not n goroutines woken,
// scheduled and each put to sleep again; and the clients' side sees its
// sockets become readable together.
//
// A connection is due as its pacing allows (see Conn), and what arrives
// meanwhile waits and goes out in that write. The connections of one
// channel are written in the same sweeps, so their writes stay together.
// When a sweep takes longer than the write delay (a burst, or a fan-out to
// thousands), the next starts as soon as it ends and its batches are
// bigger: the node writes less often per message as load grows.
//
// A connection whose socket cannot take its whole batch (a slow client)
// leaves the flusher: its own writer goroutine writes the rest, blocking
// within the write timeout, and hands the connection back once its queue
// is not due. No goroutine runs for a flusher with nothing to write.
type Flusher struct {
	delay time.Duration
	wake  chan struct{} // a connection became due before next
	done  sync.WaitGroup

	mu      sync.Mutex
	queued  []*Conn // connections with something to write
	spare   []*Conn // the previous sweep's array, reused
	running bool    // a goroutine runs sweeps
	closed  bool    // Close was called: no more sweeps
	next    int64   // while it waits: when it looks at queued again (monotime)
}

// NewFlusher returns a flusher for connections paced by delay (the write
// delay of their Config).
func NewFlusher(delay time.Duration) *Flusher {
	return &Flusher{delay: delay, wake: make(chan struct{}, 1)}
}

// Close stops the sweeps and waits for the flusher's goroutine, if one
// runs, to exit. Call it once every connection of the flusher has been
// closed and waited for (Conn.Wait): what is still in its list then is
// closed connections, which a sweep would skip.
func (f *Flusher) Close() {
	f.mu.Lock()
	f.closed = true
	clear(f.queued)
	f.queued = nil
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
	f.done.Wait()
}

// add queues c, whose write is due at due (monotime), starting the sweeps
// if none run and waking them if c is due before they look again. The
// caller holds c.mu.
func (f *Flusher) add(c *Conn, due int64) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.queued = append(f.queued, c)
	switch {
	case !f.running:
		f.running = true
		f.done.Add(1)
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

// monotime is the clock for pacing writes and pings: nanoseconds since the
// process started, from the monotonic clock, so that a step of the wall
// clock neither holds writes back nor fails pongs.
func monotime() int64 { return int64(time.Since(processStart)) }

var processStart = time.Now()

// sweepSlack: a sweep also takes the connections due within this part of
// the write delay, so that connections due at nearly the same time share
// it.
const sweepSlack = 4

// run sweeps until no connection is queued.
func (f *Flusher) run() {
	defer f.done.Done()
	b := new(batch) // scratch space of the batches
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		f.mu.Lock()
		f.next = 0
		if len(f.queued) == 0 || f.closed {
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
			if !c.sweep(b, now) {
				b = new(batch) // c's own writer has it
			}
		}
		clear(sweep)
		f.mu.Lock()
		f.spare = sweep[:0]
		f.mu.Unlock()
	}
}

// InlineMax is the most connections an Inline writes: waking a flusher
// costs about one write on the machines measured (docs/BENCHMARKS.md), and
// a larger fan-out is better spread over the flushers' sweeps.
const InlineMax = 16

// An Inline lets a goroutine that delivers a message write it to the
// connections whose write is due itself, rather than wake their flushers:
// Add queues under the caller's locks, and Flush, called once those are
// released, writes without blocking. The zero Inline is ready; it lives
// on the caller's stack for one message.
type Inline struct {
	now  int64
	n    int
	due  [InlineMax]*Conn
	used bool
}

// Add queues f for c like Conn.Enqueue; when c's write is due, Flush
// writes it.
func (in *Inline) Add(c *Conn, f *Frame) {
	if !in.used {
		in.now, in.used = monotime(), true
	}
	if c.enqueue(f, in.n < len(in.due), in.now) {
		in.due[in.n] = c
		in.n++
	}
}

// Flush writes the connections Add found due, without blocking; what a
// socket does not take goes to that connection's own writer.
func (in *Inline) Flush() {
	if in.n == 0 {
		return
	}
	b := getBatch()
	for _, c := range in.due[:in.n] {
		if !c.write(b, in.now, false) {
			b = getBatch()
		}
	}
	b.release()
	clear(in.due[:in.n])
	in.n = 0
}
