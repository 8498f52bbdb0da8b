package testenv

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func proxyClient(t *testing.T, p *Proxy) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

// subscribe subscribes through c and waits for Redis's confirmation.
func subscribe(t *testing.T, c *redis.Client, channel string) *redis.PubSub {
	t.Helper()
	ps := c.Subscribe(t.Context(), channel)
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.ReceiveTimeout(t.Context(), 10*time.Second); err != nil {
		t.Fatalf("subscribe %s through the proxy: %v", channel, err)
	}
	return ps
}

func receive(t *testing.T, ps *redis.PubSub) string {
	t.Helper()
	m, err := ps.ReceiveTimeout(t.Context(), 10*time.Second)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	msg, ok := m.(*redis.Message)
	if !ok {
		t.Fatalf("received %T %v, want a message", m, m)
	}
	return msg.Payload
}

func TestProxyFreezeSubscribers(t *testing.T) {
	r := StartRedis(t)
	p := StartProxy(t, r.Addr())
	direct := r.Client(t)

	frozen := subscribe(t, proxyClient(t, p), "ch")
	other := proxyClient(t, p)
	if err := other.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("PING through the proxy: %v", err)
	}
	if err := direct.Publish(t.Context(), "ch", "before").Err(); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, frozen); got != "before" {
		t.Fatalf("before the freeze, received %q, want before", got)
	}

	if n := p.FreezeSubscribers(); n != 1 {
		t.Fatalf("FreezeSubscribers() = %d, want 1 (the subscriber only)", n)
	}
	if err := direct.Publish(t.Context(), "ch", "during").Err(); err != nil {
		t.Fatal(err)
	}
	// A connection that never subscribed still works both ways.
	if n, err := other.Publish(t.Context(), "ch", "marker").Result(); err != nil || n != 1 {
		t.Fatalf("PUBLISH through an unfrozen connection = %d, %v; want 1 receiver", n, err)
	}
	// A subscriber that connects after the freeze is forwarded.
	later := subscribe(t, proxyClient(t, p), "ch")
	if err := direct.Publish(t.Context(), "ch", "after").Err(); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, later); got != "after" {
		t.Errorf("new subscriber received %q, want after", got)
	}
	// The frozen one gets nothing of "during", "marker" and "after": all
	// reached Redis, as later's delivery proves. No event can mark an
	// absence here, so this read is bounded; it cannot fail spuriously.
	if m, err := frozen.ReceiveTimeout(t.Context(), 200*time.Millisecond); err == nil {
		t.Errorf("frozen subscriber received %v", m)
	} else if ne := net.Error(nil); !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("frozen subscriber read = %v, want a timeout", err)
	}
}

// TestProxyClose closes the proxy under open and frozen connections:
// clients see them close, and goleak finds no goroutine left.
func TestProxyClose(t *testing.T) {
	r := StartRedis(t)
	p := StartProxy(t, r.Addr())
	ps := subscribe(t, proxyClient(t, p), "ch")
	p.FreezeSubscribers()
	c := proxyClient(t, p)
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	p.Close()
	p.Close()
	if _, err := ps.ReceiveTimeout(t.Context(), 10*time.Second); err == nil {
		t.Error("frozen subscriber still receiving after Close")
	}
	if err := c.Ping(context.Background()).Err(); err == nil {
		t.Error("PING through a closed proxy succeeded")
	}
}

func TestProxyURL(t *testing.T) {
	r := StartRedis(t)
	p := StartProxy(t, r.Addr())
	opt, err := redis.ParseURL(p.URL())
	if err != nil {
		t.Fatalf("ParseURL(%q): %v", p.URL(), err)
	}
	if opt.Addr != p.Addr() || !strings.HasPrefix(p.Addr(), "127.0.0.1:") {
		t.Errorf("URL() = %q, Addr() = %q; want a loopback address", p.URL(), p.Addr())
	}
}

func TestRESPScanner(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"*2\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n", true},
		{"*2\r\n$9\r\nSuBsCrIbE\r\n$2\r\nch\r\n", true},
		{"*2\r\n$10\r\npsubscribe\r\n$2\r\nc*\r\n", true},
		{"*2\r\n$10\r\nssubscribe\r\n$2\r\nch\r\n", true},
		{"*1\r\n$4\r\nPING\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n$1\r\nb\r\n", true},
		{"SUBSCRIBE ch\r\n", true},
		{"*2\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n", false},
		{"*3\r\n$7\r\npublish\r\n$2\r\nch\r\n$9\r\nsubscribe\r\n", false},
		{"*3\r\n$7\r\npublish\r\n$9\r\nsubscribe\r\n$20\r\n\r\n*1\r\n$9\r\nsubscribe\r\n\r\n", false},
		{"*1\r\n$4\r\nPING\r\n", false},
		{"PING\r\n", false},
		{"*2\r\n$9\r\nsubscr", false},
	}
	for _, tt := range tests {
		var whole respScanner
		if got := whole.scan([]byte(tt.in)); got != tt.want {
			t.Errorf("scan(%q) = %v, want %v", tt.in, got, tt.want)
		}
		var split respScanner
		got := false
		for i := range len(tt.in) {
			got = split.scan([]byte(tt.in[i:i+1])) || got
		}
		if got != tt.want {
			t.Errorf("scan(%q) byte by byte = %v, want %v", tt.in, got, tt.want)
		}
	}
}
