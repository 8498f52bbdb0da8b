// Command relay runs a Relay node and its client tools.
//
//	relay [serve]      run a node (configured by RELAY_* variables)
//	relay healthcheck  exit 0 if the local node answers /healthz
//	relay bench        the load generator (relay bench -h)
//	relay token        mint a token for trying things out (relay token -h)
//	relay version      print the version
//	relay --help       print the configuration table
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/term"

	"github.com/relay-pubsub/relay/internal/bench"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/pubsub"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// config is every setting of the relay binary, read from RELAY_*
// variables. `relay --help` prints it as a table.
type config struct {
	node.Config
	pubsub.RedisConfig
	LogFormat string `envconfig:"LOG_FORMAT" default:"auto" desc:"log format: auto (text on a terminal, JSON otherwise), text or json"`
	LogLevel  string `envconfig:"LOG_LEVEL" default:"info" desc:"least severe log level: debug, info, warn or error"`
	PprofAddr string `envconfig:"PPROF_ADDR" desc:"address of a separate listener serving Go profiles at /debug/pprof/ (e.g. 127.0.0.1:6060); empty = off; never expose it publicly"`
}

const prefix = "RELAY"

// defaultGCPercent is the garbage collector's target unless GOGC is set.
const defaultGCPercent = 25

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "serve":
		return serve(stderr)
	case "healthcheck":
		return healthcheck(stderr)
	case "sub", "pub", "chat":
		return clientCommand(cmd, args[1:], os.Stdin, stdout, stderr)
	case "bench":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		err := bench.Command(ctx, args[1:], stdout, stderr)
		switch {
		case errors.Is(err, flag.ErrHelp):
			return 0
		case err != nil:
			fmt.Fprintln(stderr, "relay bench:", err)
			return 1
		}
		return 0
	case "token":
		return tokenCmd(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "relay", version)
		return 0
	case "help", "--help", "-help", "-h":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "relay: unknown command %q\n\n", cmd)
		usage(stderr)
		return 2
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Relay: a horizontally scaled WebSocket pub/sub node.

Usage:
  relay [serve]                 run a node
  relay healthcheck             exit 0 if the node on RELAY_ADDR answers /healthz (for container health checks)
  relay sub CHANNEL...          print the messages of channels as they arrive (relay sub -h)
  relay pub CHANNEL [MESSAGE]   publish MESSAGE, or each line of standard input, and wait for each ack
  relay chat CHANNEL            send each line you type to a channel, print what others send
  relay bench                   load generator against any Relay deployment (relay bench -h)
  relay token                   mint a token with RELAY_TOKEN_HMAC_SECRET (relay token -h)
  relay version                 print the version
  relay --help                  print this help

`)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	envconfig.Usagef(prefix, &config{}, tw, usageFormat)
	tw.Flush()
}

const usageFormat = `Configuration (environment variables):

NAME	DEFAULT	MEANING
{{range .}}{{usage_key .}}	{{usage_default .}}	{{usage_description .}}
{{end}}`

// checkUnknown fails on a RELAY_ variable the configuration does not have,
// a typo that would otherwise be ignored. Kubernetes' service links for a
// Service named relay (RELAY_PORT, RELAY_SERVICE_HOST, …) and the client
// subcommands' RELAY_URL and RELAY_TOKEN are not the node's and are let
// through.
func checkUnknown(environ []string) error {
	var keys strings.Builder
	envconfig.Usagef(prefix, &config{}, &keys, "{{range .}}{{usage_key .}}\n{{end}}")
	known := make(map[string]bool)
	for _, k := range strings.Fields(keys.String()) {
		known[k] = true
	}
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, prefix+"_") || known[k] || isServiceLink(k) {
			continue
		}
		return fmt.Errorf("unknown environment variable %s (see relay --help)", k)
	}
	return nil
}

// isServiceLink reports whether k is one of the variables Kubernetes sets
// for a Service named relay, or one of the client subcommands'.
func isServiceLink(k string) bool {
	return k == "RELAY_PORT" || strings.HasPrefix(k, "RELAY_PORT_") || strings.HasPrefix(k, "RELAY_SERVICE_") ||
		k == envURL || k == envToken // the client subcommands
}

// loadConfig reads and validates the configuration.
func loadConfig() (config, error) {
	var cfg config
	if err := checkUnknown(os.Environ()); err != nil {
		return cfg, err
	}
	if err := envconfig.Process(prefix, &cfg); err != nil {
		return cfg, configError(err)
	}
	if cfg.AuthTokensFile != "" {
		tokens, err := node.ReadTokenFile(cfg.AuthTokensFile)
		if err != nil {
			return cfg, err
		}
		cfg.AuthTokens = append(cfg.AuthTokens, tokens...)
	}
	switch cfg.LogFormat {
	case "auto", "text", "json":
	default:
		return cfg, fmt.Errorf("RELAY_LOG_FORMAT: %q; want auto, text or json", cfg.LogFormat)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return cfg, fmt.Errorf("RELAY_LOG_LEVEL: %q; want debug, info, warn or error", cfg.LogLevel)
	}
	if err := cfg.Config.Validate(); err != nil {
		return cfg, err
	}
	if err := cfg.RedisConfig.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: durationString}
	text := cfg.LogFormat == "text"
	if cfg.LogFormat == "auto" {
		f, ok := w.(*os.File)
		text = ok && term.IsTerminal(int(f.Fd()))
	}
	if text {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func serve(stderr io.Writer) int {
	cfg, err := loadConfig()
	if err != nil {
		fmt.Fprintln(stderr, "relay:", oneLine(err))
		return 2
	}
	log := newLogger(cfg, stderr)
	setRedisLogger(log)
	if os.Getenv("GOGC") == "" {
		// A node's live heap is mostly connections and it allocates little
		// per message: a tighter GC target costs little CPU and keeps the
		// memory of idle connections near what they use (BENCHMARKS.md).
		debug.SetGCPercent(defaultGCPercent)
	}

	reg := prometheus.NewRegistry() // the node's: /metrics serves it
	var broker pubsub.Broker
	if !cfg.RedisConfig.Enabled() {
		broker = pubsub.NewMemory()
		log.Info("broker: embedded in-memory (one node); set RELAY_REDIS_URL to join a cluster")
	} else {
		if cfg.NodeID == "" {
			cfg.NodeID = node.DefaultNodeID()
		}
		rcfg := cfg.RedisConfig
		rcfg.Instance = cfg.NodeID
		rb, err := pubsub.NewRedis(rcfg, log.With("component", "redis"))
		if err != nil {
			fmt.Fprintln(stderr, "relay:", oneLine(err))
			return 2
		}
		broker = rb
		reg.MustRegister(rb)
		switch {
		case cfg.ClusterAddrs != "":
			log.Info("broker: redis cluster, sharded pub/sub", "seeds", redactSeeds(cfg.ClusterAddrs), "prefix", cfg.Prefix)
		case cfg.URL != "":
			log.Info("broker: redis", "redis", redactURL(cfg.URL), "prefix", cfg.Prefix)
		default:
			log.Info("broker: redis sentinel", "sentinels", strings.Join(cfg.SentinelAddrs, ","), "master", cfg.SentinelMaster, "prefix", cfg.Prefix)
		}
		// The broker runs until Close (deferred below, so it runs first),
		// after the node drained; its Run returns before this does.
		brokerDone := make(chan error, 1)
		go func() { brokerDone <- rb.Run(context.Background()) }()
		defer func() { <-brokerDone }()
	}
	defer broker.Close()

	n, err := node.New(cfg.Config, broker, reg, log)
	if err != nil {
		fmt.Fprintln(stderr, "relay:", oneLine(err))
		return 2
	}
	if cfg.PprofAddr != "" {
		stopPprof, err := servePprof(cfg.PprofAddr, log)
		if err != nil {
			fmt.Fprintln(stderr, "relay: RELAY_PPROF_ADDR:", err)
			return 2
		}
		defer stopPprof() // after the node's drain, which it may profile
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	stopped := make(chan struct{}) // serve is returning: the watcher ends
	var watcher sync.WaitGroup
	defer watcher.Wait()
	defer close(stopped)
	watcher.Go(func() {
		select {
		case sig := <-sigs:
			log.Info("signal: draining; a second signal exits at once", "signal", sig.String())
			cancel()
		case <-stopped:
			return
		}
		select {
		case <-sigs:
			log.Warn("second signal: exiting without draining")
			os.Exit(1)
		case <-stopped:
		}
	})
	if err := n.Run(ctx); err != nil {
		log.Error("node stopped", "err", err)
		return 1
	}
	log.Info("node stopped")
	return 0
}

// oneLine joins a multi-error into one line.
func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// redactURL drops the password of a Redis URL for logging.
func redactURL(s string) string {
	if i := strings.Index(s, "@"); i >= 0 {
		if j := strings.Index(s, "://"); j >= 0 && j < i {
			return s[:j+3] + "***" + s[i:]
		}
	}
	return s
}

// redactSeeds drops the passwords of RELAY_REDIS_CLUSTER_ADDRS for logging.
func redactSeeds(s string) string {
	seeds := strings.Split(s, ",")
	for i, seed := range seeds {
		seeds[i] = redactURL(strings.TrimSpace(seed))
	}
	return strings.Join(seeds, ",")
}

// healthcheck asks the local node's /healthz; the container image has no
// shell or curl, so the binary checks itself.
func healthcheck(stderr io.Writer) int {
	addr := os.Getenv("RELAY_ADDR")
	if addr == "" {
		addr = ":8080"
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		fmt.Fprintln(stderr, "relay healthcheck: RELAY_ADDR:", err)
		return 1
	}
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + net.JoinHostPort("127.0.0.1", port) + "/healthz")
	if err != nil {
		fmt.Fprintln(stderr, "relay healthcheck:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "relay healthcheck: status", resp.Status)
		return 1
	}
	return 0
}

// servePprof serves Go's profiles on their own listener until stop is
// called. stop ends the profiles under way (their requests' context is
// cancelled), shuts the server down and waits for it and for every
// connection's goroutine.
func servePprof(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	base, cancel := context.WithCancel(context.Background())
	var conns sync.WaitGroup // one per connection, from Serve's own goroutine
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.With("component", "pprof").Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return base },
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				conns.Done()
			}
		},
	}
	log.Warn("serving Go profiles; keep this address private", "pprof", "http://"+ln.Addr().String()+"/debug/pprof/")
	var served sync.WaitGroup
	served.Go(func() { srv.Serve(ln) })
	return func() {
		cancel()
		ctx, done := context.WithTimeout(context.Background(), 5*time.Second)
		defer done()
		if srv.Shutdown(ctx) != nil {
			srv.Close() // a client that does not read its profile
		}
		served.Wait()
		conns.Wait()
	}, nil
}
