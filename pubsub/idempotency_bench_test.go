package pubsub_test

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/pubsub"
)

// BenchmarkRedisPublishOnce is BenchmarkRedisPublish with an idempotency
// key on every publish (each its own key): one script run per publish,
// not pipelined with others.
func BenchmarkRedisPublishOnce(b *testing.B) {
	r := testenv.StartRedis(b)
	for _, publishers := range []int{1, 64} {
		b.Run(fmt.Sprintf("publishers=%d", publishers), func(b *testing.B) {
			br := newRedis(b, redisConfig(r))
			m := pubsub.Message{Origin: "bench", Payload: make([]byte, 128)}
			var seq atomic.Uint64
			benchPublishers(b, publishers, func(int) error {
				once := pubsub.Once{Key: strconv.FormatUint(seq.Add(1), 36), Window: time.Minute}
				_, _, err := br.PublishOnce(context.Background(), "bench", m, once, nil)
				return err
			}, nil)
		})
	}
}
