package node

import (
	"sync"
	"time"
)

// A flusher writes the queues of its connections in sweeps: one goroutine
// takes every connection that has something queued and writes each one's
// batch with one non-blocking writev, one after the other. A node has one
// flusher per CPU, each serving a fixed share of the connections.
//
// Sweeps are what make fan-out cheap. A message to n subscribers costs n
// system calls made back to back by one goroutine, not n goroutines woken,
// scheduled and each put to sleep again; and the clients' side sees its
// sockets become readable together. A sweep starts at most once per
// WriteDelay: what arrives meanwhile waits for the next one, so a busy
// connection gets at most one write per WriteDelay, with several messages
// in it, while a connection that gets a message now and then gets it at
// once. When sweeps take longer than WriteDelay (a burst, or a fan-out to
// thousands), the next starts as soon as the last ends and its batches are
// bigger: the node writes less often per message as load grows.
//
// A connection whose socket cannot take its whole batch (a slow client)
// leaves the flusher: its own writer goroutine writes the rest, blocking
// within the write timeout, and hands the connection back once its queue
// is empty. No goroutine runs for a flusher with nothing to write.
type flusher struct {
	delay time.Duration

	mu      sync.Mutex
	queued  []*conn // connections to write in the next sweep
	spare   []*conn // the previous sweep's array, reused
	running bool    // a goroutine runs sweeps
}

// add puts c in the next sweep, starting the sweeps if none run. The
// caller holds c.mu (lock order: conn.mu, then flusher.mu).
func (f *flusher) add(c *conn) {
	f.mu.Lock()
	f.queued = append(f.queued, c)
	if !f.running {
		f.running = true
		go f.run()
	}
	f.mu.Unlock()
}

// run sweeps until a whole WriteDelay after the last sweep has passed with
// nothing queued.
func (f *flusher) run() {
	var last time.Time // when the last sweep started
	w := new(writev)   // scratch space of the batches
	for {
		if wait := f.delay - time.Since(last); wait > 0 {
			time.Sleep(wait)
		}
		f.mu.Lock()
		sweep := f.queued
		if len(sweep) == 0 {
			f.running = false
			f.mu.Unlock()
			return
		}
		f.queued, f.spare = f.spare[:0], nil
		f.mu.Unlock()

		last = time.Now()
		for _, c := range sweep {
			if !c.flush(w) {
				w = new(writev) // c's own writer has it
			}
		}
		clear(sweep) // let the connections go
		f.mu.Lock()
		f.spare = sweep[:0]
		f.mu.Unlock()
	}
}
