package pubsub_test

import (
	"testing"

	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

func TestMemory(t *testing.T) {
	pubsubtest.Run(t, func(t *testing.T) pubsub.Broker {
		b := pubsub.NewMemory()
		t.Cleanup(func() { b.Close() })
		return b
	})
}

func TestMemoryChannelsReleased(t *testing.T) {
	b := pubsub.NewMemory()
	defer b.Close()
	stop1 := pubsubtest.Subscribe(t, b, "a", func(pubsub.Message) {})
	stop2 := pubsubtest.Subscribe(t, b, "a", func(pubsub.Message) {})
	if got := b.Channels(); got != 1 {
		t.Fatalf("Channels() = %d, want 1", got)
	}
	stop1()
	stop2()
	if got := b.Channels(); got != 0 {
		t.Fatalf("after both stops Channels() = %d, want 0", got)
	}
}
