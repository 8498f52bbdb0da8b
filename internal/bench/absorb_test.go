package bench

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/wsclient"
)

// blaster is a minimal WebSocket server that, once a client connects,
// writes count pre-built text frames of one payload followed by a close
// frame, many frames per write: a source fast enough that the cost
// measured is the generator's read path.
type blaster struct {
	srv   *httptest.Server
	count int
	frame []byte // one frame
	wg    sync.WaitGroup
}

func newBlaster(tb testing.TB, count int, payload []byte) *blaster {
	b := &blaster{count: count, frame: wsclient.AppendFrame(nil, wsclient.OpText, payload, false)}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	tb.Cleanup(func() { b.srv.Close(); b.wg.Wait() })
	return b
}

func (b *blaster) serve(w http.ResponseWriter, r *http.Request) {
	accept := wsclient.AcceptKey(r.Header.Get("Sec-WebSocket-Key"))
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	b.wg.Add(1)
	defer b.wg.Done()
	defer conn.Close()
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"X-Relay-Node: blaster\r\nSec-WebSocket-Accept: " + accept + "\r\n\r\n")
	brw.Flush()
	bw := bufio.NewWriterSize(conn, 64<<10)
	for range b.count {
		if _, err := bw.Write(b.frame); err != nil {
			return
		}
	}
	bw.Write(wsclient.AppendFrame(nil, wsclient.OpClose, []byte{0x03, 0xe8}, false)) // close 1000
	bw.Flush()
	// Wait for the client's close frame, then hang up.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	conn.Read(make([]byte, 64))
}

func (b *blaster) url() string { return "ws" + strings.TrimPrefix(b.srv.URL, "http") }

// BenchmarkSubscriberAbsorb measures the generator's subscriber read path
// (coder/websocket Reader, payload decode, stream and latency accounting)
// over real loopback connections: ns/op is per delivered message.
func BenchmarkSubscriberAbsorb(b *testing.B) {
	for _, conns := range []int{1, 100} {
		b.Run(strconv.Itoa(conns)+"conns", func(b *testing.B) {
			benchAbsorb(b, conns)
		})
	}
}

func benchAbsorb(b *testing.B, conns int) {
	perConn := max(1, b.N/conns)
	r := &runner{cfg: &Config{Mode: Raw, Size: 128, DialTimeout: 10 * time.Second}, clk: newClock(),
		lat: newHistShards(4), dialer: newDialer(false, 0, 10*time.Second)}
	r.win.start.Store(1)
	r.win.end.Store(1 << 62)
	payload := AppendPayload(nil, Header{Sent: 1}, 128)
	bl := newBlaster(b, perConn, payload)
	base, err := parseTargets(bl.url(), false)
	if err != nil {
		b.Fatal(err)
	}
	r.cfg.URLs = base
	var cs []*conn
	for i := range conns {
		ws, _, err := r.dial(b.Context(), base[0], "x")
		if err != nil {
			b.Fatal(err)
		}
		cs = append(cs, &conn{ws: ws, rcv: newReceiver(1, &r.win, r.clk, r.lat, i), done: make(chan struct{})})
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := selfCPUSeconds()
	start := time.Now()
	for _, c := range cs {
		go r.readLoop(c, nil)
	}
	var got int64
	for _, c := range cs {
		<-c.done
		got += c.rcv.c.received.Load()
	}
	elapsed := time.Since(start)
	cpu1 := selfCPUSeconds()
	b.StopTimer()
	if got != int64(perConn*conns) {
		b.Fatalf("received %d, want %d", got, perConn*conns)
	}
	b.ReportMetric(float64(got)/elapsed.Seconds(), "msgs/s")
	// CPU of the whole process (the blaster's batched writes are a small
	// part) per message: unlike msgs/s, it does not depend on what else
	// the machine runs.
	b.ReportMetric((cpu1-cpu0)*1e9/float64(got), "cpu-ns/msg")
}
