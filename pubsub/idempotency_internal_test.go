package pubsub

import (
	"strconv"
	"testing"
	"time"
)

// TestMemOnceBounded: Memory keeps at most maxMemoryOnce keys, forgetting
// the oldest first, and drops expired ones as it records new ones.
func TestMemOnceBounded(t *testing.T) {
	var o memOnce
	now := time.Now()
	for i := range maxMemoryOnce + 10 {
		o.record(memOnceID{"c", strconv.Itoa(i)}, memOnceEntry{expires: now.Add(time.Hour)}, now)
	}
	if len(o.seen) != maxMemoryOnce || len(o.order) != maxMemoryOnce {
		t.Fatalf("%d keys recorded: %d kept, %d in order; want %d", maxMemoryOnce+10, len(o.seen), len(o.order), maxMemoryOnce)
	}
	if _, ok := o.seen[memOnceID{"c", "0"}]; ok {
		t.Error("the oldest key is kept beyond the bound")
	}
	later := now.Add(2 * time.Hour)
	o.record(memOnceID{"c", "new"}, memOnceEntry{expires: later.Add(time.Hour)}, later)
	if len(o.seen) != 1 || len(o.order) != 1 {
		t.Errorf("after every key expired: %d kept, %d in order; want 1", len(o.seen), len(o.order))
	}
}
