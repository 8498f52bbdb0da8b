package browsertest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
)

// pageScript sets up a page to record what relay.js gives it: each message
// as data@offset in window.got, each event's type in window.events, and
// window.until(f), which resolves once f() holds after some message or
// event.
const pageScript = `(() => {
	window.got = [];
	window.events = [];
	window.waiters = [];
	window.changed = () => { for (const w of waiters.splice(0)) w(); };
	window.until = async (f) => { while (!f()) await new Promise((r) => waiters.push(r)); return true; };
	window.record = (relay) => {
		for (const type of ['connected', 'disconnected', 'gap', 'recovered', 'unsubscribed', 'closed']) {
			relay.addEventListener(type, (e) => { events.push(type + (e.error ? ' ' + e.error.code : '')); changed(); });
		}
	};
	window.handle = (m) => { got.push(m.data + '@' + m.offset); changed(); };
	return true;
})()`

// TestRecoveryAcrossRestart: a page subscribes through relay.js to a
// channel with history on node 1; node 1 is killed while node 2 publishes,
// and started again. The page reconnects, subscribes from its position,
// reports recovered (no gap), and has every message exactly once, in order.
// The demo page on node 1 shows the recovered notice.
func TestRecoveryAcrossRestart(t *testing.T) {
	redis := testenv.StartRedis(t)
	addr1 := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	node1 := startRelay(t, addr1, "node-1", redis.URL(), "RELAY_HISTORY_SIZE=1000")
	node2 := startRelay(t, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "node-2", redis.URL(), "RELAY_HISTORY_SIZE=1000")
	browser := startBrowser(t)
	demo := openTab(t, browser, "http://"+node1.Addr+"/?channel=news&name=cy")
	demo.await(connectedTo("node-1"), joined("news"))
	tb := openTab(t, browser, "http://"+node1.Addr+"/healthz")
	evaluate[bool](tb, pageScript)
	evaluate[bool](tb, `(async () => {
		const { Relay } = await import('/relay.js');
		const relay = window.relay = new Relay(location.origin, { minBackoff: 50, maxBackoff: 500 });
		record(relay);
		await relay.subscribe('news', handle);
		return true;
	})()`)

	publish(t, node2.Addr, "news", 1, 5)
	evaluate[bool](tb, `until(() => got.length >= 5)`)

	node1.Signal(t, syscall.SIGKILL)
	node1.Wait(t, timeout)
	evaluate[bool](tb, `until(() => events.includes('disconnected'))`)
	publish(t, node2.Addr, "news", 6, 25)
	startRelay(t, addr1, "node-1", redis.URL(), "RELAY_HISTORY_SIZE=1000")
	evaluate[bool](tb, `until(() => events.includes('recovered') && got.length >= 25)`)
	demo.await(notice("recovered", "news"), message("25"))
	demo.screenshot("demo-recovered.png")
	publish(t, node2.Addr, "news", 26, 30)
	evaluate[bool](tb, `until(() => got.length >= 30)`)

	var want []string
	for i := 1; i <= 30; i++ {
		want = append(want, fmt.Sprintf("%d@%d", i, i))
	}
	if got := evaluate[[]string](tb, `got`); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("messages (data@offset) = %v, want %v", got, want)
	}
	// Failed attempts while node 1 is down add disconnected events.
	events := evaluate[[]string](tb, `events.filter((e) => e !== 'disconnected')`)
	if fmt.Sprint(events) != "[connected recovered connected]" {
		t.Errorf("events other than disconnected = %v, want [connected recovered connected]", events)
	}
	tb.checkConsole()
	demo.checkConsole()
}

// publish publishes the numbers from to last to channel on the node at
// addr in protocol mode, each acked before the next.
func publish(t *testing.T, addr, channel string, from, last int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	for i := from; i <= last; i++ {
		cmd, _ := json.Marshal(map[string]any{"id": i, "cmd": "publish", "channel": channel, "data": i})
		if err := c.Write(ctx, websocket.MessageText, cmd); err != nil {
			t.Fatal(err)
		}
		for acked := false; !acked; {
			_, frame, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("publish %d: %v", i, err)
			}
			for line := range strings.SplitSeq(string(frame), "\n") {
				var reply struct {
					ID    int             `json:"id"`
					Error json.RawMessage `json:"error"`
				}
				if json.Unmarshal([]byte(line), &reply) == nil && reply.ID == i {
					if reply.Error != nil {
						t.Fatalf("publish %d: %s", i, reply.Error)
					}
					acked = true
				}
			}
		}
	}
	c.Close(websocket.StatusNormalClosure, "")
}
