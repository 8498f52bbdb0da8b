package node

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-pubsub/relay/node/auth"
	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/pubsub"
)

// Node is one Relay node. It is safe for concurrent use.
type Node struct {
	cfg    Config
	id     string
	log    *slog.Logger
	broker pubsub.Broker
	hub    *hub
	// flushers write the connections' queues; connection i has flusher
	// i mod len (node/internal/wsout).
	flushers []*wsout.Flusher
	outCfg   wsout.Config
	metrics  *metrics
	// verifier checks tokens and namespaces holds the namespace rules
	// (session.go).
	verifier   *auth.Verifier
	namespaces *auth.Namespaces
	// proxy calls the app's backend; nil when no proxy URL is set
	// (proxy.go).
	proxy *proxy
	mux   *http.ServeMux
	// cluster is what the node knows of the others (api_control.go).
	cluster cluster
	// presence keeps the node's members of channels with presence.
	presence *presence

	// ctx ends when the node has stopped; publishes and subscribes of
	// connections use it, not the request's context.
	ctx    context.Context
	cancel context.CancelFunc

	draining atomic.Bool
	connSeq  atomic.Uint64
	readers  sync.WaitGroup // one per connection; added under mu while !stopped

	mu      sync.Mutex
	stopped bool // the drain is waiting for readers: no more are added
	conns   map[*conn]struct{}
	slots   int            // connections open or being upgraded
	perIP   map[string]int // slots by remote IP, when limited
}

// New validates cfg and returns a node that publishes and subscribes
// through b. The node registers its metrics on reg and serves all that reg
// gathers on /metrics, so that what the caller registers there (such as
// the broker's metrics) is served too; reg must not be shared with
// another node. It does no I/O and starts no goroutine; Serve does.
func New(cfg Config, b pubsub.Broker, reg *prometheus.Registry, log *slog.Logger) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if reg == nil {
		return nil, errors.New("node.New: nil metrics registry")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.NodeID == "" {
		cfg.NodeID = DefaultNodeID()
	}
	if cfg.IdempotencyWindow == 0 {
		cfg.IdempotencyWindow = defaultIdempotencyWindow
	}
	if cfg.HistoryRecoverMax == 0 {
		cfg.HistoryRecoverMax = defaultRecoverMax
	}
	cfg.PresenceInterval, cfg.PresenceLease = cfg.presenceInterval(), cfg.presenceLease()
	n := &Node{
		cfg:    cfg,
		id:     cfg.NodeID,
		log:    log.With("node", cfg.NodeID),
		broker: b,
		conns:  make(map[*conn]struct{}),
		perIP:  make(map[string]int),
	}
	var err error
	if n.verifier, n.namespaces, err = newAuth(cfg, n.log); err != nil {
		return nil, err
	}
	n.metrics = newMetrics(n, reg)
	n.proxy = newProxy(cfg, n.log, reg)
	n.hub = newHub(b, cfg.NodeID, n.metrics.deliverySeconds)
	n.outCfg = wsout.Config{QueueMessages: cfg.QueueMessages, QueueBytes: cfg.QueueBytes, WriteDelay: cfg.WriteDelay,
		WriteTimeout: cfg.WriteTimeout, PingInterval: cfg.PingInterval, PongTimeout: cfg.PongTimeout}
	n.flushers = make([]*wsout.Flusher, runtime.GOMAXPROCS(0))
	n.hub.history, n.hub.recoverMax = n.historyOf, cfg.HistoryRecoverMax
	for i := range n.flushers {
		n.flushers[i] = wsout.NewFlusher(cfg.WriteDelay)
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.hub.ctx = n.ctx
	n.presence = newPresence(n)
	n.routes()
	return n, nil
}

// ID returns the node's ID.
func (n *Node) ID() string { return n.id }

// Handler returns the node's HTTP handler.
func (n *Node) Handler() http.Handler { return n.limitHeaders(n.mux) }

// Run listens on the configured address and serves until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", n.cfg.Addr)
	if err != nil {
		return fmt.Errorf("RELAY_ADDR: %w", err)
	}
	return n.Serve(ctx, ln)
}

// Serve serves HTTP and WebSocket connections on ln until ctx ends, then
// drains: /readyz fails and new upgrades get 503 at once, connections are
// closed with 1012 spread over the first three quarters of the drain time,
// and Serve returns once every connection has ended (or at the drain
// deadline, closing what is left). It closes ln.
func (n *Node) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           n.limitHeaders(n.mux),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    hardHeaderBytes, // maxHeaderBytes: limitHeaders
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	n.logStart(ln.Addr())
	stopAuth := n.runAuth()
	defer stopAuth()
	stopControl := n.runControl()
	defer stopControl()
	stopPresence := n.runPresence()
	defer stopPresence()
	stopPositioning := n.runPositioning()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	n.drain()
	for _, f := range n.flushers {
		f.Close() // their connections have ended
	}
	// Connections have ended; now stop serving plain HTTP too.
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	n.cancel()
	stopPositioning()    // it may start repairs: before they are waited for
	n.hub.repairs.Wait() // bounded by n.ctx
	n.proxy.close()
	if err == nil {
		err = <-errc
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func (n *Node) logStart(addr net.Addr) {
	host := addr.String()
	if a, ok := addr.(*net.TCPAddr); ok && a.IP.IsUnspecified() {
		host = fmt.Sprintf("localhost:%d", a.Port)
	}
	n.log.Info("listening", "addr", addr.String(),
		"raw", "ws://"+host+"/ws/{channel}", "protocol", "ws://"+host+"/ws", "echo", "ws://"+host+"/echo",
		"health", "http://"+host+"/readyz", "metrics", "http://"+host+"/metrics")
	if !n.verifier.Enabled() && !n.proxy.connects() {
		n.log.Warn("auth is off: any client may connect; set RELAY_AUTH_TOKENS or RELAY_TOKEN_HMAC_SECRET (docs/AUTH.md) to require a token")
	}
}

// drain closes every connection with 1012, spread over the drain window so
// that clients do not all reconnect at once, and waits for them to end
// until the drain deadline; what is left then is closed at once.
func (n *Node) drain() {
	n.draining.Store(true)
	n.mu.Lock()
	conns := make([]*conn, 0, len(n.conns))
	for c := range n.conns {
		conns = append(conns, c)
	}
	n.mu.Unlock()
	total := time.Duration(n.cfg.DrainSeconds) * time.Second
	window := total * 3 / 4
	n.log.Info("draining", "conns", len(conns), "window", window, "deadline", total)
	deadline := time.NewTimer(total)
	defer deadline.Stop()

	mrand.Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	start := time.Now()
	const tick = 10 * time.Millisecond
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for i := 0; i < len(conns); {
		// Close the connections whose turn has come: the i-th at
		// i/len × window.
		due := len(conns)
		if window > 0 {
			due = min(len(conns), int(int64(len(conns))*int64(time.Since(start))/int64(window))+1)
		}
		for ; i < due; i++ {
			conns[i].close(errDraining)
		}
		if i < len(conns) {
			select {
			case <-ticker.C:
			case <-deadline.C:
				n.mu.Lock()
				n.stopped = true
				n.mu.Unlock()
				n.closeNow()
				n.readers.Wait()
				return
			}
		}
	}
	// Connections whose upgrade was under way when the drain began; from
	// now on a finishing upgrade is closed at once.
	n.mu.Lock()
	n.stopped = true
	for c := range n.conns {
		c.close(errDraining)
	}
	n.mu.Unlock()
	done := make(chan struct{})
	go func() { n.readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-deadline.C:
		n.log.Warn("drain deadline passed; closing the remaining connections at once")
		n.closeNow()
		<-done
	}
	n.log.Info("drained", "took", time.Since(start).Round(time.Millisecond))
}

// closeNow closes every connection without a close handshake.
func (n *Node) closeNow() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c := range n.conns {
		c.ws.CloseNow()
	}
}

// reserve takes a connection slot for a request from remote, or says why
// not: the node is draining or at a connection limit.
func (n *Node) reserve(remote string) (release func(), why string) {
	if n.draining.Load() {
		return nil, "the node is draining: reconnect to another node"
	}
	ip := remoteIP(remote)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cfg.MaxConnections > 0 && n.slots >= n.cfg.MaxConnections {
		return nil, "the node is at its connection limit (RELAY_MAX_CONNECTIONS)"
	}
	if n.cfg.MaxConnectionsPerIP > 0 {
		if n.perIP[ip] >= n.cfg.MaxConnectionsPerIP {
			return nil, "too many connections from your address (RELAY_MAX_CONNECTIONS_PER_IP)"
		}
		n.perIP[ip]++
	}
	n.slots++
	return sync.OnceFunc(func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		n.slots--
		if n.cfg.MaxConnectionsPerIP > 0 {
			if n.perIP[ip]--; n.perIP[ip] <= 0 {
				delete(n.perIP, ip)
			}
		}
	}), ""
}

func remoteIP(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return host
}

// notReady lists why the node should not get new connections; empty when
// it is ready.
func (n *Node) notReady() []string {
	var why []string
	if n.draining.Load() {
		why = append(why, "draining")
	}
	if hc, ok := n.broker.(pubsub.HealthChecker); ok {
		if err := hc.Health(); err != nil {
			why = append(why, "broker: "+err.Error())
		}
	}
	keys, _ := n.verifier.Status()
	why = append(why, keys...)
	if n.cfg.MaxConnections > 0 {
		n.mu.Lock()
		full := n.slots >= n.cfg.MaxConnections
		n.mu.Unlock()
		if full {
			why = append(why, "at the connection limit")
		}
	}
	return why
}

func (n *Node) newConn(r *http.Request, m mode) *conn {
	id := n.connSeq.Add(1)
	c := &conn{n: n, id: id, mode: m, remote: r.RemoteAddr}
	c.init(n, n.flushers[id%uint64(len(n.flushers))]) // frames wait until the upgrade is done
	return c
}

// accept upgrades the request to a WebSocket for c and starts its reader.
// On failure, accept has answered the request.
func (n *Node) accept(w http.ResponseWriter, r *http.Request, c *conn, read func(*conn) error) bool {
	w.Header().Set("X-Relay-Node", n.id)
	rw := &refusalWriter{ResponseWriter: w}
	ws, err := websocket.Accept(c.out.Hijacker(rw), r, &websocket.AcceptOptions{
		OriginPatterns: n.cfg.Origins, OnPingReceived: c.out.OnPing, OnPongReceived: c.out.Pong})
	if err != nil {
		if !rw.answer(n) {
			n.log.Debug("upgrade failed", "remote", r.RemoteAddr, "err", err)
		}
		return false
	}
	ws.SetReadLimit(n.cfg.MaxMessageBytes)
	c.ws, c.opened = ws, time.Now()

	n.mu.Lock()
	if n.stopped {
		// The drain has taken its count: this upgrade finished too late.
		n.mu.Unlock()
		ws.CloseNow()
		return false
	}
	n.conns[c] = struct{}{}
	n.readers.Add(1)
	n.mu.Unlock()
	// Logged here, not by the reader: formatting a record takes more stack
	// than reading, and a goroutine's stack stays as large as it has been.
	n.log.Info("conn opened", "conn", c.id, "remote", c.remote, "mode", c.mode, "channel", c.channel)
	go n.runConn(c, read)
	return true
}

// runConn is a connection's reader goroutine: it runs read until the
// connection ends, then closes it and releases everything it held.
//
// The reader's stack is most of what an idle connection costs, and a
// goroutine's stack stays as large as it ever was while it waits inside
// coder/websocket's Read. So what sits below Read is kept small: runConn's
// own frame, and read loops that hand each message to a function of its
// own (rawMessage, protoMessage). With the larger frames, answering pings
// (coder/websocket reads each pong with a context and a timer) grew the
// stacks of idle connections from 4 to 8 KiB within minutes.
func (n *Node) runConn(c *conn, read func(*conn) error) {
	n.connOpened(c)
	n.connEnded(c, read(c))
}

//go:noinline
func (n *Node) connOpened(c *conn) {
	c.stats.opened.Inc()
	c.stats.connections.Inc()
	c.out.Open(c.ws)
	c.sess.start(c)
}

// connEnded closes c, which ended with err, and releases what it held.
//
//go:noinline
func (n *Node) connEnded(c *conn, err error) {
	defer n.readers.Done()
	defer c.release()
	c.close(err)
	c.sess.stop()
	if c.channel != "" {
		n.presence.leave(c, c.channel)
		n.hub.unsubscribe(c.channel, c)
	}
	c.out.Wait()
	c.ws.CloseNow()

	code, by := closeCode(c.out.Cause(), err)
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
	c.stats.connections.Dec()
	n.metrics.closedWith(code)
	n.log.Info("conn closed", "conn", c.id, "remote", c.remote, "mode", c.mode, "channel", c.channel,
		"code", int(code), "by", by, "duration", time.Since(c.opened).Round(time.Millisecond))
}

func randUint64() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}
