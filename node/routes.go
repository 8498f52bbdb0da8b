package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/node/web"
	"github.com/relay-pubsub/relay/pubsub"
)

func (n *Node) routes() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws/{channel...}", n.serveRaw)
	mux.HandleFunc("GET /ws", n.serveProto)
	mux.HandleFunc("GET /echo", n.serveEcho)
	mux.HandleFunc("GET /{$}", n.serveRoot)
	mux.HandleFunc("GET /relay.js", web.ServeScript)
	mux.HandleFunc("GET /healthz", n.serveHealth)
	mux.HandleFunc("GET /readyz", n.serveReady)
	mux.HandleFunc("GET /readyz/details", n.serveReadyDetails)
	mux.Handle("/api/", newAPI(n)) // POST /api/publish[/batch] and the rest of docs/API.md
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelWarn)}))
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
func (n *Node) admit(w http.ResponseWriter, r *http.Request, m mode, channel string) *session {
	if !isUpgrade(r) {
		w.Header().Set("Upgrade", "websocket")
		writeError(w, http.StatusUpgradeRequired, protocol.CodeUpgradeRequired,
			"this endpoint speaks WebSocket: connect with a WebSocket client, e.g. websocat ws://HOST"+r.URL.Path)
		return nil
	}
	return n.admitToken(w, r, m, channel)
}

// refuse answers an upgrade request with an error, counting it.
func (n *Node) refuse(w http.ResponseWriter, status int, code protocol.Code, msg string) {
	n.metrics.refused.WithLabelValues(strconv.Itoa(status)).Inc()
	writeError(w, status, code, msg)
}

// connect admits the request (to channel, in raw mode) and takes a
// connection slot; on failure it has answered the request.
func (n *Node) connect(w http.ResponseWriter, r *http.Request, m mode, channel string) *conn {
	sess := n.admit(w, r, m, channel)
	if sess == nil {
		return nil
	}
	release, why := n.reserve(r.RemoteAddr)
	if release == nil {
		w.Header().Set("Retry-After", "1")
		n.refuse(w, http.StatusServiceUnavailable, protocol.CodeUnavailable, why)
		return nil
	}
	c := n.newConn(r, m)
	c.release, c.sess, c.channel = release, sess, channel
	if !n.admitProxy(w, r, c) {
		release()
		return nil
	}
	return c
}

// serveHealth answers GET /healthz: the process is alive and serving.
func (n *Node) serveHealth(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"status":"ok"}`+"\n")
}

// serveReady answers GET /readyz: 200 when the node takes new connections,
// 503 naming the failing components when not. The answer may travel
// through a public load balancer, so it names components only: which
// address or error is behind one is in the log, the metrics and
// serveReadyDetails.
func (n *Node) serveReady(w http.ResponseWriter, r *http.Request) {
	why := n.notReady()
	_, stale := n.verifier.Status()
	body := readiness{Ready: len(why) == 0, Node: n.id, Failing: failing(why)}
	if len(stale) > 0 {
		body.Degraded = []string{"jwks"}
	}
	writeReady(w, body)
}

// serveReadyDetails answers GET /readyz/details: /readyz's answer plus
// each reason in full (addresses, error text). For operators on the
// node's own port; a load balancer in front must not route it
// (deploy/nginx.conf answers it 404, as it does /metrics).
func (n *Node) serveReadyDetails(w http.ResponseWriter, r *http.Request) {
	why := n.notReady()
	_, stale := n.verifier.Status()
	body := readiness{Ready: len(why) == 0, Node: n.id, Failing: failing(why), Reasons: why, Warnings: stale}
	if len(stale) > 0 {
		body.Degraded = []string{"jwks"}
	}
	writeReady(w, body)
}

// readiness is the body of /readyz and /readyz/details.
type readiness struct {
	Ready   bool     `json:"ready"`
	Node    string   `json:"node"`
	Failing []string `json:"failing,omitempty"`
	// Degraded names what is degraded but still serving: jwks, a key set
	// whose last read failed, its last good keys in use.
	Degraded []string `json:"degraded,omitempty"`
	Reasons  []string `json:"reasons,omitempty"`  // details only
	Warnings []string `json:"warnings,omitempty"` // details only: what is degraded, in full
}

func writeReady(w http.ResponseWriter, body readiness) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	status := http.StatusOK
	if !body.Ready {
		status = http.StatusServiceUnavailable
	}
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(body)
}

// failing names the component behind each reason of notReady: draining,
// broker, jwks (a key set never read well) or connections (at the
// connection limit).
func failing(why []string) []string {
	var names []string
	for _, reason := range why {
		name := "connections"
		switch {
		case reason == "draining":
			name = "draining"
		case strings.HasPrefix(reason, "broker"):
			name = "broker"
		case strings.HasPrefix(reason, "jwks"):
			name = "jwks"
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

// serveRaw is raw channel mode: GET /ws/{channel}. Every message the client
// sends is published to the channel with its opcode; every message of the
// channel reaches the client as one frame, its own only with ?echo=true.
func (n *Node) serveRaw(w http.ResponseWriter, r *http.Request) {
	channel := r.PathValue("channel")
	if err := protocol.ValidChannel(channel); err != nil && isUpgrade(r) {
		n.refuse(w, http.StatusBadRequest, protocol.CodeInvalidChannel, err.Error())
		return
	}
	echo, err := queryBool(r, "echo")
	if err != nil && isUpgrade(r) {
		n.refuse(w, http.StatusBadRequest, protocol.CodeBadRequest, err.Error())
		return
	}
	since, err := rawSince(r)
	if err != nil && isUpgrade(r) {
		n.refuse(w, http.StatusBadRequest, protocol.CodeBadRequest, err.Error())
		return
	}
	c := n.connect(w, r, modeRaw, channel)
	if c == nil {
		return
	}
	c.channel, c.echo = channel, echo
	// Subscribe before the upgrade: a client that is told 101 receives
	// everything published from then on (and, with since, what it missed).
	if since != nil {
		if !n.subscribeRawSince(w, c, since) {
			c.release()
			return
		}
	} else if err := n.hub.subscribe(r.Context(), channel, c, nil); err != nil {
		c.release()
		n.log.Warn("subscribe failed", "channel", channel, "err", err)
		w.Header().Set("Retry-After", "1")
		n.refuse(w, http.StatusServiceUnavailable, protocol.CodeUnavailable, "the broker is unavailable, try again later")
		return
	}
	n.presence.join(c, channel)
	if !n.accept(w, r, c, n.readRaw) {
		n.presence.leave(c, channel)
		n.hub.unsubscribe(channel, c)
		c.release()
	}
}

// readRaw publishes every message the client sends, no faster than the
// raw publish rate: above it the client is read more slowly.
func (n *Node) readRaw(c *conn) error {
	var limiter *rate.Limiter // made at the first message: idle connections stay small
	for {
		typ, data, err := c.read()
		if err != nil {
			return err
		}
		if err := n.rawMessage(c, &limiter, typ, data); err != nil {
			return err
		}
	}
}

// rawMessage publishes one message of a raw-mode client.
//
// Not inlined, so that its locals are not on the reader's stack while it
// waits for the next message (see runConn).
//
//go:noinline
func (n *Node) rawMessage(c *conn, limiter **rate.Limiter, typ websocket.MessageType, data []byte) error {
	if !c.sess.rawPublish {
		return errPublishForbidden
	}
	if n.cfg.RawPublishRate > 0 {
		if *limiter == nil {
			*limiter = rate.NewLimiter(rate.Limit(n.cfg.RawPublishRate), n.cfg.RawPublishBurst)
		}
		if err := (*limiter).Wait(n.ctx); err != nil {
			return err
		}
	}
	if n.proxy.publishes() {
		var err error
		if typ, data, err = n.proxyRawPublish(c, typ, data); err != nil {
			return err
		}
	}
	m := pubsub.Message{
		Origin:  n.id,
		Conn:    c.id,
		Binary:  typ == websocket.MessageBinary,
		Payload: data,
	}
	switch err := n.publishRaw(c, m); {
	case errors.Is(err, errEarlierFailed):
		return errBrokerDown // PublishFailed logged the failure
	case err != nil:
		n.log.Warn("publish failed", "conn", c.id, "channel", c.channel, "err", err)
		return errBrokerDown
	}
	return nil
}

// errEarlierFailed ends a raw-mode connection one of whose messages was not
// published: the ones after it are not published either.
var errEarlierFailed = errors.New("an earlier message was not published")

// publishRaw publishes m, a raw-mode client's message, to its channel.
// It does not wait for the broker's answer where the broker can tell c
// later (pubsub.LaterPublisher: a standalone Redis): the client gets no
// acknowledgement, only the order of its messages, and a close if one is
// refused or left unanswered (PublishFailed). A channel with history waits,
// as do protocol mode and the HTTP API.
func (n *Node) publishRaw(c *conn, m pubsub.Message) error {
	if lp, ok := n.broker.(pubsub.LaterPublisher); ok && !c.pubFailed.Load() {
		if _, _, hist := n.historyOf(c.channel); !hist {
			m.Time = time.Now().UnixNano()
			err := lp.PublishLater(c.channel, m, c)
			if !errors.Is(err, pubsub.ErrPublishNow) {
				if err != nil {
					n.metrics.publishErrors.Inc()
				}
				return err
			}
		}
	}
	// Checked after PublishLater too: it may have just reported an
	// earlier message of c as failed.
	if c.pubFailed.Load() {
		return errEarlierFailed
	}
	return n.publish(c.channel, m)
}

// publish publishes m, stamped with the time, and measures the broker.
func (n *Node) publish(channel string, m pubsub.Message) error {
	start := time.Now()
	m.Time = start.UnixNano()
	var err error
	if h, opts, ok := n.historyOf(channel); ok {
		_, err = h.PublishHistory(n.ctx, channel, m, opts)
	} else {
		err = n.broker.Publish(n.ctx, channel, m)
	}
	n.metrics.publishSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		n.metrics.publishErrors.Inc()
	}
	return err
}

// serveEcho is the echo endpoint: each message comes back prefixed with
// "Server received: ", as the original tutorial's server does.
func (n *Node) serveEcho(w http.ResponseWriter, r *http.Request) {
	c := n.connect(w, r, modeEcho, "")
	if c == nil {
		return
	}
	if !n.accept(w, r, c, n.readEcho) {
		c.release()
	}
}

const echoPrefix = "Server received: "

func (n *Node) readEcho(c *conn) error {
	for {
		typ, data, err := c.read()
		if err != nil {
			return err
		}
		c.out.Send(wsout.NewFrame(typ, append([]byte(echoPrefix), data...)))
	}
}

// serveRoot answers GET /: a WebSocket upgrade there is the echo endpoint
// (the tutorial's client dials ws://host:port/); a plain GET gets the demo
// chat page, built on relay.js.
func (n *Node) serveRoot(w http.ResponseWriter, r *http.Request) {
	if isUpgrade(r) {
		n.serveEcho(w, r)
		return
	}
	web.ServePage(w, r)
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
