// Package pubsubtest is the conformance suite of pubsub.Broker: every
// implementation runs it, like fstest.TestFS for an fs.FS.
package pubsubtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-pubsub/relay/pubsub"
)

// wait bounds every wait for a delivery; it is a failure bound, never a
// measure of speed.
const wait = 10 * time.Second

// Run runs the conformance suite, each subtest on a fresh broker from
// newBroker. newBroker registers the broker's cleanup with t.Cleanup.
func Run(t *testing.T, newBroker func(t *testing.T) pubsub.Broker) {
	tests := []struct {
		name string
		f    func(t *testing.T, b pubsub.Broker)
	}{
		{"EverySubscriber", testEverySubscriber},
		{"FieldsPreserved", testFieldsPreserved},
		{"OrderPerPublisher", testOrderPerPublisher},
		{"ChannelsIsolated", testChannelsIsolated},
		{"UnsubscribeStops", testUnsubscribeStops},
		{"ResubscribeAfterLast", testResubscribeAfterLast},
		{"Concurrent", testConcurrent},
		{"ThousandsOfChannels", testThousandsOfChannels},
		{"Closed", testClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.f(t, newBroker(t)) })
	}
}

// Recorder is a Handler that keeps what it receives and lets a test await it.
type Recorder struct {
	mu     sync.Mutex
	msgs   []pubsub.Message
	notify chan struct{}
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{notify: make(chan struct{}, 1)} }

// Handle records m; it is the Recorder's pubsub.Handler.
func (r *Recorder) Handle(m pubsub.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// Messages returns a copy of what was received so far.
func (r *Recorder) Messages() []pubsub.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]pubsub.Message(nil), r.msgs...)
}

// WaitN waits until at least n messages arrived and returns them; it fails
// t after a generous bound.
func (r *Recorder) WaitN(t testing.TB, n int) []pubsub.Message {
	t.Helper()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		if msgs := r.Messages(); len(msgs) >= n {
			return msgs
		}
		select {
		case <-r.notify:
		case <-deadline.C:
			t.Fatalf("received %d messages, want %d", len(r.Messages()), n)
		}
	}
}

// Subscribe subscribes h to channel on b and registers its stop with
// t.Cleanup.
func Subscribe(t testing.TB, b pubsub.Broker, channel string, h pubsub.Handler) func() {
	t.Helper()
	stop, err := b.Subscribe(t.Context(), channel, h)
	if err != nil {
		t.Fatalf("Subscribe(%q) = %v", channel, err)
	}
	t.Cleanup(stop)
	return stop
}

// RunRedis is pubsub.NewRedis with the broker's Run on a goroutine of its
// own: at the end of the test, it closes the broker and waits for Run to
// return. It returns NewRedis's error.
func RunRedis(t testing.TB, cfg pubsub.RedisConfig, log *slog.Logger) (*pubsub.Redis, error) {
	t.Helper()
	b, err := pubsub.NewRedis(cfg, log)
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- b.Run(context.Background()) }()
	t.Cleanup(func() {
		b.Close()
		if err := <-done; err != nil {
			t.Errorf("Redis.Run: %v", err)
		}
	})
	return b, nil
}

// Registry returns a new Prometheus registry for a node, with b's metrics
// registered when b has any (it is a prometheus.Collector, like
// pubsub.Redis), as cmd/relay registers them.
func Registry(b pubsub.Broker) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	if c, ok := b.(prometheus.Collector); ok {
		reg.MustRegister(c)
	}
	return reg
}

// Publish publishes a text message to channel on b, failing t on error.
func Publish(t testing.TB, b pubsub.Broker, channel, payload string) {
	t.Helper()
	if err := b.Publish(t.Context(), channel, pubsub.Message{Payload: []byte(payload)}); err != nil {
		t.Fatalf("Publish(%q, %q) = %v", channel, payload, err)
	}
}

func payloads(msgs []pubsub.Message) []string {
	s := make([]string, len(msgs))
	for i, m := range msgs {
		s[i] = string(m.Payload)
	}
	return s
}

func testEverySubscriber(t *testing.T, b pubsub.Broker) {
	recs := []*Recorder{NewRecorder(), NewRecorder(), NewRecorder()}
	for _, r := range recs {
		Subscribe(t, b, "every", r.Handle)
	}
	want := []string{"one", "two", "three"}
	for _, p := range want {
		Publish(t, b, "every", p)
	}
	for i, r := range recs {
		if got := payloads(r.WaitN(t, len(want))); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("subscriber %d got %q, want %q", i, got, want)
		}
	}
}

func testFieldsPreserved(t *testing.T, b pubsub.Broker) {
	r := NewRecorder()
	Subscribe(t, b, "fields", r.Handle)
	sent := pubsub.Message{
		Origin:  "node-a",
		Conn:    1<<40 + 7,
		Binary:  true,
		Time:    time.Now().UnixNano(),
		Payload: []byte{0xff, 'R', 'L', 'Y', 0, 1, 2, 0xfe},
	}
	if err := b.Publish(t.Context(), "fields", sent); err != nil {
		t.Fatal(err)
	}
	got := r.WaitN(t, 1)[0]
	if got.Origin != sent.Origin || got.Conn != sent.Conn || got.Binary != sent.Binary ||
		got.Time != sent.Time || !bytes.Equal(got.Payload, sent.Payload) {
		t.Errorf("received %+v, want %+v", got, sent)
	}
}

func testOrderPerPublisher(t *testing.T, b pubsub.Broker) {
	const publishers, each = 8, 200
	r := NewRecorder()
	Subscribe(t, b, "order", r.Handle)
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for p := range publishers {
		wg.Go(func() {
			for i := range each {
				m := pubsub.Message{Origin: strconv.Itoa(p), Conn: uint64(i)}
				if err := b.Publish(context.Background(), "order", m); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	next := make(map[string]uint64)
	for _, m := range r.WaitN(t, publishers*each) {
		if m.Conn != next[m.Origin] {
			t.Fatalf("publisher %s: got message %d, want %d", m.Origin, m.Conn, next[m.Origin])
		}
		next[m.Origin]++
	}
}

func testChannelsIsolated(t *testing.T, b pubsub.Broker) {
	a, c := NewRecorder(), NewRecorder()
	Subscribe(t, b, "iso:a", a.Handle)
	Subscribe(t, b, "iso:c", c.Handle)
	Publish(t, b, "iso:a", "for a")
	Publish(t, b, "iso:c", "for c")
	if got := payloads(a.WaitN(t, 1)); len(got) != 1 || got[0] != "for a" {
		t.Errorf("iso:a received %q, want [for a]", got)
	}
	if got := payloads(c.WaitN(t, 1)); len(got) != 1 || got[0] != "for c" {
		t.Errorf("iso:c received %q, want [for c]", got)
	}
}

func testUnsubscribeStops(t *testing.T, b pubsub.Broker) {
	gone, stays := NewRecorder(), NewRecorder()
	stop := Subscribe(t, b, "unsub", gone.Handle)
	Subscribe(t, b, "unsub", stays.Handle)
	Publish(t, b, "unsub", "before")
	gone.WaitN(t, 1)
	stop()
	stop() // idempotent
	Publish(t, b, "unsub", "after")
	// stays gets "after" only once "before" went everywhere; gone must not.
	stays.WaitN(t, 2)
	if got := payloads(gone.Messages()); len(got) != 1 {
		t.Errorf("after stop, handler received %q, want only [before]", got)
	}
}

func testResubscribeAfterLast(t *testing.T, b pubsub.Broker) {
	first := NewRecorder()
	stop := Subscribe(t, b, "again", first.Handle)
	stop()
	second := NewRecorder()
	Subscribe(t, b, "again", second.Handle)
	Publish(t, b, "again", "hello")
	if got := payloads(second.WaitN(t, 1)); got[0] != "hello" {
		t.Errorf("received %q, want [hello]", got)
	}
	if n := len(first.Messages()); n != 0 {
		t.Errorf("stopped handler received %d messages", n)
	}
}

func testConcurrent(t *testing.T, b pubsub.Broker) {
	const workers, rounds = 8, 50
	stable := NewRecorder()
	Subscribe(t, b, "churn:0", stable.Handle)
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for w := range workers {
		wg.Go(func() { // subscribers that come and go
			for i := range rounds {
				stop, err := b.Subscribe(context.Background(), fmt.Sprintf("churn:%d", (w+i)%4), func(pubsub.Message) {})
				if err != nil {
					errs <- err
					return
				}
				stop()
			}
		})
		wg.Go(func() { // publishers on the same channels
			for i := range rounds {
				if err := b.Publish(context.Background(), fmt.Sprintf("churn:%d", i%4), pubsub.Message{Payload: []byte("x")}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// The stable subscriber of churn:0 got every publish to churn:0.
	stable.WaitN(t, workers*((rounds+3)/4))
	Publish(t, b, "churn:0", "marker")
	if got := stable.WaitN(t, workers*((rounds+3)/4)+1); string(got[len(got)-1].Payload) != "marker" {
		t.Errorf("last message %q, want marker", got[len(got)-1].Payload)
	}
}

func testThousandsOfChannels(t *testing.T, b pubsub.Broker) {
	const n = 2000
	r := NewRecorder()
	for i := range n {
		Subscribe(t, b, "many:"+strconv.Itoa(i), r.Handle)
	}
	for i := range n {
		Publish(t, b, "many:"+strconv.Itoa(i), strconv.Itoa(i))
	}
	seen := make(map[string]bool)
	for _, m := range r.WaitN(t, n) {
		seen[string(m.Payload)] = true
	}
	if len(seen) != n {
		t.Errorf("received messages of %d channels, want %d", len(seen), n)
	}
}

func testClosed(t *testing.T, b pubsub.Broker) {
	if err := b.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := b.Publish(t.Context(), "closed", pubsub.Message{}); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
	if _, err := b.Subscribe(t.Context(), "closed", func(pubsub.Message) {}); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
}
