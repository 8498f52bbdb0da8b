package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node/nodetest"
)

var update = flag.Bool("update", false, "rewrite the configuration table of README.md")

const readmeTableFormat = `| name | default | meaning |
|---|---|---|
{{range .}}| ` + "`{{usage_key .}}`" + ` | {{if usage_default .}}` + "`{{usage_default .}}`" + `{{end}} | {{usage_description .}} |
{{end}}`

// TestREADMEConfigTable keeps the README's configuration table the same as
// what relay --help prints; go test -run README -update rewrites it.
func TestREADMEConfigTable(t *testing.T) {
	var want bytes.Buffer
	if err := envconfig.Usagef(prefix, &config{}, &want, readmeTableFormat); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- config:begin -->\n", "<!-- config:end -->"
	i, j := bytes.Index(readme, []byte(begin)), bytes.Index(readme, []byte(end))
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %q … %q markers", begin, end)
	}
	got := string(readme[i+len(begin) : j])
	if got == want.String() {
		return
	}
	if *update {
		out := append(append(append([]byte{}, readme[:i+len(begin)]...), want.Bytes()...), readme[j:]...)
		if err := os.WriteFile("../../README.md", out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md configuration table is stale; run go test ./cmd/relay -run README -update\ngot:\n%s\nwant:\n%s", got, want.String())
}

// readmePython returns the ```python blocks of README.md, dedented, with
// the node's address in place of localhost:8080.
func readmePython(t *testing.T, addr string) []string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	var cur []string
	indent, in := "", false
	for _, line := range strings.Split(string(readme), "\n") {
		trimmed := strings.TrimLeft(line, " ")
		switch {
		case !in && trimmed == "```python":
			in, indent, cur = true, line[:len(line)-len(trimmed)], nil
		case in && trimmed == "```":
			in = false
			blocks = append(blocks, strings.ReplaceAll(strings.Join(cur, "\n"), "localhost:8080", addr))
		case in:
			cur = append(cur, strings.TrimPrefix(line, indent))
		}
	}
	return blocks
}

// pythonProc is a README snippet running under Python, its output read
// line by line.
type pythonProc struct {
	lines chan string
}

func startPython(t *testing.T, args ...string) *pythonProc {
	t.Helper()
	cmd := exec.Command(testenv.Python(t), append([]string{"-u"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &pythonProc{lines: make(chan string, 100)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		<-done
		cmd.Wait()
		if t.Failed() {
			t.Logf("python %v stderr:\n%s", args, stderr.String())
		}
	})
	return p
}

// next returns the snippet's next line of output.
func (p *pythonProc) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatal("the Python snippet exited")
		}
		return l
	case <-time.After(30 * time.Second):
		t.Fatal("the Python snippet printed nothing within 30 s")
	}
	return ""
}

// TestREADMEPython runs the README's Python snippets against a node, with
// a Go client on the other side of channel lobby.
func TestREADMEPython(t *testing.T) {
	n := testenv.StartRelay(t, "RELAY_ADDR=127.0.0.1:0")
	blocks := readmePython(t, n.Addr)
	if len(blocks) != 2 || !strings.Contains(blocks[0], "/ws/lobby") || !strings.Contains(blocks[1], `"cmd": "subscribe"`) {
		t.Fatalf("README.md python blocks = %q, want the raw mode one, then the protocol mode one", blocks)
	}
	dir := t.TempDir()
	write := func(name, code string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(code), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}

	t.Run("raw", func(t *testing.T) {
		other := nodetest.Dial(t, "ws://"+n.Addr+"/ws/lobby", nil)
		py := startPython(t, write("raw.py", blocks[0]))
		if got := nodetest.ReadText(t, other); got != "hello from Python" {
			t.Errorf("the other client read %q, want hello from Python", got)
		}
		nodetest.Write(t, other, "hello from Go")
		if got := py.next(t); got != "hello from Go" {
			t.Errorf("the snippet printed %q, want hello from Go", got)
		}
	})

	t.Run("protocol", func(t *testing.T) {
		other := nodetest.Dial(t, "ws://"+n.Addr+"/ws/lobby", nil)
		py := startPython(t, write("protocol.py", blocks[1]))
		// The publish follows the subscribe on one connection: once the
		// other client has it, the snippet's subscription is live.
		if got := nodetest.ReadText(t, other); got != `{"text":"hi"}` {
			t.Errorf("the other client read %q, want {\"text\":\"hi\"}", got)
		}
		nodetest.Write(t, other, "hello from Go")
		var got []string
		for len(got) < 3 {
			got = append(got, py.next(t))
		}
		// The reply to the publish and the push of the other client's
		// message may come in either order.
		slices.Sort(got)
		want := []string{`{"channel":"lobby","data":"hello from Go"}`, `{"id":1,"result":{}}`, `{"id":2,"result":{}}`}
		if !slices.Equal(got, want) {
			t.Errorf("the snippet printed %q, want %q", got, want)
		}
	})

	t.Run("interactive", func(t *testing.T) {
		other := nodetest.Dial(t, "ws://"+n.Addr+"/ws/lobby", nil)
		cmd := exec.Command(testenv.Python(t), "-m", "websockets", "ws://"+n.Addr+"/ws/lobby")
		cmd.Stdin = strings.NewReader("typed in python\n")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done := make(chan []byte, 1)
		go func() {
			out, _ := cmd.CombinedOutput()
			done <- out
		}()
		_, data, err := other.Read(ctx)
		if err != nil || string(data) != "typed in python" {
			t.Errorf("python3 -m websockets: the other client read %q, %v; want typed in python", data, err)
		}
		select {
		case <-done:
		case <-ctx.Done():
			cmd.Process.Kill()
			t.Errorf("python3 -m websockets still running after its input ended: %s", <-done)
		}
	})
}
