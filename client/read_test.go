package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/relay-pubsub/relay/client"
	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

// TestHistoryAndPresence: History pages through a channel's history, from
// the latest messages and from an offset, and Presence and PresenceStats
// list the clients of two nodes; channels without either get the node's
// error.
func TestHistoryAndPresence(t *testing.T) {
	ns := filepath.Join(t.TempDir(), "namespaces.yaml")
	if err := os.WriteFile(ns, []byte("namespaces:\n  room:\n    history_size: 100\n    history_ttl: 5m\n    presence: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nodes := nodetest.ClusterWith(t, testenv.StartRedis(t).URL(), 2, nodetest.Options{Config: func(cfg *node.Config) {
		cfg.NamespacesFile = ns
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*nodetest.Timeout)
	defer cancel()
	var clients []*client.Client
	for _, n := range nodes {
		c, err := client.Dial(ctx, n.WS, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Subscribe(ctx, "room:1", func(client.Message) {}); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	for i := range 5 {
		if err := clients[0].Publish(ctx, "room:1", fmt.Appendf(nil, "%d", i+1)); err != nil {
			t.Fatal(err)
		}
	}

	latest, err := clients[1].History(ctx, "room:1", client.HistoryOptions{Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	if got := texts(latest.Messages); !slices.Equal(got, []string{"3", "4", "5"}) || latest.Offset != 5 || latest.Epoch == "" {
		t.Errorf("latest 3: %v at offset %d epoch %q, want [3 4 5] at 5", got, latest.Offset, latest.Epoch)
	}
	var since client.HistoryOptions
	since.Limit = 2
	since.Since.Offset, since.Since.Epoch = 1, latest.Epoch
	page, err := clients[1].History(ctx, "room:1", since)
	if err != nil {
		t.Fatal(err)
	}
	if got := texts(page.Messages); !slices.Equal(got, []string{"2", "3"}) || !page.More || page.Messages[1].Offset != 3 {
		t.Errorf("2 after offset 1: %v (more %v), want [2 3] and more", got, page.More)
	}

	list, err := clients[0].Presence(ctx, "room:1")
	if err != nil {
		t.Fatal(err)
	}
	var where []string
	for _, ci := range list {
		where = append(where, ci.Node)
	}
	slices.Sort(where)
	if !slices.Equal(where, []string{"node-1", "node-2"}) {
		t.Errorf("presence on nodes %v, want one client on each of node-1 and node-2", where)
	}
	stats, err := clients[1].PresenceStats(ctx, "room:1")
	if err != nil || stats.NumClients != 2 {
		t.Errorf("presence stats %+v, %v; want 2 clients", stats, err)
	}

	var perr *client.Error
	if _, err := clients[0].History(ctx, "plain", client.HistoryOptions{}); !errors.As(err, &perr) || perr.Code != protocol.CodeNoHistory {
		t.Errorf("history of a channel without it: %v, want no_history", err)
	}
	if _, err := clients[0].Presence(ctx, "plain"); !errors.As(err, &perr) || perr.Code != protocol.CodeNoPresence {
		t.Errorf("presence of a channel without it: %v, want no_presence", err)
	}
}

func texts(ms []client.Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, string(m.Bytes()))
	}
	return out
}
