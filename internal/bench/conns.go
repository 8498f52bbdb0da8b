package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/protocol"
)

// bg is the context of every Reader and Write on an established
// connection. coder/websocket arms a context.AfterFunc (an allocation) per
// frame for a context that can be cancelled, and none for one that cannot;
// the generator instead ends connections by closing them.
var bg = context.Background()

// readLimit bounds one incoming message (a protocol-mode batch can hold many
// pushes).
const readLimit = 64 << 20

// tally counts events by a short label (error class, close code). Safe for
// concurrent use.
type tally struct {
	mu sync.Mutex
	m  map[string]int64
}

func (t *tally) add(label string, n int64) {
	t.mu.Lock()
	if t.m == nil {
		t.m = make(map[string]int64)
	}
	t.m[label] += n
	t.mu.Unlock()
}

func (t *tally) snapshot() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int64, len(t.m))
	for k, v := range t.m {
		out[k] = v
	}
	return out
}

func (t *tally) total() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n int64
	for _, v := range t.m {
		n += v
	}
	return n
}

// sortedKeys returns m's keys in order, for stable reports.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// errorClass gives a short, stable label for a dial or read error, without
// addresses or ports, so that errors of one kind add up.
func errorClass(err error, resp *http.Response) string {
	if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
		return fmt.Sprintf("http %d", resp.StatusCode)
	}
	var ne net.Error
	switch {
	case errors.Is(err, ErrRemote):
		return "refused: not loopback"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no free source port (EADDRNOTAVAIL)"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too many open files"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

// closeLabel describes how a connection the generator did not close ended.
func closeLabel(err error) string {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		if ce.Reason != "" {
			return fmt.Sprintf("%d %s", int(ce.Code), ce.Reason)
		}
		return fmt.Sprintf("%d", int(ce.Code))
	}
	return "abnormal: " + errorClass(err, nil)
}

// wsURL returns the URL of the raw channel endpoint or of the protocol
// endpoint under base.
func (cfg *Config) wsURL(base *url.URL, channel string) string {
	u := *base
	q := url.Values{}
	if cfg.Mode == Raw {
		u.Path = base.Path + "/ws/" + channel
	} else {
		u.Path = base.Path + "/ws"
		if !cfg.Batch {
			q.Set("batch", "false")
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// dial opens one WebSocket to u and returns it with the node name the
// server gave in X-Relay-Node.
func (r *runner) dial(ctx context.Context, base *url.URL, channel string) (*websocket.Conn, string, error) {
	opts := &websocket.DialOptions{HTTPClient: r.dialer.client(base)}
	if r.cfg.Token != "" {
		opts.HTTPHeader = http.Header{"Authorization": {"Bearer " + r.cfg.Token}}
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, r.cfg.wsURL(base, channel), opts)
	if err != nil {
		r.dialErrors.add(errorClass(err, resp), 1)
		return nil, "", err
	}
	c.SetReadLimit(readLimit)
	node := resp.Header.Get("X-Relay-Node")
	if node == "" {
		node = base.Host
	}
	return c, node, nil
}

// subscribe sends a protocol-mode subscribe and waits for its reply,
// handing any push that comes first to rcv.
func (r *runner) subscribe(ctx context.Context, c *websocket.Conn, channel string, rcv *receiver) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	defer cancel()
	cmd := appendCommand(nil, 1, protocol.CmdSubscribe, channel, nil)
	if err := c.Write(ctx, websocket.MessageText, cmd); err != nil {
		r.dialErrors.add("subscribe: "+errorClass(err, nil), 1)
		return err
	}
	var buf []byte
	for {
		_, rd, err := c.Reader(ctx)
		if err != nil {
			r.dialErrors.add("subscribe: "+errorClass(err, nil), 1)
			return err
		}
		if buf, err = readAll(rd, buf[:0]); err != nil {
			r.dialErrors.add("subscribe: "+errorClass(err, nil), 1)
			return err
		}
		now := r.clk.now()
		for line, rest := nextLine(buf); line != nil; line, rest = nextLine(rest) {
			if p := pushPayload(line); p != nil {
				rcv.message(p, now)
				continue
			}
			if rep := parseReply(line); rep.ok && rep.id == 1 {
				if rep.code != "" {
					r.dialErrors.add("subscribe: "+rep.code, 1)
					return fmt.Errorf("subscribe %q: %s", channel, rep.code)
				}
				return nil
			}
		}
	}
}

// readAll reads a message into buf, growing it as needed, and returns it.
func readAll(rd io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := rd.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// conn is one established connection the runner owns and closes.
type conn struct {
	ws      *websocket.Conn // nil for a lean subscriber
	lean    *leanSub
	channel int
	node    string
	rcv     *receiver     // nil for a publisher's connection
	side    *atomic.Int64 // counts messages a publisher's raw connection gets
	done    chan struct{}
}

// closeNow drops the connection without a close handshake.
func (c *conn) closeNow() {
	if c.lean != nil {
		c.lean.closeNow()
		return
	}
	c.ws.CloseNow()
}

// closeGraceful closes the connection with the close handshake (1000); a
// lean subscriber's ends in its loop.
func (c *conn) closeGraceful() error {
	if c.lean != nil {
		c.lean.closeGraceful()
		return nil
	}
	return c.ws.Close(websocket.StatusNormalClosure, "bench done")
}

// readLoop reads messages until the connection ends, accounting payloads
// to c.rcv. It owns c.rcv and flushes its latency batch on exit.
func (r *runner) readLoop(c *conn, ack func(line []byte, now int64)) {
	defer close(c.done)
	defer func() {
		if c.rcv != nil {
			c.rcv.lat.flush()
		}
	}()
	buf := make([]byte, 0, r.cfg.Size+256)
	raw := r.cfg.Mode == Raw
	for {
		_, rd, err := c.ws.Reader(bg)
		if err == nil {
			buf, err = readAll(rd, buf[:0])
		}
		if err != nil {
			if !r.closing.Load() {
				r.closes.add(closeLabel(err), 1)
			}
			return
		}
		now := r.clk.now()
		if raw {
			if c.rcv != nil {
				c.rcv.message(buf, now)
			} else if c.side != nil {
				c.side.Add(1)
			}
			continue
		}
		for line, rest := nextLine(buf); line != nil; line, rest = nextLine(rest) {
			if p := pushPayload(line); p != nil {
				if c.rcv != nil {
					c.rcv.message(p, now)
				}
				continue
			}
			if ack != nil {
				ack(line, now)
			} else if c.rcv != nil && !bytes.Contains(line, idKey) {
				c.rcv.c.received.Add(1)
				c.rcv.c.foreign.Add(1)
			}
		}
	}
}

// idKey marks a protocol line as a reply rather than a push.
var idKey = []byte(`"id"`)
