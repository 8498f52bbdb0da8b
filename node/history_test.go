package node_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

func withHistory(size int) func(*node.Config) {
	return func(cfg *node.Config) { cfg.HistorySize, cfg.HistoryTTL = size, time.Minute }
}

// subscribeAt subscribes p to channel and returns the position of the
// reply, which must have no recovered field.
func (p *protoClient) subscribeAt(id int, channel string) protocol.SubscribeResult {
	p.t.Helper()
	p.send(fmt.Sprintf(`{"id":%d,"cmd":"subscribe","channel":%q}`, id, channel))
	return p.subscribeResult()
}

func (p *protoClient) subscribeResult() protocol.SubscribeResult {
	p.t.Helper()
	r := p.reply()
	var res protocol.SubscribeResult
	if r.Error != nil || json.Unmarshal(r.Result, &res) != nil || res.Epoch == "" {
		p.t.Fatalf("subscribe reply %+v %s, want a result with offset and epoch", r.Error, r.Result)
	}
	return res
}

// since subscribes p to channel from offset of epoch and returns the reply.
func (p *protoClient) since(id int, channel string, offset uint64, epoch string) protocol.SubscribeResult {
	p.t.Helper()
	p.send(fmt.Sprintf(`{"id":%d,"cmd":"subscribe","channel":%q,"since":{"offset":%d,"epoch":%q}}`, id, channel, offset, epoch))
	res := p.subscribeResult()
	if res.Recovered == nil {
		p.t.Fatalf("subscribe with since: reply without recovered")
	}
	return res
}

func TestHistorySubscribeSince(t *testing.T) {
	s := startProto(t, withHistory(100))
	p := dialProto(t, s.WS+"/ws")
	pos := p.subscribeAt(1, "h")
	if pos.Offset != 0 {
		t.Fatalf("subscribe to a new channel: offset %d, want 0", pos.Offset)
	}
	q := dialProto(t, s.WS+"/ws")
	for i := 1; i <= 3; i++ {
		q.do(fmt.Sprintf(`{"id":%d,"cmd":"publish","channel":"h","data":%d}`, i, i), fmt.Sprintf(`{"id":%d,"result":{}}`, i))
		p.expect(fmt.Sprintf(`{"channel":"h","offset":%d,"data":%d}`, i, i))
	}

	r := dialProto(t, s.WS+"/ws")
	if res := r.since(1, "h", 1, pos.Epoch); !*res.Recovered || res.Offset != 3 || res.Epoch != pos.Epoch {
		t.Fatalf("subscribe since 1 = %+v, want recovered at offset 3", res)
	}
	r.expect(`{"channel":"h","offset":2,"data":2}`)
	r.expect(`{"channel":"h","offset":3,"data":3}`)
	q.do(`{"id":4,"cmd":"publish","channel":"h","data":4}`, `{"id":4,"result":{}}`)
	r.expect(`{"channel":"h","offset":4,"data":4}`)

	// Another epoch: not recovered, the current position; live after.
	o := dialProto(t, s.WS+"/ws")
	if res := o.since(1, "h", 2, "other"); *res.Recovered || res.Offset != 4 || res.Epoch != pos.Epoch {
		t.Errorf("subscribe since another epoch = %+v, want not recovered at offset 4 of %q", res, pos.Epoch)
	}
	// Bad input: each a documented error.
	for _, tt := range []struct{ cmd, code string }{
		{`{"id":2,"cmd":"subscribe","channel":"h","since":{"offset":"1","epoch":"%s"}}`, "bad_request"},
		{`{"id":2,"cmd":"subscribe","channel":"h","since":{"offset":1,"epoch":"a b%s"}}`, "bad_request"},
	} {
		o.send(fmt.Sprintf(tt.cmd, pos.Epoch))
		if rep := o.reply(); rep.Error == nil || string(rep.Error.Code) != tt.code {
			t.Errorf("%s: reply %+v, want %s", tt.cmd, rep, tt.code)
		}
	}
	f := dialProto(t, s.WS+"/ws")
	f.send(fmt.Sprintf(`{"id":1,"cmd":"subscribe","channel":"h","since":{"offset":9,"epoch":%q}}`, pos.Epoch))
	if rep := f.reply(); rep.Error == nil || rep.Error.Code != protocol.CodeBadPosition {
		t.Errorf("since an offset from the future: reply %+v, want bad_position", rep)
	}
	plain := startProto(t, nil)
	n := dialProto(t, plain.WS+"/ws")
	n.send(`{"id":1,"cmd":"subscribe","channel":"h","since":{"offset":1,"epoch":"e"}}`)
	if rep := n.reply(); rep.Error == nil || rep.Error.Code != protocol.CodeNoHistory {
		t.Errorf("since on a channel without history: reply %+v, want no_history", rep)
	}
	n.subscribe(2, "h") // no history: the result stays {}

	// Raw mode replays first, and refuses what it cannot recover.
	raw := nodetest.Dial(t, fmt.Sprintf("%s/ws/h?since=2&epoch=%s", s.WS, pos.Epoch), nil)
	for _, want := range []string{"3", "4"} {
		if got := nodetest.ReadText(t, raw); got != want {
			t.Errorf("raw with since=2 read %q, want %q", got, want)
		}
	}
	for _, tt := range []struct {
		query  string
		status int
	}{
		{"since=1&epoch=other", 409},
		{"since=9&epoch=" + pos.Epoch, 409},
		{"since=x&epoch=" + pos.Epoch, 400},
		{"since=1", 400},
	} {
		if got := dialStatus(t, s.WS+"/ws/h?"+tt.query); got != tt.status {
			t.Errorf("raw ?%s: HTTP %d, want %d", tt.query, got, tt.status)
		}
	}
	if got := dialStatus(t, plain.WS+"/ws/h?since=1&epoch=e"); got != 400 {
		t.Errorf("raw since without history: HTTP %d, want 400", got)
	}
	q.do(`{"id":5,"cmd":"publish","channel":"h","data":5}`, `{"id":5,"result":{}}`)
	if got := nodetest.ReadText(t, raw); got != "5" {
		t.Errorf("raw with since read %q live, want 5", got)
	}
	if got := p.next(); !strings.Contains(got, `"offset":4`) {
		t.Errorf("first subscriber read %s, want offset 4", got)
	}
}
