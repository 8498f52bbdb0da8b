package node

import (
	"testing"

	"github.com/relay-pubsub/relay/pubsub"
)

// TestRecoveryTakeHole: after a recovery finished, the first live message
// it lets through must follow the last offset it queued; one that does not
// reports the hole (messages the node missed after the history read, which
// a repair running meanwhile left to this recovery), and only the first.
func TestRecoveryTakeHole(t *testing.T) {
	msg := func(offset uint64, epoch string) pubsub.Message {
		return pubsub.Message{Offset: offset, Epoch: epoch}
	}
	for _, tt := range []struct {
		name               string
		first              pubsub.Message
		wantHold, wantHole bool
	}{
		{"the next offset", msg(6, "e"), false, false},
		{"a duplicate", msg(5, "e"), true, false},
		{"offsets skipped", msg(8, "e"), false, true},
		{"another epoch", msg(1, "f"), false, true},
		{"no offset", msg(0, ""), false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &recovery{last: 5, epoch: "e", done: true}
			hold, caught, hole := r.take(tt.first, 10)
			if hold != tt.wantHold || hole != tt.wantHole || caught == hold {
				t.Fatalf("take(%+v) = hold %v, caught %v, hole %v; want hold %v, hole %v", tt.first, hold, caught, hole, tt.wantHold, tt.wantHole)
			}
			if hold {
				return
			}
			// Once caught up, the channel's own sequence watches for gaps.
			if _, _, hole := r.take(msg(tt.first.Offset+5, tt.first.Epoch), 10); hole {
				t.Error("a second message after the first reported a hole")
			}
		})
	}
	// Before finish, everything is held, holes included.
	r := &recovery{last: 5, epoch: "e"}
	if hold, _, hole := r.take(msg(9, "e"), 10); !hold || hole {
		t.Errorf("take before finish = hold %v, hole %v; want held, no hole", hold, hole)
	}
}
