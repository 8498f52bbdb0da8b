package node_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

// TestAPIDisconnect: POST /api/disconnect on node 1 closes every
// connection of the user, raw and protocol, on both nodes, with 4004;
// other users' connections stay.
func TestAPIDisconnect(t *testing.T) {
	nodes := authCluster(t, testenv.StartRedis(t), 2, func(cfg *node.Config) { withAPIKeys(cfg) })
	exp := time.Now().Add(time.Hour)
	alice := mint(t, "alice", []string{"chat:*"}, []string{"chat:*"}, exp)
	bob := mint(t, "bob", []string{"chat:*"}, []string{"chat:*"}, exp)

	rawA := nodetest.Dial(t, nodes[0].WS+"/ws/chat:1", bearer(alice))
	protoA := dialProtoWith(t, nodes[1].WS+"/ws", nil)
	connectTok := `{"id":1,"cmd":"connect","token":"` + alice + `"}`
	protoA.send(connectTok)
	if r := protoA.reply(); r.Error != nil {
		t.Fatalf("connect: %+v", r.Error)
	}
	rawB := nodetest.Dial(t, nodes[1].WS+"/ws/chat:1", bearer(bob))

	apiPublish(t, nodes[0].URL+"/api/disconnect", `{"user":"alice"}`, `{}`)
	for _, ws := range []*protoClient{{t: t, ws: rawA}, protoA} {
		if code, reason := nodetest.ReadClose(t, ws.ws); code != protocol.CloseDisconnected {
			t.Errorf("alice's connection closed with %d %q, want 4004", code, reason)
		}
	}
	// bob's connection is still subscribed.
	apiPublish(t, nodes[0].URL+"/api/publish", `{"channel":"chat:1","data":"still here"}`, `{}`)
	if got := nodetest.ReadText(t, rawB); got != `"still here"` {
		t.Errorf("bob read %q", got)
	}

	for _, body := range []string{`{}`, `{"user":""}`, `{"user":5}`, `{"user":"a","x":1}`} {
		r := apiDo(t, "POST", nodes[0].URL+"/api/disconnect", nil, body)
		if code, _, _ := r.errorBody(t); r.status != http.StatusBadRequest || code != "bad_request" {
			t.Errorf("disconnect %s: %d %s, want 400 bad_request", body, r.status, r.body)
		}
	}
}
