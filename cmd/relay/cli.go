package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/client"
	"github.com/relay-pubsub/relay/node/protocol"
)

// Exit codes of the client subcommands (relay sub, pub, chat), documented
// in docs/CLIENTS.md.
const (
	exitOK          = 0
	exitError       = 1 // a command failed: an error reply, a lost ack
	exitUsage       = 2
	exitUnreachable = 3 // no node answered
	exitBadToken    = 4 // the node refused the token (HTTP 401, or a 4xxx close such as an expired token)
	exitRefused     = 5 // the node refused the request (another 4xx, 1008)
)

// Variables the client subcommands read. A node ignores them, so that one
// shell can run both.
const (
	envURL   = "RELAY_URL"
	envToken = "RELAY_TOKEN"
)

// cliFlags are the flags every client subcommand takes.
type cliFlags struct {
	url, token string
	quiet      bool
}

func (f *cliFlags) register(fs *flag.FlagSet) {
	url := os.Getenv(envURL)
	if url == "" {
		url = "ws://localhost:8080"
	}
	fs.StringVar(&f.url, "url", url, "the node or load balancer to connect to, comma-separated for several ("+envURL+")")
	fs.StringVar(&f.token, "token", os.Getenv(envToken), "the token to send as Authorization: Bearer ("+envToken+")")
	fs.BoolVar(&f.quiet, "quiet", false, "no notices on stderr (connected, reconnecting, gaps)")
}

// clientCommand runs relay sub, pub or chat.
func clientCommand(name string, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fs := flag.NewFlagSet("relay "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f cliFlags
	f.register(fs)
	var asJSON bool
	var nick string
	switch name {
	case "sub":
		fs.BoolVar(&asJSON, "json", false, `print each message as {"channel":…,"data":…,"offset":…} instead of its text`)
		fs.Usage = func() {
			fmt.Fprint(stderr, "usage: relay sub [flags] CHANNEL...\n\nPrints every message of the channels, one per line, until interrupted.\n\n")
			fs.PrintDefaults()
		}
	case "pub":
		fs.Usage = func() {
			fmt.Fprint(stderr, "usage: relay pub [flags] CHANNEL [MESSAGE]\n\nPublishes MESSAGE, or each line of standard input, and waits for each ack.\n\n")
			fs.PrintDefaults()
		}
	case "chat":
		fs.StringVar(&nick, "name", "", "put \"NAME: \" before each line you send")
		fs.Usage = func() {
			fmt.Fprint(stderr, "usage: relay chat [flags] CHANNEL\n\nSends each line you type to the channel and prints what others send.\n\n")
			fs.PrintDefaults()
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	channels := fs.Args()
	switch {
	case name == "sub" && len(channels) == 0,
		name == "pub" && (len(channels) < 1 || len(channels) > 2),
		name == "chat" && len(channels) != 1:
		fs.Usage()
		return exitUsage
	}

	names := channels
	if name == "pub" {
		names = channels[:1] // then the message
	}
	for _, ch := range names {
		if err := protocol.ValidChannel(ch); err != nil {
			fmt.Fprintf(stderr, "relay %s: %v\n", name, err)
			return exitUsage
		}
	}

	notice := func(format string, a ...any) {
		if !f.quiet {
			fmt.Fprintf(stderr, "relay: "+format+"\n", a...)
		}
	}
	urls := strings.Split(f.url, ",")
	opts := &client.Options{URLs: urls[1:], Token: f.token, OnEvent: func(e client.Event) {
		switch e.Type {
		case client.EventConnected:
			notice("connected to node %s (%s)", e.Node, e.URL)
		case client.EventDisconnected:
			switch {
			case e.Err != nil && e.Retry == 0:
				notice("disconnected: %v", e.Err)
			case e.Err != nil:
				notice("cannot connect (%v); retrying in %v", e.Err, e.Retry.Round(1e6))
			default:
				notice("disconnected (%d %s); reconnecting in %v", e.Code, e.Reason, e.Retry.Round(1e6))
			}
		case client.EventGap:
			notice("messages of %s may have been missed (no history to recover them from)", e.Channel)
		case client.EventRecovered:
			notice("subscribed to %s again; recovered every message published while disconnected", e.Channel)
		case client.EventUnsubscribed:
			notice("%s could not be subscribed again: %v", e.Channel, e.Err)
		}
	}}
	c, err := client.Dial(ctx, urls[0], opts)
	if err != nil {
		fmt.Fprintf(stderr, "relay %s: %v\n", name, err)
		return exitCode(err)
	}
	defer c.Close()

	switch name {
	case "sub":
		return subscribe(ctx, c, channels, asJSON, stdout, stderr, notice)
	case "pub":
		if len(channels) == 2 {
			return publishAll(ctx, c, channels[0], strings.NewReader(channels[1]+"\n"), stderr, notice)
		}
		return publishAll(ctx, c, channels[0], stdin, stderr, notice)
	default:
		return chat(ctx, c, channels[0], nick, stdin, stdout, stderr, notice)
	}
}

// exitCode maps why a client failed to a documented exit code.
func exitCode(err error) int {
	var de *client.DialError
	var perr *client.Error
	var ce websocket.CloseError
	switch {
	case errors.As(err, &ce) && ce.Code >= 4000 && ce.Code < 5000:
		return exitBadToken
	case errors.As(err, &ce):
		return exitRefused
	case errors.As(err, &de) && de.Status == http.StatusUnauthorized:
		return exitBadToken
	case errors.As(err, &de) && de.Status >= 400 && de.Status < 500:
		return exitRefused
	case errors.As(err, &de):
		return exitUnreachable
	case errors.As(err, &perr) && perr.Code != protocol.CodeUnavailable && perr.Code != protocol.CodeInternal:
		return exitRefused
	}
	return exitError
}

// ended reports why a client stopped for good, as an exit code, once ctx
// is done: 0 when it was interrupted.
func ended(ctx context.Context, err error, stderr io.Writer, name string) int {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return exitOK
	}
	fmt.Fprintf(stderr, "relay %s: %v\n", name, err)
	return exitCode(err)
}

func subscribe(ctx context.Context, c *client.Client, channels []string, asJSON bool, stdout, stderr io.Writer, notice func(string, ...any)) int {
	out := bufio.NewWriter(stdout)
	lines := make(chan []byte, 256)
	for _, ch := range channels {
		_, err := c.Subscribe(ctx, ch, func(m client.Message) {
			var line []byte
			if asJSON {
				line, _ = json.Marshal(struct {
					Channel string          `json:"channel"`
					Data    json.RawMessage `json:"data"`
					Binary  bool            `json:"binary,omitempty"`
					Offset  uint64          `json:"offset,omitempty"`
				}{m.Channel, m.Data, m.Binary, m.Offset})
			} else {
				line = m.Bytes()
			}
			select {
			case lines <- line:
			case <-ctx.Done():
			}
		})
		if err != nil {
			return ended(ctx, err, stderr, "sub")
		}
	}
	notice("subscribed to %s", strings.Join(channels, ", "))
	for {
		select {
		case line := <-lines:
			out.Write(line)
			out.WriteByte('\n')
			if len(lines) == 0 {
				out.Flush()
			}
		case <-ctx.Done():
			out.Flush()
			return exitOK
		case <-c.Done():
			out.Flush()
			fmt.Fprintf(stderr, "relay sub: %v\n", c.Err())
			return exitCode(c.Err())
		}
	}
}

// publishAll publishes each line of in and waits for its ack.
func publishAll(ctx context.Context, c *client.Client, channel string, in io.Reader, stderr io.Writer, notice func(string, ...any)) int {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		if err := c.Publish(ctx, channel, sc.Bytes()); err != nil {
			return ended(ctx, err, stderr, "pub")
		}
		n++
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(stderr, "relay pub: reading standard input: %v\n", err)
		return exitError
	}
	notice("%d published to %s, each acknowledged", n, channel)
	return exitOK
}

// chat is the tutorial's client grown up: lines typed go to the channel,
// what others send is printed.
func chat(ctx context.Context, c *client.Client, channel, nick string, stdin io.Reader, stdout, stderr io.Writer, notice func(string, ...any)) int {
	// Handlers run one at a time: only this one writes to stdout.
	_, err := c.Subscribe(ctx, channel, func(m client.Message) {
		fmt.Fprintf(stdout, "%s\n", m.Bytes())
	})
	if err != nil {
		return ended(ctx, err, stderr, "chat")
	}
	notice("joined %s: type a line and press Enter to send it", channel)
	prefix := ""
	if nick != "" {
		prefix = nick + ": "
	}
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		if err := c.Publish(ctx, channel, []byte(prefix+sc.Text())); err != nil {
			return ended(ctx, err, stderr, "chat")
		}
	}
	return exitOK
}
