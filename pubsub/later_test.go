//go:build linux

package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

// failures records what a broker tells a pubsub.Failer.
type failures struct {
	mu   sync.Mutex
	errs []error
	got  chan struct{} // a value per failure
}

func newFailures() *failures { return &failures{got: make(chan struct{}, 1<<14)} }

func (f *failures) PublishFailed(channel string, err error) {
	f.mu.Lock()
	f.errs = append(f.errs, fmt.Errorf("%s: %w", channel, err))
	f.mu.Unlock()
	f.got <- struct{}{}
}

// wait returns the first n failures, failing the test if they do not come.
func (f *failures) wait(t *testing.T, n int) []error {
	t.Helper()
	for range n {
		select {
		case <-f.got:
		case <-time.After(20 * time.Second):
			t.Fatalf("%d publish failures reported, want %d", len(f.all()), n)
		}
	}
	return f.all()
}

func (f *failures) all() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]error(nil), f.errs...)
}

func publishLater(t *testing.T, b *pubsub.Redis, channel string, conn uint64, payload string, f pubsub.Failer) {
	t.Helper()
	if err := b.PublishLater(channel, pubsub.Message{Conn: conn, Payload: []byte(payload)}, f); err != nil {
		t.Fatalf("PublishLater(%q): %v", channel, err)
	}
}

// laterLive returns a Redis, a broker a on it with a 300 ms Timeout whose
// lane for Conn 1 is up (one message through), and a recorder of channel on
// a second broker, which has received that message.
func laterLive(t *testing.T, channel string) (*testenv.Redis, *pubsub.Redis, *pubsubtest.Recorder, *failures) {
	t.Helper()
	r := testenv.StartRedis(t)
	cfg := redisConfig(r)
	cfg.Timeout = 300 * time.Millisecond
	a, b := newRedis(t, cfg), newRedis(t, redisConfig(r))
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, channel, rec.Handle)
	f := newFailures()
	publishLater(t, a, channel, 1, "before", f)
	rec.WaitN(t, 1)
	return r, a, rec, f
}

// TestPublishLaterInOrder: messages published without waiting arrive, in
// the order of each connection, and their answers are counted once read
// (by the lane's timer: nothing publishes after the last).
func TestPublishLaterInOrder(t *testing.T) {
	r := testenv.StartRedis(t)
	a, b := newRedis(t, redisConfig(r)), newRedis(t, redisConfig(r))
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "chat", rec.Handle)
	f := newFailures()
	const conns, each = 3, 200
	for i := range each {
		for c := range uint64(conns) {
			publishLater(t, a, "chat", c, fmt.Sprintf("%d:%d", c, i), f)
		}
	}
	next := make([]int, conns)
	for _, m := range rec.WaitN(t, conns*each) {
		var c, i int
		fmt.Sscanf(string(m.Payload), "%d:%d", &c, &i)
		if i != next[c] {
			t.Fatalf("connection %d: message %d arrived after %d; want them in order", c, i, next[c]-1)
		}
		next[c]++
	}
	testenv.WaitFor(t, 20*time.Second, "every answer read", func() bool { return a.Stats().Published == conns*each })
	if s := a.Stats(); s.PublishErrors != 0 {
		t.Errorf("Stats() = %+v, want no publish errors", s)
	}
	if errs := f.all(); len(errs) > 0 {
		t.Errorf("failures reported: %v", errs)
	}
}

// TestPublishLaterRefused: a publish Redis refuses (here by ACL) is
// reported to its Failer as ErrUnavailable, and the lane goes on with the
// next; the lane authenticates as the URL's user.
func TestPublishLaterRefused(t *testing.T) {
	r := testenv.StartRedis(t)
	if err := r.Client(t).Do(t.Context(), "ACL", "SETUSER", "pub", "on", ">secret", "~*", "resetchannels",
		"&relay:open*", "&relay:__relay_probe*", "+@all").Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	cfg := redisConfig(r)
	u, _ := url.Parse(cfg.URL)
	u.User = url.UserPassword("pub", "secret")
	cfg.URL = u.String()
	a, b := newRedis(t, cfg), newRedis(t, redisConfig(r))
	rec := pubsubtest.NewRecorder()
	pubsubtest.Subscribe(t, b, "open", rec.Handle)
	f := newFailures()
	publishLater(t, a, "closed", 1, "refused", f)
	publishLater(t, a, "open", 1, "taken", f)
	errs := f.wait(t, 1)
	if !errors.Is(errs[0], pubsub.ErrUnavailable) || !strings.Contains(errs[0].Error(), "NOPERM") || !strings.HasPrefix(errs[0].Error(), "closed:") {
		t.Errorf("failure = %v, want ErrUnavailable with Redis's NOPERM for channel closed", errs[0])
	}
	if got := string(rec.WaitN(t, 1)[0].Payload); got != "taken" {
		t.Errorf("open received %q, want taken", got)
	}
	testenv.WaitFor(t, 20*time.Second, "both answers read", func() bool {
		s := a.Stats()
		return s.Published == 1 && s.PublishErrors == 1
	})
}

// TestPublishLaterUnanswered: while Redis is frozen, a publish's answer
// does not come; after the broker's Timeout its Failer is told the outcome
// is unknown. Once Redis is back the lane dials again.
func TestPublishLaterUnanswered(t *testing.T) {
	r, a, rec, f := laterLive(t, "frozen")
	r.Pause()
	publishLater(t, a, "frozen", 1, "unanswered", f)
	errs := f.wait(t, 1)
	if !errors.Is(errs[0], pubsub.ErrOutcomeUnknown) {
		t.Errorf("failure = %v, want ErrOutcomeUnknown", errs[0])
	}
	r.Resume()
	// The lane dials again after its retry delay; meanwhile PublishLater
	// sends callers to Publish.
	testenv.WaitFor(t, 20*time.Second, "the lane back", func() bool {
		err := a.PublishLater("frozen", pubsub.Message{Conn: 1, Payload: []byte("after")}, f)
		if err != nil && !errors.Is(err, pubsub.ErrPublishNow) {
			t.Fatalf("PublishLater with Redis back: %v", err)
		}
		return err == nil
	})
	// The frozen Redis got "unanswered" in its socket and ran it once
	// resumed: the outcome was indeed unknown.
	for _, m := range rec.WaitN(t, 3)[1:] {
		if p := string(m.Payload); p != "unanswered" && p != "after" {
			t.Errorf("received %q after the freeze", p)
		}
	}
}

// TestPublishLaterRedisDown: with Redis gone the lane breaks and
// PublishLater sends callers to Publish, which answers ErrUnavailable.
func TestPublishLaterRedisDown(t *testing.T) {
	r := testenv.StartRedis(t)
	a := newRedis(t, redisConfig(r))
	f := newFailures()
	publishLater(t, a, "down", 1, "up", f)
	testenv.WaitFor(t, 20*time.Second, "the answer read", func() bool { return a.Stats().Published == 1 })
	r.Stop()
	testenv.WaitFor(t, 20*time.Second, "PublishLater refusing", func() bool {
		err := a.PublishLater("down", pubsub.Message{Conn: 1, Payload: []byte("x")}, f)
		return errors.Is(err, pubsub.ErrPublishNow)
	})
	// A publish sent before the lane saw the close has failed, as not
	// published: nothing of it reached Redis after the close.
	for _, err := range f.all() {
		if !errors.Is(err, pubsub.ErrUnavailable) && !errors.Is(err, pubsub.ErrOutcomeUnknown) {
			t.Errorf("failure = %v, want ErrUnavailable or ErrOutcomeUnknown", err)
		}
	}
	if err := a.Publish(t.Context(), "down", pubsub.Message{Payload: []byte("y")}); !errors.Is(err, pubsub.ErrUnavailable) {
		t.Errorf("Publish with Redis down = %v, want ErrUnavailable", err)
	}
}

// TestPublishLaterClose: Close fails what still waits for an answer with
// ErrClosed, and PublishLater answers ErrClosed after it.
func TestPublishLaterClose(t *testing.T) {
	r := testenv.StartRedis(t)
	a, err := pubsub.NewRedis(redisConfig(r), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newFailures()
	publishLater(t, a, "closing", 1, "answered", f)
	r.Pause()
	publishLater(t, a, "closing", 1, "pending", f)
	a.Close()
	r.Resume()
	errs := f.wait(t, 1)
	if !errors.Is(errs[0], pubsub.ErrClosed) {
		t.Errorf("failure = %v, want ErrClosed", errs[0])
	}
	if err := a.PublishLater("closing", pubsub.Message{Conn: 1}, f); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("PublishLater after Close = %v, want ErrClosed", err)
	}
}

// TestPublishLaterFrozenBacklog: with Redis frozen, a lane holds a bounded
// backlog; past it the publisher waits, and after the broker's Timeout the
// backlog fails. Every publish PublishLater took is then either delivered
// or reported to its Failer: none is lost without a word.
func TestPublishLaterFrozenBacklog(t *testing.T) {
	r, a, rec, f := laterLive(t, "backlog")
	r.Pause()
	const n = 6000
	taken := 0
	for i := range n {
		err := a.PublishLater("backlog", pubsub.Message{Conn: 1, Payload: []byte(strconv.Itoa(i))}, f)
		switch {
		case err == nil:
			taken++
		case !errors.Is(err, pubsub.ErrPublishNow):
			t.Fatalf("PublishLater: %v", err)
		}
	}
	if failed := len(f.all()); failed == 0 {
		t.Errorf("%d publishes past a frozen Redis and none failed; want the backlog failed after the Timeout", n)
	}
	r.Resume()
	testenv.WaitFor(t, 30*time.Second, "every publish taken delivered or failed", func() bool {
		return len(rec.Messages())-1+len(f.all()) >= taken
	})
	for _, err := range f.all() {
		if !errors.Is(err, pubsub.ErrOutcomeUnknown) && !errors.Is(err, pubsub.ErrUnavailable) {
			t.Errorf("failure = %v, want ErrOutcomeUnknown or ErrUnavailable", err)
		}
	}
}

// BenchmarkRedisPublishLater is BenchmarkRedisPublish for PublishLater:
// each publisher (its own Message.Conn) publishes without waiting (with
// Publish while its lane is being dialed, as the node does), and the
// benchmark ends once Redis has answered every publish.
func BenchmarkRedisPublishLater(b *testing.B) {
	r := testenv.StartRedis(b)
	for _, publishers := range []int{1, 64} {
		b.Run(fmt.Sprintf("publishers=%d", publishers), func(b *testing.B) {
			br := newRedis(b, redisConfig(r))
			f := newFailures()
			msgs := make([]pubsub.Message, publishers)
			for i := range msgs {
				msgs[i] = pubsub.Message{Origin: "bench", Conn: uint64(i), Payload: make([]byte, 128)}
			}
			benchPublishers(b, publishers, func(i int) error {
				err := br.PublishLater("bench", msgs[i], f)
				if errors.Is(err, pubsub.ErrPublishNow) { // the lane is being dialed
					err = br.Publish(context.Background(), "bench", msgs[i])
				}
				return err
			}, func(n int) {
				testenv.WaitFor(b, time.Minute, "every answer", func() bool { return br.Stats().Published >= uint64(n) })
			})
			if errs := f.all(); len(errs) > 0 {
				b.Fatalf("%d publishes failed, the first: %v", len(errs), errs[0])
			}
		})
	}
}
