package node

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// newRawFrame is the raw-mode form of m: its payload with its opcode. A
// payload from outside Relay (a plain PUBLISH) is text when it is valid
// UTF-8, and binary otherwise, since a text frame must be UTF-8.
func newRawFrame(m pubsub.Message) *wsout.Frame {
	typ := websocket.MessageText
	if m.Binary || (m.Origin == "" && !utf8.Valid(m.Payload)) {
		typ = websocket.MessageBinary
	}
	return wsout.NewFrame(typ, m.Payload)
}

// Why the node closes a connection (the writer has its own reasons: slow
// consumer, write timeout, pong timeout). Reasons are short: a close frame
// carries at most 123 bytes of reason.
var (
	errBrokerDown  = &wsout.CloseError{Code: protocol.CloseTryAgainLater, Reason: "broker unavailable, try again later", Flush: true}
	errDraining    = &wsout.CloseError{Code: protocol.CloseServiceRestart, Reason: "service restart: reconnect to another node", Flush: true}
	errInvalidUTF8 = &wsout.CloseError{Code: protocol.CloseInvalidData, Reason: "invalid UTF-8 in a text message", Flush: true}
)

// mode is what a connection speaks.
type mode string

const (
	modeRaw  mode = "raw"
	modeEcho mode = "echo"
)

// modeProto is protocol mode (docs/PROTOCOL.md; proto.go).
const modeProto mode = "proto"

// conn is one client connection.
//
// Goroutines: one reader (runConn) for the connection's life, which reads
// and runs what the client sends. Everything written to the socket (data,
// pings, pongs, the close) goes through out, whose turn-taking makes one
// writer at a time (node/internal/wsout): a goroutine that delivers a
// message writes it when it is due, else the connection's flusher does in
// a sweep, and a goroutine of the connection's own runs only while its
// socket is too slow for a non-blocking write, or to close it. So an idle
// connection costs one goroutine.
type conn struct {
	// What deliver reads first, next to what enqueueing touches.
	id   uint64
	mode mode
	echo bool // deliver the connection's own publishes back to it
	// pubFailed is set when a message of the connection was not
	// published (PublishFailed): it publishes no more.
	pubFailed atomic.Bool
	out       wsout.Conn

	n       *Node
	channel string // raw mode
	remote  string
	opened  time.Time
	ws      *websocket.Conn // for reading; out closes it
	stats   *modeMetrics    // shared by the connections of a mode
	release func()          // gives back the connection slot

	// proto is protocol mode's state; nil in other modes.
	proto *protoConn
	// sess is who the connection is and when its token expires.
	sess *session
}

// init prepares c's outbound half, before the upgrade: frames queued for it
// wait until it opens.
func (c *conn) init(n *Node, f *wsout.Flusher) {
	c.stats = n.metrics.byMode[c.mode]
	c.out.Init(&n.outCfg, f, c)
}

// Sent, Dropped and SlowConsumer count what c's writer does (wsout.Meter).
func (c *conn) Sent(messages, bytes int) {
	c.stats.sent.Add(float64(messages))
	c.stats.sentBytes.Add(float64(bytes))
}

func (c *conn) Dropped(messages int) { c.n.metrics.dropped.Add(float64(messages)) }

func (c *conn) SlowConsumer() { c.n.metrics.slowConsumers.Inc() }

// PublishFailed closes c, a raw-mode connection, when one of its messages
// published without waiting for the broker's answer was refused or left
// unanswered (pubsub.Failer); the messages it sends meanwhile are not
// published.
func (c *conn) PublishFailed(channel string, err error) {
	c.pubFailed.Store(true)
	c.n.metrics.publishErrors.Inc()
	c.n.log.Warn("publish failed", "conn", c.id, "channel", channel, "err", err)
	c.close(errBrokerDown)
}

// close asks c's writer to close it for cause (see wsout.Conn.Close).
func (c *conn) close(cause error) { c.out.Close(cause) }

// read reads the client's next message and counts it.
func (c *conn) read() (websocket.MessageType, []byte, error) {
	// Background: a context that can end would cost an allocation per read.
	typ, r, err := c.ws.Reader(context.Background())
	if err != nil {
		return typ, nil, err
	}
	data, err := readMessage(r)
	if err != nil {
		return typ, nil, err
	}
	c.stats.received.Inc()
	c.stats.receivedBytes.Add(float64(len(data)))
	// RFC 6455 8.1: a text message that is not UTF-8 fails the connection.
	// Forwarded, it would make every strict client of the channel (browsers,
	// Python's websockets) drop its own connection.
	if typ == websocket.MessageText && !utf8.Valid(data) {
		return typ, nil, errInvalidUTF8
	}
	return typ, data, nil
}

// readScratch holds the buffers readMessage reads into.
var readScratch = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// readMessage reads the rest of a message into a slice of its own size. It
// is io.ReadAll (what websocket.Conn.Read uses) without ReadAll's 512-byte
// first buffer: chat messages are short, and on chat-shaped traffic those
// buffers were a fifth of the bytes a node allocated.
func readMessage(r io.Reader) ([]byte, error) {
	sp := readScratch.Get().(*[]byte)
	defer readScratch.Put(sp)
	buf := *sp
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			return bytes.Clone(buf[:n]), nil
		}
		if err != nil {
			return nil, err
		}
	}
	rest, err := io.ReadAll(r) // longer than the scratch buffer
	if err != nil {
		return nil, err
	}
	return append(bytes.Clone(buf), rest...), nil
}

// closeCode is the close code of a connection that ended with err: the
// server's own cause, or what the peer sent.
func closeCode(cause, readErr error) (websocket.StatusCode, string) {
	var ce *wsout.CloseError
	if errors.As(cause, &ce) {
		return ce.Code, "server"
	}
	if errors.Is(readErr, websocket.ErrMessageTooBig) {
		return protocol.CloseMessageTooBig, "server"
	}
	if code := websocket.CloseStatus(readErr); code != -1 {
		return code, "client"
	}
	return websocket.StatusAbnormalClosure, "client"
}
