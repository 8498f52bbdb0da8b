package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
)

// TestSentinelByVariables: relay processes configured by variables alone
// run on the master Sentinel names, and their clients exchange messages.
func TestSentinelByVariables(t *testing.T) {
	s := testenv.StartSentinel(t)
	env := []string{"RELAY_ADDR=127.0.0.1:0", "RELAY_DRAIN_SECONDS=0",
		"RELAY_REDIS_SENTINEL_ADDRS=" + strings.Join(s.Addrs(), ","), "RELAY_REDIS_SENTINEL_MASTER=" + testenv.SentinelMaster}
	a := testenv.StartRelay(t, append(env, "RELAY_NODE_ID=a")...)
	b := testenv.StartRelay(t, append(env, "RELAY_NODE_ID=b")...)
	a.WaitLog(t, nodetest.Timeout, func(l map[string]any) bool {
		return l["msg"] == "broker: redis sentinel" && l["master"] == testenv.SentinelMaster
	})
	testenv.WaitFor(t, 30*time.Second, "both nodes ready", func() bool {
		return ready(t, a) == http.StatusOK && ready(t, b) == http.StatusOK
	})
	sub := nodetest.Dial(t, "ws://"+a.Addr+"/ws/sentinel", nil)
	pub := nodetest.Dial(t, "ws://"+b.Addr+"/ws", nil)
	nodetest.Write(t, pub, `{"id":1,"cmd":"publish","channel":"sentinel","data":"through the master"}`)
	if got := nodetest.ReadText(t, pub); got != `{"id":1,"result":{}}` {
		t.Fatalf("publish reply %s", got)
	}
	if got := nodetest.ReadText(t, sub); got != `"through the master"` {
		t.Errorf("subscriber on the other node read %s", got)
	}
}

// TestRedisModeRefused: two Redis modes at once (of standalone, Sentinel
// and Cluster), or Sentinel without its master's name, stop the node at start with one line naming the
// variables.
func TestRedisModeRefused(t *testing.T) {
	tests := []struct {
		env  []string
		want string
	}{
		{[]string{"RELAY_REDIS_URL=redis://127.0.0.1:6379/0", "RELAY_REDIS_SENTINEL_ADDRS=127.0.0.1:26379", "RELAY_REDIS_SENTINEL_MASTER=m"},
			"RELAY_REDIS_URL and RELAY_REDIS_SENTINEL_ADDRS are both set"},
		{[]string{"RELAY_REDIS_SENTINEL_ADDRS=127.0.0.1:26379,127.0.0.1:26380"}, "without RELAY_REDIS_SENTINEL_MASTER"},
		{[]string{"RELAY_REDIS_SENTINEL_MASTER=m"}, "without RELAY_REDIS_SENTINEL_ADDRS"},
		{[]string{"RELAY_REDIS_URL=redis://127.0.0.1:6379/0", "RELAY_REDIS_PASSWORD=x"}, "want them in the URL"},
		{[]string{"RELAY_REDIS_URL=redis://127.0.0.1:1/0", "RELAY_REDIS_CLUSTER_ADDRS=127.0.0.1:2"},
			"RELAY_REDIS_URL and RELAY_REDIS_CLUSTER_ADDRS are both set; want one Redis mode"},
		{[]string{"RELAY_REDIS_SENTINEL_ADDRS=127.0.0.1:26379", "RELAY_REDIS_SENTINEL_MASTER=m", "RELAY_REDIS_CLUSTER_ADDRS=127.0.0.1:2"},
			"RELAY_REDIS_SENTINEL_ADDRS and RELAY_REDIS_CLUSTER_ADDRS are both set"},
		{[]string{"RELAY_REDIS_CLUSTER_ADDRS=127.0.0.1:2", "RELAY_REDIS_PASSWORD=x"}, "want the credentials in the first seed"},
	}
	for _, tt := range tests {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, testenv.RelayBinary(t))
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "RELAY_ADDR=127.0.0.1:0"}, tt.env...)
		out, err := cmd.CombinedOutput()
		cancel()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err == nil || cmd.ProcessState.ExitCode() != 2 {
			t.Errorf("%v: exit %d, want 2", tt.env, cmd.ProcessState.ExitCode())
			continue
		}
		if len(lines) != 1 || !strings.Contains(lines[0], tt.want) {
			t.Errorf("%v: printed %q, want one line with %q", tt.env, out, tt.want)
		}
	}
}
