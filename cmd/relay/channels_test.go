package main

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/node/protocol"
)

// surveyChannels returns GET /api/channels of n.
func surveyChannels(t *testing.T, n *testenv.Relay) protocol.ChannelsResult {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+n.Addr+"/api/channels", nil)
	req.Header.Set("Authorization", "Bearer k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /api/channels: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var body struct{ Result protocol.ChannelsResult }
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &body) != nil {
		t.Fatalf("GET /api/channels = %d %s", resp.StatusCode, b)
	}
	return body.Result
}

// TestChannelsNodeKilled: GET /api/channels lists a node that was SIGKILLed
// as missing, rather than leaving its subscribers out silently.
func TestChannelsNodeKilled(t *testing.T) {
	r := testenv.StartRedis(t)
	a := testenv.StartRelay(t, relayEnv(r.URL(), "a", "RELAY_API_KEY=k")...)
	b := testenv.StartRelay(t, relayEnv(r.URL(), "b", "RELAY_API_KEY=k")...)
	testenv.WaitFor(t, nodetest.Timeout, "both nodes answer", func() bool {
		return slices.Equal(surveyChannels(t, a).Nodes, []string{"a", "b"})
	})
	b.Signal(t, syscall.SIGKILL)
	b.Wait(t, nodetest.Timeout)
	start := time.Now()
	res := surveyChannels(t, a)
	if !slices.Equal(res.Nodes, []string{"a"}) || !slices.Equal(res.Missing, []string{"b"}) {
		t.Errorf("after b was killed: nodes %v, missing %v; want [a], missing [b]", res.Nodes, res.Missing)
	}
	t.Logf("survey with a node missing took %v", time.Since(start))
}
