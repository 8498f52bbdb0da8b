//go:build unix

package node_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/internal/wsclient"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub"
)

// A subscriber that does not read fills its socket: the node's sweeps must
// then hand it to its own writer without holding up anyone else, and once
// it reads it must get every message, whole and in order (a batch cut off
// mid-frame by a full socket continues where it stopped).
func TestSlowReaderLosesNothing(t *testing.T) {
	const (
		messages = 400
		size     = 8 << 10 // 3.2 MB in all: far more than the sockets hold
	)
	cfg := nodetest.Config()
	cfg.QueueBytes = 8 << 20
	broker := pubsub.NewMemory()
	s := nodetest.Start(t, cfg, broker)
	addr := strings.TrimPrefix(s.URL, "http://")

	slow := testenv.DialWebSocket(t, addr, "/ws/flood", wsclient.Options{ReadBuffer: 4096})
	fast := nodetest.Dial(t, "ws"+strings.TrimPrefix(s.URL, "http")+"/ws/flood", nil)
	fast.SetReadLimit(1 << 20)

	payload := func(i int) []byte {
		p := []byte(strings.Repeat(string(rune('a'+i%26)), size))
		binary.BigEndian.PutUint32(p, uint32(i))
		return p
	}
	ctx := context.Background()
	for i := range messages {
		if err := broker.Publish(ctx, "flood", pubsub.Message{Origin: "elsewhere", Payload: payload(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// The fast subscriber gets everything while the slow one reads nothing.
	for i := range messages {
		_, got := nodetest.Read(t, fast)
		if got != string(payload(i)) {
			t.Fatalf("fast subscriber: message %d differs", i)
		}
	}
	r := bufio.NewReader(slow)
	slow.SetReadDeadline(time.Now().Add(nodetest.Timeout))
	for i := range messages {
		_, got, err := wsclient.ReadMessage(r)
		if err != nil {
			t.Fatalf("slow subscriber: message %d: %v", i, err)
		}
		if string(got) != string(payload(i)) {
			t.Fatalf("slow subscriber: message %d differs (sequence %d)", i, binary.BigEndian.Uint32(got))
		}
	}
}
