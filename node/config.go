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
	// Signed tokens (JWT, docs/AUTH.md): any key turns them on, beside the
	// static tokens. TokenJWKSRefresh is how often the JWKS file and URL
	// are read again; TokenLeeway the clock skew allowed for exp and nbf;
	// TokenRefreshGrace how long a protocol-mode client has to send a new
	// token once its token has expired (0: closed at once, as in raw mode).
	TokenHMACSecret    Secret        `envconfig:"TOKEN_HMAC_SECRET" desc:"shared secret (at least 32 bytes) that signs HS256/384/512 tokens (JWT; docs/AUTH.md); relay token mints one with it"`
	TokenPublicKeyFile string        `envconfig:"TOKEN_PUBLIC_KEY_FILE" desc:"PEM public key that verifies RS/PS/ES256-512 or EdDSA tokens"`
	TokenJWKSURL       string        `envconfig:"TOKEN_JWKS_URL" desc:"URL of a JWKS whose keys verify tokens by kid; fetched at start and every RELAY_TOKEN_JWKS_REFRESH (a failed fetch keeps the last good keys)"`
	TokenJWKSFile      string        `envconfig:"TOKEN_JWKS_FILE" desc:"file of a JWKS whose keys verify tokens by kid; read again every RELAY_TOKEN_JWKS_REFRESH"`
	TokenJWKSRefresh   time.Duration `envconfig:"TOKEN_JWKS_REFRESH" default:"1m" desc:"how often the JWKS URL and file are read again (and at most once a second early, for a kid not yet known)"`
	TokenIssuer        string        `envconfig:"TOKEN_ISSUER" desc:"when set, a token's iss must be this"`
	TokenAudience      string        `envconfig:"TOKEN_AUDIENCE" desc:"when set, a token's aud must include this"`
	TokenLeeway        time.Duration `envconfig:"TOKEN_LEEWAY" default:"5s" desc:"clock skew allowed when checking a token's exp and nbf"`
	TokenRefreshGrace  time.Duration `envconfig:"TOKEN_REFRESH_GRACE" default:"10s" desc:"protocol mode: once a connection's token expires, how long it has to send a refresh command before it is closed with 4001 (0 = closed at once)"`
	// TokenConnectTimeout is how long a protocol-mode connection without a
	// token has to send connect, when tokens are required and no namespace
	// is open to anonymous subscribers; 0 means no deadline.
	TokenConnectTimeout time.Duration `envconfig:"TOKEN_CONNECT_TIMEOUT" default:"10s" desc:"protocol mode: a connection that sent no token with its upgrade must send a connect command within this, or is closed with 4003 (when tokens are required and nothing is open to anonymous subscribers; 0 = no deadline)"`
	// NamespacesFile is a YAML or JSON file of namespace rules (anonymous
	// subscribers, client publishing); none means the default rules.
	NamespacesFile string `envconfig:"NAMESPACES_FILE" desc:"YAML or JSON file of per-namespace rules: anonymous subscribe, client publish (docs/AUTH.md); empty = clients may publish everywhere their token allows, nothing is anonymous"`
	// Origins are the browser origins allowed to connect besides the node's
	// own host (patterns as in path.Match, e.g. *.example.com; * allows all).
	Origins []string `envconfig:"ORIGINS" desc:"comma-separated browser Origin host patterns allowed besides same-origin (e.g. app.example.com,*.example.com; * = any)"`
	// The backend proxy (docs/AUTH.md, "Backend proxy", node/proxy.go):
	// HTTP calls from the node to the app's backend on connect, subscribe
	// and publish; an empty URL means no call for that event.
	ProxyConnectURL   string        `envconfig:"PROXY_CONNECT_URL" desc:"backend URL the node POSTs to when a connection carries no token Relay checks; the answer allows it (user, channels, info) or refuses it (docs/AUTH.md); empty = no connect call"`
	ProxySubscribeURL string        `envconfig:"PROXY_SUBSCRIBE_URL" desc:"backend URL the node POSTs to on each client subscribe (raw-mode upgrade, protocol subscribe); its answer replaces the channels check; empty = no subscribe call"`
	ProxyPublishURL   string        `envconfig:"PROXY_PUBLISH_URL" desc:"backend URL the node POSTs to on each client publish; its answer replaces the publish check and may replace the data; empty = no publish call"`
	ProxyTimeout      time.Duration `envconfig:"PROXY_TIMEOUT" default:"1s" desc:"bound on one backend proxy call (connect, dial, answer); beyond it the event is refused with proxy_unavailable"`
	ProxyHeaders      []string      `envconfig:"PROXY_HEADERS" desc:"comma-separated request headers of the upgrade forwarded to the backend proxy (e.g. Authorization,X-Session); Cookie is not allowed here: see RELAY_PROXY_COOKIES"`
	ProxyCookies      []string      `envconfig:"PROXY_COOKIES" desc:"comma-separated cookie names forwarded to the backend proxy (* = every cookie); refused at start with RELAY_ORIGINS=* (cross-site WebSocket hijacking, docs/AUTH.md)"`
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
	// WriteDelay paces the writes to one client (node/internal/wsout): a
	// busy client gets at most one write per WriteDelay, and messages that
	// arrive meanwhile go out together in that write (one syscall). The
	// first two messages after a quiet spell go out at once.
	WriteDelay time.Duration `envconfig:"WRITE_DELAY" default:"20ms" desc:"pacing of the writes to one client: the first two messages after a quiet spell go out at once, faster ones share one write per this interval (fewer syscalls, at most this much added latency; see docs/BENCHMARKS.md); 0 = write at once"`
	// PingInterval is how often the node pings each client; a client whose
	// pong does not come within PongTimeout is disconnected.
	PingInterval time.Duration `envconfig:"PING_INTERVAL" default:"25s" desc:"how often the node pings each client to find dead connections"`
	PongTimeout  time.Duration `envconfig:"PONG_TIMEOUT" default:"10s" desc:"a client that has not answered a ping within this is disconnected"`
	// DrainSeconds is how long a draining node (SIGTERM) takes to close its
	// connections, spread over the first three quarters of it.
	DrainSeconds int `envconfig:"DRAIN_SECONDS" default:"20" desc:"on SIGTERM, close connections with 1012 spread over this many seconds, then exit (fits Kubernetes' default 30 s grace period)"`
	// MaxConnections bounds the node's connections; 0 means no bound.
	MaxConnections int `envconfig:"MAX_CONNECTIONS" default:"10000" desc:"most WebSocket connections on this node; beyond it upgrades get 503 and /readyz fails (0 = no limit)"`
	// MaxConnectionsPerIP bounds the connections from one remote address;
	// 0 means no bound. Behind a load balancer every client has its address.
	MaxConnectionsPerIP int `envconfig:"MAX_CONNECTIONS_PER_IP" default:"0" desc:"most connections from one remote IP; beyond it upgrades get 503 (0 = no limit; behind a proxy all clients share its IP)"`
	// RawPublishRate and RawPublishBurst are a token bucket of the messages
	// one raw-mode connection publishes: a client above the rate is read
	// more slowly (TCP pushes back), nothing is dropped.
	RawPublishRate  float64 `envconfig:"RAW_PUBLISH_RATE" default:"1000" desc:"raw mode: messages per second one connection may publish on average; a faster client is read more slowly, nothing is dropped; 0 = no limit"`
	RawPublishBurst int     `envconfig:"RAW_PUBLISH_BURST" default:"1000" desc:"raw mode: messages one connection may publish at once above RELAY_RAW_PUBLISH_RATE"`

	// Protocol mode (GET /ws, docs/PROTOCOL.md). For each limit, zero means
	// none.

	// ProtoMaxChannels bounds the channels one connection subscribes to; a
	// subscribe beyond gets limit_exceeded.
	ProtoMaxChannels int `envconfig:"PROTO_MAX_CHANNELS" default:"128" desc:"protocol mode: channels one connection may subscribe to; more gets limit_exceeded; 0 = no limit"`
	// ProtoCommandRate and ProtoCommandBurst are a token bucket of commands
	// per connection: ProtoCommandRate per second, up to ProtoCommandBurst
	// at once; a command beyond gets limit_exceeded.
	ProtoCommandRate  float64 `envconfig:"PROTO_COMMAND_RATE" default:"100" desc:"protocol mode: commands per second one connection may send on average; more get limit_exceeded; 0 = no limit"`
	ProtoCommandBurst int     `envconfig:"PROTO_COMMAND_BURST" default:"200" desc:"protocol mode: commands one connection may send at once above RELAY_PROTO_COMMAND_RATE"`
	// ProtoMaxErrors client errors within ProtoErrorWindow close the
	// connection with 1008.
	ProtoMaxErrors   int           `envconfig:"PROTO_MAX_ERRORS" default:"10" desc:"protocol mode: this many client errors (bad or refused commands) within RELAY_PROTO_ERROR_WINDOW close the connection with 1008; 0 = never"`
	ProtoErrorWindow time.Duration `envconfig:"PROTO_ERROR_WINDOW" default:"10s" desc:"protocol mode: the window of RELAY_PROTO_MAX_ERRORS"`

	// HistorySize and HistoryTTL are the history of every channel whose
	// namespace sets none (docs/PROTOCOL.md, "History and recovery"): the
	// latest HistorySize messages, kept HistoryTTL after the last publish.
	// History is on when both are positive.
	HistorySize int           `envconfig:"HISTORY_SIZE" default:"0" desc:"messages of history each channel keeps, unless its namespace says otherwise; clients recover missed messages from it (0 = no history)"`
	HistoryTTL  time.Duration `envconfig:"HISTORY_TTL" default:"5m" desc:"how long a channel's history is kept after its last publish (0 = no history)"`
	// HistoryRecoverMax bounds the messages one recovery delivers: a
	// subscriber further behind gets recovered false instead of a flood.
	// Zero means 1000.
	HistoryRecoverMax int `envconfig:"HISTORY_RECOVER_MAX" default:"1000" desc:"most messages one recovery (subscribe with since, or a node repairing a gap) delivers; further behind, recovered is false"`
	// HistoryCheckInterval is how often the node reads the latest position
	// of every channel with history it has subscribers for (node/position.go),
	// to repair a message it missed without a broker gap; 0 turns it off.
	HistoryCheckInterval time.Duration `envconfig:"HISTORY_CHECK_INTERVAL" default:"10s" desc:"how often the node compares, for each channel with history it has subscribers for, the latest offset in Redis with the last it delivered, and recovers what it missed (one pipelined HMGET per channel; docs/OPERATIONS.md); 0 = off"`

	// IdempotencyWindow is how long a publish's idempotency_key is
	// remembered: a retry with the same key on the same channel within it
	// publishes nothing and is answered as a success. Zero means 5m.
	IdempotencyWindow time.Duration `envconfig:"IDEMPOTENCY_WINDOW" default:"5m" desc:"how long a publish's idempotency_key is remembered: a retry with the same key on the same channel within it is delivered once (at least 1ms)"`
	// PresenceInterval is how often the node renews the presence entries
	// of its connections, in channels whose namespace keeps presence;
	// PresenceLease how long an entry lasts unrenewed: the entries of a
	// node that crashed are gone at most PresenceLease after its last
	// renewal (docs/OPERATIONS.md, "Presence in Redis"). Zero means
	// defaultPresenceInterval and defaultPresenceLease.
	PresenceInterval time.Duration `envconfig:"PRESENCE_INTERVAL" default:"10s" desc:"how often the node renews the presence of its connections (namespaces with presence: docs/AUTH.md)"`
	PresenceLease    time.Duration `envconfig:"PRESENCE_LEASE" default:"30s" desc:"how long a presence entry lasts unless renewed: a crashed node's connections leave presence within this; more than RELAY_PRESENCE_INTERVAL"`

	// APIKeys are the keys of the HTTP API (POST /api/publish, docs/API.md);
	// a request sends one as Authorization: Bearer <key> or X-API-Key. More
	// than one lets operators rotate keys. None means the API is off: its
	// endpoints answer 404.
	APIKeys Secrets `envconfig:"API_KEY" desc:"comma-separated keys for the HTTP API (POST /api/publish), sent as Authorization: Bearer <key> or X-API-Key; empty = the HTTP API is off (404)"`
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
	if c.WriteDelay < 0 || c.WriteDelay > time.Second {
		errs = append(errs, fmt.Errorf("RELAY_WRITE_DELAY: %v; want 0 to 1s, such as 20ms", c.WriteDelay))
	}
	if c.PingInterval <= 0 {
		errs = append(errs, fmt.Errorf("RELAY_PING_INTERVAL: %v; want a positive duration such as 25s", c.PingInterval))
	}
	if c.PongTimeout <= 0 {
		errs = append(errs, fmt.Errorf("RELAY_PONG_TIMEOUT: %v; want a positive duration such as 10s", c.PongTimeout))
	}
	if c.DrainSeconds < 0 {
		errs = append(errs, fmt.Errorf("RELAY_DRAIN_SECONDS: %d; want 0 or more seconds", c.DrainSeconds))
	}
	if c.MaxConnections < 0 {
		errs = append(errs, fmt.Errorf("RELAY_MAX_CONNECTIONS: %d; want 0 (no limit) or more", c.MaxConnections))
	}
	if c.MaxConnectionsPerIP < 0 {
		errs = append(errs, fmt.Errorf("RELAY_MAX_CONNECTIONS_PER_IP: %d; want 0 (no limit) or more", c.MaxConnectionsPerIP))
	}
	if c.RawPublishRate < 0 {
		errs = append(errs, fmt.Errorf("RELAY_RAW_PUBLISH_RATE: %v; want 0 (no limit) or a positive rate per second", c.RawPublishRate))
	}
	if c.RawPublishRate > 0 && c.RawPublishBurst < 1 {
		errs = append(errs, fmt.Errorf("RELAY_RAW_PUBLISH_BURST: %d; want at least 1 when RELAY_RAW_PUBLISH_RATE is set", c.RawPublishBurst))
	}
	if c.ProtoMaxChannels < 0 {
		errs = append(errs, fmt.Errorf("RELAY_PROTO_MAX_CHANNELS: %d; want 0 (no limit) or more", c.ProtoMaxChannels))
	}
	if c.ProtoCommandRate < 0 {
		errs = append(errs, fmt.Errorf("RELAY_PROTO_COMMAND_RATE: %v; want 0 (no limit) or a positive rate per second", c.ProtoCommandRate))
	}
	if c.ProtoCommandRate > 0 && c.ProtoCommandBurst < 1 {
		errs = append(errs, fmt.Errorf("RELAY_PROTO_COMMAND_BURST: %d; want at least 1 when RELAY_PROTO_COMMAND_RATE is set", c.ProtoCommandBurst))
	}
	if c.ProtoMaxErrors < 0 {
		errs = append(errs, fmt.Errorf("RELAY_PROTO_MAX_ERRORS: %d; want 0 (never close) or more", c.ProtoMaxErrors))
	}
	if c.ProtoMaxErrors > 0 && c.ProtoErrorWindow <= 0 {
		errs = append(errs, fmt.Errorf("RELAY_PROTO_ERROR_WINDOW: %v; want a positive duration such as 10s when RELAY_PROTO_MAX_ERRORS is set", c.ProtoErrorWindow))
	}
	if c.HistorySize < 0 {
		errs = append(errs, fmt.Errorf("RELAY_HISTORY_SIZE: %d; want 0 (no history) or more messages", c.HistorySize))
	}
	if c.HistoryTTL < 0 || (c.HistoryTTL > 0 && c.HistoryTTL < time.Millisecond) {
		errs = append(errs, fmt.Errorf("RELAY_HISTORY_TTL: %v; want 0 (no history) or at least 1ms, such as 5m", c.HistoryTTL))
	}
	if c.IdempotencyWindow < 0 || (c.IdempotencyWindow > 0 && c.IdempotencyWindow < time.Millisecond) {
		errs = append(errs, fmt.Errorf("RELAY_IDEMPOTENCY_WINDOW: %v; want at least 1ms, such as 5m", c.IdempotencyWindow))
	}
	if c.HistoryRecoverMax < 0 {
		errs = append(errs, fmt.Errorf("RELAY_HISTORY_RECOVER_MAX: %d; want at least 1", c.HistoryRecoverMax))
	}
	if interval := c.presenceInterval(); interval < time.Millisecond {
		errs = append(errs, fmt.Errorf("RELAY_PRESENCE_INTERVAL: %v; want at least 1ms, such as 10s", c.PresenceInterval))
	} else if c.presenceLease() <= interval {
		errs = append(errs, fmt.Errorf("RELAY_PRESENCE_LEASE: %v; want more than RELAY_PRESENCE_INTERVAL (%v), such as 30s", c.PresenceLease, interval))
	}
	if c.HistoryCheckInterval < 0 || (c.HistoryCheckInterval > 0 && c.HistoryCheckInterval < 10*time.Millisecond) {
		errs = append(errs, fmt.Errorf("RELAY_HISTORY_CHECK_INTERVAL: %v; want 0 (off) or at least 10ms, such as 10s", c.HistoryCheckInterval))
	}
	for _, t := range c.AuthTokens {
		if t == "" || strings.ContainsAny(t, " \t\r\n,") {
			errs = append(errs, errors.New("RELAY_AUTH_TOKENS: a token is empty or has spaces"))
			break
		}
	}
	if c.TokenLeeway < 0 {
		errs = append(errs, fmt.Errorf("RELAY_TOKEN_LEEWAY: %v; want 0 or a positive duration such as 5s", c.TokenLeeway))
	}
	if c.TokenConnectTimeout < 0 {
		errs = append(errs, fmt.Errorf("RELAY_TOKEN_CONNECT_TIMEOUT: %v; want 0 or a positive duration such as 10s", c.TokenConnectTimeout))
	}
	if c.TokenRefreshGrace < 0 {
		errs = append(errs, fmt.Errorf("RELAY_TOKEN_REFRESH_GRACE: %v; want 0 or a positive duration such as 10s", c.TokenRefreshGrace))
	}
	for _, k := range c.APIKeys {
		if k == "" || strings.ContainsAny(k, " \t\r\n,") {
			errs = append(errs, errors.New("RELAY_API_KEY: a key is empty or has spaces"))
			break
		}
	}
	errs = append(errs, c.validateProxy()...)
	return errors.Join(errs...)
}

// Defaults of the zero PresenceInterval and PresenceLease.
const (
	defaultPresenceInterval = 10 * time.Second
	defaultPresenceLease    = 30 * time.Second
)

func (c *Config) presenceInterval() time.Duration {
	if c.PresenceInterval == 0 {
		return defaultPresenceInterval
	}
	return c.PresenceInterval
}

func (c *Config) presenceLease() time.Duration {
	if c.PresenceLease == 0 {
		return defaultPresenceLease
	}
	return c.PresenceLease
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

// Secret is a secret string that never shows in logs or %v.
type Secret string

// String hides the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[secret]"
}

// LogValue hides the secret from slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

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
