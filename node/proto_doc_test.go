package node_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub"
)

const protocolDoc = "../docs/PROTOCOL.md"

// docSession is one ```session block of PROTOCOL.md.
type docSession struct {
	line  int    // of the opening fence
	token string // the node requires this token; "" for none
	steps []docStep
}

// authFlag is websocat's flag that sends a token.
var authFlag = regexp.MustCompile(`-H '(?:Authorization: Bearer )([^']+)'`)

type docStep struct {
	line     int
	terminal string
	kind     byte   // '$' connect, '>' send, '<' expect, '!' expect close
	text     string // URL for '$'
	strip    bool   // '$': --linemode-strip-newlines
	binary   bool   // '$': --binary
	token    string // '$': -H 'Authorization: Bearer TOKEN'
}

// parseSessions reads the session blocks of the markdown file at path.
func parseSessions(t *testing.T, path string) []docSession {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var sessions []docSession
	var cur *docSession
	terminal := "1"
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.TrimSpace(line) == "```session":
			sessions = append(sessions, docSession{line: n})
			cur, terminal = &sessions[len(sessions)-1], "1"
		case cur == nil:
		case strings.TrimSpace(line) == "```":
			cur = nil
		case strings.HasPrefix(line, "# terminal "):
			terminal = strings.TrimPrefix(line, "# terminal ")
		case strings.HasPrefix(line, "$ websocat "):
			args := strings.TrimPrefix(line, "$ websocat ")
			step := docStep{line: n, terminal: terminal, kind: '$'}
			if m := authFlag.FindStringSubmatch(args); m != nil {
				step.token = m[1]
				args = strings.Replace(args, m[0], "", 1)
			}
			for _, a := range strings.Fields(args) {
				switch {
				case a == "--linemode-strip-newlines":
					step.strip = true
				case a == "--binary":
					step.binary = true
				case strings.HasPrefix(a, "ws://"):
					step.text = strings.Trim(a, "'")
				default:
					t.Fatalf("%s:%d: websocat flag %q unknown to the test", path, n, a)
				}
			}
			if step.token != "" {
				cur.token = step.token
			}
			cur.steps = append(cur.steps, step)
		case strings.HasPrefix(line, "> "), strings.HasPrefix(line, "< "), strings.HasPrefix(line, "! "):
			cur.steps = append(cur.steps, docStep{line: n, terminal: terminal, kind: line[0], text: line[2:]})
		default:
			t.Fatalf("%s:%d: line %q in a session block is none of '# terminal N', '$ websocat', '> ', '< ', '! '", path, n, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: session block not closed", path, cur.line)
	}
	return sessions
}

// docTerminal is one websocat of a session.
type docTerminal struct {
	ws      *websocket.Conn
	strip   bool
	binary  bool
	proto   bool
	pending []string
	closed  bool // by the node, as the session shows
}

// TestProtocolDoc plays every session of docs/PROTOCOL.md against a node
// with the documented defaults, comparing what the node sends with the
// document, whitespace aside.
func TestProtocolDoc(t *testing.T) {
	sessions := parseSessions(t, protocolDoc)
	if len(sessions) < 3 {
		t.Fatalf("%s has %d session blocks; the parser is likely wrong", protocolDoc, len(sessions))
	}
	for _, s := range sessions {
		t.Run(fmt.Sprintf("line %d", s.line), func(t *testing.T) {
			cfg := nodetest.Config()
			// The defaults of cmd/relay (docs/PROTOCOL.md, Limits).
			cfg.ProtoMaxChannels = 128
			cfg.ProtoCommandRate, cfg.ProtoCommandBurst = 100, 200 // a session sends far fewer than 200
			cfg.ProtoMaxErrors = 10
			cfg.ProtoErrorWindow = time.Hour // 10 s documented; no timing in tests
			if s.token != "" {
				cfg.AuthTokens = node.Secrets{s.token}
			}
			srv := nodetest.Start(t, cfg, pubsub.NewMemory())
			terms := map[string]*docTerminal{}
			for _, st := range s.steps {
				where := fmt.Sprintf("%s:%d (terminal %s)", protocolDoc, st.line, st.terminal)
				term := terms[st.terminal]
				if st.kind != '$' && term == nil {
					t.Fatalf("%s: terminal not connected", where)
				}
				switch st.kind {
				case '$':
					url, ok := strings.CutPrefix(st.text, "ws://localhost:8080")
					if !ok {
						t.Fatalf("%s: URL %q, want ws://localhost:8080/...", where, st.text)
					}
					path, _, _ := strings.Cut(url, "?")
					var h http.Header
					if st.token != "" {
						h = http.Header{"Authorization": {"Bearer " + st.token}}
					}
					terms[st.terminal] = &docTerminal{
						ws:     nodetest.Dial(t, srv.WS+url, h),
						strip:  st.strip,
						binary: st.binary,
						proto:  path == "/ws",
					}
				case '>':
					msg := st.text
					if !term.strip {
						msg += "\n" // websocat sends the line with its newline
					}
					typ := websocket.MessageText
					if term.binary {
						typ = websocket.MessageBinary
					}
					ctx, cancel := context.WithTimeout(context.Background(), nodetest.Timeout)
					err := term.ws.Write(ctx, typ, []byte(msg))
					cancel()
					if err != nil {
						t.Fatalf("%s: write: %v", where, err)
					}
				case '<':
					got := term.next(t)
					if normalize(got) != normalize(st.text) {
						t.Fatalf("%s:\n got %s\nwant %s", where, got, st.text)
					}
				case '!':
					f := strings.SplitN(st.text, " ", 3)
					if len(f) != 3 || f[0] != "close" {
						t.Fatalf("%s: want '! close CODE REASON'", where)
					}
					want, err := strconv.Atoi(f[1])
					if err != nil {
						t.Fatalf("%s: close code %q", where, f[1])
					}
					if len(term.pending) > 0 {
						t.Fatalf("%s: unread %q before the close", where, term.pending)
					}
					code, reason := nodetest.ReadClose(t, term.ws)
					if int(code) != want || reason != f[2] {
						t.Fatalf("%s: close %d %q, want %d %q", where, code, reason, want, f[2])
					}
					term.closed = true
				}
			}
			// Nothing the document does not show: each terminal's next
			// message is the reply to a ping (raw terminals get nothing).
			for name, term := range terms {
				if !term.proto || term.closed {
					continue
				}
				nodetest.Write(t, term.ws, `{"id":"end","cmd":"ping"}`)
				if got := term.next(t); got != `{"id":"end","result":{}}` {
					t.Errorf("terminal %s: after the session the node sent %s, not shown in the document", name, got)
				}
			}
		})
	}
}

// next returns the next line the terminal prints: in protocol mode one
// object of a frame, split on "\n"; in raw mode a message.
func (d *docTerminal) next(t *testing.T) string {
	t.Helper()
	if len(d.pending) == 0 {
		_, msg := nodetest.Read(t, d.ws)
		if !d.proto {
			return msg
		}
		d.pending = strings.Split(msg, "\n")
	}
	s := d.pending[0]
	d.pending = d.pending[1:]
	return s
}

// normalize removes whitespace outside JSON strings; anything else is kept.
func normalize(s string) string {
	var b bytes.Buffer
	if json.Compact(&b, []byte(s)) == nil {
		return b.String()
	}
	return strings.TrimSpace(s)
}
