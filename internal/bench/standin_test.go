package bench

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// standIn is an in-process server that implements the wire contract the
// generator loads (raw mode: GET /ws/{channel}; protocol mode: GET /ws with
// JSON commands), with coder/websocket, as a stand-in target for the
// generator's own tests. A mangle hook lets a test make it lose, duplicate
// or reorder messages per subscriber.
type standIn struct {
	t      testing.TB
	srv    *httptest.Server
	node   string
	mangle func(sub int, msg []byte) [][]byte // nil: deliver as is
	kick   func(sub int, msg []byte) bool     // true: close sub with 1013 instead
	reject func(id uint64) bool               // protocol: answer this publish with an error
	stall  chan struct{}                      // raw: when set, readers wait for it to close before reading
	ping   bool                               // ping each subscriber before each message
	pongs  atomic.Int64                       // pings answered

	mu     sync.Mutex
	nextID int
	hosts  map[string]int // accepted connections by client IP
	chans  map[string]map[*standInConn]struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type standInConn struct {
	id     int
	ws     *websocket.Conn
	out    chan outMsg
	proto  bool
	kicked bool // being closed: gets nothing more (guarded by standIn.mu)
}

type outMsg struct {
	typ websocket.MessageType
	b   []byte
}

func newStandIn(t testing.TB, node string) *standIn {
	t.Helper()
	s := &standIn{t: t, node: node, chans: make(map[string]map[*standInConn]struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws/{channel}", s.serveRaw)
	mux.HandleFunc("GET /ws", s.serveProtocol)
	s.srv = httptest.NewServer(mux)
	t.Cleanup(s.close)
	return s
}

func (s *standIn) url() string { return "ws" + strings.TrimPrefix(s.srv.URL, "http") }

func (s *standIn) close() {
	s.cancel()
	s.srv.CloseClientConnections()
	s.srv.Close()
	s.wg.Wait()
}

// accept upgrades the request. In raw mode the connection joins channel
// before the upgrade, as Relay's contract says: once a client has its 101
// it gets every message published after.
func (s *standIn) accept(w http.ResponseWriter, r *http.Request, proto bool, channel string) *standInConn {
	if tok := r.Header.Get("Authorization"); tok == "Bearer wrong" {
		http.Error(w, "forbidden", http.StatusForbidden)
		return nil
	}
	s.mu.Lock()
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if s.hosts == nil {
			s.hosts = make(map[string]int)
		}
		s.hosts[host]++
	}
	s.nextID++
	c := &standInConn{id: s.nextID, out: make(chan outMsg, 4096), proto: proto}
	s.mu.Unlock()
	if channel != "" {
		s.join(channel, c)
	}
	w.Header().Set("X-Relay-Node", s.node)
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		s.leave(c)
		return nil
	}
	s.mu.Lock()
	c.ws = ws
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case <-s.ctx.Done():
				ws.CloseNow()
				return
			case m, ok := <-c.out:
				if !ok {
					return
				}
				if s.ping {
					ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
					if ws.Ping(ctx) == nil {
						s.pongs.Add(1)
					}
					cancel()
				}
				if err := ws.Write(s.ctx, m.typ, m.b); err != nil {
					return
				}
			}
		}
	}()
	return c
}

func (s *standIn) join(ch string, c *standInConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.chans[ch] == nil {
		s.chans[ch] = make(map[*standInConn]struct{})
	}
	s.chans[ch][c] = struct{}{}
}

func (s *standIn) leave(c *standInConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.chans {
		delete(m, c)
	}
}

// publish hands msg to every subscriber of ch but from (unless echo).
func (s *standIn) publish(ch string, from *standInConn, echo bool, typ websocket.MessageType, msg []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.chans[ch] {
		if c == from && !echo {
			continue
		}
		if c.kicked {
			continue
		}
		if s.kick != nil && s.kick(c.id, msg) && c.ws != nil {
			c.kicked = true
			s.wg.Go(func() { c.ws.Close(websocket.StatusTryAgainLater, "slow consumer") })
			continue
		}
		msgs := [][]byte{msg}
		if s.mangle != nil {
			msgs = s.mangle(c.id, msg)
		}
		for _, m := range msgs {
			b, t := m, typ
			if c.proto {
				b, _ = json.Marshal(map[string]any{"channel": ch, "data": string(m)})
				t = websocket.MessageText
			}
			select {
			case c.out <- outMsg{t, b}:
			default:
				if c.ws != nil && !c.kicked {
					c.kicked = true
					s.wg.Go(func() { c.ws.Close(websocket.StatusTryAgainLater, "slow consumer") })
				}
			}
		}
	}
}

func (s *standIn) serveRaw(w http.ResponseWriter, r *http.Request) {
	ch, echo := r.PathValue("channel"), r.URL.Query().Get("echo") == "true"
	c := s.accept(w, r, false, ch)
	if c == nil {
		return
	}
	defer s.leave(c)
	if s.stall != nil {
		select {
		case <-s.stall:
		case <-s.ctx.Done():
			return
		}
	}
	for {
		typ, b, err := c.ws.Read(s.ctx)
		if err != nil {
			return
		}
		s.publish(ch, c, echo, typ, b)
	}
}

func (s *standIn) serveProtocol(w http.ResponseWriter, r *http.Request) {
	c := s.accept(w, r, true, "")
	if c == nil {
		return
	}
	defer s.leave(c)
	for {
		_, b, err := c.ws.Read(s.ctx)
		if err != nil {
			return
		}
		var cmd struct {
			ID      uint64          `json:"id"`
			Cmd     string          `json:"cmd"`
			Channel string          `json:"channel"`
			Data    json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(b, &cmd); err != nil {
			c.ws.Close(websocket.StatusUnsupportedData, "bad json")
			return
		}
		rejected := cmd.Cmd == "publish" && s.reject != nil && s.reject(cmd.ID)
		switch {
		case rejected:
		case cmd.Cmd == "subscribe":
			s.join(cmd.Channel, c)
		case cmd.Cmd == "publish":
			var data string
			if err := json.Unmarshal(cmd.Data, &data); err == nil {
				s.publish(cmd.Channel, c, false, websocket.MessageText, []byte(data))
			}
		}
		reply, _ := json.Marshal(map[string]any{"id": cmd.ID, "result": map[string]any{}})
		if rejected {
			reply, _ = json.Marshal(map[string]any{"id": cmd.ID, "error": map[string]string{"code": "unavailable", "message": "test"}})
		}
		select {
		case c.out <- outMsg{websocket.MessageText, reply}:
		case <-s.ctx.Done():
			return
		}
	}
}

// remoteHosts counts accepted connections by client IP.
func (s *standIn) remoteHosts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int)
	for k, v := range s.hosts {
		out[k] = v
	}
	return out
}
