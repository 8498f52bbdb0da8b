package node_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/auth"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// presenceNamespaces is the namespace file of the presence tests: room
// keeps presence with pushes and a leave grace longer than any test,
// quick the same with a grace of 50ms, quiet presence without pushes.
const presenceNamespaces = `
namespaces:
  room:
    presence: true
    join_leave: true
    presence_leave_grace: 1m
  quick:
    presence: true
    join_leave: true
    presence_leave_grace: 50ms
  quiet:
    presence: true
`

// withPresence turns on JWT auth, the API and the presence namespaces.
func withPresence(t *testing.T) func(*node.Config) {
	f := filepath.Join(t.TempDir(), "namespaces.yaml")
	if err := os.WriteFile(f, []byte(presenceNamespaces), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(cfg *node.Config) {
		withJWT(cfg)
		withAPIKeys(cfg)
		cfg.NamespacesFile = f
	}
}

// userConn dials protocol mode on url as user, whose token carries info
// {"name":user} and may read every channel.
func userConn(t *testing.T, url, user string) *protoClient {
	t.Helper()
	c := auth.Claims{Channels: []string{"*"}, Info: json.RawMessage(fmt.Sprintf(`{ "name": %q }`, user))}
	c.Subject = user
	tok, err := auth.MintHS256([]byte(tokenSecret), c)
	if err != nil {
		t.Fatal(err)
	}
	return dialProtoWith(t, url+"/ws", bearer(tok))
}

// presenceReply reads the next reply, skipping join and leave pushes: a
// connection may get the join of a user who subscribed just before it,
// on its way while it subscribed.
func (p *protoClient) presenceReply() protocol.Reply {
	p.t.Helper()
	for {
		s := p.next()
		if strings.HasPrefix(s, `{"join":`) || strings.HasPrefix(s, `{"leave":`) {
			continue
		}
		var r protocol.Reply
		if err := json.Unmarshal([]byte(s), &r); err != nil || (r.Result == nil && r.Error == nil) {
			p.t.Fatalf("read %s, want a reply", s)
		}
		return r
	}
}

// doPresent sends cmd and expects the reply want, skipping join and leave
// pushes.
func (p *protoClient) doPresent(cmd, want string) {
	p.t.Helper()
	p.send(cmd)
	r := p.presenceReply()
	got, _ := json.Marshal(r)
	if string(got) != want {
		p.t.Fatalf("read %s, want %s", got, want)
	}
}

// join subscribes p to channel, skipping join and leave pushes.
func (p *protoClient) join(id int, channel string) {
	p.t.Helper()
	p.doPresent(fmt.Sprintf(`{"id":%d,"cmd":"subscribe","channel":%q}`, id, channel), fmt.Sprintf(`{"id":%d,"result":{}}`, id))
}

// presence runs the presence command on p and returns the clients.
func (p *protoClient) presence(id int, channel string) []protocol.ClientInfo {
	p.t.Helper()
	p.send(fmt.Sprintf(`{"id":%d,"cmd":"presence","channel":%q}`, id, channel))
	r := p.presenceReply()
	var res protocol.PresenceResult
	if r.Error != nil || json.Unmarshal(r.Result, &res) != nil {
		p.t.Fatalf("presence %q: %+v %s", channel, r.Error, r.Result)
	}
	return res.Clients
}

func (p *protoClient) presenceStats(id int, channel string) string {
	p.t.Helper()
	p.send(fmt.Sprintf(`{"id":%d,"cmd":"presence_stats","channel":%q}`, id, channel))
	r := p.presenceReply()
	if r.Error != nil {
		p.t.Fatalf("presence_stats %q: %+v", channel, r.Error)
	}
	return string(r.Result)
}

func users(clients []protocol.ClientInfo) string {
	s := ""
	for _, c := range clients {
		s += fmt.Sprintf("%s@%s %s;", c.User, c.Node, c.Info)
	}
	return s
}

// TestPresenceAcrossNodes: three connections of two users on two nodes
// are listed with their user ids, info and nodes, and counted as two users;
// a subscriber gets one join per user and the leave of a user whose
// last connection went.
func TestPresenceAcrossNodes(t *testing.T) {
	nodes := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: withPresence(t)})
	watch := userConn(t, nodes[0].WS, "carol")
	watch.subscribe(1, "quick:1")

	alice := userConn(t, nodes[0].WS, "alice")
	alice.join(1, "quick:1")
	watch.expect(`{"join":{"channel":"quick:1","client":"node-1/2","user":"alice","node":"node-1","info":{"name":"alice"}}}`)
	bob := userConn(t, nodes[1].WS, "bob")
	bob.join(1, "quick:1")
	watch.expect(`{"join":{"channel":"quick:1","client":"node-2/1","user":"bob","node":"node-2","info":{"name":"bob"}}}`)
	alice2 := userConn(t, nodes[1].WS, "alice")
	alice2.join(1, "quick:1")

	// Seen from either node, and from the API.
	want := `carol@node-1 {"name":"carol"};alice@node-1 {"name":"alice"};bob@node-2 {"name":"bob"};alice@node-2 {"name":"alice"};`
	for i, p := range []*protoClient{watch, bob} {
		if got := users(p.presence(2, "quick:1")); got != want {
			t.Errorf("presence on node-%d = %s, want %s", i+1, got, want)
		}
		if got := p.presenceStats(3, "quick:1"); got != `{"num_clients":4,"num_users":3}` {
			t.Errorf("presence_stats on node-%d = %s, want 4 clients, 3 users", i+1, got)
		}
	}
	res := apiDo(t, http.MethodGet, nodes[1].URL+"/api/presence_stats?channel=quick:1", nil, "")
	if res.status != http.StatusOK || res.body != `{"result":{"num_clients":4,"num_users":3}}`+"\n" {
		t.Errorf("GET /api/presence_stats = %d %s", res.status, res.body)
	}
	res = apiDo(t, http.MethodGet, nodes[0].URL+"/api/presence?channel=quick:1", nil, "")
	var body struct{ Result protocol.PresenceResult }
	if res.status != http.StatusOK || json.Unmarshal([]byte(res.body), &body) != nil || users(body.Result.Clients) != want {
		t.Errorf("GET /api/presence = %d %s, want the users %s", res.status, res.body, want)
	}

	// alice's second connection made no join, and its going makes no
	// leave: bob's leave is the next push.
	alice2.doPresent(`{"id":4,"cmd":"unsubscribe","channel":"quick:1"}`, `{"id":4,"result":{}}`)
	bob.ws.CloseNow()
	watch.expect(`{"leave":{"channel":"quick:1","user":"bob"}}`)
	if got := watch.presenceStats(5, "quick:1"); got != `{"num_clients":2,"num_users":2}` {
		t.Errorf("presence_stats after two left = %s, want 2 clients, 2 users", got)
	}
	alice.doPresent(`{"id":2,"cmd":"unsubscribe","channel":"quick:1"}`, `{"id":2,"result":{}}`)
	watch.expect(`{"leave":{"channel":"quick:1","user":"alice"}}`)
}

// TestPresenceReconnectWithinGrace: a user whose connection drops and who
// subscribes again on another node within the leave grace makes neither a
// leave nor a join; the next push the others get is someone else's.
func TestPresenceReconnectWithinGrace(t *testing.T) {
	nodes := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: withPresence(t)})
	watch := userConn(t, nodes[0].WS, "carol")
	watch.subscribe(1, "room:1")
	alice := userConn(t, nodes[0].WS, "alice")
	alice.join(1, "room:1")
	watch.expect(`{"join":{"channel":"room:1","client":"node-1/2","user":"alice","node":"node-1","info":{"name":"alice"}}}`)

	alice.ws.CloseNow() // a network change, or a drain
	testenv.WaitFor(t, nodetest.Timeout, "alice's connection to leave presence", func() bool {
		return watch.presenceStats(2, "room:1") == `{"num_clients":1,"num_users":1}`
	})
	again := userConn(t, nodes[1].WS, "alice")
	again.join(1, "room:1")
	if got := watch.presenceStats(3, "room:1"); got != `{"num_clients":2,"num_users":2}` {
		t.Errorf("presence_stats after the reconnect = %s, want 2 clients, 2 users", got)
	}
	bob := userConn(t, nodes[1].WS, "bob")
	bob.join(1, "room:1")
	watch.expect(`{"join":{"channel":"room:1","client":"node-2/2","user":"bob","node":"node-2","info":{"name":"bob"}}}`)
}

// TestPresenceRawAndAnonymous: a raw-mode connection is present too, and
// a connection without a user counts as a client but not as a user, and
// joins and leaves by its client id.
func TestPresenceRawAndAnonymous(t *testing.T) {
	s := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 1, nodetest.Options{Config: func(cfg *node.Config) {
		withPresence(t)(cfg)
		cfg.TokenHMACSecret = ""
		cfg.AuthTokens = node.Secrets{"static"}
	}})[0]
	watch := dialProtoWith(t, s.WS+"/ws", bearer("static"))
	watch.subscribe(1, "quick:raw")
	raw := nodetest.Dial(t, s.WS+"/ws/quick:raw", bearer("static"))
	watch.expect(`{"join":{"channel":"quick:raw","client":"node-1/2","node":"node-1"}}`)
	if got := watch.presenceStats(2, "quick:raw"); got != `{"num_clients":2,"num_users":0}` {
		t.Errorf("presence_stats = %s, want 2 clients, 0 users", got)
	}
	raw.CloseNow()
	watch.expect(`{"leave":{"channel":"quick:raw","client":"node-1/2"}}`)
}

// TestPresenceMemory: the embedded broker keeps presence as Redis does.
func TestPresenceMemory(t *testing.T) {
	cfg := nodetest.Config()
	cfg.NodeID = "node-1"
	withPresence(t)(&cfg)
	b := pubsub.NewMemory()
	t.Cleanup(func() { b.Close() })
	s := nodetest.Start(t, cfg, b)
	watch := userConn(t, s.WS, "carol")
	watch.subscribe(1, "quick:m")
	alice := userConn(t, s.WS, "alice")
	alice.join(1, "quick:m")
	watch.expect(`{"join":{"channel":"quick:m","client":"node-1/2","user":"alice","node":"node-1","info":{"name":"alice"}}}`)
	if got := watch.presenceStats(2, "quick:m"); got != `{"num_clients":2,"num_users":2}` {
		t.Errorf("presence_stats = %s, want 2 clients, 2 users", got)
	}
	if m := testenv.Metrics(t, s.URL); m["relay_presence_entries"] != 2 || m["relay_presence_errors_total"] != 0 {
		t.Errorf("relay_presence_entries %v, relay_presence_errors_total %v; want 2 and 0", m["relay_presence_entries"], m["relay_presence_errors_total"])
	}
	alice.ws.CloseNow()
	watch.expect(`{"leave":{"channel":"quick:m","user":"alice"}}`)
	if m := testenv.Metrics(t, s.URL); m["relay_presence_entries"] != 1 {
		t.Errorf("relay_presence_entries after a leave = %v, want 1", m["relay_presence_entries"])
	}
}

// TestPresenceLapses: entries that their node stops renewing (as if it
// crashed) lapse after the lease; the renewals of a live node keep its
// own, and the lapse is pushed as a leave.
func TestPresenceLapses(t *testing.T) {
	r := testenv.StartRedis(t)
	s := nodetest.ClusterWith(t, r.URL(), 1, nodetest.Options{Config: func(cfg *node.Config) {
		withPresence(t)(cfg)
		cfg.PresenceInterval, cfg.PresenceLease = 20*time.Millisecond, 200*time.Millisecond
	}})[0]
	watch := userConn(t, s.WS, "carol")
	watch.subscribe(1, "quick:lapse")
	// An entry of a node that is gone: added once, never renewed.
	b, err := pubsub.NewRedis(nodetest.RedisConfig(r.URL()), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.AddPresence(t.Context(), []pubsub.PresenceUpdate{{Channel: "quick:lapse",
		Opts:    pubsub.PresenceOptions{Lease: 200 * time.Millisecond, Grace: 50 * time.Millisecond},
		Entries: []pubsub.PresenceEntry{{Client: "gone/1", User: "ghost", Node: "gone"}}}}); err != nil {
		t.Fatal(err)
	}
	watch.expect(`{"leave":{"channel":"quick:lapse","user":"ghost"}}`)
	if got := users(watch.presence(2, "quick:lapse")); got != `carol@node-1 {"name":"carol"};` {
		t.Errorf("presence after the lapse = %s, want only carol", got)
	}
}

// TestPresenceBadInput: each mistake gets its documented error.
func TestPresenceBadInput(t *testing.T) {
	s := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 1, nodetest.Options{Config: withPresence(t)})[0]
	c := auth.Claims{Channels: []string{"room:1"}}
	c.Subject = "dave"
	tok, err := auth.MintHS256([]byte(tokenSecret), c)
	if err != nil {
		t.Fatal(err)
	}
	p := dialProtoWith(t, s.WS+"/ws", bearer(tok))
	for _, tt := range []struct{ cmd, want string }{
		{`{"id":1,"cmd":"presence","channel":"chat:1"}`,
			`{"id":1,"error":{"code":"forbidden","message":"not allowed to read the presence of \"chat:1\""}}`},
		{`{"id":2,"cmd":"presence"}`, `{"id":2,"error":{"code":"bad_request","message":"missing field \"channel\""}}`},
		{`{"id":3,"cmd":"presence_stats","channel":"a b"}`,
			`{"id":3,"error":{"code":"invalid_channel","message":"channel name has ' ' at byte 1; allowed are A-Z a-z 0-9 _ - : . @ / ="}}`},
		{`{"id":4,"cmd":"presence_stats","channel":7}`, `{"id":4,"error":{"code":"bad_request","message":"field \"channel\" must be a string"}}`},
		{`{"id":5,"cmd":"presence","channel":"room:1"}`, `{"id":5,"result":{"clients":[]}}`},
	} {
		p.do(tt.cmd, tt.want)
	}
	all := userConn(t, s.WS, "erin")
	all.do(`{"id":1,"cmd":"presence_stats","channel":"chat:1"}`,
		`{"id":1,"error":{"code":"no_presence","message":"channel \"chat:1\" keeps no presence: its namespace does not set presence: true"}}`)

	for _, tt := range []struct {
		method, path string
		header       map[string]string
		status       int
		code         string
	}{
		{"GET", "/api/presence?channel=chat:1", nil, 400, "no_presence"},
		{"GET", "/api/presence", nil, 400, "bad_request"},
		{"GET", "/api/presence_stats?channel=", nil, 400, "invalid_channel"},
		{"GET", "/api/presence_stats?channel=__relay:x", nil, 400, "invalid_channel"},
		{"POST", "/api/presence?channel=room:1", nil, 405, "bad_request"},
		{"GET", "/api/presence?channel=room:1", map[string]string{"Authorization": ""}, 401, "unauthorized"},
		{"GET", "/api/presence_stats?channel=room:1", map[string]string{"Authorization": "Bearer nope"}, 401, "unauthorized"},
	} {
		res := apiDo(t, tt.method, s.URL+tt.path, tt.header, "")
		if code, _, _ := res.errorBody(t); res.status != tt.status || code != tt.code {
			t.Errorf("%s %s = %d %s, want %d %s", tt.method, tt.path, res.status, code, tt.status, tt.code)
		}
	}
	off := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 1, nodetest.Options{})[0]
	res := apiDo(t, "GET", off.URL+"/api/presence?channel=room:1", nil, "")
	if code, _, _ := res.errorBody(t); res.status != 404 || code != "not_found" {
		t.Errorf("GET /api/presence with the API off = %d %s, want 404 not_found", res.status, code)
	}
}
