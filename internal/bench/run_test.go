package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
)

// runBench runs Command with args and returns the decoded JSON line and the
// text report.
func runBench(t *testing.T, args ...string) (*Result, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := Command(t.Context(), args, &stdout, &stderr)
	if stdout.Len() == 0 {
		return nil, stderr.String(), err
	}
	if n := strings.Count(stdout.String(), "\n"); n != 1 {
		t.Fatalf("stdout has %d lines, want 1 JSON line:\n%s", n, stdout.String())
	}
	var res Result
	if jerr := json.Unmarshal(stdout.Bytes(), &res); jerr != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", jerr, stdout.String())
	}
	return &res, stderr.String(), err
}

// short are the flags of a quick publishing run bounded by count: every
// stream sends perStream messages inside the window, which ends when they
// are sent; the drain ends when all arrived. The durations are only
// failure bounds, so no assertion depends on how fast anything runs.
var short = []string{"-warmup", "0s", "-messages", fmt.Sprint(perStream), "-duration", "2m", "-drain", "2m"}

const perStream = 25

func checkClean(t *testing.T, res *Result, report string) {
	t.Helper()
	if res.Expected == 0 || res.Published == 0 {
		t.Errorf("published %d, expected %d: want traffic\n%s", res.Published, res.Expected, report)
	}
	if res.Delivered != res.Expected || res.Loss != 0 || res.Duplicates != 0 || res.Reordered != 0 || res.Foreign != 0 {
		t.Errorf("delivered %d of %d, loss %d, dups %d, reordered %d, foreign %d; want all delivered once in order\n%s",
			res.Delivered, res.Expected, res.Loss, res.Duplicates, res.Reordered, res.Foreign, report)
	}
	if res.Latency == nil || res.Latency.Count != res.Delivered {
		t.Errorf("latency = %+v, want one value per delivery (%d)", res.Latency, res.Delivered)
	}
	if len(res.Closes) != 0 || len(res.ConnectErrors) != 0 {
		t.Errorf("closes %v, connect errors %v: want none", res.Closes, res.ConnectErrors)
	}
}

func TestFanoutRaw(t *testing.T) {
	// Stand-ins share no broker, so a publishing run uses one; the idle
	// test checks the spread over two URLs.
	a := newStandIn(t, "a")
	res, report, err := runBench(t, append([]string{"fanout", "-url", a.url(), "-subs", "20", "-publishers", "2",
		"-rate", "200", "-pids", fmt.Sprint(os.Getpid())}, short...)...)
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	checkClean(t, res, report)
	if res.Connected != 20 || res.Nodes["a"] != 20 {
		t.Errorf("connected %d, nodes %v; want 20 on a", res.Connected, res.Nodes)
	}
	if res.Published != 2*perStream || res.Expected != res.Published*20 {
		t.Errorf("published %d, expected %d; want %d, × 20", res.Published, res.Expected, 2*perStream)
	}
	if res.PublisherSide == 0 {
		t.Errorf("publisher-side deliveries = 0: raw publishers get each other's messages")
	}
	if len(res.Servers) != 1 || res.Servers[0].RSS == 0 || res.ServerCPUPerDel <= 0 {
		t.Errorf("servers %+v, cpu per delivery %v: want /proc figures", res.Servers, res.ServerCPUPerDel)
	}
	for _, want := range []string{"delivered:", "latency end to end: p50", "server cpu per delivery"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
}

// Both ways of reading raw-mode subscribers answer the server's pings and
// account every message.
func TestRawReaders(t *testing.T) {
	for _, lean := range []bool{true, false} {
		t.Run(fmt.Sprintf("lean=%v", lean), func(t *testing.T) {
			s := newStandIn(t, "a")
			s.ping = true
			res, report, err := runBench(t, append([]string{"fanout", "-url", s.url(), "-subs", "3", "-publishers", "1",
				"-rate", "200", fmt.Sprintf("-lean=%v", lean)}, short...)...)
			if err != nil {
				t.Fatalf("Command: %v\n%s", err, report)
			}
			checkClean(t, res, report)
			// Publishers' raw connections are pinged too; they get no
			// messages of their own here (one publisher), so pings count
			// the subscribers' messages.
			if got, want := s.pongs.Load(), res.Delivered; got != want {
				t.Errorf("pings answered %d, want one per message delivered (%d)", got, want)
			}
		})
	}
}

func TestFanoutProtocol(t *testing.T) {
	s := newStandIn(t, "a")
	res, report, err := runBench(t, append([]string{"fanout", "-mode", "protocol", "-url", s.url(),
		"-subs", "10", "-publishers", "2", "-rate", "200"}, short...)...)
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	checkClean(t, res, report)
	if res.PublishAck == nil || res.PublishAck.Count != res.Published {
		t.Errorf("publish acks %+v, want one per published message (%d)", res.PublishAck, res.Published)
	}
}

func TestProtocolRejectedPublishes(t *testing.T) {
	s := newStandIn(t, "a")
	s.reject = func(id uint64) bool { return id%5 == 0 }
	res, report, err := runBench(t, append([]string{"fanout", "-mode", "protocol", "-url", s.url(),
		"-subs", "5", "-publishers", "1", "-rate", "200"}, short...)...)
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	if res.PublishErrors["publish: unavailable"] == 0 {
		t.Errorf("publish errors %v, want unavailable", res.PublishErrors)
	}
	// A rejected publish is not expected anywhere: no loss.
	if res.Loss != 0 || res.Delivered != res.Expected || res.Expected >= res.Published*5 {
		t.Errorf("delivered %d of %d (published %d), loss %d: rejected publishes must not count as loss\n%s",
			res.Delivered, res.Expected, res.Published, res.Loss, report)
	}
}

func TestChannels(t *testing.T) {
	for _, mode := range []string{Raw, Protocol} {
		t.Run(mode, func(t *testing.T) {
			s := newStandIn(t, "a")
			res, report, err := runBench(t, append([]string{"channels", "-mode", mode, "-url", s.url(),
				"-channels", "6", "-subs", "18", "-publishers", "4", "-rate", "300"}, short...)...)
			if err != nil {
				t.Fatalf("Command: %v\n%s", err, report)
			}
			checkClean(t, res, report)
			if res.Streams != 6 || res.Published != 6*perStream || res.Expected != res.Published*3 {
				t.Errorf("streams %d, expected %d, published %d: want 6 streams, 3 subscribers per channel",
					res.Streams, res.Expected, res.Published)
			}
		})
	}
}

// TestDetectsLossDuplicatesReordering makes the stand-in drop, duplicate
// and reorder a tenth of the messages each and checks the generator counts
// them.
func TestDetectsLossDuplicatesReordering(t *testing.T) {
	s := newStandIn(t, "a")
	held := map[int][]byte{}
	s.mangle = func(sub int, msg []byte) [][]byte {
		h, err := ParsePayload(msg)
		if err != nil {
			return [][]byte{msg}
		}
		switch h.Seq % 10 {
		case 3:
			return nil
		case 5:
			return [][]byte{msg, msg}
		case 7:
			held[sub] = msg
			return nil
		case 8:
			if m := held[sub]; m != nil {
				delete(held, sub)
				return [][]byte{msg, m}
			}
		}
		return [][]byte{msg}
	}
	const subs = 4
	// 100 messages, sequences 0-99, all inside the window; the drain waits
	// for what never comes, so it is short (a late message would show as a
	// loss, not pass unnoticed).
	res, report, err := runBench(t, "fanout", "-url", s.url(), "-subs", fmt.Sprint(subs), "-publishers", "1",
		"-rate", "1000", "-warmup", "0s", "-messages", "100", "-duration", "2m", "-drain", "1s")
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	// Each kind hits every tenth message: 10 per subscriber.
	if res.Expected != 100*subs || res.Loss != 10*subs || res.Duplicates != 10*subs || res.Reordered != 10*subs {
		t.Errorf("expected %d, loss %d, duplicates %d, reordered %d; want %d, and %d of each\n%s",
			res.Expected, res.Loss, res.Duplicates, res.Reordered, 100*subs, 10*subs, report)
	}
	if res.Delivered+res.Loss != res.Expected {
		t.Errorf("delivered %d + loss %d != expected %d", res.Delivered, res.Loss, res.Expected)
	}
}

func TestServerCloseIsReported(t *testing.T) {
	s := newStandIn(t, "a")
	var once sync.Once
	s.kick = func(sub int, msg []byte) bool {
		kicked := false
		if h, err := ParsePayload(msg); err == nil && h.Seq == 50 {
			once.Do(func() { kicked = true })
		}
		return kicked
	}
	res, report, err := runBench(t, "fanout", "-url", s.url(), "-subs", "3", "-publishers", "1",
		"-rate", "1000", "-warmup", "0s", "-messages", "100", "-duration", "2m", "-drain", "1s")
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	if res.Closes["1013 slow consumer"] != 1 {
		t.Errorf("closes = %v, want one 1013 slow consumer", res.Closes)
	}
	// The closed subscriber got at most sequences 0-49 of 100 (the
	// stand-in drops what it had queued for it when it closes).
	if res.Loss < 50 || res.Loss > 100 {
		t.Errorf("loss = %d after a subscriber was closed at the 51st of 100 messages, want 50-100\n%s", res.Loss, report)
	}
	if !strings.Contains(report, "1013 slow consumer") {
		t.Errorf("report does not show the close:\n%s", report)
	}
}

func TestIdle(t *testing.T) {
	a, b := newStandIn(t, "a"), newStandIn(t, "b")
	res, report, err := runBench(t, "idle", "-url", a.url()+","+b.url(), "-subs", "50", "-duration", "10ms",
		"-pids", fmt.Sprint(os.Getpid()))
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	if res.Connected != 50 || res.Nodes["a"] != 25 || res.Nodes["b"] != 25 {
		t.Errorf("connected %d, nodes %v; want 25 on each", res.Connected, res.Nodes)
	}
	if len(res.Servers) != 1 || res.Servers[0].RSS == 0 {
		t.Fatalf("servers = %+v, want RSS of this process", res.Servers)
	}
	// The stand-in is this process: its growth over the connections is the
	// per-connection figure.
	s := res.Servers[0]
	if want := float64(s.RSS-s.RSSBefore) / 50; res.RSSPerConn != want {
		t.Errorf("rss per conn %v, want (%d - %d) / 50 = %v", res.RSSPerConn, s.RSS, s.RSSBefore, want)
	}
	if !strings.Contains(report, "held 50 connections") {
		t.Errorf("report:\n%s", report)
	}
}

func TestConnectStorm(t *testing.T) {
	s := newStandIn(t, "a")
	res, report, err := runBench(t, "connect", "-mode", "protocol", "-url", s.url(), "-subs", "40",
		"-concurrency", "8", "-duration", "1m")
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	c := res.Connect
	if c == nil || c.Succeeded != 40 || c.Failed != 0 || c.PerSec <= 0 || c.Latency == nil || c.Latency.Count != 40 {
		t.Errorf("connect = %+v, want 40 handshakes with a rate and latencies\n%s", c, report)
	}
}

func TestConnectErrors(t *testing.T) {
	s := newStandIn(t, "a")
	res, report, err := runBench(t, "connect", "-url", s.url(), "-subs", "3", "-token", "wrong")
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	if res.Connect.Failed != 3 || res.ConnectErrors["http 403"] != 3 {
		t.Errorf("connect %+v, errors %v; want 3 × http 403", res.Connect, res.ConnectErrors)
	}
	// Nothing listens on a closed server's port.
	s.close()
	res, _, _ = runBench(t, "connect", "-url", s.url(), "-subs", "2")
	if res.ConnectErrors["connection refused"] != 2 {
		t.Errorf("errors %v, want 2 × connection refused", res.ConnectErrors)
	}
}

func TestTimeoutAborts(t *testing.T) {
	s := newStandIn(t, "a")
	res, report, err := runBench(t, "fanout", "-url", s.url(), "-subs", "2", "-rate", "10",
		"-duration", "1h", "-timeout", "200ms")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded\n%s", err, report)
	}
	if res == nil || res.Aborted == "" || !strings.Contains(report, "ABORTED") {
		t.Errorf("result %+v: want Aborted and a report saying so", res)
	}
}

func TestCancelAborts(t *testing.T) {
	s := newStandIn(t, "a")
	ctx, cancel := context.WithCancel(t.Context())
	var stdout, stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- Command(ctx, []string{"idle", "-url", s.url(), "-subs", "2", "-duration", "1h"}, &stdout, &stderr)
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Command after cancel = %v, want context.Canceled", err)
	}
	if stdout.Len() == 0 {
		t.Error("no JSON line after cancel")
	}
}

func TestFlags(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := Command(t.Context(), []string{"-h"}, &stdout, &stderr); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: err = %v, want flag.ErrHelp", err)
	}
	if !strings.Contains(stderr.String(), "usage: relay bench") || !strings.Contains(stderr.String(), "-pids") {
		t.Errorf("-h printed:\n%s", stderr.String())
	}
	for _, args := range [][]string{
		{"nosuch"},
		{"-url", "ws://192.0.2.1:80"},
		{"-mode", "mqtt"},
		{"-size", "10"},
		{"fanout", "-channels", "3"},
		{"-duration", "0s"},
		{"fanout", "extra"},
		{"-channel-prefix", "a b"},
		{"-channel-prefix", "__relay"},                // reserved by the node
		{"-channel-prefix", strings.Repeat("p", 250)}, // names over 255 bytes
	} {
		stdout.Reset()
		if err := Command(t.Context(), args, &stdout, &stderr); err == nil {
			t.Errorf("Command(%q) = nil error", args)
		}
		if stdout.Len() != 0 {
			t.Errorf("Command(%q) wrote to stdout: %s", args, stdout.String())
		}
	}
}

// TestTimeoutUnblocksWrites loads a server that never reads: the
// publisher's write blocks once the socket buffers are full, and the
// -timeout must still end the run.
func TestTimeoutUnblocksWrites(t *testing.T) {
	s := newStandIn(t, "a")
	s.stall = make(chan struct{})
	defer close(s.stall)
	res, report, err := runBench(t, "fanout", "-url", s.url(), "-subs", "1", "-publishers", "1",
		"-rate", "1000000", "-size", "65536", "-warmup", "0s", "-duration", "1h", "-timeout", "1s")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded\n%s", err, report)
	}
	if res == nil || res.Aborted == "" {
		t.Errorf("result %+v: want Aborted", res)
	}
}

func TestRateZeroPublishesNothing(t *testing.T) {
	s := newStandIn(t, "a")
	res, report, err := runBench(t, "fanout", "-url", s.url(), "-subs", "2", "-rate", "0",
		"-warmup", "0s", "-duration", "50ms", "-drain", "0s")
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	if res.Published != 0 || res.Expected != 0 || res.Delivered != 0 || res.Loss != 0 {
		t.Errorf("published %d, expected %d, delivered %d, loss %d; want 0", res.Published, res.Expected, res.Delivered, res.Loss)
	}
}
