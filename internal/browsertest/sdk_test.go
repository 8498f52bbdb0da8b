package browsertest

import (
	"context"
	"fmt"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/testenv"
)

// TestSDK drives relay.js from a script of the page: acks and echo, a
// binary message, typed errors of the client and of the node, and a close
// with 1008 that stops the client for good.
func TestSDK(t *testing.T) {
	node := startRelay(t, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "node-1", "",
		"RELAY_PROTO_MAX_CHANNELS=2", "RELAY_PROTO_MAX_ERRORS=2")
	base := "http://" + node.Addr
	tb := openTab(t, startBrowser(t), base+"/healthz") // a page of the node's origin

	got := evaluate[map[string]any](tb, `(async () => {
		const { Relay, RelayError } = await import('/relay.js');
		const relay = window.relay = new Relay(location.origin, { echo: true });
		window.events = [];
		for (const type of ['connected', 'disconnected', 'gap', 'unsubscribed', 'closed']) {
			relay.addEventListener(type, (e) => events.push([type, e.code, e.error?.code ?? ''].join(' ')));
		}
		let echo, bytes;
		const echoed = new Promise((resolve) => { echo = resolve; });
		window.bytes = new Promise((resolve) => { bytes = resolve; });
		await relay.subscribe('e', (m) => echo(m.data));
		await relay.subscribe('bin', (m) => bytes(m.binary && [...m.data]));
		await relay.publish('e', { n: 1, list: [true, null, 'x'] });
		const code = async (p) => { try { await p; return 'ok'; } catch (err) { return err instanceof RelayError ? err.code : String(err); } };
		return {
			echoed: await echoed,
			node: relay.node,
			invalid: await code(relay.publish('has space', 1)),
			undef: await code(relay.publish('e', undefined)),
			again: await code(relay.subscribe('e', () => {})),
		};
	})()`)
	want := map[string]any{
		"echoed":  map[string]any{"n": float64(1), "list": []any{true, nil, "x"}},
		"node":    "node-1",
		"invalid": "invalid_channel",
		"undef":   "bad_request",
		"again":   "already_subscribed",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("relay.js = %v, want %v", got, want)
	}

	// A binary frame of a raw-mode client arrives as bytes.
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	raw, _, err := websocket.Dial(ctx, "ws://"+node.Addr+"/ws/bin", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.CloseNow()
	if err := raw.Write(ctx, websocket.MessageBinary, []byte{0, 255, 'x'}); err != nil {
		t.Fatal(err)
	}
	if bytes := evaluate[[]int](tb, `window.bytes`); fmt.Sprint(bytes) != "[0 255 120]" {
		t.Errorf("binary message = %v, want [0 255 120]", bytes)
	}

	// Over the channel limit: the node's limit_exceeded. Two such errors
	// reach RELAY_PROTO_MAX_ERRORS: the node closes with 1008, and the
	// client stops instead of reconnecting.
	got = evaluate[map[string]any](tb, `(async () => {
		const closed = new Promise((resolve) => relay.addEventListener('closed', (e) => resolve(e.error.code)));
		const code = async (p) => { try { await p; return 'ok'; } catch (err) { return err.code; } };
		return {
			limit: await code(relay.subscribe('third', () => {})),
			limit2: await code(relay.subscribe('fourth', () => {})),
			closed: await closed,
			state: relay.state,
			after: await code(relay.publish('e', 1)),
			events,
		};
	})()`)
	want = map[string]any{
		"limit":  "limit_exceeded",
		"limit2": "limit_exceeded",
		"closed": "refused",
		"state":  "closed",
		"after":  "refused",
		"events": []any{"connected 0 ", "disconnected 1008 refused", "closed 0 refused"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("relay.js = %v, want %v", got, want)
	}
	tb.checkConsole()
}

// evaluate runs a script in the page and returns its value, awaiting a
// promise.
func evaluate[T any](tb *tab, script string) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, timeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](script, chromedp.EvalAwaitPromise))
	if err != nil {
		tb.t.Fatalf("%s: %v\n%s", tb.url, err, tb.log())
	}
	return v
}
