package bench

import "time"

// clock gives run-epoch nanoseconds from the monotonic clock. Publishers and
// subscribers of one run share it, so latency needs no synchronised wall
// clocks and survives wall-clock steps.
type clock struct{ epoch time.Time }

func newClock() *clock { return &clock{epoch: time.Now()} }

// now returns nanoseconds since the epoch; always > 0 after the epoch.
func (c *clock) now() int64 { return int64(time.Since(c.epoch)) + 1 }
