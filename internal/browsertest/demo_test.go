package browsertest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"go.uber.org/goleak"

	"github.com/relay-pubsub/relay/internal/testenv"
)

// timeout bounds every wait: a failure bound, never a measure of speed.
const timeout = 60 * time.Second

// TestMain removes the relay binary the tests built, and fails on a
// goroutine left running (a tab's console reader, chromedp's own).
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.Cleanup()
	if err := goleak.Find(); code == 0 && err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// TestDemoAcrossNodes: the demo page on node 1 and on node 2 (two relay
// processes, one redis-server) chat with each other; node 1 drains and
// starts again on the same port, and its page reconnects, says what it may
// have missed and receives new messages. It writes a screenshot of that
// page (see artifact).
func TestDemoAcrossNodes(t *testing.T) {
	redis := testenv.StartRedis(t)
	addr1 := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	node1 := startRelay(t, addr1, "node-1", redis.URL())
	node2 := startRelay(t, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "node-2", redis.URL())

	browser := startBrowser(t)
	ann := openTab(t, browser, "http://"+node1.Addr+"/?name=ann")
	bob := openTab(t, browser, "http://"+node2.Addr+"/?name=bob")
	ann.await(connectedTo("node-1"), joined("chat:lobby"))
	bob.await(connectedTo("node-2"), joined("chat:lobby"))

	ann.say("hello from node 1")
	bob.await(message("ann: hello from node 1"))
	bob.say("hello from node 2")
	ann.await(message("bob: hello from node 2"))

	// A drain closes with 1012; the page retries until node 1 is back.
	node1.Signal(t, syscall.SIGTERM)
	ann.await(notice("disconnected", "1012"))
	if code := node1.Wait(t, timeout); code != 0 {
		t.Fatalf("node 1 exited with %d after SIGTERM, want 0", code)
	}
	startRelay(t, addr1, "node-1", redis.URL())
	ann.await(notice("gap", "chat:lobby"), connectedTo("node-1"))

	bob.say("after the restart")
	ann.await(message("bob: after the restart"))
	ann.say("back on node 1")
	bob.await(message("ann: back on node 1"))

	ann.screenshot("demo-node1-after-restart.png")
	ann.checkConsole()
	bob.checkConsole()
}

// TestSharedTabs: two tabs with shared: true hold one WebSocket between
// them (the node's relay_connections says so), chat with each other
// through their shared worker, and with a tab of its own.
func TestSharedTabs(t *testing.T) {
	node := startRelay(t, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), "node-1", "")
	base := "http://" + node.Addr

	browser := startBrowser(t)
	ann := openTab(t, browser, base+"/?shared=1&name=ann")
	bob := openTab(t, browser, base+"/?shared=1&name=bob")
	for _, tab := range []*tab{ann, bob} {
		tab.await(connectedTo("node-1"), joined("chat:lobby"), `document.getElementById('mode').textContent.includes('shared')`)
	}
	// Each tab reports connected only once its connection is open, so
	// every connection the tabs opened is counted by now.
	m := testenv.Metrics(t, base)
	if got, opened := m[`relay_connections{mode="proto"}`], m[`relay_connections_opened_total{mode="proto"}`]; got != 1 || opened != 1 {
		t.Fatalf("two shared tabs: relay_connections{mode=\"proto\"} = %v, opened %v; want 1 and 1", got, opened)
	}

	ann.say("one connection for two tabs")
	bob.await(message("ann: one connection for two tabs"))

	cy := openTab(t, browser, base+"/?name=cy")
	cy.await(connectedTo("node-1"), joined("chat:lobby"))
	cy.say("from a tab of its own")
	ann.await(message("cy: from a tab of its own"))
	bob.await(message("cy: from a tab of its own"))
	bob.say("to everyone")
	cy.await(message("bob: to everyone"))
	ann.await(message("bob: to everyone"))
	if got := testenv.Metrics(t, base)[`relay_connections{mode="proto"}`]; got != 2 {
		t.Errorf("two shared tabs and one of its own: relay_connections{mode=\"proto\"} = %v, want 2", got)
	}
	ann.screenshot("demo-shared-tab.png")
	for _, tab := range []*tab{ann, bob, cy} {
		tab.checkConsole()
	}

	// The worker counts the tabs of a channel: bob's leaving keeps ann's
	// subscription, and the last shared tab's leaving closes the shared
	// connection. Nothing tells the test when the node has seen the close:
	// it polls the node's metrics.
	bob.close()
	cy.say("bob has left")
	ann.await(message("cy: bob has left"))
	ann.close()
	testenv.WaitFor(t, timeout, "the shared connection to close", func() bool {
		return testenv.Metrics(t, base)[`relay_connections{mode="proto"}`] == 1
	})
}

// startRelay runs a relay process on addr, with env added; without
// redisURL it uses the embedded broker.
func startRelay(t *testing.T, addr, id, redisURL string, env ...string) *testenv.Relay {
	t.Helper()
	env = append([]string{"RELAY_ADDR=" + addr, "RELAY_NODE_ID=" + id, "RELAY_REDIS_URL=" + redisURL, "RELAY_DRAIN_SECONDS=1"}, env...)
	return testenv.StartRelay(t, env...)
}

// startBrowser starts headless Chromium, stopped at the end of the test.
// CI runs as root, where Chromium needs --no-sandbox.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("no chromium on PATH; install it with: apt-get install -y chromium (make deps does)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.Headless,
		chromedp.WindowSize(900, 640))
	alloc, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // starts the browser, with no timeout
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// tab is one page of the browser.
type tab struct {
	t     *testing.T
	ctx   context.Context
	close context.CancelFunc // closes the tab
	url   string

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
}

// openTab opens url in a new tab of browser.
func openTab(t *testing.T, browser context.Context, url string) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	tb := &tab{t: t, ctx: ctx, close: cancel, url: url}
	if err := chromedp.Do(ctx); err != nil { // opens the tab
		t.Fatalf("open a tab: %v", err)
	}
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			tb.mu.Lock()
			tb.console = append(tb.console, m)
			tb.mu.Unlock()
		}
	}()
	tb.do(chromedp.Navigate(url))
	return tb
}

func (tb *tab) do(actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		tb.t.Fatalf("%s: %v\n%s", tb.url, err, tb.log())
	}
}

// await waits until each JavaScript condition holds, in turn; they are
// checked again at every change of the page.
func (tb *tab) await(conditions ...string) {
	tb.t.Helper()
	for _, cond := range conditions {
		ctx, cancel := context.WithTimeout(tb.ctx, timeout)
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(timeout)))
		cancel()
		if err != nil {
			tb.t.Fatalf("%s: waiting for %s: %v\nthe page shows:\n%s", tb.url, cond, err, tb.log())
		}
	}
}

// say types text into the page and sends it with Enter.
func (tb *tab) say(text string) {
	tb.t.Helper()
	tb.do(chromedp.SendKeys(chromedp.ID("text"), text+kb.Enter))
	tb.await(message(text)) // shown as sent once the node has acked it
}

// log is what the page shows: its status line and its log, one line each.
func (tb *tab) log() string {
	ctx, cancel := context.WithTimeout(tb.ctx, 5*time.Second)
	defer cancel()
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](
		`document.querySelector('header').innerText + '\n' + [...document.querySelectorAll('#log li')].map((li) => li.className + ': ' + li.textContent).join('\n')`))
	if err != nil {
		text = fmt.Sprintf("(cannot read the page: %v)", err)
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, m := range tb.console {
		text += "\nconsole " + string(m.Type) + ": " + m.Text
	}
	return text
}

// screenshot writes a PNG of the page to the artifact directory.
func (tb *tab) screenshot(name string) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, timeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		tb.t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(artifactDir(tb.t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.t.Fatal(err)
	}
	tb.t.Logf("screenshot of %s: %s", tb.url, path)
}

// checkConsole fails the test on an uncaught exception in the page, or on
// a resource the page's Content-Security-Policy refused.
func (tb *tab) checkConsole() {
	tb.t.Helper()
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, m := range tb.console {
		if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			tb.t.Errorf("%s: console: %s", tb.url, m.Text)
		}
	}
}

// artifactDir is where screenshots go: $RELAY_ARTIFACTS_DIR, else
// relay-browsertest in the temporary directory. It is kept after the test.
func artifactDir(t *testing.T) string {
	dir := os.Getenv("RELAY_ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "relay-browsertest")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The conditions of the demo page that tests await.

func js(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func connectedTo(node string) string {
	return `document.getElementById('state').textContent === 'connected' && document.getElementById('node').textContent === ` + js(node)
}

func joined(channel string) string {
	return notice("joined", "joined "+channel)
}

// notice: a notice of kind (connected, disconnected, gap, recovered, joined, error)
// holding text.
func notice(kind, text string) string {
	return `[...document.querySelectorAll('#log li.notice.` + kind + `')].some((li) => li.textContent.includes(` + js(text) + `))`
}

// message: a chat message (received, or sent and acked) ending in text.
func message(text string) string {
	return `[...document.querySelectorAll('#log li.msg')].some((li) => li.textContent.endsWith(` + js(text) + `))`
}
