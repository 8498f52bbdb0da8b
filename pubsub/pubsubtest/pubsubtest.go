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
		{"HistoryOffsets", testHistoryOffsets},
		{"HistoryFrom", testHistoryFrom},
		{"HistoryTrimmed", testHistoryTrimmed},
		{"HistoryEpochChange", testHistoryEpochChange},
		{"HistoryNewChannel", testHistoryNewChannel},
		{"OnceDeliversOnce", testOnceDeliversOnce},
		{"OnceHistory", testOnceHistory},
		{"OnceConcurrent", testOnceConcurrent},
		{"OnceExpires", testOnceExpires},
		{"PresenceList", testPresenceList},
		{"PresenceRemove", testPresenceRemove},
		{"PresenceGrace", testPresenceGrace},
		{"PresenceLease", testPresenceLease},
		{"PresenceMany", testPresenceMany},
		{"PresenceBadOptions", testPresenceBadOptions},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.f(t, newBroker(t)) })
	}
}

// Recorder is a Handler that keeps what it receives and lets a test await
// it. It counts gap events apart from messages.
type Recorder struct {
	mu     sync.Mutex
	msgs   []pubsub.Message
	gaps   int
	notify chan struct{}
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{notify: make(chan struct{}, 1)} }

// Handle records m, or counts it when it is a gap event; it is the
// Recorder's pubsub.Handler.
func (r *Recorder) Handle(m pubsub.Message) {
	r.mu.Lock()
	if m.Gap {
		r.gaps++
	} else {
		r.msgs = append(r.msgs, m)
	}
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

// Gaps returns how many gap events were received so far.
func (r *Recorder) Gaps() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gaps
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

// historian returns b as a Historian, skipping t if it is none.
func historian(t *testing.T, b pubsub.Broker) pubsub.Historian {
	h, ok := b.(pubsub.Historian)
	if !ok {
		t.Skipf("%T keeps no history", b)
	}
	return h
}

var histOpts = pubsub.HistoryOptions{Size: 1000, TTL: time.Minute}

// PublishHistory publishes a text message with history, failing t on error.
func PublishHistory(t testing.TB, h pubsub.Historian, channel, payload string, opts pubsub.HistoryOptions) pubsub.Position {
	t.Helper()
	pos, err := h.PublishHistory(t.Context(), channel, pubsub.Message{Payload: []byte(payload)}, opts)
	if err != nil {
		t.Fatalf("PublishHistory(%q, %q) = %v", channel, payload, err)
	}
	return pos
}

func offsets(msgs []pubsub.Message) []uint64 {
	o := make([]uint64, len(msgs))
	for i, m := range msgs {
		o[i] = m.Offset
	}
	return o
}

func testHistoryOffsets(t *testing.T, b pubsub.Broker) {
	h := historian(t, b)
	r := NewRecorder()
	Subscribe(t, b, "hist:offsets", r.Handle)
	var epoch string
	for i := 1; i <= 5; i++ {
		pos := PublishHistory(t, h, "hist:offsets", strconv.Itoa(i), histOpts)
		if pos.Offset != uint64(i) || pos.Epoch == "" || (epoch != "" && pos.Epoch != epoch) {
			t.Fatalf("PublishHistory #%d = %+v, want offset %d in epoch %q", i, pos, i, epoch)
		}
		epoch = pos.Epoch
	}
	for i, m := range r.WaitN(t, 5) {
		if m.Offset != uint64(i+1) || m.Epoch != epoch || string(m.Payload) != strconv.Itoa(i+1) {
			t.Errorf("delivery %d = offset %d epoch %q payload %q, want %d %q %q", i, m.Offset, m.Epoch, m.Payload, i+1, epoch, strconv.Itoa(i+1))
		}
	}
	// A plain publish on another channel carries no position.
	plain := NewRecorder()
	Subscribe(t, b, "hist:plain", plain.Handle)
	Publish(t, b, "hist:plain", "x")
	if m := plain.WaitN(t, 1)[0]; m.Offset != 0 || m.Epoch != "" {
		t.Errorf("plain publish delivered with offset %d epoch %q, want none", m.Offset, m.Epoch)
	}
}

func testHistoryFrom(t *testing.T, b pubsub.Broker) {
	h := historian(t, b)
	var pos pubsub.Position
	for i := 1; i <= 10; i++ {
		pos = PublishHistory(t, h, "hist:from", strconv.Itoa(i), histOpts)
	}
	tests := []struct {
		since uint64
		limit int
		want  []uint64
	}{
		{4, 100, []uint64{5, 6, 7, 8, 9, 10}},
		{4, 3, []uint64{5, 6, 7}},
		{0, 2, []uint64{1, 2}},
		{10, 100, []uint64{}},
		{0, 0, []uint64{}},
	}
	for _, tt := range tests {
		msgs, got, err := h.History(t.Context(), "hist:from", histOpts, tt.since, tt.limit)
		if err != nil {
			t.Fatalf("History(since %d, limit %d) = %v", tt.since, tt.limit, err)
		}
		if got != pos {
			t.Errorf("History(since %d, limit %d) position = %+v, want %+v", tt.since, tt.limit, got, pos)
		}
		if fmt.Sprint(offsets(msgs)) != fmt.Sprint(tt.want) {
			t.Errorf("History(since %d, limit %d) offsets = %v, want %v", tt.since, tt.limit, offsets(msgs), tt.want)
		}
		for _, m := range msgs {
			if string(m.Payload) != strconv.FormatUint(m.Offset, 10) || m.Epoch != pos.Epoch {
				t.Errorf("History: offset %d has payload %q epoch %q, want %d %q", m.Offset, m.Payload, m.Epoch, m.Offset, pos.Epoch)
			}
		}
	}
}

func testHistoryTrimmed(t *testing.T, b pubsub.Broker) {
	h := historian(t, b)
	// Redis trims approximately, by whole stream nodes of 100 entries.
	opts := pubsub.HistoryOptions{Size: 10, TTL: time.Minute}
	const n = 500
	for i := 1; i <= n; i++ {
		PublishHistory(t, h, "hist:trim", strconv.Itoa(i), opts)
	}
	msgs, pos, err := h.History(t.Context(), "hist:trim", opts, 0, n)
	if err != nil {
		t.Fatal(err)
	}
	if pos.Offset != n || len(msgs) < opts.Size || len(msgs) >= n {
		t.Fatalf("History of %d messages kept at size %d: position %d, %d messages; want %d and from %d to %d",
			n, opts.Size, pos.Offset, len(msgs), n, opts.Size, n-1)
	}
	if first := msgs[0].Offset; first == 1 || msgs[len(msgs)-1].Offset != n {
		t.Errorf("History after trimming runs from %d to %d, want from above 1 to %d", first, msgs[len(msgs)-1].Offset, n)
	}
}

func testHistoryEpochChange(t *testing.T, b pubsub.Broker) {
	h := historian(t, b)
	opts := pubsub.HistoryOptions{Size: 10, TTL: 50 * time.Millisecond}
	old := PublishHistory(t, h, "hist:epoch", "a", opts)
	deadline := time.Now().Add(wait)
	for {
		// History does not renew the expiry of a history that exists.
		_, pos, err := h.History(t.Context(), "hist:epoch", opts, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if pos.Epoch != old.Epoch {
			if pos.Offset != 0 || pos.Epoch == "" {
				t.Errorf("History after expiry = %+v, want offset 0 in a new epoch", pos)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("epoch still %q %v after a TTL of %v", old.Epoch, wait, opts.TTL)
		}
		time.Sleep(opts.TTL / 5) // expiry is time's doing: no event to await
	}
	if pos := PublishHistory(t, h, "hist:epoch", "b", histOpts); pos.Offset != 1 || pos.Epoch == old.Epoch {
		t.Errorf("PublishHistory after expiry = %+v, want offset 1 in an epoch other than %q", pos, old.Epoch)
	}
}

func testHistoryNewChannel(t *testing.T, b pubsub.Broker) {
	h := historian(t, b)
	msgs, pos, err := h.History(t.Context(), "hist:new", histOpts, 0, 10)
	if err != nil || len(msgs) != 0 || pos.Offset != 0 || pos.Epoch == "" {
		t.Fatalf("History of a new channel = %d messages, %+v, %v; want none at offset 0 of an epoch", len(msgs), pos, err)
	}
	if got := PublishHistory(t, h, "hist:new", "first", histOpts); got.Offset != 1 || got.Epoch != pos.Epoch {
		t.Errorf("first PublishHistory = %+v, want offset 1 in the epoch History started, %q", got, pos.Epoch)
	}
	if _, err := h.PublishHistory(t.Context(), "hist:new", pubsub.Message{}, pubsub.HistoryOptions{}); err == nil {
		t.Error("PublishHistory with zero HistoryOptions succeeded, want an error")
	}
}

// oncer returns b as a OncePublisher, skipping t if it is none.
func oncer(t *testing.T, b pubsub.Broker) pubsub.OncePublisher {
	o, ok := b.(pubsub.OncePublisher)
	if !ok {
		t.Skipf("%T does not publish idempotently", b)
	}
	return o
}

var onceWindow = time.Minute

// PublishOnce publishes a text message with an idempotency key, failing t
// on error, and reports whether it was a duplicate.
func PublishOnce(t testing.TB, o pubsub.OncePublisher, channel, payload, key string, hist *pubsub.HistoryOptions) (pubsub.Position, bool) {
	t.Helper()
	pos, dup, err := o.PublishOnce(t.Context(), channel, pubsub.Message{Payload: []byte(payload)}, pubsub.Once{Key: key, Window: onceWindow}, hist)
	if err != nil {
		t.Fatalf("PublishOnce(%q, %q, key %q) = %v", channel, payload, key, err)
	}
	return pos, dup
}

func testOnceDeliversOnce(t *testing.T, b pubsub.Broker) {
	o := oncer(t, b)
	r, other := NewRecorder(), NewRecorder()
	Subscribe(t, b, "once:a", r.Handle)
	Subscribe(t, b, "once:b", other.Handle)
	steps := []struct {
		channel, payload, key string
		dup                   bool
	}{
		{"once:a", "first", "k1", false},
		{"once:a", "retry", "k1", true},
		{"once:a", "second", "k2", false},
		{"once:b", "same key, other channel", "k1", false},
		{"once:a", "retry again", "k1", true},
	}
	for _, s := range steps {
		if _, dup := PublishOnce(t, o, s.channel, s.payload, s.key, nil); dup != s.dup {
			t.Errorf("PublishOnce(%q, key %q) duplicate = %v, want %v", s.channel, s.key, dup, s.dup)
		}
	}
	Publish(t, b, "once:a", "marker")
	if got := payloads(r.WaitN(t, 3)); fmt.Sprint(got) != "[first second marker]" {
		t.Errorf("once:a got %q, want [first second marker]", got)
	}
	if got := payloads(other.WaitN(t, 1)); len(got) != 1 {
		t.Errorf("once:b got %q", got)
	}
	if _, _, err := o.PublishOnce(t.Context(), "once:a", pubsub.Message{}, pubsub.Once{Window: time.Minute}, nil); err == nil {
		t.Error("PublishOnce with an empty key succeeded, want an error")
	}
	if _, _, err := o.PublishOnce(t.Context(), "once:a", pubsub.Message{}, pubsub.Once{Key: "k"}, nil); err == nil {
		t.Error("PublishOnce with no window succeeded, want an error")
	}
}

func testOnceHistory(t *testing.T, b pubsub.Broker) {
	o := oncer(t, b)
	h := historian(t, b)
	r := NewRecorder()
	Subscribe(t, b, "once:hist", r.Handle)
	PublishHistory(t, h, "once:hist", "before", histOpts)
	first, dup := PublishOnce(t, o, "once:hist", "first", "k", &histOpts)
	if dup || first.Offset != 2 || first.Epoch == "" {
		t.Fatalf("PublishOnce = %+v, duplicate %v; want offset 2, not a duplicate", first, dup)
	}
	again, dup := PublishOnce(t, o, "once:hist", "retry", "k", &histOpts)
	if !dup || again != first {
		t.Errorf("retried PublishOnce = %+v, duplicate %v; want %+v, a duplicate", again, dup, first)
	}
	if pos := PublishHistory(t, h, "once:hist", "after", histOpts); pos.Offset != 3 {
		t.Errorf("PublishHistory after the retry = %+v, want offset 3", pos)
	}
	msgs, _, err := h.History(t.Context(), "once:hist", histOpts, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if got := payloads(msgs); fmt.Sprint(got) != "[before first after]" {
		t.Errorf("history %q, want [before first after]", got)
	}
	if got := r.WaitN(t, 3); fmt.Sprint(payloads(got), offsets(got)) != "[before first after] [1 2 3]" {
		t.Errorf("delivered %q at %v, want [before first after] at [1 2 3]", payloads(got), offsets(got))
	}
}

func testOnceConcurrent(t *testing.T, b pubsub.Broker) {
	o := oncer(t, b)
	r := NewRecorder()
	Subscribe(t, b, "once:race", r.Handle)
	const n = 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	published := 0
	for i := range n {
		wg.Go(func() {
			_, dup, err := o.PublishOnce(t.Context(), "once:race", pubsub.Message{Payload: []byte(strconv.Itoa(i))}, pubsub.Once{Key: "same", Window: time.Minute}, nil)
			if err != nil {
				t.Errorf("PublishOnce #%d = %v", i, err)
				return
			}
			if !dup {
				mu.Lock()
				published++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if published != 1 {
		t.Errorf("%d concurrent PublishOnce with one key published %d times, want 1", n, published)
	}
	Publish(t, b, "once:race", "marker")
	if got := payloads(r.WaitN(t, 2)); got[1] != "marker" {
		t.Errorf("delivered %q, want one message then the marker", got)
	}
}

func testOnceExpires(t *testing.T, b pubsub.Broker) {
	o := oncer(t, b)
	once := pubsub.Once{Key: "k", Window: 50 * time.Millisecond}
	if _, dup, err := o.PublishOnce(t.Context(), "once:exp", pubsub.Message{}, once, nil); err != nil || dup {
		t.Fatalf("first PublishOnce = duplicate %v, %v", dup, err)
	}
	deadline := time.Now().Add(wait)
	for {
		_, dup, err := o.PublishOnce(t.Context(), "once:exp", pubsub.Message{}, once, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !dup {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key still a duplicate %v after a window of %v", wait, once.Window)
		}
		time.Sleep(once.Window / 5) // expiry is time's doing: no event to await
	}
}
