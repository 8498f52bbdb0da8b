package node

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/pubsub"
)

// Node is one Relay node. It is safe for concurrent use.
type Node struct {
	cfg    Config
	id     string
	log    *slog.Logger
	broker pubsub.Broker
	hub    *hub
	auth   *authenticator
	mux    *http.ServeMux

	// ctx ends when the node shuts down; publishes and subscribes of
	// connections use it, not the request's context.
	ctx    context.Context
	cancel context.CancelFunc

	connSeq atomic.Uint64
	readers sync.WaitGroup // one per connection

	mu    sync.Mutex
	conns map[*conn]struct{}
}

// New validates cfg and returns a node that publishes and subscribes
// through b. It does no I/O and starts no goroutine; Serve does.
func New(cfg Config, b pubsub.Broker, log *slog.Logger) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.NodeID == "" {
		cfg.NodeID = DefaultNodeID()
	}
	n := &Node{
		cfg:    cfg,
		id:     cfg.NodeID,
		log:    log.With("node", cfg.NodeID),
		broker: b,
		hub:    newHub(b, cfg.NodeID),
		auth:   newAuthenticator(cfg.AuthTokens),
		conns:  make(map[*conn]struct{}),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.routes()
	return n, nil
}

// ID returns the node's ID.
func (n *Node) ID() string { return n.id }

// Handler returns the node's HTTP handler.
func (n *Node) Handler() http.Handler { return n.mux }

// Run listens on the configured address and serves until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", n.cfg.Addr)
	if err != nil {
		return fmt.Errorf("RELAY_ADDR: %w", err)
	}
	return n.Serve(ctx, ln)
}

// Serve serves HTTP and WebSocket connections on ln until ctx ends, then
// closes every connection with 1001 and returns once all of the node's
// goroutines have exited. It closes ln.
func (n *Node) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           n.mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	n.logStart(ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx) // hijacked connections are ours to close:
	n.closeAll(errServerShutdown)
	n.cancel()
	n.readers.Wait()
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
		"raw", "ws://"+host+"/ws/{channel}", "echo", "ws://"+host+"/echo")
	if !n.auth.enabled() {
		n.log.Warn("auth is off: any client may connect; set RELAY_AUTH_TOKENS to require a token")
	}
}

// closeAll closes every connection for cause.
func (n *Node) closeAll(cause error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c := range n.conns {
		c.close(cause)
	}
}

func (n *Node) newConn(r *http.Request, m mode) *conn {
	return &conn{
		n:       n,
		id:      n.connSeq.Add(1),
		mode:    m,
		remote:  r.RemoteAddr,
		writing: true, // until open
	}
}

// accept upgrades the request to a WebSocket for c and starts its reader.
// On failure, accept has answered the request.
func (n *Node) accept(w http.ResponseWriter, r *http.Request, c *conn, read func(*conn) error) bool {
	w.Header().Set("X-Relay-Node", n.id)
	hw := &hijackWriter{ResponseWriter: w}
	ws, err := websocket.Accept(hw, r, &websocket.AcceptOptions{OriginPatterns: n.cfg.Origins})
	if err != nil {
		n.log.Debug("upgrade refused", "remote", r.RemoteAddr, "err", err)
		return false
	}
	ws.SetReadLimit(n.cfg.MaxMessageBytes)
	c.ws, c.nc, c.opened = ws, hw.nc, time.Now()

	n.mu.Lock()
	n.conns[c] = struct{}{}
	n.mu.Unlock()
	n.readers.Add(1)
	go n.runConn(c, read)
	return true
}

// runConn is a connection's reader goroutine: it runs read until the
// connection ends, then closes it and releases everything it held.
func (n *Node) runConn(c *conn, read func(*conn) error) {
	defer n.readers.Done()
	n.log.Info("conn opened", "conn", c.id, "remote", c.remote, "mode", c.mode, "channel", c.channel)
	c.open()
	err := read(c)
	c.close(err)
	if c.channel != "" {
		n.hub.unsubscribe(c.channel, c)
	}
	c.writers.Wait()
	c.ws.CloseNow()

	c.mu.Lock()
	cause := c.cause
	c.mu.Unlock()
	code, by := closeCode(cause, err)
	n.mu.Lock()
	delete(n.conns, c)
	n.mu.Unlock()
	n.log.Info("conn closed", "conn", c.id, "remote", c.remote, "mode", c.mode, "channel", c.channel,
		"code", int(code), "by", by, "duration", time.Since(c.opened).Round(time.Millisecond))
}

func randUint64() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}
