package bench

import (
	"errors"
	"net/url"
	"testing"
)

func TestParseTargets(t *testing.T) {
	tests := []struct {
		in     string
		remote bool
		want   []string
		err    error
	}{
		{"ws://127.0.0.1:8080", false, []string{"ws://127.0.0.1:8080"}, nil},
		{"http://localhost:1/,https://[::1]:2/relay/", false, []string{"ws://localhost:1", "wss://[::1]:2/relay"}, nil},
		{"ws://127.9.9.9:1?x=1", false, []string{"ws://127.9.9.9:1"}, nil},
		{"ws://10.0.0.1:8080", false, nil, ErrRemote},
		{"ws://example.com", false, nil, ErrRemote},
		{"ws://example.com", true, []string{"ws://example.com"}, nil},
	}
	for _, tt := range tests {
		got, err := parseTargets(tt.in, tt.remote)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("parseTargets(%q) error = %v, want %v", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || len(got) != len(tt.want) {
			t.Errorf("parseTargets(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			continue
		}
		for i := range got {
			if got[i].String() != tt.want[i] {
				t.Errorf("parseTargets(%q)[%d] = %s, want %s", tt.in, i, got[i], tt.want[i])
			}
		}
	}
	for _, bad := range []string{"", "ftp://127.0.0.1", "ws://", ":::"} {
		if _, err := parseTargets(bad, false); err == nil {
			t.Errorf("parseTargets(%q): nil error", bad)
		}
	}
}

func TestSourceIndex(t *testing.T) {
	tests := []struct{ k, after, want int }{
		{0, 25000, 0}, {24999, 25000, 0}, {25000, 25000, 1}, {49999, 25000, 1}, {50000, 25000, 2},
		{10, 0, 0}, {1 << 30, 1, maxSourceIndex},
	}
	for _, tt := range tests {
		if got := sourceIndex(tt.k, tt.after); got != tt.want {
			t.Errorf("sourceIndex(%d, %d) = %d, want %d", tt.k, tt.after, got, tt.want)
		}
	}
	if a := sourceAddr(1).String(); a != "127.0.0.2" {
		t.Errorf("sourceAddr(1) = %s, want 127.0.0.2", a)
	}
}

func TestWSURL(t *testing.T) {
	base, _ := url.Parse("ws://127.0.0.1:1/prefix")
	tests := []struct {
		mode  string
		batch bool
		want  string
	}{
		{Raw, true, "ws://127.0.0.1:1/prefix/ws/c.1"},
		{Protocol, true, "ws://127.0.0.1:1/prefix/ws"},
		{Protocol, false, "ws://127.0.0.1:1/prefix/ws?batch=false"},
	}
	for _, tt := range tests {
		cfg := &Config{Mode: tt.mode, Batch: tt.batch}
		if got := cfg.wsURL(base, "c.1"); got != tt.want {
			t.Errorf("wsURL(%s, batch=%v) = %s, want %s", tt.mode, tt.batch, got, tt.want)
		}
	}
}

// TestSpreadSourceAddresses connects past the spread threshold and checks
// that the server sees the later connections from 127.0.0.2 and 127.0.0.3.
func TestSpreadSourceAddresses(t *testing.T) {
	s := newStandIn(t, "a")
	res, report, err := runBench(t, "idle", "-url", s.url(), "-subs", "5", "-spread-after", "2",
		"-duration", "1ms", "-concurrency", "1")
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	if res.Connected != 5 {
		t.Fatalf("connected %d, want 5\n%s", res.Connected, report)
	}
	got := s.remoteHosts()
	want := map[string]int{"127.0.0.1": 2, "127.0.0.2": 2, "127.0.0.3": 1}
	for h, n := range want {
		if got[h] != n {
			t.Errorf("connections from %s = %d, want %d (all: %v)", h, got[h], n, got)
		}
	}
}

func TestRaiseFileLimit(t *testing.T) {
	n, err := raiseFileLimit()
	if err != nil || n == 0 {
		t.Errorf("raiseFileLimit() = %d, %v", n, err)
	}
}
