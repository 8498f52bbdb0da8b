// Package nodetest runs Relay nodes in-process for tests, like httptest
// runs HTTP servers: each on its own loopback listener, stopped at the end
// of the test.
package nodetest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/pubsub"
	"github.com/relay-pubsub/relay/pubsub/pubsubtest"
)

// Timeout bounds every wait in tests that use this package; it is a
// failure bound, never a measure of speed.
const Timeout = 10 * time.Second

// Config returns the node configuration of cmd/relay's defaults (the
// default tags of node.Config) with the test overrides below applied.
// TestConfigDefaults pins that no other field differs from its tag.
func Config() node.Config {
	cfg := tagDefaults[node.Config]()
	// Loopback, on a free port: tests never listen beyond the machine.
	cfg.Addr = "127.0.0.1:0"
	// A node stops at once at the end of a test, closing its connections
	// with 1012 without spreading them over 20 s; tests of draining set it.
	cfg.DrainSeconds = 0
	// Protocol-mode limits off: tests send commands and subscribe as fast
	// and as often as they need; tests of the limits set them.
	cfg.ProtoMaxChannels = 0
	cfg.ProtoCommandRate = 0
	cfg.ProtoCommandBurst = 0
	cfg.ProtoMaxErrors = 0
	cfg.ProtoErrorWindow = 0
	return cfg
}

// RedisConfig returns the Redis broker configuration of cmd/relay's
// defaults (the default tags of pubsub.RedisConfig) for the Redis at url.
func RedisConfig(url string) pubsub.RedisConfig {
	cfg := tagDefaults[pubsub.RedisConfig]()
	cfg.URL = url
	return cfg
}

// tagDefaults returns a T whose fields hold the values of their default
// tags, decoded as envconfig decodes them; fields without a tag are zero.
// It panics on a tag it cannot decode: TestConfigDefaults finds that
// before any other test.
func tagDefaults[T any]() T {
	var cfg T
	v := reflect.ValueOf(&cfg).Elem()
	for i := range v.NumField() {
		f := v.Type().Field(i)
		def, ok := f.Tag.Lookup("default")
		if !ok {
			continue
		}
		if err := decodeDefault(v.Field(i), def); err != nil {
			panic(fmt.Sprintf("nodetest: %v.%s: default %q: %v", v.Type(), f.Name, def, err))
		}
	}
	return cfg
}

// decodeDefault sets fv from the default tag s, for the kinds node.Config
// has.
func decodeDefault(fv reflect.Value, s string) error {
	if fv.Type() == reflect.TypeFor[time.Duration]() {
		d, err := time.ParseDuration(s)
		fv.SetInt(int64(d))
		return err
	}
	switch fv.Kind() {
	case reflect.String:
		fv.SetString(s)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(s, 0, fv.Type().Bits())
		fv.SetInt(n)
		return err
	case reflect.Float64:
		x, err := strconv.ParseFloat(s, 64)
		fv.SetFloat(x)
		return err
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		fv.SetBool(b)
		return err
	default:
		return fmt.Errorf("nodetest decodes no %v", fv.Type())
	}
	return nil
}

// Cluster starts n nodes named node-1 … node-n, each with its own Redis
// broker, against the Redis at redisURL. The brokers close after the nodes.
func Cluster(t testing.TB, redisURL string, n int) []*Server {
	t.Helper()
	return ClusterWith(t, redisURL, n, Options{})
}

// Options change the nodes ClusterWith starts; the zero value starts what
// Cluster does.
type Options struct {
	// Config, when set, changes each node's configuration (Config with
	// NodeID set) before the node starts.
	Config func(*node.Config)
	// Log, when set, is the logger of every node; otherwise nodes log
	// nothing.
	Log *slog.Logger
	// Redis, when set, changes each node's Redis broker configuration
	// (RedisConfig(redisURL)) before the broker starts.
	Redis func(*pubsub.RedisConfig)
}

// ClusterWith is Cluster with options.
func ClusterWith(t testing.TB, redisURL string, n int, o Options) []*Server {
	t.Helper()
	var nodes []*Server
	for i := range n {
		rcfg := RedisConfig(redisURL)
		if o.Redis != nil {
			o.Redis(&rcfg)
		}
		b, err := pubsubtest.RunRedis(t, rcfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() }) // registered first, so it runs after the node's
		cfg := Config()
		cfg.NodeID = fmt.Sprintf("node-%d", i+1)
		if o.Config != nil {
			o.Config(&cfg)
		}
		nodes = append(nodes, StartWith(t, cfg, b, o.Log))
	}
	return nodes
}

// Server is a node serving on a loopback listener.
type Server struct {
	*node.Node
	// URL is the node's base URL, http://127.0.0.1:port.
	URL string
	// WS is the node's base WebSocket URL, ws://127.0.0.1:port.
	WS string
}

// Start starts a node with cfg and broker b. At the end of the test the
// node is shut down and Start waits for its goroutines.
func Start(t testing.TB, cfg node.Config, b pubsub.Broker) *Server {
	t.Helper()
	return StartWith(t, cfg, b, nil)
}

// StartWith is Start with log as the node's logger (nil: no logs).
func StartWith(t testing.TB, cfg node.Config, b pubsub.Broker, log *slog.Logger) *Server {
	t.Helper()
	n, err := node.New(cfg, b, pubsubtest.Registry(b), log)
	if err != nil {
		t.Fatalf("node.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	addr := ln.Addr().String()
	return &Server{Node: n, URL: "http://" + addr, WS: "ws://" + addr}
}

// Dial opens a WebSocket to url, closed at the end of the test.
func Dial(t testing.TB, url string, header http.Header) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	c.SetReadLimit(1 << 20)
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// Read reads one message from c, failing t after Timeout.
func Read(t testing.TB, c *websocket.Conn) (websocket.MessageType, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	typ, data, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return typ, string(data)
}

// ReadText reads one text message from c.
func ReadText(t testing.TB, c *websocket.Conn) string {
	t.Helper()
	typ, s := Read(t, c)
	if typ != websocket.MessageText {
		t.Fatalf("read %v message %q, want text", typ, s)
	}
	return s
}

// Write sends a text message on c.
func Write(t testing.TB, c *websocket.Conn, s string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		t.Fatalf("write %q: %v", s, err)
	}
}

// ReadClose reads until c is closed, skipping data messages, and returns
// the close code and reason the server sent; it fails t if the connection
// ends without a close frame.
func ReadClose(t testing.TB, c *websocket.Conn) (websocket.StatusCode, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("read: %v, want a close frame", err)
		}
		return ce.Code, ce.Reason
	}
}
