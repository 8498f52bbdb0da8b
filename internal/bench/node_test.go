package bench

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub"
)

// startNodes starts n real nodes against one private redis-server and
// returns their WebSocket base URLs.
func startNodes(t *testing.T, n int) []string {
	t.Helper()
	r := testenv.StartRedis(t)
	var urls []string
	for i := range n {
		b, err := pubsub.NewRedis(pubsub.RedisConfig{URL: r.URL(), Prefix: "relay:", Subscribers: 2, Pipelines: 2, Timeout: 3 * time.Second}, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := nodetest.Config()
		cfg.NodeID = fmt.Sprintf("node-%d", i+1)
		s := nodetest.Start(t, cfg, b)
		t.Cleanup(func() { b.Close() }) // after the node stops
		urls = append(urls, s.WS)
	}
	return urls
}

// TestFanoutRealNodes loads two real nodes sharing one Redis, in both
// modes: subscribers and publishers on both nodes, every message delivered
// once, in order; in protocol mode every publish acknowledged.
func TestFanoutRealNodes(t *testing.T) {
	urls := startNodes(t, 2)
	for _, mode := range []string{Raw, Protocol} {
		t.Run(mode, func(t *testing.T) {
			res, report, err := runBench(t, append([]string{"fanout", "-mode", mode, "-url", urls[0] + "," + urls[1],
				"-subs", "20", "-publishers", "2", "-rate", "200"}, short...)...)
			if err != nil {
				t.Fatalf("Command: %v\n%s", err, report)
			}
			checkClean(t, res, report)
			if res.Nodes["node-1"] != 10 || res.Nodes["node-2"] != 10 {
				t.Errorf("nodes = %v, want 10 subscribers on each of node-1 and node-2", res.Nodes)
			}
			if res.Published != 2*perStream || res.Expected != res.Published*20 {
				t.Errorf("published %d, expected %d; want %d, × 20", res.Published, res.Expected, 2*perStream)
			}
			if mode == Protocol && (res.PublishAck == nil || res.PublishAck.Count != res.Published) {
				t.Errorf("publish acks %+v, want one per published message (%d)", res.PublishAck, res.Published)
			}
		})
	}
}

func TestChannelsRealNodes(t *testing.T) {
	urls := startNodes(t, 2)
	for _, args := range [][]string{{"-mode", "raw"}, {"-mode", "protocol"}, {"-mode", "protocol", "-batch=false"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			res, report, err := runBench(t, append(append([]string{"channels", "-url", urls[0] + "," + urls[1],
				"-channels", "5", "-subs", "20", "-rate", "250"}, args...), short...)...)
			if err != nil {
				t.Fatalf("Command: %v\n%s", err, report)
			}
			checkClean(t, res, report)
		})
	}
}

func TestIdleRealNodes(t *testing.T) {
	urls := startNodes(t, 2)
	res, report, err := runBench(t, "idle", "-mode", "protocol", "-url", urls[0]+","+urls[1], "-subs", "30",
		"-channels", "3", "-duration", "1ms", "-pids", fmt.Sprint(os.Getpid()))
	if err != nil {
		t.Fatalf("Command: %v\n%s", err, report)
	}
	if res.Connected != 30 || res.Nodes["node-1"] != 15 || len(res.Closes) != 0 || len(res.ConnectErrors) != 0 {
		t.Errorf("connected %d, nodes %v, closes %v, errors %v; want 15 subscribed on each node",
			res.Connected, res.Nodes, res.Closes, res.ConnectErrors)
	}
}
