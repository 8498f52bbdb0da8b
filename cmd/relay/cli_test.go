package main

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
)

// cliProc is a client subcommand running in the background, its output
// read line by line.
type cliProc struct {
	cmd            *exec.Cmd
	stdin          io.WriteCloser
	stdout, stderr chan string
}

func startCLI(t *testing.T, args ...string) *cliProc {
	t.Helper()
	cmd := exec.Command(testenv.RelayBinary(t), args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	p := &cliProc{cmd: cmd, stdout: make(chan string, 1000), stderr: make(chan string, 1000)}
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, _ := cmd.StdoutPipe()
	errOut, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := func(r io.Reader, ch chan string) {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
		close(ch)
	}
	go lines(out, p.stdout)
	go lines(errOut, p.stderr)
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return p
}

// await reads ch until a line containing want.
func await(t *testing.T, ch chan string, want string) {
	t.Helper()
	timeout := time.NewTimer(nodetest.Timeout)
	defer timeout.Stop()
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				t.Fatalf("output ended before a line with %q", want)
			}
			if strings.Contains(l, want) {
				return
			}
		case <-timeout.C:
			t.Fatalf("no line with %q", want)
		}
	}
}

// runCLI runs a client subcommand to its end and returns its exit code
// and standard error.
func runCLI(t *testing.T, stdin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(testenv.RelayBinary(t), args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stderr.String()
}

// TestCLIPubSub: relay sub on one node prints what relay pub publishes on
// another, from an argument and from standard input, each acknowledged.
func TestCLIPubSub(t *testing.T) {
	r := testenv.StartRedis(t)
	a := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL="+r.URL(), "RELAY_NODE_ID=a")
	b := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL="+r.URL(), "RELAY_NODE_ID=b")

	sub := startCLI(t, "sub", "--url", "ws://"+b.Addr, "--json", "news", "sports")
	await(t, sub.stderr, "subscribed to news, sports")
	if code, stderr := runCLI(t, "", "pub", "--url", "ws://"+a.Addr, "news", "hello"); code != 0 {
		t.Fatalf("relay pub: exit %d: %s", code, stderr)
	}
	await(t, sub.stdout, `{"channel":"news","data":"hello"}`)
	code, stderr := runCLI(t, "one\n{\"n\":2}\n", "pub", "--url", "ws://"+a.Addr, "sports")
	if code != 0 || !strings.Contains(stderr, "2 published to sports") {
		t.Fatalf("relay pub from stdin: exit %d: %s", code, stderr)
	}
	await(t, sub.stdout, `{"channel":"sports","data":"one"}`)
	await(t, sub.stdout, `{"channel":"sports","data":{"n":2}}`)
}

// TestCLIChat: two relay chat sessions on two nodes, driven through pipes,
// see each other's lines and not their own.
func TestCLIChat(t *testing.T) {
	r := testenv.StartRedis(t)
	a := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL="+r.URL(), "RELAY_NODE_ID=a")
	b := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_REDIS_URL="+r.URL(), "RELAY_NODE_ID=b")
	alice := startCLI(t, "chat", "--url", "ws://"+a.Addr, "--name", "alice", "room")
	bob := startCLI(t, "chat", "--url", "ws://"+b.Addr, "--name", "bob", "room")
	await(t, alice.stderr, "joined room")
	await(t, bob.stderr, "joined room")
	fmt.Fprintln(alice.stdin, "hi bob")
	await(t, bob.stdout, "alice: hi bob")
	fmt.Fprintln(bob.stdin, "hi alice")
	// alice's next line is bob's: her own was not sent back to her.
	if l := <-alice.stdout; l != "bob: hi alice" {
		t.Fatalf("alice read %q, want bob's line", l)
	}
	alice.stdin.Close()
	if err := alice.cmd.Wait(); err != nil {
		t.Fatalf("relay chat after end of input: %v", err)
	}
}

// TestCLIExitCodes: each way of failing has its documented exit code and
// one line on standard error.
func TestCLIExitCodes(t *testing.T) {
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0", "RELAY_AUTH_TOKENS=right")
	url := "ws://" + n.Addr
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"ok", []string{"pub", "--url", url, "--token", "right", "x", "hi"}, 0},
		{"no channel", []string{"pub", "--url", url}, 2},
		{"unknown flag", []string{"sub", "--nope", "x"}, 2},
		{"unreachable", []string{"pub", "--url", fmt.Sprintf("ws://127.0.0.1:%d", testenv.FreePort(t)), "x", "hi"}, 3},
		{"bad token", []string{"sub", "--url", url, "--token", "wrong", "x"}, 4},
		// Without a token the protocol-mode upgrade succeeds (a token may
		// still come in a connect command); the subscribe is forbidden.
		{"no token", []string{"chat", "--url", url, "x"}, 5},
		{"bad channel", []string{"pub", "--url", url, "--token", "right", "bad channel", "hi"}, 2},
		{"refused", []string{"sub", "--url", url + "/nope", "--token", "right", "x"}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stderr := runCLI(t, "", tt.args...)
			if code != tt.want {
				t.Errorf("relay %s: exit %d, want %d; stderr: %s", strings.Join(tt.args, " "), code, tt.want, stderr)
			}
			if tt.want != 0 && tt.name != "no channel" && tt.name != "unknown flag" {
				// Besides notices ("relay: connected …"), one line: the error.
				errors := 0
				for l := range strings.SplitSeq(strings.TrimSpace(stderr), "\n") {
					if !strings.HasPrefix(l, "relay: ") {
						errors++
					}
				}
				if errors != 1 {
					t.Errorf("stderr has %d error lines, want one: %s", errors, stderr)
				}
			}
		})
	}
}
