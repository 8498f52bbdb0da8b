package node_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// The API keys of the tests' nodes, and one that is wrong. None may show in
// a log.
const (
	apiKey      = "k3y-0ne-s3cret"
	apiKey2     = "k3y-tw0-s3cret"
	apiWrongKey = "k3y-wr0ng-s3cret"
)

// lockedBuffer collects the logs of nodes that write concurrently.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// apiLogger returns a debug-level logger whose output is checked, once the
// nodes using it have stopped, for the API keys. Call it before starting
// the nodes, so that the check runs after their cleanup.
func apiLogger(t *testing.T) *slog.Logger {
	t.Helper()
	var buf lockedBuffer
	t.Cleanup(func() {
		logs := buf.String()
		if logs == "" {
			t.Error("the nodes logged nothing; the key check proves nothing")
		}
		for _, k := range []string{apiKey, apiKey2, apiWrongKey} {
			if strings.Contains(logs, k) {
				t.Errorf("an API key (%q) is in the logs:\n%s", k, logs)
			}
		}
	})
	return slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func withAPIKeys(cfg *node.Config) { cfg.APIKeys = node.Secrets{apiKey, apiKey2} }

// apiResponse is an API answer: the status, headers and body.
type apiResponse struct {
	status int
	header http.Header
	body   string
}

// errorBody decodes r's body as an error, failing t if it is not one.
func (r apiResponse) errorBody(t *testing.T) (code, message string, published *int) {
	t.Helper()
	var e struct {
		Code      string
		Message   string
		Published *int
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error %d has Content-Type %q, want application/json", r.status, ct)
	}
	if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Code == "" || e.Message == "" {
		t.Fatalf("HTTP %d body %q is not a JSON error (%v)", r.status, r.body, err)
	}
	return e.Code, e.Message, e.Published
}

// apiDo sends an API request to base with a valid key and a JSON content
// type unless header says otherwise (an empty value removes a header).
func apiDo(t *testing.T, method, url string, header map[string]string, body string) apiResponse {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return apiResponse{resp.StatusCode, resp.Header, string(b)}
}

// apiPublish publishes body with POST /api/publish[/batch] and fails t
// unless the answer is 200 with result want.
func apiPublish(t *testing.T, url, body, want string) {
	t.Helper()
	r := apiDo(t, "POST", url, nil, body)
	if r.status != http.StatusOK || strings.TrimSpace(r.body) != `{"result":`+want+`}` {
		t.Fatalf("POST %s %s = %d %s, want 200 {\"result\":%s}", url, body, r.status, r.body, want)
	}
}

// protoSubscribe opens a protocol-mode connection to base subscribed to
// channel, one object per frame.
func protoSubscribe(t *testing.T, ws, channel string) *websocket.Conn {
	t.Helper()
	c := nodetest.Dial(t, ws+"/ws?batch=false", nil)
	nodetest.Write(t, c, fmt.Sprintf(`{"id":1,"cmd":"subscribe","channel":%q}`, channel))
	if got := nodetest.ReadText(t, c); got != `{"id":1,"result":{}}` {
		t.Fatalf("subscribe %s: %s", channel, got)
	}
	return c
}

// TestAPIPublishAcrossNodes: a publish through the API of node 1 reaches a
// raw and a protocol-mode subscriber on node 2, as a protocol-mode publish
// does, with either form of the key.
func TestAPIPublishAcrossNodes(t *testing.T) {
	log := apiLogger(t)
	r := testenv.StartRedis(t)
	nodes := nodetest.ClusterWith(t, r.URL(), 2, nodetest.Options{Config: withAPIKeys, Log: log})
	raw := nodetest.Dial(t, nodes[1].WS+"/ws/news", nil)
	proto := protoSubscribe(t, nodes[1].WS, "news")
	url := nodes[0].URL + "/api/publish"

	tests := []struct {
		header   map[string]string
		body     string
		raw      string // what the raw subscriber reads
		pushData string // the data of the push
	}{
		{nil, `{"channel":"news","data":{"text": "hi",  "n": [1, 2]}}`, `{"text":"hi","n":[1,2]}`, `{"text":"hi","n":[1,2]}`},
		{map[string]string{"Authorization": "", "X-API-Key": apiKey2}, `{"channel":"news","data":"a string"}`, `"a string"`, `"a string"`},
		{map[string]string{"Authorization": "bearer " + apiKey2}, `{"data":42,"channel":"news"}`, `42`, `42`},
		{map[string]string{"Content-Type": "application/json; charset=utf-8"}, `{"channel":"news","data":null}`, `null`, `null`},
		{nil, `{"channel":"news","data":"line\nbreak é"}`, `"line\nbreak é"`, `"line\nbreak é"`},
	}
	for _, tt := range tests {
		r := apiDo(t, "POST", url, tt.header, tt.body)
		if r.status != http.StatusOK || r.body != "{\"result\":{}}\n" {
			t.Fatalf("POST /api/publish %s = %d %q, want 200 {\"result\":{}}", tt.body, r.status, r.body)
		}
		if got := r.header.Get("X-Relay-Node"); got != "node-1" {
			t.Errorf("X-Relay-Node = %q, want node-1", got)
		}
		if typ, got := nodetest.Read(t, raw); typ != websocket.MessageText || got != tt.raw {
			t.Errorf("publish %s: raw subscriber read %v %s, want text %s", tt.body, typ, got, tt.raw)
		}
		want := `{"channel":"news","data":` + tt.pushData + `}`
		if got := nodetest.ReadText(t, proto); got != want {
			t.Errorf("publish %s: protocol subscriber read %s, want %s", tt.body, got, want)
		}
	}

	m := testenv.Metrics(t, nodes[0].URL)
	for k, v := range map[string]float64{
		`relay_api_requests_total{status="200"}`: float64(len(tests)),
		`relay_api_requests_total{status="401"}`: 0,
		`relay_publish_duration_seconds_count`:   float64(len(tests)),
		`relay_publish_errors_total`:             0,
	} {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("node 1 %s = %v (present %v), want %v", k, got, ok, v)
		}
	}
}

// TestAPIBatch: a batch is published in order; one invalid message refuses
// the whole batch before anything is published.
func TestAPIBatch(t *testing.T) {
	log := apiLogger(t)
	r := testenv.StartRedis(t)
	nodes := nodetest.ClusterWith(t, r.URL(), 2, nodetest.Options{Config: withAPIKeys, Log: log})
	raw := nodetest.Dial(t, nodes[1].WS+"/ws/feed", nil)
	proto := protoSubscribe(t, nodes[1].WS, "feed")
	other := nodetest.Dial(t, nodes[1].WS+"/ws/other", nil)
	url := nodes[0].URL + "/api/publish/batch"

	const n = 50
	var msgs []string
	for i := range n {
		ch := "feed"
		if i%10 == 9 {
			ch = "other"
		}
		msgs = append(msgs, fmt.Sprintf(`{"channel":%q,"data":{"seq":%d}}`, ch, i))
	}
	apiPublish(t, url, `{"messages":[`+strings.Join(msgs, ",")+`]}`, fmt.Sprintf(`{"published":%d}`, n))
	for i := range n {
		want, c := fmt.Sprintf(`{"seq":%d}`, i), raw
		if i%10 == 9 {
			c = other
		}
		if got := nodetest.ReadText(t, c); got != want {
			t.Fatalf("message %d: raw subscriber read %s, want %s", i, got, want)
		}
		if c == other {
			continue
		}
		if got, want := nodetest.ReadText(t, proto), `{"channel":"feed","data":`+want+`}`; got != want {
			t.Fatalf("message %d: protocol subscriber read %s, want %s", i, got, want)
		}
	}

	// A bad message anywhere: nothing is published.
	bad := apiDo(t, "POST", url, nil, `{"messages":[{"channel":"feed","data":"first"},{"channel":"feed"}]}`)
	if code, msg, _ := bad.errorBody(t); bad.status != 400 || code != "bad_request" || msg != `messages[1]: missing field "data"` {
		t.Errorf("batch with a bad message = %d %s %q, want 400 bad_request", bad.status, code, msg)
	}
	apiPublish(t, url, `{"messages":[]}`, `{"published":0}`)
	apiPublish(t, url, `{"messages":[{"channel":"feed","data":"marker"}]}`, `{"published":1}`)
	if got := nodetest.ReadText(t, raw); got != `"marker"` {
		t.Errorf("after a refused batch the subscriber read %s, want the marker", got)
	}
}

// TestAPIErrors: every error has its status and code, and a well-behaved
// API client and subscriber on the same node keep working.
func TestAPIErrors(t *testing.T) {
	log := apiLogger(t)
	cfg := nodetest.Config()
	cfg.MaxMessageBytes = 2048 // a batch holds 32 KiB, enough for 1001 small messages
	withAPIKeys(&cfg)
	s := nodetest.StartWith(t, cfg, pubsub.NewMemory(), log)
	sub := nodetest.Dial(t, s.WS+"/ws/good", nil)
	stillWorks := func(t *testing.T, marker string) {
		t.Helper()
		apiPublish(t, s.URL+"/api/publish", fmt.Sprintf(`{"channel":"good","data":%q}`, marker), `{}`)
		if got, want := nodetest.ReadText(t, sub), fmt.Sprintf("%q", marker); got != want {
			t.Fatalf("well-behaved subscriber read %s, want %s", got, want)
		}
	}
	big := strings.Repeat("x", 2048)
	tooMany := `{"messages":[` + strings.TrimSuffix(strings.Repeat(`{"channel":"c","data":1},`, 1001), ",") + `]}`

	const pub, batch = "/api/publish", "/api/publish/batch"
	tests := []struct {
		name, method, path string
		header             map[string]string
		body               string
		status             int
		code, message      string // message "" is not checked
	}{
		{"no key", "POST", pub, map[string]string{"Authorization": ""}, `{"channel":"c","data":1}`, 401, "unauthorized", ""},
		{"wrong key", "POST", pub, map[string]string{"Authorization": "Bearer " + apiWrongKey}, `{"channel":"c","data":1}`, 401, "unauthorized", ""},
		{"bare key", "POST", pub, map[string]string{"Authorization": apiKey}, `{"channel":"c","data":1}`, 401, "unauthorized", ""},
		{"basic", "POST", pub, map[string]string{"Authorization": "Basic " + apiKey}, `{"channel":"c","data":1}`, 401, "unauthorized", ""},
		{"wrong X-API-Key", "POST", batch, map[string]string{"X-API-Key": apiWrongKey}, `{"messages":[]}`, 401, "unauthorized", ""},
		{"key prefix", "POST", pub, map[string]string{"Authorization": "Bearer " + apiKey[:5]}, `{"channel":"c","data":1}`, 401, "unauthorized", ""},
		{"GET", "GET", pub, nil, "", 405, "bad_request", "method GET not allowed: use POST /api/publish"},
		{"PUT batch", "PUT", batch, nil, `{"messages":[]}`, 405, "bad_request", ""},
		{"unknown endpoint", "POST", "/api/nope", nil, `{}`, 404, "not_found", "no such endpoint: POST /api/nope"},
		{"text/plain", "POST", pub, map[string]string{"Content-Type": "text/plain"}, `{"channel":"c","data":1}`, 415, "bad_request", "Content-Type must be application/json"},
		{"no content type", "POST", pub, map[string]string{"Content-Type": ""}, `{"channel":"c","data":1}`, 415, "bad_request", ""},
		{"form", "POST", pub, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, `channel=c`, 415, "bad_request", ""},
		{"invalid JSON", "POST", pub, nil, `{"channel":`, 400, "bad_request", "invalid JSON: unexpected end of JSON input"},
		{"empty body", "POST", pub, nil, ``, 400, "bad_request", "invalid JSON: unexpected end of JSON input"},
		{"trailing data", "POST", pub, nil, `{"channel":"c","data":1} {}`, 400, "bad_request", "invalid JSON: invalid character '{' after top-level value"},
		{"array", "POST", pub, nil, `[{"channel":"c","data":1}]`, 400, "bad_request", "body must be a JSON object"},
		{"null", "POST", pub, nil, `null`, 400, "bad_request", "body must be a JSON object"},
		{"not UTF-8", "POST", pub, nil, "{\"channel\":\"c\",\"data\":\"\xff\"}", 400, "bad_request", "body is not valid UTF-8"},
		{"missing channel", "POST", pub, nil, `{"data":1}`, 400, "bad_request", `missing field "channel"`},
		{"missing data", "POST", pub, nil, `{"channel":"c"}`, 400, "bad_request", `missing field "data"`},
		{"channel not a string", "POST", pub, nil, `{"channel":7,"data":1}`, 400, "bad_request", `field "channel" must be a string`},
		{"unknown field", "POST", pub, nil, `{"channel":"c","data":1,"id":2}`, 400, "bad_request", `unknown field "id"; known are "channel", "data", "exclude_client", "idempotency_key"`},
		{"field case", "POST", pub, nil, `{"Channel":"c","data":1}`, 400, "bad_request", `unknown field "Channel"; known are "channel", "data", "exclude_client", "idempotency_key"`},
		{"bad channel", "POST", pub, nil, `{"channel":"has space","data":1}`, 400, "invalid_channel", "channel name has ' ' at byte 3; allowed are A-Z a-z 0-9 _ - : . @ / ="},
		{"empty channel", "POST", pub, nil, `{"channel":"","data":1}`, 400, "invalid_channel", ""},
		{"long channel", "POST", pub, nil, `{"channel":"` + strings.Repeat("a", 256) + `","data":1}`, 400, "invalid_channel", ""},
		{"body too big", "POST", pub, nil, `{"channel":"c","data":"` + big + `"}`, 413, "limit_exceeded", "body over 2048 bytes"},
		{"batch missing messages", "POST", batch, nil, `{}`, 400, "bad_request", `missing field "messages"`},
		{"batch messages not array", "POST", batch, nil, `{"messages":{}}`, 400, "bad_request", `field "messages" must be an array`},
		{"batch single form", "POST", batch, nil, `{"channel":"c","data":1}`, 400, "bad_request", `unknown field "channel"; known are "messages"`},
		{"batch element not object", "POST", batch, nil, `{"messages":[1]}`, 400, "bad_request", "messages[0]: message must be a JSON object"},
		{"batch bad channel", "POST", batch, nil, `{"messages":[{"channel":"c","data":1},{"channel":"a b","data":1}]}`, 400, "invalid_channel", "messages[1]: channel name has ' ' at byte 1; allowed are A-Z a-z 0-9 _ - : . @ / ="},
		{"batch data too big", "POST", batch, nil, `{"messages":[{"channel":"c","data":"` + big + `"}]}`, 413, "limit_exceeded", "messages[0]: data is 2050 bytes; at most 2048 (RELAY_MAX_MESSAGE_BYTES)"},
		{"batch too many", "POST", batch, nil, tooMany, 413, "limit_exceeded", "1001 messages; at most 1000 in a batch"},
		{"batch body too big", "POST", batch, nil, `{"messages":[` + strings.Repeat(`{"channel":"c","data":"`+big[:2000]+`"},`, 17) + `]}`, 413, "limit_exceeded", "body over 32768 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := apiDo(t, tt.method, s.URL+tt.path, tt.header, tt.body)
			code, msg, published := r.errorBody(t)
			if r.status != tt.status || code != tt.code || (tt.message != "" && msg != tt.message) {
				t.Errorf("%s %s %.60s = %d %s %q, want %d %s %q", tt.method, tt.path, tt.body, r.status, code, msg, tt.status, tt.code, tt.message)
			}
			if published != nil {
				t.Errorf("error %s has published = %d; only a 503 of a batch has it", code, *published)
			}
			switch tt.status {
			case 401:
				if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="relay"` {
					t.Errorf("401 WWW-Authenticate = %q", got)
				}
			case 405:
				if got := r.header.Get("Allow"); got != "POST" {
					t.Errorf("405 Allow = %q, want POST", got)
				}
			}
			stillWorks(t, tt.name)
		})
	}
	m := testenv.Metrics(t, s.URL)
	if got := m[`relay_api_requests_total{status="401"}`]; got != 6 {
		t.Errorf(`relay_api_requests_total{status="401"} = %v, want 6`, got)
	}
}

// TestAPIOff: without RELAY_API_KEY the API answers 404, whatever the key.
func TestAPIOff(t *testing.T) {
	s := single(t)
	for _, path := range []string{"/api/publish", "/api/publish/batch"} {
		r := apiDo(t, "POST", s.URL+path, nil, `{"channel":"c","data":1}`)
		if code, msg, _ := r.errorBody(t); r.status != 404 || code != "not_found" || !strings.Contains(msg, "RELAY_API_KEY") {
			t.Errorf("POST %s with the API off = %d %s %q, want 404 not_found naming RELAY_API_KEY", path, r.status, code, msg)
		}
	}
}

// TestAPIRedisDown: with Redis stopped a publish gets 503 unavailable, never
// a silent drop; when Redis is back and the node ready, publishes work.
func TestAPIRedisDown(t *testing.T) {
	log := apiLogger(t)
	r := testenv.StartRedis(t)
	nodes := nodetest.ClusterWith(t, r.URL(), 2, nodetest.Options{Config: withAPIKeys, Log: log})
	raw := nodetest.Dial(t, nodes[1].WS+"/ws/news", nil)
	apiPublish(t, nodes[0].URL+"/api/publish", `{"channel":"news","data":"before"}`, `{}`)
	if got := nodetest.ReadText(t, raw); got != `"before"` {
		t.Fatalf("read %s, want \"before\"", got)
	}

	r.Stop()
	resp := apiDo(t, "POST", nodes[0].URL+"/api/publish", nil, `{"channel":"news","data":"lost"}`)
	if code, _, _ := resp.errorBody(t); resp.status != 503 || code != "unavailable" || resp.header.Get("Retry-After") != "1" {
		t.Errorf("publish with Redis down = %d %s (Retry-After %q), want 503 unavailable, Retry-After 1", resp.status, code, resp.header.Get("Retry-After"))
	}
	resp = apiDo(t, "POST", nodes[0].URL+"/api/publish/batch", nil, `{"messages":[{"channel":"news","data":1},{"channel":"news","data":2}]}`)
	code, msg, published := resp.errorBody(t)
	if resp.status != 503 || code != "unavailable" || published == nil || *published != 0 || !strings.HasSuffix(msg, "; published 0 of 2 messages") {
		t.Errorf("batch with Redis down = %d %s %q published %v, want 503 unavailable, published 0", resp.status, code, msg, published)
	}
	if got := testenv.Metrics(t, nodes[0].URL)[`relay_api_requests_total{status="503"}`]; got != 2 {
		t.Errorf(`relay_api_requests_total{status="503"} = %v, want 2`, got)
	}

	r.Start()
	var rd readiness
	for _, s := range nodes {
		testenv.WaitFor(t, 20*time.Second, s.ID()+" /readyz to pass again", func() bool { return getJSON(t, s.URL+"/readyz", &rd) == 200 })
	}
	// Node 2's subscription is restored on its own schedule; then its
	// raw subscriber, which may have missed messages, is closed with 4005.
	if code, _ := nodetest.ReadClose(t, raw); code != protocol.CloseMessagesLost {
		t.Errorf("raw subscriber through the outage closed with %d, want %d", code, protocol.CloseMessagesLost)
	}
	raw = nodetest.Dial(t, nodes[1].WS+"/ws/news", nil)
	apiPublish(t, nodes[0].URL+"/api/publish/batch", `{"messages":[{"channel":"news","data":"after 1"},{"channel":"news","data":"after 2"}]}`, `{"published":2}`)
	for _, want := range []string{`"after 1"`, `"after 2"`} {
		if got := nodetest.ReadText(t, raw); got != want {
			t.Errorf("after Redis came back the subscriber read %s, want %s", got, want)
		}
	}
}
