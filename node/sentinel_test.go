package node_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

// TestSentinelFailoverNothingLostSilently kills the master of a Redis
// Sentinel set-up (SIGKILL) under two nodes in Sentinel mode while
// publishers, waiting for each acknowledgement, and subscribers run, on a
// channel with history and one without, one subscriber leaving and
// recovering with since throughout. The sentinels promote the replica;
// the nodes follow it and deliver again; every acknowledged message must
// be delivered, recovered or announced by a gap notice to every
// subscriber. It logs the failover's figures (docs/RELIABILITY.md).
func TestSentinelFailoverNothingLostSilently(t *testing.T) {
	s := testenv.StartSentinel(t)
	ns := filepath.Join(t.TempDir(), "namespaces.yaml")
	if err := os.WriteFile(ns, []byte("namespaces:\n  plain:\n    history_size: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var urls []string
	var nodes []*nodetest.Server
	for i := range 2 {
		rcfg := nodetest.RedisConfig("")
		rcfg.SentinelAddrs, rcfg.SentinelMaster = s.Addrs(), testenv.SentinelMaster
		b, err := pubsubtest.RunRedis(t, rcfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() }) // registered first, so it runs after the node's
		cfg := nodetest.Config()
		cfg.NodeID = fmt.Sprintf("node-%d", i+1)
		withHistory(10000)(&cfg)
		cfg.NamespacesFile = ns
		n := nodetest.StartWith(t, cfg, b, nil)
		nodes = append(nodes, n)
		urls = append(urls, n.WS)
	}
	f := startFeedTraffic(t, urls, true, 100)
	pubs := f.pubs
	switched := s.SwitchMaster(t)
	killed := time.Now()
	s.Master.Stop() // SIGKILL
	var switchedAfter time.Duration
	select {
	case <-switched:
		switchedAfter = time.Since(killed)
	case <-time.After(time.Minute):
		t.Fatal("no +switch-master within a minute of the master's death")
	}
	// The master is dead: whatever is acknowledged from now on went to
	// the new one. Delivery resumed once every publisher has such an ack.
	at := make([]int64, len(pubs))
	for i, p := range pubs {
		at[i] = p.count.Load()
	}
	for i, p := range pubs {
		waitCount(t, []*publisher{p}, at[i]+1)
	}
	resumed := time.Since(killed)
	// Both nodes ready again: every subscriber connection on the new
	// master, its subscriptions confirmed.
	testenv.WaitFor(t, 30*time.Second, "both nodes ready again", func() bool {
		for _, n := range nodes {
			if !isReady(t, n) {
				return false
			}
		}
		return true
	})
	readyAfter := time.Since(killed)
	var refused int64
	for _, p := range pubs {
		refused += p.errs.Load()
	}
	f.finish(t, at, 100)
	delivered, recovered, announced, silent := f.count(t, nil)
	t.Logf("master SIGKILLed: +switch-master after %v, every publisher acknowledged again after %v, both nodes ready after %v (sentinel down-after %v); %d publishes answered unavailable or unknown_outcome",
		switchedAfter.Round(time.Millisecond), resumed.Round(time.Millisecond), readyAfter.Round(time.Millisecond), testenv.SentinelDownAfter, refused)
	t.Logf("acknowledged messages × subscribers: delivered %d, recovered %d, announced %d, lost silently %d", delivered, recovered, announced, silent)
	if silent != 0 {
		t.Errorf("%d acknowledged messages lost silently", silent)
	}
	if refused == 0 {
		t.Errorf("no publish answered unavailable or unknown_outcome in %v without a master", switchedAfter)
	}
	// The history survives the failover (the replica had it): the nodes
	// recover the messages of "feed" that they missed, and only those of
	// the channel without history are announced.
	for _, s := range f.subs {
		gaps := 0
		for _, e := range s.events {
			if e.gap {
				gaps++
			}
		}
		if gaps == 0 && s.channel == "plain:feed" {
			t.Errorf("%s subscriber on %s got no gap notice for the failover", s.channel, s.urls[0])
		}
	}
}

// isReady reports whether n's /readyz answers 200.
func isReady(t *testing.T, n *nodetest.Server) bool {
	t.Helper()
	resp, err := http.Get(n.URL + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
