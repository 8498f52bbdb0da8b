package node

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Config configures a node. The zero value of a field is not its default:
// cmd/relay fills defaults from the tags, tests set fields in code.
type Config struct {
	// Addr is the TCP address to listen on.
	Addr string `envconfig:"ADDR" default:":8080" desc:"address to listen on (host:port); :0 picks a free port"`
	// NodeID names the node in logs, response headers and envelopes; it must
	// be unique in the cluster. Empty means hostname plus a random suffix.
	NodeID string `envconfig:"NODE_ID" desc:"unique name of this node in logs, the X-Relay-Node header and envelopes; default hostname-<random>"`
	// AuthTokens are the shared secrets an upgrade may present in its
	// Authorization header; none means auth is off.
	AuthTokens Secrets `envconfig:"AUTH_TOKENS" desc:"comma-separated shared secrets; each upgrade must send one in the Authorization header (bare or Bearer); empty with no file = auth off"`
	// AuthTokensFile names a file of more tokens, one per line, # comments.
	AuthTokensFile string `envconfig:"AUTH_TOKENS_FILE" desc:"file of more tokens, one per line (# starts a comment)"`
	// Origins are the browser origins allowed to connect besides the node's
	// own host (patterns as in path.Match, e.g. *.example.com; * allows all).
	Origins []string `envconfig:"ORIGINS" desc:"comma-separated browser Origin host patterns allowed besides same-origin (e.g. app.example.com,*.example.com; * = any)"`
	// MaxMessageBytes is the largest message a client may send; a larger
	// one closes the connection with 1009.
	MaxMessageBytes int64 `envconfig:"MAX_MESSAGE_BYTES" default:"65536" desc:"largest message a client may send, in bytes; larger closes the connection with 1009"`
	// QueueMessages and QueueBytes bound each connection's outbound queue;
	// a subscriber that falls further behind is closed with 1013.
	QueueMessages int `envconfig:"QUEUE_MESSAGES" default:"4096" desc:"outbound queue bound per connection, in messages; a subscriber further behind is closed with 1013"`
	QueueBytes    int `envconfig:"QUEUE_BYTES" default:"4194304" desc:"outbound queue bound per connection, in bytes; a subscriber further behind is closed with 1013"`
	// WriteTimeout bounds one write to a client; a client that takes longer
	// to accept data is disconnected.
	WriteTimeout time.Duration `envconfig:"WRITE_TIMEOUT" default:"10s" desc:"a write to a client blocked longer than this closes the connection"`
}

// Validate reports the first invalid field, naming its variable.
func (c *Config) Validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("RELAY_ADDR: empty; want host:port such as :8080"))
	}
	if len(c.NodeID) > 255 || strings.ContainsAny(c.NodeID, " \t\r\n") {
		errs = append(errs, fmt.Errorf("RELAY_NODE_ID: %q must be at most 255 bytes without spaces", c.NodeID))
	}
	if c.MaxMessageBytes < 1 {
		errs = append(errs, fmt.Errorf("RELAY_MAX_MESSAGE_BYTES: %d; want a positive number of bytes", c.MaxMessageBytes))
	}
	if c.QueueMessages < 1 {
		errs = append(errs, fmt.Errorf("RELAY_QUEUE_MESSAGES: %d; want at least 1", c.QueueMessages))
	}
	if int64(c.QueueBytes) < c.MaxMessageBytes {
		errs = append(errs, fmt.Errorf("RELAY_QUEUE_BYTES: %d; want at least RELAY_MAX_MESSAGE_BYTES (%d)", c.QueueBytes, c.MaxMessageBytes))
	}
	if c.WriteTimeout <= 0 {
		errs = append(errs, fmt.Errorf("RELAY_WRITE_TIMEOUT: %v; want a positive duration such as 10s", c.WriteTimeout))
	}
	for _, t := range c.AuthTokens {
		if t == "" || strings.ContainsAny(t, " \t\r\n,") {
			errs = append(errs, errors.New("RELAY_AUTH_TOKENS: a token is empty or has spaces"))
			break
		}
	}
	return errors.Join(errs...)
}

// DefaultNodeID returns the hostname with a random suffix, unique enough
// for several nodes on one host.
func DefaultNodeID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "relay"
	}
	return fmt.Sprintf("%s-%06x", host, randUint64()&0xffffff)
}

// Secrets is a list of secret strings that never shows in logs or %v.
type Secrets []string

// Decode parses a comma-separated list; envconfig calls it.
func (s *Secrets) Decode(v string) error {
	*s = nil
	for t := range strings.SplitSeq(v, ",") {
		if t = strings.TrimSpace(t); t != "" {
			*s = append(*s, t)
		}
	}
	return nil
}

// String hides the secrets.
func (s Secrets) String() string { return fmt.Sprintf("[%d secrets]", len(s)) }

// LogValue hides the secrets from slog.
func (s Secrets) LogValue() slog.Value { return slog.StringValue(s.String()) }

// ReadTokenFile reads tokens from the file at path: one per line, blank
// lines and lines starting with # ignored.
func ReadTokenFile(path string) (Secrets, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("RELAY_AUTH_TOKENS_FILE: %w", err)
	}
	defer f.Close()
	var s Secrets
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.ContainsAny(line, " \t,") {
			return nil, fmt.Errorf("RELAY_AUTH_TOKENS_FILE: line %d: a token has no spaces or commas", n)
		}
		s = append(s, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("RELAY_AUTH_TOKENS_FILE: %w", err)
	}
	return s, nil
}
