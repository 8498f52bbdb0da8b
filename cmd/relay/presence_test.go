package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/client"
	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/auth"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

// TestPresenceNodeKilled: three clients of three users on two relay
// processes are in a channel's presence with their user ids; one process
// is killed with SIGKILL, and its clients leave the presence once their
// lease (RELAY_PRESENCE_LEASE, 1s here) has passed, each with a leave push
// to the client left on the other node.
func TestPresenceNodeKilled(t *testing.T) {
	r := testenv.StartRedis(t)
	ns := filepath.Join(t.TempDir(), "namespaces.yaml")
	if err := os.WriteFile(ns, []byte("namespaces:\n  room:\n    presence: true\n    join_leave: true\n    presence_leave_grace: 100ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(id string) []string {
		return relayEnv(r.URL(), id, "RELAY_NAMESPACES_FILE="+ns, "RELAY_TOKEN_HMAC_SECRET="+hmacSecret, "RELAY_API_KEY=key",
			"RELAY_PRESENCE_INTERVAL=100ms", "RELAY_PRESENCE_LEASE=1s")
	}
	a := testenv.StartRelay(t, env("a")...)
	b := testenv.StartRelay(t, env("b")...)
	join := func(addr, user string) *websocket.Conn {
		c := auth.Claims{Channels: []string{"room:*"}}
		c.Subject = user
		tok, err := auth.MintHS256([]byte(hmacSecret), c)
		if err != nil {
			t.Fatal(err)
		}
		ws := nodetest.Dial(t, "ws://"+addr+"/ws?batch=false", http.Header{"Authorization": {"Bearer " + tok}})
		nodetest.Write(t, ws, `{"id":1,"cmd":"subscribe","channel":"room:1"}`)
		if got := nodetest.ReadText(t, ws); got != `{"id":1,"result":{}}` {
			t.Fatalf("%s subscribe: %s", user, got)
		}
		return ws
	}
	join(a.Addr, "alice")
	join(a.Addr, "bob")
	carol := join(b.Addr, "carol")

	present := func() string {
		req, _ := http.NewRequest("GET", "http://"+b.Addr+"/api/presence?channel=room:1", nil)
		req.Header.Set("X-API-Key", "key")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var res struct{ Result protocol.PresenceResult }
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &res) != nil {
			t.Fatalf("GET /api/presence = %d %s", resp.StatusCode, body)
		}
		var s []string
		for _, c := range res.Result.Clients {
			s = append(s, c.User+"@"+c.Node)
		}
		slices.Sort(s)
		return strings.Join(s, " ")
	}
	if got := present(); got != "alice@a bob@a carol@b" {
		t.Fatalf("presence = %s, want alice@a bob@a carol@b", got)
	}

	killed := time.Now()
	a.Signal(t, syscall.SIGKILL)
	a.Wait(t, nodetest.Timeout)
	// Expiry is time's doing: there is no event to await but the pushes.
	testenv.WaitFor(t, nodetest.Timeout, "the killed node's clients to leave presence", func() bool { return present() == "carol@b" })
	t.Logf("the killed node's clients left presence %v after the kill (lease 1s, interval 100ms)", time.Since(killed).Round(time.Millisecond))
	var left []string
	for range 2 {
		var p protocol.LeavePush
		msg := nodetest.ReadText(t, carol)
		if json.Unmarshal([]byte(msg), &p) != nil || p.Leave.Channel != "room:1" {
			t.Fatalf("carol got %s, want a leave", msg)
		}
		left = append(left, p.Leave.User)
	}
	slices.Sort(left)
	if fmt.Sprint(left) != "[alice bob]" {
		t.Errorf("leaves of %v, want alice and bob", left)
	}
}

// TestPresenceDrainNoFlap: a node drains (SIGTERM) and its client, with
// the Go SDK, reconnects to the other node within the leave grace: the
// user stays present, and the others get neither a leave nor a join of
// it. The next push they get is the join of another user.
func TestPresenceDrainNoFlap(t *testing.T) {
	r := testenv.StartRedis(t)
	ns := filepath.Join(t.TempDir(), "namespaces.yaml")
	if err := os.WriteFile(ns, []byte("namespaces:\n  room:\n    presence: true\n    join_leave: true\n    presence_leave_grace: 1m\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(id string) []string {
		return relayEnv(r.URL(), id, "RELAY_NAMESPACES_FILE="+ns, "RELAY_TOKEN_HMAC_SECRET="+hmacSecret)
	}
	a := testenv.StartRelay(t, env("a")...)
	b := testenv.StartRelay(t, env("b")...)
	token := func(user string) string {
		c := auth.Claims{Channels: []string{"room:*"}}
		c.Subject = user
		tok, err := auth.MintHS256([]byte(hmacSecret), c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	dial := func(addr, user string) *websocket.Conn {
		ws := nodetest.Dial(t, "ws://"+addr+"/ws?batch=false", http.Header{"Authorization": {"Bearer " + token(user)}})
		nodetest.Write(t, ws, `{"id":1,"cmd":"subscribe","channel":"room:1"}`)
		if got := nodetest.ReadText(t, ws); got != `{"id":1,"result":{}}` {
			t.Fatalf("%s subscribe: %s", user, got)
		}
		return ws
	}
	carol := dial(b.Addr, "carol")

	onB := make(chan struct{}, 1)
	ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
	defer cancel()
	alice, err := client.Dial(ctx, "ws://"+a.Addr, &client.Options{URLs: []string{"ws://" + b.Addr}, Token: token("alice"),
		OnEvent: func(e client.Event) {
			if e.Type == client.EventConnected && strings.Contains(e.URL, b.Addr) {
				select {
				case onB <- struct{}{}:
				default:
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	if _, err := alice.Subscribe(ctx, "room:1", func(client.Message) {}); err != nil {
		t.Fatal(err)
	}
	var j protocol.JoinPush
	if msg := nodetest.ReadText(t, carol); json.Unmarshal([]byte(msg), &j) != nil || j.Join.User != "alice" || j.Join.Node != "a" {
		t.Fatalf("carol got %s, want alice's join on a", msg)
	}

	a.Signal(t, syscall.SIGTERM)
	select { // connected to b, every subscription live again
	case <-onB:
	case <-ctx.Done():
		t.Fatal("alice did not reconnect to b")
	}
	dial(b.Addr, "bob")
	msg := nodetest.ReadText(t, carol)
	if json.Unmarshal([]byte(msg), &j) != nil || j.Join.User != "bob" {
		t.Fatalf("carol got %s after alice's reconnect, want bob's join", msg)
	}
	a.Wait(t, nodetest.Timeout)
}
