package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

func (n *Node) routes() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws/{channel...}", n.serveRaw)
	mux.HandleFunc("GET /echo", n.serveEcho)
	mux.HandleFunc("GET /{$}", n.serveRoot)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, protocol.CodeNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	n.mux = mux
}

// writeError answers a request with status and a one-line JSON error body.
func writeError(w http.ResponseWriter, status int, code protocol.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(protocol.Error{Code: code, Message: msg})
}

// isUpgrade reports whether r asks for a WebSocket.
func isUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") && headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// admit runs the checks every upgrade passes before it is accepted; on
// failure it has answered the request.
func (n *Node) admit(w http.ResponseWriter, r *http.Request) bool {
	if !isUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		writeError(w, http.StatusUpgradeRequired, protocol.CodeUpgradeRequired,
			"this endpoint speaks WebSocket: connect with a WebSocket client, e.g. websocat ws://HOST"+r.URL.Path)
		return false
	}
	if err := n.auth.check(r); err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="relay"`)
		writeError(w, http.StatusUnauthorized, protocol.CodeUnauthorized, err.Error())
		return false
	}
	return true
}

// serveRaw is raw channel mode: GET /ws/{channel}. Every message the client
// sends is published to the channel with its opcode; every message of the
// channel reaches the client as one frame, its own only with ?echo=true.
func (n *Node) serveRaw(w http.ResponseWriter, r *http.Request) {
	if !n.admit(w, r) {
		return
	}
	channel := r.PathValue("channel")
	if err := protocol.ValidChannel(channel); err != nil {
		writeError(w, http.StatusBadRequest, protocol.CodeInvalidChannel, err.Error())
		return
	}
	echo, err := queryBool(r, "echo")
	if err != nil {
		writeError(w, http.StatusBadRequest, protocol.CodeBadRequest, err.Error())
		return
	}
	c := n.newConn(r, modeRaw)
	c.channel, c.echo = channel, echo
	// Subscribe before the upgrade: a client that is told 101 receives
	// everything published from then on.
	if err := n.hub.subscribe(r.Context(), channel, c); err != nil {
		n.log.Warn("subscribe failed", "channel", channel, "err", err)
		writeError(w, http.StatusServiceUnavailable, protocol.CodeUnavailable, "the broker is unavailable, try again later")
		return
	}
	if !n.accept(w, r, c, n.readRaw) {
		n.hub.unsubscribe(channel, c)
	}
}

// readRaw publishes every message the client sends.
func (n *Node) readRaw(c *conn) error {
	for {
		typ, data, err := c.ws.Read(context.Background())
		if err != nil {
			return err
		}
		m := pubsub.Message{
			Origin:  n.id,
			Conn:    c.id,
			Binary:  typ == websocket.MessageBinary,
			Time:    time.Now().UnixNano(),
			Payload: data,
		}
		if err := n.broker.Publish(n.ctx, c.channel, m); err != nil {
			n.log.Warn("publish failed", "conn", c.id, "channel", c.channel, "err", err)
			return errBrokerDown
		}
	}
}

// serveEcho is the echo endpoint: each message comes back prefixed with
// "Server received: ", as the original tutorial's server does.
func (n *Node) serveEcho(w http.ResponseWriter, r *http.Request) {
	if !n.admit(w, r) {
		return
	}
	n.accept(w, r, n.newConn(r, modeEcho), n.readEcho)
}

const echoPrefix = "Server received: "

func (n *Node) readEcho(c *conn) error {
	for {
		typ, data, err := c.ws.Read(context.Background())
		if err != nil {
			return err
		}
		c.enqueue(&frame{typ: typ, data: append([]byte(echoPrefix), data...)})
	}
}

// serveRoot answers GET /: a WebSocket upgrade there is the echo endpoint
// (the tutorial's client dials ws://host:port/); a plain GET gets a short
// page that says where to connect.
func (n *Node) serveRoot(w http.ResponseWriter, r *http.Request) {
	if isUpgrade(r) {
		n.serveEcho(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Relay node %s\n\nraw channel mode: ws://%s/ws/{channel}\necho:             ws://%s/echo\n", n.id, r.Host, r.Host)
}

// queryBool parses the query parameter key: absent is false.
func queryBool(r *http.Request, key string) (bool, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("query parameter %s=%q: want true or false", key, v)
	}
	return b, nil
}
