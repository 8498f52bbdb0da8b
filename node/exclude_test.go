package node_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

// connectID sends connect on p and returns the connection's client id.
func connectID(t *testing.T, p *protoClient) string {
	t.Helper()
	p.send(`{"id":"c","cmd":"connect"}`)
	r := p.reply()
	var res protocol.ConnectResult
	if r.Error != nil || json.Unmarshal(r.Result, &res) != nil || res.Client == "" {
		t.Fatalf("connect reply %+v", r)
	}
	return res.Client
}

// TestAPIExcludeClient: a publish with exclude_client on node 1 reaches
// every subscriber but that connection, on both nodes, whichever node the
// excluded connection is on.
func TestAPIExcludeClient(t *testing.T) {
	nodes := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: func(cfg *node.Config) { withAPIKeys(cfg) }})
	url := nodes[0].URL + "/api/publish"
	var clients []*protoClient
	var ids []string
	for _, s := range []*nodetest.Server{nodes[0], nodes[0], nodes[1]} {
		p := dialProtoWith(t, s.WS+"/ws?batch=false", nil)
		ids = append(ids, connectID(t, p))
		p.subscribe(1, "room")
		clients = append(clients, p)
	}
	if !strings.HasPrefix(ids[0], "node-1/") || !strings.HasPrefix(ids[2], "node-2/") || ids[0] == ids[1] {
		t.Fatalf("client ids %q", ids)
	}
	for skip := range clients {
		apiPublish(t, url, `{"channel":"room","data":"not for `+ids[skip]+`","exclude_client":"`+ids[skip]+`"}`, `{}`)
		apiPublish(t, url, `{"channel":"room","data":"marker"}`, `{}`)
		for i, p := range clients {
			if i != skip {
				if m := p.push(); !strings.HasPrefix(string(m.Data), `"not for`) {
					t.Fatalf("client %d got %s, want the message excluding client %d", i, m.Data, skip)
				}
			}
			// The excluded one's next push is the marker.
			if m := p.push(); string(m.Data) != `"marker"` {
				t.Fatalf("client %d got %s, want the marker", i, m.Data)
			}
		}
	}
	for _, bad := range []string{`""`, `"node-1"`, `"node-1/x"`, `"node-1/0"`, `"/5"`, `5`} {
		r := apiDo(t, "POST", url, nil, `{"channel":"room","data":1,"exclude_client":`+bad+`}`)
		if code, _, _ := r.errorBody(t); r.status != http.StatusBadRequest || code != "bad_request" {
			t.Errorf("exclude_client %s: %d %s, want 400 bad_request", bad, r.status, r.body)
		}
	}
}
