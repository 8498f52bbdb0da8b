package node_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

// TestProtoHello: with ?hello=true the first object of the connection
// names the node; without it there is none.
func TestProtoHello(t *testing.T) {
	s := single(t)
	c := nodetest.Dial(t, s.WS+"/ws?hello=true", nil)
	nodetest.Write(t, c, `{"id":1,"cmd":"ping"}`)
	first, _, _ := strings.Cut(nodetest.ReadText(t, c), "\n")
	var h protocol.Hello
	if err := json.Unmarshal([]byte(first), &h); err != nil || h.Node != s.ID() {
		t.Fatalf("first object %s (%v), want a hello naming %q", first, err, s.ID())
	}

	c = nodetest.Dial(t, s.WS+"/ws", nil)
	nodetest.Write(t, c, `{"id":1,"cmd":"ping"}`)
	if got := nodetest.ReadText(t, c); got != `{"id":1,"result":{}}` {
		t.Errorf("without hello, first frame %s, want the ping's reply", got)
	}

	ctx, cancel := context.WithTimeout(t.Context(), nodetest.Timeout)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, s.WS+"/ws?hello=maybe", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("upgrade of /ws?hello=maybe: %v, want HTTP 400", err)
	}
}
