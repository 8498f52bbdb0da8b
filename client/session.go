package client

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"sync"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/protocol"
)

// readLimit bounds one frame from the node: a batch of pushes is at most
// 64 KiB, a single push of the largest message a little more.
const readLimit = 1 << 20

// session is one WebSocket connection of a client. Its reader goroutine
// matches replies to calls and hands pushes to the client's handlers; it
// ends when the connection does, then dead is closed.
type session struct {
	c         *Client
	ws        *websocket.Conn
	url, node string
	dead      chan struct{}
	err       error // why the connection ended; set before dead is closed

	mu      sync.Mutex
	ended   bool
	nextID  uint64
	pending map[uint64]chan reply
}

// connect opens a connection to u and starts its reader.
func (c *Client) connect(ctx context.Context, u string) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	h := c.opts.Header.Clone()
	if h == nil {
		h = make(http.Header)
	}
	token := c.opts.Token
	if c.opts.TokenFunc != nil {
		var err error
		if token, err = c.opts.TokenFunc(ctx); err != nil {
			return nil, &DialError{URL: redact(u), Err: err}
		}
	}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		de := &DialError{URL: redact(u), Err: err}
		if resp != nil {
			de.Status = resp.StatusCode
			var body protocol.Error
			if json.NewDecoder(resp.Body).Decode(&body) == nil && body.Code != "" {
				de.Code = string(body.Code)
				de.Err = &body
			}
		}
		return nil, de
	}
	ws.SetReadLimit(readLimit)
	s := &session{
		c:       c,
		ws:      ws,
		url:     redact(u),
		node:    resp.Header.Get("X-Relay-Node"),
		dead:    make(chan struct{}),
		pending: make(map[uint64]chan reply),
	}
	go s.read()
	return s, nil
}

// redact drops a token from a URL's query string, for events and errors.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || !u.Query().Has("token") {
		return raw
	}
	q := u.Query()
	q.Set("token", "REDACTED")
	u.RawQuery = q.Encode()
	return u.String()
}

// reply is the answer to one command: its result, or an error.
type reply struct {
	result json.RawMessage
	err    error
}

// call sends cmd and waits for its reply: nil on success, an *Error when
// the node refused it, errConnLost when the connection ended first. sent
// reports whether the command may have reached the node.
func (s *session) call(ctx context.Context, cmd protocol.Command) (sent bool, err error) {
	sent, _, err = s.callResult(ctx, cmd)
	return sent, err
}

// callResult is call that also returns the result of a success.
func (s *session) callResult(ctx context.Context, cmd protocol.Command) (sent bool, result json.RawMessage, err error) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return false, nil, errConnLost
	}
	s.nextID++
	id := s.nextID
	answer := make(chan reply, 1)
	s.pending[id] = answer
	s.mu.Unlock()

	cmd.ID = strconv.AppendUint(nil, id, 10)
	if err := s.ws.Write(ctx, websocket.MessageText, protocol.AppendCommand(nil, cmd)); err != nil {
		s.forget(id)
		if ctx.Err() != nil {
			return true, nil, ctx.Err()
		}
		return true, nil, errConnLost
	}
	select {
	case r := <-answer:
		return true, r.result, r.err
	case <-ctx.Done():
		s.forget(id)
		return true, nil, ctx.Err()
	}
}

func (s *session) forget(id uint64) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

// serverObject is any object the node sends: a reply or a push.
type serverObject struct {
	ID      json.RawMessage `json:"id"`
	Result  json.RawMessage `json:"result"`
	Error   *protocol.Error `json:"error"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	Binary  bool            `json:"binary"`
	Offset  uint64          `json:"offset"`
	Refresh json.RawMessage `json:"refresh"`
	Gap     *struct {
		Channel string `json:"channel"`
	} `json:"gap"`
}

// read is the session's reader goroutine.
func (s *session) read() {
	var err error
	for {
		var data []byte
		if _, data, err = s.ws.Read(context.Background()); err != nil {
			break
		}
		// A frame holds one or more objects, one per line (batching).
		for line := range bytes.SplitSeq(data, []byte{'\n'}) {
			if !s.dispatch(line) {
				s.ws.Close(websocket.StatusProtocolError, "unreadable frame")
			}
		}
	}
	s.mu.Lock()
	s.ended = true
	for id, answer := range s.pending {
		answer <- reply{err: errConnLost}
		delete(s.pending, id)
	}
	s.mu.Unlock()
	s.err = err
	close(s.dead)
}

// dispatch handles one object from the node; false means it is not one.
func (s *session) dispatch(line []byte) bool {
	var o serverObject
	if err := json.Unmarshal(line, &o); err != nil {
		return false
	}
	if o.Result != nil || o.Error != nil {
		id, err := strconv.ParseUint(string(o.ID), 10, 64)
		if err != nil {
			return true // an error reply to no command of ours
		}
		s.mu.Lock()
		answer, ok := s.pending[id]
		delete(s.pending, id)
		s.mu.Unlock()
		if ok {
			r := reply{result: o.Result}
			if o.Error != nil {
				r.err = o.Error
			}
			answer <- r
		}
		return true
	}
	if o.Refresh != nil {
		s.c.refresh(s)
		return true
	}
	var gap *Event
	if o.Gap != nil {
		o.Channel = o.Gap.Channel
		gap = &Event{Type: EventGap, URL: s.url, Node: s.node, Channel: o.Channel}
	}
	if o.Channel == "" {
		return true // a later version's object: ignored
	}
	c := s.c
	c.mu.Lock()
	sub := c.subs[o.Channel]
	if sub != nil {
		switch {
		case gap != nil:
			// The epoch may have changed, and pushes do not say to which:
			// the next connection subscribes without since.
			sub.pos = position{}
		case o.Offset != 0 && sub.pos.epoch != "":
			sub.pos.offset = o.Offset
		}
	}
	c.mu.Unlock()
	if sub == nil {
		return true // a push of a channel just unsubscribed
	}
	select {
	case c.deliveries <- delivery{sub, Message{Channel: o.Channel, Data: o.Data, Binary: o.Binary, Offset: o.Offset}, gap}:
	case <-c.ctx.Done():
	}
	return true
}
