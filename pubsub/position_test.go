package pubsub_test

import (
	"context"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/pubsub"
)

// TestRedisPositions: Positions reads the position History gives, in the
// order asked, and the zero Position for a channel with no history,
// without starting an epoch for it.
func TestRedisPositions(t *testing.T) {
	r := testenv.StartRedis(t)
	b := newRedis(t, redisConfig(r))
	ctx := context.Background()
	opts := pubsub.HistoryOptions{Size: 10, TTL: time.Minute}
	var want pubsub.Position
	for i := range 3 {
		pos, err := b.PublishHistory(ctx, "pos:a", pubsub.Message{Payload: []byte{byte(i)}}, opts)
		if err != nil {
			t.Fatal(err)
		}
		want = pos
	}
	got, err := b.Positions(ctx, []string{"pos:none", "pos:a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != (pubsub.Position{}) || got[1] != want {
		t.Errorf("Positions = %+v, want [{} %+v]", got, want)
	}
	if _, pos, err := b.History(ctx, "pos:a", opts, 0, 0); err != nil || pos != want {
		t.Errorf("History position = %+v, %v; want %+v", pos, err, want)
	}
	if n := r.Client(t).Exists(ctx, "{relay:pos:none}:h").Val(); n != 0 {
		t.Errorf("Positions of a channel without history created its hash")
	}
}
