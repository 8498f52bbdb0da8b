package wsout

import (
	"encoding/hex"
	"testing"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAppendHeader(t *testing.T) {
	tests := []struct {
		typ  websocket.MessageType
		n    int
		want string
	}{
		{websocket.MessageText, 0, "8100"},
		{websocket.MessageText, 125, "817d"},
		{websocket.MessageBinary, 126, "827e007e"},
		{websocket.MessageBinary, 65535, "827effff"},
		{websocket.MessageText, 65536, "817f0000000000010000"},
	}
	for _, tt := range tests {
		if got := hex.EncodeToString(AppendHeader(nil, tt.typ, tt.n)); got != tt.want {
			t.Errorf("AppendHeader(%v, %d) = %s, want %s", tt.typ, tt.n, got, tt.want)
		}
	}
}

// The pacing's bucket: two writes after a quiet spell, then one per
// delay; a paced write (a sweep's) empties it, so that a busy connection
// keeps one write per delay even when sweeps come late.
func TestPacing(t *testing.T) {
	const d = 100
	steps := []struct {
		now     int64
		paced   bool
		wantDue int64 // when the next write may go
	}{
		{1000, false, 1000}, // quiet: the second write may go at once
		{1010, false, 1100}, // the bucket is empty
		{1100, true, 1200},  // a sweep at its due time
		{1250, true, 1350},  // a late sweep gives no credit back
		{2000, false, 2000}, // quiet again: two at once
	}
	c := &Conn{cfg: &Config{WriteDelay: d}}
	for i, s := range steps {
		c.wroteLocked(s.now, s.paced)
		if got := c.dueLocked(); got != s.wantDue {
			t.Errorf("step %d: a write at %d (paced %v): next due %d, want %d", i, s.now, s.paced, got, s.wantDue)
		}
	}
}
