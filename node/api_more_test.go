package node_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

// apiResult decodes the result of a 200 answer into v.
func apiResult(t *testing.T, r apiResponse, v any) {
	t.Helper()
	var body struct{ Result json.RawMessage }
	if r.status != http.StatusOK || json.Unmarshal([]byte(r.body), &body) != nil || json.Unmarshal(body.Result, v) != nil {
		t.Fatalf("answer %d %s, want 200 with a result", r.status, r.body)
	}
}

// historyOffsets returns the offsets of a history result's messages.
func historyOffsets(t *testing.T, res protocol.HistoryResult) []uint64 {
	t.Helper()
	offs := []uint64{}
	for _, b := range res.Messages {
		var p protocol.Push
		if err := json.Unmarshal(b, &p); err != nil || p.Channel == "" {
			t.Fatalf("history message %s is not a push", b)
		}
		offs = append(offs, p.Offset)
	}
	return offs
}

// TestAPIHistory: GET /api/history and the history command read a
// channel's history published on the other node, the latest messages or
// page by page from an offset; bad requests get their documented errors.
func TestAPIHistory(t *testing.T) {
	nodes := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: func(cfg *node.Config) {
		withAPIKeys(cfg)
		withHistory(100)(cfg)
	}})
	for i := 1; i <= 10; i++ {
		apiPublish(t, nodes[0].URL+"/api/publish", fmt.Sprintf(`{"channel":"h","data":%d}`, i), `{}`)
	}
	get := func(query string) apiResponse { return apiDo(t, "GET", nodes[1].URL+"/api/history?"+query, nil, "") }
	var latest protocol.HistoryResult
	apiResult(t, get("channel=h&limit=3"), &latest)
	if fmt.Sprint(historyOffsets(t, latest)) != "[8 9 10]" || latest.Offset != 10 || latest.More {
		t.Fatalf("latest 3 = %v at %d, more %v; want [8 9 10] at 10", historyOffsets(t, latest), latest.Offset, latest.More)
	}
	if string(latest.Messages[0]) != `{"channel":"h","offset":8,"data":8}` {
		t.Errorf("message %s, want the push it was delivered as", latest.Messages[0])
	}
	// Paging from the start, four at a time.
	var pages []string
	for since, more := uint64(0), true; more; {
		var page protocol.HistoryResult
		apiResult(t, get(fmt.Sprintf("channel=h&limit=4&since=%d&epoch=%s", since, latest.Epoch)), &page)
		offs := historyOffsets(t, page)
		pages = append(pages, fmt.Sprint(offs))
		if len(pages) > 5 {
			t.Fatalf("pages %v do not end", pages)
		}
		more = page.More
		if len(offs) > 0 {
			since = offs[len(offs)-1]
		}
	}
	if got := strings.Join(pages, " "); got != "[1 2 3 4] [5 6 7 8] [9 10]" {
		t.Errorf("pages %s, want [1 2 3 4] [5 6 7 8] [9 10]", got)
	}
	// The history command reads the same on the other node.
	p := dialProto(t, nodes[0].WS+"/ws?batch=false")
	p.send(`{"id":1,"cmd":"history","channel":"h","limit":2,"since":{"offset":5,"epoch":"` + latest.Epoch + `"}}`)
	var res protocol.HistoryResult
	if r := p.reply(); r.Error != nil || json.Unmarshal(r.Result, &res) != nil || fmt.Sprint(historyOffsets(t, res)) != "[6 7]" || !res.More {
		t.Fatalf("history command reply %s %+v, want [6 7] with more", r.Result, r.Error)
	}

	for _, tt := range []struct {
		query  string
		status int
		code   protocol.Code
	}{
		{"", 400, protocol.CodeBadRequest},
		{"channel=has%20space", 400, protocol.CodeInvalidChannel},
		{"channel=h&limit=1001", 400, protocol.CodeLimitExceeded},
		{"channel=h&limit=-1", 400, protocol.CodeBadRequest},
		{"channel=h&limit=x", 400, protocol.CodeBadRequest},
		{"channel=h&since=3", 400, protocol.CodeBadRequest},
		{"channel=h&since=x&epoch=" + latest.Epoch, 400, protocol.CodeBadRequest},
		{"channel=h&since=11&epoch=" + latest.Epoch, 409, protocol.CodeBadPosition},
		{"channel=h&since=3&epoch=other", 409, protocol.CodeNotRecovered},
	} {
		r := get(tt.query)
		if code, _, _ := r.errorBody(t); r.status != tt.status || code != string(tt.code) {
			t.Errorf("GET /api/history?%s = %d %s, want %d %s", tt.query, r.status, r.body, tt.status, tt.code)
		}
	}
	if r := apiDo(t, "POST", nodes[1].URL+"/api/history?channel=h", nil, ""); r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET" {
		t.Errorf("POST /api/history = %d, Allow %q; want 405 with Allow: GET", r.status, r.header.Get("Allow"))
	}
	if r := apiDo(t, "GET", nodes[1].URL+"/api/history?channel=h", map[string]string{"Authorization": "Bearer wrong"}, ""); r.status != http.StatusUnauthorized {
		t.Errorf("GET /api/history with a wrong key = %d, want 401", r.status)
	}
	p.send(`{"id":2,"cmd":"history","channel":"h","limit":1001}`)
	if r := p.reply(); r.Error == nil || r.Error.Code != protocol.CodeLimitExceeded {
		t.Errorf("history with limit 1001: %+v, want limit_exceeded", r)
	}
	p.send(`{"id":3,"cmd":"history","channel":"h","limit":"5"}`)
	if r := p.reply(); r.Error == nil || r.Error.Code != protocol.CodeBadRequest {
		t.Errorf("history with limit \"5\": %+v, want bad_request", r)
	}
}

// TestAPIHistoryBounds: a history answer stops short of its byte bound,
// and a channel without history is no_history.
func TestAPIHistoryBounds(t *testing.T) {
	s := startProto(t, func(cfg *node.Config) { withAPIKeys(cfg); withHistory(100)(cfg) })
	big := `"` + strings.Repeat("x", 60_000) + `"`
	for range 10 {
		apiPublish(t, s.URL+"/api/publish", `{"channel":"big","data":`+big+`}`, `{}`)
	}
	var res protocol.HistoryResult
	apiResult(t, apiDo(t, "GET", s.URL+"/api/history?channel=big&limit=10", nil, ""), &res)
	if n := len(res.Messages); n == 0 || n >= 10 || !res.More {
		t.Errorf("10 messages of 60 kB: a page of %d, more %v; want fewer than 10, with more", n, res.More)
	}

	plain := startProto(t, withAPIKeys)
	r := apiDo(t, "GET", plain.URL+"/api/history?channel=c", nil, "")
	if code, _, _ := r.errorBody(t); r.status != http.StatusBadRequest || code != string(protocol.CodeNoHistory) {
		t.Errorf("history of a channel without: %d %s, want 400 no_history", r.status, r.body)
	}
	p := dialProto(t, plain.WS+"/ws")
	p.send(`{"id":1,"cmd":"history","channel":"c"}`)
	if r := p.reply(); r.Error == nil || r.Error.Code != protocol.CodeNoHistory {
		t.Errorf("history command on a channel without: %+v, want no_history", r)
	}
}

// TestHistoryForbidden: the history command needs the permission to
// subscribe to the channel.
func TestHistoryForbidden(t *testing.T) {
	nodes := authCluster(t, testenv.StartRedis(t), 1, func(cfg *node.Config) { withHistory(10)(cfg) })
	tok := mint(t, "alice", []string{"chat:*"}, nil, time.Now().Add(time.Hour))
	p := dialProtoWith(t, nodes[0].WS+"/ws", bearer(tok))
	p.send(`{"id":1,"cmd":"history","channel":"admin:1"}`)
	if r := p.reply(); r.Error == nil || r.Error.Code != protocol.CodeForbidden {
		t.Errorf("history of a channel the token may not read: %+v, want forbidden", r)
	}
	p.send(`{"id":2,"cmd":"history","channel":"chat:1"}`)
	if r := p.reply(); r.Error != nil {
		t.Errorf("history of a channel the token may read: %+v", r.Error)
	}
}

// TestAPIBroadcast: one message to three channels reaches their
// subscribers on both nodes, with a result per channel; bad bodies publish
// nothing.
func TestAPIBroadcast(t *testing.T) {
	nodes := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: withAPIKeys})
	var subs []*protoClient
	for i, ch := range []string{"a", "b", "c"} {
		p := dialProto(t, nodes[i%2].WS+"/ws?batch=false")
		p.subscribe(1, ch)
		subs = append(subs, p)
	}
	url := nodes[0].URL + "/api/broadcast"
	var res struct {
		Published, Failed int
		Results           []struct {
			Channel string
			Error   *protocol.Error
		}
	}
	apiResult(t, apiDo(t, "POST", url, nil, `{"channels":["a","b","c"],"data":{"n":1}}`), &res)
	if res.Published != 3 || res.Failed != 0 || len(res.Results) != 3 || res.Results[2].Channel != "c" || res.Results[2].Error != nil {
		t.Fatalf("broadcast result %+v, want 3 published", res)
	}
	for i, p := range subs {
		if m := p.push(); m.Channel != []string{"a", "b", "c"}[i] || string(m.Data) != `{"n":1}` {
			t.Errorf("subscriber %d got %+v", i, m)
		}
	}
	many := `"` + strings.Repeat(`x","`, 1000) + `y"`
	for _, tt := range []struct {
		body   string
		status int
		code   protocol.Code
	}{
		{`{"data":1}`, 400, protocol.CodeBadRequest},
		{`{"channels":[],"data":1}`, 400, protocol.CodeBadRequest},
		{`{"channels":"a","data":1}`, 400, protocol.CodeBadRequest},
		{`{"channels":["a",5],"data":1}`, 400, protocol.CodeBadRequest},
		{`{"channels":["a","a"],"data":1}`, 400, protocol.CodeBadRequest},
		{`{"channels":["a","b c"],"data":1}`, 400, protocol.CodeInvalidChannel},
		{`{"channels":["a"]}`, 400, protocol.CodeBadRequest},
		{`{"channels":["a"],"data":1,"channel":"b"}`, 400, protocol.CodeBadRequest},
		{`{"channels":["a"],"data":1,"idempotency_key":""}`, 400, protocol.CodeBadRequest},
		{`{"channels":[` + many + `],"data":1}`, 413, protocol.CodeLimitExceeded},
	} {
		r := apiDo(t, "POST", url, nil, tt.body)
		if code, _, _ := r.errorBody(t); r.status != tt.status || code != string(tt.code) {
			t.Errorf("broadcast %.60s = %d %s, want %d %s", tt.body, r.status, r.body, tt.status, tt.code)
		}
	}
	// Nothing of the bad ones was published: the next push is the marker.
	apiPublish(t, nodes[1].URL+"/api/publish", `{"channel":"a","data":"marker"}`, `{}`)
	if m := subs[0].push(); string(m.Data) != `"marker"` {
		t.Errorf("subscriber of a got %s, want the marker", m.Data)
	}
}

// channelsOf returns GET /api/channels of s once both nodes answer.
func channelsOf(t *testing.T, s *nodetest.Server, query string, nodes int) protocol.ChannelsResult {
	t.Helper()
	var res protocol.ChannelsResult
	// The nodes learn of each other through their announcements: no
	// event of theirs reaches the test.
	testenv.WaitFor(t, nodetest.Timeout, fmt.Sprintf("GET /api/channels answered by %d nodes", nodes), func() bool {
		res = protocol.ChannelsResult{}
		apiResult(t, apiDo(t, "GET", s.URL+"/api/channels"+query, nil, ""), &res)
		return len(res.Nodes) == nodes && len(res.Missing) == 0
	})
	return res
}

// TestAPIChannels: GET /api/channels counts the subscribers of both
// nodes, raw and protocol mode, with a pattern filter.
func TestAPIChannels(t *testing.T) {
	nodes := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: withAPIKeys})
	for i, ch := range []string{"chat:1", "chat:1", "chat:2", "news"} {
		p := dialProto(t, nodes[i%2].WS+"/ws")
		p.subscribe(1, ch)
	}
	nodetest.Dial(t, nodes[1].WS+"/ws/chat:1", nil)
	want := map[string]protocol.ChannelInfo{"chat:1": {Subscribers: 3}, "chat:2": {Subscribers: 1}, "news": {Subscribers: 1}}
	var res protocol.ChannelsResult
	// The raw connection subscribes after its upgrade: poll for it too.
	testenv.WaitFor(t, nodetest.Timeout, "the channels of both nodes", func() bool {
		res = channelsOf(t, nodes[0], "", 2)
		return fmt.Sprint(res.Channels) == fmt.Sprint(want)
	})
	if fmt.Sprint(res.Channels) != fmt.Sprint(want) || !slices.Equal(res.Nodes, []string{"node-1", "node-2"}) {
		t.Fatalf("channels %v of nodes %v, want %v of both", res.Channels, res.Nodes, want)
	}
	res = channelsOf(t, nodes[1], "?pattern=chat:*", 2)
	if len(res.Channels) != 2 || res.Channels["chat:1"].Subscribers != 3 {
		t.Errorf("channels chat:* %v, want chat:1 and chat:2", res.Channels)
	}
	for _, q := range []string{"?pattern=has%20space", "?pattern=" + strings.Repeat("a", 256)} {
		r := apiDo(t, "GET", nodes[0].URL+"/api/channels"+q, nil, "")
		if code, _, _ := r.errorBody(t); r.status != http.StatusBadRequest || code != "bad_request" {
			t.Errorf("GET /api/channels%.40s = %d %s, want 400 bad_request", q, r.status, r.body)
		}
	}
	// The embedded broker answers for its one node.
	one := startProto(t, withAPIKeys)
	dialProto(t, one.WS+"/ws").subscribe(1, "solo")
	if res := channelsOf(t, one, "", 1); res.Channels["solo"].Subscribers != 1 {
		t.Errorf("embedded broker: channels %v, want solo", res.Channels)
	}
}

// TestAPIServerSubscribe: POST /api/subscribe subscribes every
// protocol-mode connection of a user, on both nodes, with a push; POST
// /api/unsubscribe undoes it; another user's and raw-mode connections are
// left alone.
func TestAPIServerSubscribe(t *testing.T) {
	nodes := authCluster(t, testenv.StartRedis(t), 2, func(cfg *node.Config) { withAPIKeys(cfg) })
	exp := time.Now().Add(time.Hour)
	alice := mint(t, "alice", []string{"chat:*"}, nil, exp)
	bob := mint(t, "bob", []string{"chat:*"}, nil, exp)
	var alices []*protoClient
	for _, s := range nodes {
		p := dialProtoWith(t, s.WS+"/ws?batch=false", bearer(alice))
		p.do(`{"id":1,"cmd":"ping"}`, `{"id":1,"result":{}}`) // the connection is registered
		alices = append(alices, p)
	}
	bobs := dialProtoWith(t, nodes[0].WS+"/ws?batch=false", bearer(bob))
	bobs.subscribe(1, "chat:bob")

	apiPublish(t, nodes[0].URL+"/api/subscribe", `{"user":"alice","channel":"private:alice"}`, `{}`)
	for _, p := range alices {
		p.expect(`{"subscribed":{"channel":"private:alice"}}`)
	}
	// Subscribed: a publish on either node reaches both.
	for i := range nodes {
		apiPublish(t, nodes[i].URL+"/api/publish", fmt.Sprintf(`{"channel":"private:alice","data":%d}`, i), `{}`)
		for j, p := range alices {
			if m := p.push(); m.Channel != "private:alice" || string(m.Data) != fmt.Sprint(i) {
				t.Fatalf("alice on node %d got %+v, want message %d", j+1, m, i)
			}
		}
	}
	// The client may end a server-side subscription itself, as its own.
	alices[0].do(`{"id":2,"cmd":"unsubscribe","channel":"private:alice"}`, `{"id":2,"result":{}}`)
	apiPublish(t, nodes[0].URL+"/api/unsubscribe", `{"user":"alice","channel":"private:alice"}`, `{}`)
	alices[1].expect(`{"unsubscribed":{"channel":"private:alice"}}`)
	alices[1].do(`{"id":3,"cmd":"unsubscribe","channel":"private:alice"}`, `{"id":3,"error":{"code":"not_subscribed","message":"not subscribed to \"private:alice\""}}`)
	// bob got nothing of it: his next push is his own channel's.
	apiPublish(t, nodes[0].URL+"/api/publish", `{"channel":"chat:bob","data":"marker"}`, `{}`)
	if m := bobs.push(); m.Channel != "chat:bob" {
		t.Errorf("bob got %+v, want the marker", m)
	}

	for _, body := range []string{`{}`, `{"user":"alice"}`, `{"channel":"c"}`, `{"user":"","channel":"c"}`, `{"user":"a","channel":5}`, `{"user":"a","channel":"c","x":1}`} {
		r := apiDo(t, "POST", nodes[0].URL+"/api/subscribe", nil, body)
		if code, _, _ := r.errorBody(t); r.status != http.StatusBadRequest || code != "bad_request" {
			t.Errorf("subscribe %s: %d %s, want 400 bad_request", body, r.status, r.body)
		}
	}
	r := apiDo(t, "POST", nodes[0].URL+"/api/unsubscribe", nil, `{"user":"a","channel":"b c"}`)
	if code, _, _ := r.errorBody(t); r.status != http.StatusBadRequest || code != "invalid_channel" {
		t.Errorf("unsubscribe from a bad channel: %d %s, want 400 invalid_channel", r.status, r.body)
	}
}

// TestAPIServerSubscribeHistory: a server-side subscription to a channel
// with history tells the connection the channel's position, and the
// pushes that follow carry the next offsets.
func TestAPIServerSubscribeHistory(t *testing.T) {
	nodes := authCluster(t, testenv.StartRedis(t), 1, func(cfg *node.Config) { withAPIKeys(cfg); withHistory(10)(cfg) })
	alice := mint(t, "alice", nil, nil, time.Now().Add(time.Hour))
	p := dialProtoWith(t, nodes[0].WS+"/ws?batch=false", bearer(alice))
	p.do(`{"id":1,"cmd":"ping"}`, `{"id":1,"result":{}}`)
	for i := 1; i <= 2; i++ {
		apiPublish(t, nodes[0].URL+"/api/publish", fmt.Sprintf(`{"channel":"h","data":%d}`, i), `{}`)
	}
	apiPublish(t, nodes[0].URL+"/api/subscribe", `{"user":"alice","channel":"h"}`, `{}`)
	var push protocol.SubscribedPush
	if s := p.next(); json.Unmarshal([]byte(s), &push) != nil || push.Subscribed.Channel != "h" || push.Subscribed.Offset != 2 || push.Subscribed.Epoch == "" {
		t.Fatalf("read %s, want the subscribed push at offset 2", s)
	}
	apiPublish(t, nodes[0].URL+"/api/publish", `{"channel":"h","data":3}`, `{}`)
	p.expect(`{"channel":"h","offset":3,"data":3}`)
}
