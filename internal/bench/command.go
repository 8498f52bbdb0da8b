package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/relay-pubsub/relay/node/protocol"
)

// Scenario names.
const (
	Fanout   = "fanout"
	Channels = "channels"
	Idle     = "idle"
	Connect  = "connect"
)

// Modes.
const (
	Raw      = "raw"
	Protocol = "protocol"
)

// Config is one run of the generator, as the flags set it. The zero value is
// not valid: the flags' defaults are the reference; [Run] fills the
// scenario-dependent zero fields (Channels, Publishers, Timeout) and
// validates the rest.
type Config struct {
	Scenario string // fanout, channels, idle or connect
	Mode     string // raw or protocol

	URLs        []*url.URL // node base URLs, ws:// or wss://
	Subscribers int        // subscriber connections (idle, connect: connections)
	Channels    int        // channels; fanout has 1
	Publishers  int        // publishing connections (protocol) or owners of streams (raw)
	Rate        float64    // total messages per second over all publishers
	Size        int        // message size in bytes, at least HeaderLen
	Messages    int        // per stream inside the window; 0: as many as the rate gives

	Warmup   time.Duration // publishing before the measurement window
	Duration time.Duration // measurement window; idle: the hold; connect: storm limit
	Drain    time.Duration // longest wait for in-flight messages after the window
	Timeout  time.Duration // hard limit for the whole run
	Tick     time.Duration // publisher pacing interval

	DialTimeout     time.Duration // one handshake (and protocol subscribe)
	DialConcurrency int           // handshakes in flight at once
	ConnectRate     float64       // handshakes started per second; 0 is unlimited
	SpreadAfter     int           // connections per destination before using 127.0.0.2+

	Token         string // bearer token for the upgrade request
	PIDs          []int  // server processes to read from /proc
	AllowRemote   bool   // allow targets outside the loopback range
	ChannelPrefix string // channel names are ChannelPrefix.RUNID.N
	Batch         bool   // protocol mode: allow batched pushes
	Lean          bool   // raw mode: subscribers read by epoll loops (lean_linux.go)
	Progress      string // auto, on or off
	Quiet         bool   // no text report, only the JSON line
	CPUProfile    string // file for the generator's own CPU profile
}

const usageHead = `usage: relay bench [scenario] [flags]
       relay bench table [FILE...]   (result lines to a markdown table)

Loads a Relay deployment and reports delivered/s, loss, duplicates,
reordering, end-to-end latency, publish-ack latency, connection errors and,
with -pids, server CPU per delivery and RSS. The text report and progress go
to stderr, one JSON line with every figure to stdout.

Scenarios:
  fanout    -subs subscribers on one channel, spread round-robin over the
            -url list; -publishers paced publishers send -rate msg/s in total
  channels  -channels channels with -subs/-channels subscribers each;
            publishers spread over the channels
  idle      -subs connections held subscribed for -duration; reports server
            RSS growth per connection from before connecting to the end
  connect   connection storm: -subs connections opened -concurrency at a
            time (limited by -connect-rate), reports connects/s and errors

Flags:
`

// parseFlags parses args into a Config. It returns flag.ErrHelp for -h.
func parseFlags(args []string, stderr io.Writer) (*Config, error) {
	fs := flag.NewFlagSet("relay bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageHead)
		fs.PrintDefaults()
	}
	scenario := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		scenario, args = args[0], args[1:]
	}
	c := &Config{}
	var urls, pids string
	fs.StringVar(&c.Scenario, "scenario", Fanout, "scenario: fanout, channels, idle or connect (or give it as the first argument)")
	fs.StringVar(&c.Mode, "mode", Raw, "raw (GET /ws/{channel}) or protocol (GET /ws, JSON commands)")
	fs.StringVar(&urls, "url", "ws://127.0.0.1:8080", "comma-separated node base URLs; connections are spread round-robin")
	fs.IntVar(&c.Subscribers, "subs", 100, "subscriber connections (idle, connect: connections to open)")
	fs.IntVar(&c.Channels, "channels", 0, "channels (default 1; channels scenario: 100)")
	fs.IntVar(&c.Publishers, "publishers", 0, "publishers (default: one per URL; channels scenario: one per channel)")
	fs.Float64Var(&c.Rate, "rate", 100, "messages per second published, in total over all publishers")
	fs.IntVar(&c.Size, "size", 128, fmt.Sprintf("message size in bytes (at least %d)", HeaderLen))
	fs.IntVar(&c.Messages, "messages", 0, "per stream: end the window once each stream sent this many in it (0: run the whole -duration)")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "publishing before the measurement window, not measured")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measurement window (idle: hold time; connect: longest storm)")
	fs.DurationVar(&c.Drain, "drain", 5*time.Second, "longest wait for in-flight messages after the window")
	fs.DurationVar(&c.Timeout, "timeout", 0, "hard limit for the whole run (default: warm-up + duration + drain + 2m)")
	fs.DurationVar(&c.Tick, "tick", 10*time.Millisecond, "publisher pacing interval: each tick sends the messages due (a slower publisher ticks at its message interval, up to 1s)")
	fs.DurationVar(&c.DialTimeout, "dial-timeout", 10*time.Second, "timeout of one WebSocket handshake")
	fs.IntVar(&c.DialConcurrency, "concurrency", 64, "handshakes in flight at once")
	fs.Float64Var(&c.ConnectRate, "connect-rate", 0, "handshakes started per second (0: unlimited)")
	fs.IntVar(&c.SpreadAfter, "spread-after", 25000, "connections per destination before binding source addresses 127.0.0.2, .3, … (0: never)")
	fs.StringVar(&c.Token, "token", "", "bearer token sent as Authorization on every upgrade")
	fs.StringVar(&pids, "pids", "", "comma-separated server PIDs (nodes, redis-server) for CPU per delivery and RSS from /proc")
	fs.BoolVar(&c.AllowRemote, "allow-remote", false, "allow targets outside 127.0.0.0/8 and ::1")
	fs.StringVar(&c.ChannelPrefix, "channel-prefix", "bench", "channel names are PREFIX.RUNID.N")
	fs.BoolVar(&c.Batch, "batch", true, "protocol mode: let the server batch pushes (false adds ?batch=false)")
	fs.BoolVar(&c.Lean, "lean", true, "raw mode, ws:// on Linux: read subscribers with a few epoll loops, one read per batch\n"+
		"(false: a goroutine per subscriber reading through coder/websocket, as on other systems)")
	fs.StringVar(&c.Progress, "progress", "auto", "progress once a second on stderr: auto (when a terminal), on, off")
	fs.BoolVar(&c.Quiet, "q", false, "no text report; only the JSON line on stdout")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write the generator's own CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if scenario != "" {
		c.Scenario = scenario
	}
	var err error
	if c.URLs, err = parseTargets(urls, c.AllowRemote); err != nil {
		return nil, err
	}
	if c.PIDs, err = parsePIDs(pids); err != nil {
		return nil, err
	}
	if err := c.fill(); err != nil {
		return nil, err
	}
	return c, nil
}

// fill applies scenario-dependent defaults and validates.
func (c *Config) fill() error {
	switch c.Scenario {
	case Fanout:
		if c.Channels == 0 {
			c.Channels = 1
		}
		if c.Channels != 1 {
			return errors.New("-channels: fanout uses one channel (use the channels scenario)")
		}
		if c.Publishers == 0 {
			c.Publishers = len(c.URLs)
		}
	case Channels:
		if c.Channels == 0 {
			c.Channels = 100
		}
		if c.Publishers == 0 {
			c.Publishers = c.Channels
		}
	case Idle, Connect:
		if c.Channels == 0 {
			c.Channels = 1
		}
		c.Publishers = 0
	default:
		return fmt.Errorf("unknown scenario %q (fanout, channels, idle, connect)", c.Scenario)
	}
	switch c.Mode {
	case Raw, Protocol:
	default:
		return fmt.Errorf("-mode %q: want raw or protocol", c.Mode)
	}
	switch c.Progress {
	case "auto", "on", "off":
	default:
		return fmt.Errorf("-progress %q: want auto, on or off", c.Progress)
	}
	switch {
	case c.Subscribers < 0:
		return errors.New("-subs must be >= 0")
	case c.Channels < 1:
		return errors.New("-channels must be >= 1")
	case c.Publishers < 0:
		return errors.New("-publishers must be >= 0")
	case c.Rate < 0:
		return errors.New("-rate must be >= 0")
	case c.Messages < 0:
		return errors.New("-messages must be >= 0")
	case c.Size < HeaderLen:
		return fmt.Errorf("-size must be at least %d (the payload header)", HeaderLen)
	case c.Size > 16<<20:
		return errors.New("-size must be at most 16 MiB")
	case c.Duration <= 0:
		return errors.New("-duration must be > 0")
	case c.Warmup < 0 || c.Drain < 0:
		return errors.New("-warmup and -drain must be >= 0")
	case c.Tick <= 0:
		return errors.New("-tick must be > 0")
	case c.DialTimeout <= 0:
		return errors.New("-dial-timeout must be > 0")
	case c.DialConcurrency < 1:
		return errors.New("-concurrency must be >= 1")
	case c.ConnectRate < 0:
		return errors.New("-connect-rate must be >= 0")
	}
	if (c.Scenario == Fanout || c.Scenario == Channels) && c.Publishers == 0 && c.Rate > 0 {
		return errors.New("-publishers must be >= 1 to publish")
	}
	if c.Timeout == 0 {
		c.Timeout = c.Warmup + c.Duration + c.Drain + 2*time.Minute
	}
	// The node's own rule, on the longest name the run uses.
	if err := protocol.ValidChannel(channelName(c.ChannelPrefix, strings.Repeat("0", runIDLen), c.Channels-1)); err != nil {
		return fmt.Errorf("-channel-prefix %q: %w", c.ChannelPrefix, err)
	}
	return nil
}

// Command runs `relay bench` with args (without "bench"). It writes the
// human report and progress to stderr and the final one-line JSON result to
// stdout, and returns when the run ends, the -timeout passes or ctx is
// cancelled. -h prints usage and returns flag.ErrHelp. The caller prints the
// returned error; a run cut short still writes its report and JSON line
// first.
//
// `relay bench table [FILE...]` instead renders result lines as a markdown
// table (see [Table]).
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "table" {
		if err := Table(args[1:], stdout); err != nil {
			return fmt.Errorf("table: %w", err)
		}
		return nil
	}
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	progress := cfg.Progress == "on"
	if cfg.Progress == "auto" {
		progress = isTerminal(stderr)
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	res, err := Run(ctx, cfg, progressWriter(stderr, progress && !cfg.Quiet))
	if res != nil {
		if !cfg.Quiet {
			res.WriteText(stderr)
		}
		if jerr := res.WriteJSON(stdout); jerr != nil && err == nil {
			err = jerr
		}
	}
	return err
}

func progressWriter(w io.Writer, on bool) io.Writer {
	if !on {
		return nil
	}
	return w
}

// isTerminal reports whether w is a character device, as a terminal is.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
