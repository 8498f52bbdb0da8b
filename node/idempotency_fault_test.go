package node_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

// TestIdempotencyRetryAfterUnknownOutcome: a keyed publish whose answer
// from Redis does not come (the node's link to Redis black-holed) is
// answered unknown_outcome or unavailable; retried with the same key once
// the link is back, it is delivered exactly once, whether the first
// attempt reached Redis or not.
func TestIdempotencyRetryAfterUnknownOutcome(t *testing.T) {
	r := testenv.StartRedis(t)
	link := testenv.StartLink(t, r.Addr())
	var nodes []*nodetest.Server
	for i, url := range []string{"redis://" + link.Addr() + "/0", r.URL()} {
		cfg := nodetest.RedisConfig(url)
		cfg.Timeout = 300 * time.Millisecond
		b, err := pubsubtest.RunRedis(t, cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		ncfg := nodetest.Config()
		ncfg.NodeID = []string{"behind-link", "direct"}[i]
		withAPIKeys(&ncfg)
		nodes = append(nodes, nodetest.Start(t, ncfg, pubsub.Broker(b)))
	}
	sub := dialProto(t, nodes[1].WS+"/ws?batch=false")
	sub.subscribe(1, "pay")
	// The first publish makes the node's connections to Redis: a publish
	// through a live link.
	apiPublish(t, nodes[0].URL+"/api/publish", `{"channel":"warm-up","data":0}`, `{}`)

	body := `{"channel":"pay","data":"order 17","idempotency_key":"order-17"}`
	link.BlackHole()
	first := apiDo(t, "POST", nodes[0].URL+"/api/publish", nil, body)
	if first.status != http.StatusGatewayTimeout && first.status != http.StatusServiceUnavailable {
		t.Fatalf("publish through a black hole = %d %s, want 504 unknown_outcome or 503 unavailable", first.status, first.body)
	}
	link.Restore()
	var retry apiResponse
	testenv.WaitFor(t, nodetest.Timeout, "a retry answered 200", func() bool {
		retry = apiDo(t, "POST", nodes[0].URL+"/api/publish", nil, body)
		return retry.status == http.StatusOK
	})
	t.Logf("first attempt %d, retry %s", first.status, retry.body)
	apiPublish(t, nodes[1].URL+"/api/publish", `{"channel":"pay","data":"marker"}`, `{}`)
	if m := sub.push(); string(m.Data) != `"order 17"` {
		t.Fatalf("subscriber got %s, want the message", m.Data)
	}
	if m := sub.push(); string(m.Data) != `"marker"` {
		t.Fatalf("subscriber got %s after the message, want the marker: the retry was delivered twice", m.Data)
	}
}
