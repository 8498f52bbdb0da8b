package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/internal/wsclient"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := jsonDecode(resp, v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode
}

type readiness struct {
	Ready   bool
	Node    string
	Failing []string
	Reasons []string
}

func TestHealthAndReady(t *testing.T) {
	s := single(t)
	var h struct{ Status string }
	if code := getJSON(t, s.URL+"/healthz", &h); code != 200 || h.Status != "ok" {
		t.Errorf("/healthz = %d %+v, want 200 ok", code, h)
	}
	var r readiness
	if code := getJSON(t, s.URL+"/readyz", &r); code != 200 || !r.Ready || r.Node != s.ID() {
		t.Errorf("/readyz = %d %+v, want 200 ready", code, r)
	}
}

// TestConnectionLimit: beyond RELAY_MAX_CONNECTIONS upgrades get 503 and
// /readyz fails; a freed slot is usable again.
func TestConnectionLimit(t *testing.T) {
	cfg := nodetest.Config()
	cfg.MaxConnections = 2
	s := nodetest.Start(t, cfg, pubsub.NewMemory())
	a := nodetest.Dial(t, s.WS+"/ws/x", nil)
	nodetest.Dial(t, s.WS+"/echo", nil)
	if status := dialStatus(t, s.WS+"/ws/x"); status != http.StatusServiceUnavailable {
		t.Fatalf("third upgrade: HTTP %d, want 503", status)
	}
	var r readiness
	if code := getJSON(t, s.URL+"/readyz", &r); code != 503 || r.Ready || !slices.Equal(r.Failing, []string{"connections"}) {
		t.Errorf("/readyz at the limit = %d %+v, want 503 failing [connections]", code, r)
	}
	if code := getJSON(t, s.URL+"/readyz/details", &r); code != 503 || !strings.Contains(strings.Join(r.Reasons, ","), "connection limit") {
		t.Errorf("/readyz/details at the limit = %d %+v, want 503 with the reason", code, r)
	}
	a.Close(websocket.StatusNormalClosure, "")
	// The slot is released when the node has closed its side; no event
	// reaches the client for that, so readiness is polled.
	testenv.WaitFor(t, nodetest.Timeout, "/readyz to pass again", func() bool {
		return getJSON(t, s.URL+"/readyz", &r) == 200
	})
	nodetest.Dial(t, s.WS+"/ws/x", nil)
}

func TestPerIPLimit(t *testing.T) {
	cfg := nodetest.Config()
	cfg.MaxConnectionsPerIP = 1
	s := nodetest.Start(t, cfg, pubsub.NewMemory())
	nodetest.Dial(t, s.WS+"/ws/x", nil)
	if status := dialStatus(t, s.WS+"/ws/x"); status != http.StatusServiceUnavailable {
		t.Fatalf("second upgrade from one IP: HTTP %d, want 503", status)
	}
}

func dialStatus(t *testing.T, url string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, nil)
	if err == nil {
		c.CloseNow()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
		t.Errorf("dial %s: 503 without Retry-After", url)
	}
	var body struct{ Code, Message string }
	if err := jsonDecode(resp, &body); err != nil || body.Code == "" || body.Message == "" {
		t.Errorf("dial %s: HTTP %d without a JSON error body (%v)", url, resp.StatusCode, err)
	}
	return resp.StatusCode
}

// TestPingTimeout: a peer that completed the handshake and then went silent
// (it answers no ping) is disconnected after the pong timeout, while a
// live client on the same node stays.
func TestPingTimeout(t *testing.T) {
	cfg := nodetest.Config()
	cfg.PingInterval = 100 * time.Millisecond
	cfg.PongTimeout = 200 * time.Millisecond
	s := nodetest.Start(t, cfg, pubsub.NewMemory())

	live := nodetest.Dial(t, s.WS+"/ws/ping", nil)
	live.CloseRead(context.Background()) // reads, so answers pings

	nc := testenv.DialWebSocket(t, strings.TrimPrefix(s.URL, "http://"), "/ws/ping", wsclient.Options{})
	// Silent from now on: read (the node's pings arrive) but never answer.
	nc.SetReadDeadline(time.Now().Add(nodetest.Timeout))
	_, err := io.Copy(io.Discard, nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("silent peer still connected after %v", nodetest.Timeout)
	}

	// The live client went through several ping rounds and still works.
	other := nodetest.Dial(t, s.WS+"/ws/other", nil)
	nodetest.Write(t, other, "still here")
	testenv.WaitFor(t, nodetest.Timeout, "the pong timeout in metrics", func() bool {
		return testenv.Metrics(t, s.URL)[`relay_connections_closed_total{code="1006"}`] == 1
	})
	if err := live.Ping(context.Background()); err != nil {
		t.Errorf("live client: %v", err)
	}
}

// TestMetricsExact: after a scripted exchange the counters have exactly the
// expected values.
func TestMetricsExact(t *testing.T) {
	s := single(t)
	a := nodetest.Dial(t, s.WS+"/ws/m", nil)
	b := nodetest.Dial(t, s.WS+"/ws/m", nil)
	msgs := []string{"one", "two", "three"}
	for _, m := range msgs {
		nodetest.Write(t, a, m)
	}
	for range msgs {
		nodetest.ReadText(t, b)
	}
	if status := dialStatus(t, s.WS+"/ws/bad%20channel"); status != 400 {
		t.Fatalf("bad channel: %d", status)
	}
	m := testenv.Metrics(t, s.URL)
	if got := m["relay_channels"]; got != 1 {
		t.Errorf("relay_channels = %v, want 1", got)
	}
	if got := m["relay_subscriptions"]; got != 2 {
		t.Errorf("relay_subscriptions = %v, want 2", got)
	}
	a.Close(websocket.StatusNormalClosure, "bye")
	b.Close(websocket.StatusNormalClosure, "bye")
	// Closed connections are counted by the node after the client's Close
	// returns; the gauge is polled until both are gone.
	testenv.WaitFor(t, nodetest.Timeout, "relay_connections to drop to 0", func() bool {
		return testenv.Metrics(t, s.URL)[`relay_connections{mode="raw"}`] == 0
	})
	m = testenv.Metrics(t, s.URL)
	want := map[string]float64{
		`relay_connections_opened_total{mode="raw"}`:  2,
		`relay_connections_closed_total{code="1000"}`: 2,
		`relay_messages_received_total{mode="raw"}`:   3,
		`relay_received_bytes_total{mode="raw"}`:      float64(len("one") + len("two") + len("three")),
		`relay_messages_sent_total{mode="raw"}`:       3,
		`relay_sent_bytes_total{mode="raw"}`:          float64(len("one") + len("two") + len("three")),
		`relay_publish_duration_seconds_count`:        3,
		`relay_delivery_latency_seconds_count`:        3,
		`relay_upgrades_refused_total{status="400"}`:  1,
		`relay_slow_consumer_disconnects_total`:       0,
		`relay_channels`:                              0,
		`relay_subscriptions`:                         0,
		`relay_ready`:                                 1,
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if _, ok := m["go_goroutines"]; !ok {
		t.Error("Go runtime metrics missing")
	}
}

// checkPublicReadyz: with Redis (at redisURL) down, /readyz names the
// failing component and nothing else: no address, no error text.
func checkPublicReadyz(t *testing.T, base, redisURL string) {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	keys := slices.Sorted(maps.Keys(raw))
	u, _ := url.Parse(redisURL)
	if resp.StatusCode != 503 || !slices.Equal(keys, []string{"failing", "node", "ready"}) ||
		fmt.Sprint(raw["failing"]) != "[broker]" || strings.Contains(string(body), u.Port()) {
		t.Errorf("/readyz with Redis down = %d %s, want 503 with ready, node and failing [broker] only", resp.StatusCode, body)
	}
}

func TestReadyzJSON(t *testing.T) {
	s := single(t)
	resp, err := http.Get(s.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	if raw["ready"] != true {
		t.Errorf("/readyz body %v", raw)
	}
}

// TestBrokerOutage: with Redis down the node keeps its clients, fails
// readiness, refuses new raw upgrades, closes a raw publisher with 1013;
// when Redis is back it is ready again, the reconnect shows in metrics and
// the subscriptions resume.
func TestBrokerOutage(t *testing.T) {
	r := testenv.StartRedis(t)
	s := cluster(t, r, 1)[0]
	waiting := nodetest.Dial(t, s.WS+"/ws/outage", nil)
	publisher := nodetest.Dial(t, s.WS+"/ws/outage", nil)

	r.Stop()
	var rd readiness
	testenv.WaitFor(t, nodetest.Timeout, "/readyz to fail", func() bool { return getJSON(t, s.URL+"/readyz", &rd) == 503 })
	checkPublicReadyz(t, s.URL, r.URL())
	if getJSON(t, s.URL+"/readyz/details", &rd); len(rd.Reasons) == 0 || !strings.HasPrefix(rd.Reasons[0], "broker: ") {
		t.Errorf("/readyz/details reasons %v, want the broker's error", rd.Reasons)
	}
	if got := testenv.Metrics(t, s.URL)["relay_broker_up"]; got != 0 {
		t.Errorf("relay_broker_up = %v with Redis down, want 0", got)
	}
	if status := dialStatus(t, s.WS+"/ws/elsewhere"); status != 503 {
		t.Errorf("raw upgrade with Redis down: HTTP %d, want 503", status)
	}
	nodetest.Write(t, publisher, "into the void")
	if code, _ := nodetest.ReadClose(t, publisher); code != websocket.StatusTryAgainLater {
		t.Errorf("raw publisher with Redis down closed with %d, want 1013", code)
	}

	r.Start()
	testenv.WaitFor(t, 20*time.Second, "/readyz to pass again", func() bool { return getJSON(t, s.URL+"/readyz", &rd) == 200 })
	m := testenv.Metrics(t, s.URL)
	if m["relay_broker_reconnects_total"] < 1 || m["relay_broker_up"] != 1 {
		t.Errorf("after the outage relay_broker_reconnects_total = %v, relay_broker_up = %v; want ≥1 and 1",
			m["relay_broker_reconnects_total"], m["relay_broker_up"])
	}
	// The client connected through the outage may have missed messages:
	// it is closed with 4005, once the node's subscription is back.
	if code, _ := nodetest.ReadClose(t, waiting); code != protocol.CloseMessagesLost {
		t.Errorf("the client connected through the outage closed with %d, want %d", code, protocol.CloseMessagesLost)
	}
	waiting = nodetest.Dial(t, s.WS+"/ws/outage", nil)
	again := nodetest.Dial(t, s.WS+"/ws/outage", nil)
	nodetest.Write(t, again, "back")
	if got := nodetest.ReadText(t, waiting); got != "back" {
		t.Errorf("a client connected after the outage read %q, want back", got)
	}
}
