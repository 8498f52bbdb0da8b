package node_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

// TestIdempotencyKeyAcrossNodes: a publish retried with the same
// idempotency_key, through the API or protocol mode of either node, is
// delivered once to the subscribers of both nodes and answered as a
// success that says it was a duplicate.
func TestIdempotencyKeyAcrossNodes(t *testing.T) {
	nodes := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: withAPIKeys})
	var subs []*protoClient
	for _, s := range nodes {
		p := dialProto(t, s.WS+"/ws?batch=false")
		p.subscribe(1, "once")
		subs = append(subs, p)
	}
	pub := dialProto(t, nodes[1].WS+"/ws?batch=false")
	apiPublish(t, nodes[0].URL+"/api/publish", `{"channel":"once","data":"first","idempotency_key":"k1"}`, `{}`)
	apiPublish(t, nodes[1].URL+"/api/publish", `{"channel":"once","data":"retry","idempotency_key":"k1"}`, `{"duplicate":true}`)
	pub.do(`{"id":1,"cmd":"publish","channel":"once","data":"retry","idempotency_key":"k1"}`, `{"id":1,"result":{"duplicate":true}}`)
	pub.do(`{"id":2,"cmd":"publish","channel":"once","data":"second","idempotency_key":"k2"}`, `{"id":2,"result":{}}`)
	pub.do(`{"id":3,"cmd":"publish","channel":"once","data":"retry","idempotency_key":"k2"}`, `{"id":3,"result":{"duplicate":true}}`)
	// A batch retried whole publishes each message once.
	batch := `{"messages":[{"channel":"once","data":"b1","idempotency_key":"b1"},{"channel":"once","data":"b2","idempotency_key":"b2"}]}`
	apiPublish(t, nodes[0].URL+"/api/publish/batch", batch, `{"published":2}`)
	apiPublish(t, nodes[1].URL+"/api/publish/batch", batch, `{"published":2,"duplicates":2}`)
	apiPublish(t, nodes[0].URL+"/api/publish", `{"channel":"once","data":"marker"}`, `{}`)
	for i, p := range subs {
		for _, want := range []string{`"first"`, `"second"`, `"b1"`, `"b2"`, `"marker"`} {
			if m := p.push(); string(m.Data) != want {
				t.Fatalf("subscriber on node %d got %s, want %s", i+1, m.Data, want)
			}
		}
	}
}

// TestIdempotencyKeyHistory: on a channel with history, the retry is
// answered with the offset of the first publish, and the history holds the
// message once.
func TestIdempotencyKeyHistory(t *testing.T) {
	nodes := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: func(cfg *node.Config) {
		withAPIKeys(cfg)
		withHistory(100)(cfg)
	}})
	first := apiDo(t, "POST", nodes[0].URL+"/api/publish", nil, `{"channel":"h","data":1,"idempotency_key":"k"}`)
	var res struct{ Result protocol.PublishResult }
	if first.status != http.StatusOK || json.Unmarshal([]byte(first.body), &res) != nil || res.Result.Offset != 1 || res.Result.Epoch == "" || res.Result.Duplicate {
		t.Fatalf("first publish = %d %s, want offset 1 with an epoch", first.status, first.body)
	}
	want := fmt.Sprintf(`{"offset":1,"epoch":%q,"duplicate":true}`, res.Result.Epoch)
	apiPublish(t, nodes[1].URL+"/api/publish", `{"channel":"h","data":1,"idempotency_key":"k"}`, want)
	p := dialProto(t, nodes[1].WS+"/ws?batch=false")
	p.do(`{"id":1,"cmd":"publish","channel":"h","data":1,"idempotency_key":"k"}`, `{"id":1,"result":`+want+`}`)
	if pos := p.subscribeAt(2, "h"); pos.Offset != 1 {
		t.Errorf("history after a publish and two retries is at offset %d, want 1", pos.Offset)
	}
}

// TestIdempotencyKeyBad: malformed keys are refused with bad_request, in
// the API and protocol mode, and publish nothing.
func TestIdempotencyKeyBad(t *testing.T) {
	s := startProto(t, withAPIKeys)
	p := dialProto(t, s.WS+"/ws?batch=false")
	for _, key := range []string{`""`, `"` + strings.Repeat("k", protocol.MaxIdempotencyKeyLen+1) + `"`, `"has space"`, `"é"`, `5`, `null`} {
		r := apiDo(t, "POST", s.URL+"/api/publish", nil, `{"channel":"c","data":1,"idempotency_key":`+key+`}`)
		if code, _, _ := r.errorBody(t); r.status != http.StatusBadRequest || code != "bad_request" {
			t.Errorf("API idempotency_key %s: %d %s, want 400 bad_request", key, r.status, r.body)
		}
		p.send(`{"id":1,"cmd":"publish","channel":"c","data":1,"idempotency_key":` + key + `}`)
		if r := p.reply(); r.Error == nil || r.Error.Code != protocol.CodeBadRequest {
			t.Errorf("publish with idempotency_key %s: %+v, want bad_request", key, r)
		}
	}
	// The longest key is fine, on the embedded broker too.
	long := strings.Repeat("k", protocol.MaxIdempotencyKeyLen)
	apiPublish(t, s.URL+"/api/publish", `{"channel":"c","data":1,"idempotency_key":"`+long+`"}`, `{}`)
	apiPublish(t, s.URL+"/api/publish", `{"channel":"c","data":1,"idempotency_key":"`+long+`"}`, `{"duplicate":true}`)
}
