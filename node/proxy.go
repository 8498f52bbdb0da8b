package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/relay-pubsub/relay/node/auth"
	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/node/protocol"
)

// The backend proxy (docs/AUTH.md, "Backend proxy"): HTTP calls from the
// node to the app's backend on connect, subscribe and publish. Each event
// is proxied once, by the node that has the connection, on the goroutine
// that handles the event (the upgrade's handler, or the connection's
// reader): a slow backend holds up the connections waiting for it, no
// other.

// proxyEvent names a proxied event in requests, metrics and logs.
type proxyEvent string

const (
	eventConnect   proxyEvent = "connect"
	eventSubscribe proxyEvent = "subscribe"
	eventPublish   proxyEvent = "publish"
)

// What became of a proxy call: the metric's result label.
const (
	resultAllow       = "allow"
	resultDeny        = "deny"
	resultUnavailable = "unavailable"
	resultError       = "error"
)

// maxProxyMessage bounds the message of a refusal from the backend, in
// bytes; a longer one is cut.
const maxProxyMessage = 256

// maxProxyUser bounds the user id a connect answer gives, in bytes.
const maxProxyUser = 255

// The errors of a proxy call that got no usable answer. Their messages
// say nothing of the backend: the log and the metrics do.
var (
	errProxyUnavailable = &protocol.Error{Code: protocol.CodeProxyUnavailable, Message: "the backend did not answer, try again later"}
	errProxyAnswer      = &protocol.Error{Code: protocol.CodeProxyError, Message: "the backend's answer was not understood"}
)

// Why the node closes a connection for the proxy: protocol mode after a
// refused connect, raw mode after a refused publish (whose reason says
// more: rawPublishError).
var errProxyRefused = &wsout.CloseError{Code: protocol.CloseTokenInvalid, Reason: "connect refused by the backend: log in again before reconnecting", Flush: true}

// proxy calls the app's backend. A nil *proxy makes no call.
type proxy struct {
	connectURL, subscribeURL, publishURL string

	// client is shared by every call, so that connections to the backend
	// are reused; its timeout bounds a call from dial to the last byte.
	client *http.Client
	// headers are the canonical names of the forwarded headers; cookies
	// the names of the forwarded cookies, all of them when allCookies.
	headers    []string
	cookies    map[string]bool
	allCookies bool
	// maxBody bounds an answer.
	maxBody int64

	requests *prometheus.CounterVec // by event and result
	log      *slog.Logger
	warn     *rate.Sometimes // failed calls are logged at most this often
}

// newProxy returns the proxy of cfg, or nil when cfg sets no proxy URL.
// Either way it registers relay_proxy_requests_total on reg, every series
// at zero, so that dashboards and alerts find it. cfg is valid.
func newProxy(cfg Config, log *slog.Logger, reg prometheus.Registerer) *proxy {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "relay_proxy_requests_total",
		Help: "Calls to the backend proxy, by event (connect, subscribe, publish) and result (allow, deny, unavailable, error).",
	}, []string{"event", "result"})
	reg.MustRegister(requests)
	for _, ev := range []proxyEvent{eventConnect, eventSubscribe, eventPublish} {
		for _, result := range []string{resultAllow, resultDeny, resultUnavailable, resultError} {
			requests.WithLabelValues(string(ev), result)
		}
	}
	if cfg.ProxyConnectURL == "" && cfg.ProxySubscribeURL == "" && cfg.ProxyPublishURL == "" {
		return nil
	}
	p := &proxy{
		requests:     requests,
		connectURL:   cfg.ProxyConnectURL,
		subscribeURL: cfg.ProxySubscribeURL,
		publishURL:   cfg.ProxyPublishURL,
		maxBody:      64<<10 + 2*cfg.MaxMessageBytes, // data may come base64-encoded
		cookies:      make(map[string]bool),
		log:          log.With("component", "proxy"),
		warn:         &rate.Sometimes{First: 1, Interval: 10 * time.Second},
	}
	p.client = &http.Client{
		Transport: &http.Transport{
			// No HTTP_PROXY: the backend is the app's own, and what the
			// calls carry (cookies) must go to it alone.
			Proxy:                  nil,
			DialContext:            (&net.Dialer{Timeout: cfg.ProxyTimeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:    cfg.ProxyTimeout,
			ResponseHeaderTimeout:  cfg.ProxyTimeout,
			MaxResponseHeaderBytes: 16 << 10,
			// Every call goes to one of three URLs, usually on one host:
			// keep enough idle connections that a burst of connects does
			// not dial anew for each.
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   true,
		},
		Timeout: cfg.ProxyTimeout,
		// A redirect would send the forwarded cookies elsewhere: a 3xx is
		// an answer the node does not understand.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	for _, h := range cfg.ProxyHeaders {
		if h = strings.TrimSpace(h); h != "" {
			p.headers = append(p.headers, http.CanonicalHeaderKey(h))
		}
	}
	for _, c := range cfg.ProxyCookies {
		switch c = strings.TrimSpace(c); c {
		case "":
		case "*":
			p.allCookies = true
		default:
			p.cookies[c] = true
		}
	}
	var events []proxyEvent
	for ev, u := range map[proxyEvent]string{eventConnect: p.connectURL, eventSubscribe: p.subscribeURL, eventPublish: p.publishURL} {
		if u != "" {
			events = append(events, ev)
		}
	}
	slices.Sort(events)
	// URLs are not logged: they may carry a key.
	p.log.Info("backend proxy on", "events", events, "headers", p.headers, "cookies", len(p.cookies) > 0 || p.allCookies)
	return p
}

// connects, subscribes and publishes report whether p calls the backend
// for that event.
func (p *proxy) connects() bool   { return p != nil && p.connectURL != "" }
func (p *proxy) subscribes() bool { return p != nil && p.subscribeURL != "" }
func (p *proxy) publishes() bool  { return p != nil && p.publishURL != "" }

// close closes the idle connections to the backend; the node calls it
// once no call can start.
func (p *proxy) close() {
	if p != nil {
		p.client.CloseIdleConnections()
	}
}

// validateProxy reports the invalid proxy settings of c.
func (c *Config) validateProxy() []error {
	var errs []error
	for _, u := range []struct{ name, url string }{
		{"RELAY_PROXY_CONNECT_URL", c.ProxyConnectURL},
		{"RELAY_PROXY_SUBSCRIBE_URL", c.ProxySubscribeURL},
		{"RELAY_PROXY_PUBLISH_URL", c.ProxyPublishURL},
	} {
		if u.url == "" {
			continue
		}
		// The value is not quoted back: it may carry a key.
		if pu, err := url.Parse(u.url); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			errs = append(errs, fmt.Errorf("%s: want an http:// or https:// URL", u.name))
		}
	}
	if c.ProxyTimeout <= 0 && (c.ProxyConnectURL != "" || c.ProxySubscribeURL != "" || c.ProxyPublishURL != "") {
		errs = append(errs, fmt.Errorf("RELAY_PROXY_TIMEOUT: %v; want a positive duration such as 1s", c.ProxyTimeout))
	}
	for _, h := range c.ProxyHeaders {
		h = http.CanonicalHeaderKey(strings.TrimSpace(h))
		switch {
		case h == "": // a trailing comma
		case h == "Cookie":
			errs = append(errs, errors.New("RELAY_PROXY_HEADERS: Cookie: name the cookies to forward in RELAY_PROXY_COOKIES instead"))
		case !validToken(h):
			errs = append(errs, fmt.Errorf("RELAY_PROXY_HEADERS: %q is not a header name", h))
		case slices.Contains(ownHeaders, h) || strings.HasPrefix(h, "Sec-Websocket-") || strings.HasPrefix(h, "Proxy-"):
			errs = append(errs, fmt.Errorf("RELAY_PROXY_HEADERS: %s belongs to the connection, not the client; it cannot be forwarded", h))
		}
	}
	cookies := false
	for _, name := range c.ProxyCookies {
		switch name = strings.TrimSpace(name); {
		case name == "": // a trailing comma
			continue
		case name != "*" && !validToken(name):
			errs = append(errs, fmt.Errorf("RELAY_PROXY_COOKIES: %q is not a cookie name", name))
		}
		cookies = true
	}
	if cookies {
		for _, o := range c.Origins {
			if anyOrigin(o) {
				errs = append(errs, fmt.Errorf("RELAY_PROXY_COOKIES with RELAY_ORIGINS=%s: a page of any site could use its visitors' cookies through the proxy (cross-site WebSocket hijacking); list your pages' origins in RELAY_ORIGINS, or leave it empty for same-origin pages only", o))
				break
			}
		}
	}
	return errs
}

// ownHeaders are the headers of the upgrade request or the proxy call
// itself, never forwarded.
var ownHeaders = []string{"Host", "Connection", "Upgrade", "Content-Length", "Content-Type", "Transfer-Encoding",
	"Te", "Trailer", "Keep-Alive", "Accept-Encoding", "Origin"}

// validToken reports whether s is an HTTP token (RFC 9110 5.6.2), the
// form of header and cookie names.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", r)) {
			return false
		}
	}
	return true
}

// anyOrigin reports whether the RELAY_ORIGINS pattern p lets in pages of
// any site (*, *://*): it matches a host no deployment names.
func anyOrigin(p string) bool {
	p = strings.ToLower(strings.TrimSpace(p))
	for _, probe := range []string{"relay-origin-probe.invalid", "https://relay-origin-probe.invalid"} {
		if ok, _ := path.Match(p, probe); ok {
			return true
		}
	}
	return false
}

// originAllowed applies websocket.Accept's origin rule to r: no Origin
// (not a browser), an Origin whose host is the request's Host, or one that
// a RELAY_ORIGINS pattern matches (host, or scheme://host for a pattern
// with "://"). The node checks it before any proxy call, so that a page of
// another site never makes the node forward a visitor's cookies.
func originAllowed(r *http.Request, patterns []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

// forwarded returns the headers of r that p forwards: those named in
// RELAY_PROXY_HEADERS, and a Cookie header of the cookies named in
// RELAY_PROXY_COOKIES. Never logged.
func (p *proxy) forwarded(r *http.Request) http.Header {
	h := make(http.Header, len(p.headers)+1)
	for _, name := range p.headers {
		if v := r.Header.Values(name); len(v) > 0 {
			h[name] = slices.Clone(v)
		}
	}
	if !p.allCookies && len(p.cookies) == 0 {
		return h
	}
	var b strings.Builder
	for _, c := range r.Cookies() {
		if p.allCookies || p.cookies[c.Name] {
			if b.Len() > 0 {
				b.WriteString("; ")
			}
			b.WriteString(c.String())
		}
	}
	if b.Len() > 0 {
		h.Set("Cookie", b.String())
	}
	return h
}

// proxyRequest is the JSON body of every proxy call (docs/AUTH.md).
type proxyRequest struct {
	Client  string `json:"client"`
	Mode    mode   `json:"mode"`
	User    string `json:"user,omitempty"`
	Channel string `json:"channel,omitempty"`
	// Data is what a protocol-mode client publishes (JSON); B64Data what a
	// raw-mode client does (any bytes, base64 in JSON), Binary when it
	// sent a binary frame.
	Data    json.RawMessage `json:"data,omitempty"`
	B64Data []byte          `json:"b64data,omitempty"`
	Binary  bool            `json:"binary,omitempty"`
}

// checker is a result that checks itself once decoded: an error makes
// the answer one the node does not understand (proxy_error).
type checker interface{ check() error }

// connectResult is the result of a connect answer that allows.
type connectResult struct {
	User     string          `json:"user"`
	Channels []string        `json:"channels"`
	Publish  []string        `json:"publish"`
	Info     json.RawMessage `json:"info"`
	ExpireAt int64           `json:"expire_at"` // Unix seconds; 0: never
}

func (r *connectResult) check() error {
	switch {
	case len(r.User) > maxProxyUser:
		return fmt.Errorf("user over %d bytes", maxProxyUser)
	case r.ExpireAt < 0:
		return errors.New("negative expire_at")
	case r.ExpireAt > 0 && !time.Unix(r.ExpireAt, 0).After(time.Now()):
		return errors.New("expire_at has passed")
	}
	if string(r.Info) == "null" {
		r.Info = nil
	}
	return nil
}

// identity is the identity the result gives.
func (r *connectResult) identity() *auth.Identity {
	var exp time.Time
	if r.ExpireAt > 0 {
		exp = time.Unix(r.ExpireAt, 0)
	}
	return auth.NewIdentity(r.User, r.Channels, r.Publish, r.Info, exp)
}

// proxyPublishAnswer is the result of a backend publish answer that allows: data (any
// JSON value but null) or b64data (bytes), when given, replace what the
// client published. check sets typ and payload to what is published.
type proxyPublishAnswer struct {
	Data    json.RawMessage `json:"data"`
	B64Data []byte          `json:"b64data"`

	// Set before the call: what the client published, whether it is a
	// raw-mode client, and the largest payload.
	typ     websocket.MessageType
	payload []byte
	raw     bool
	max     int64
}

func (r *proxyPublishAnswer) check() error {
	var replaced []byte
	switch {
	case len(r.Data) > 0 && string(r.Data) != "null":
		replaced = r.Data
		r.typ = websocket.MessageText
	case r.B64Data != nil && r.raw:
		if r.typ == websocket.MessageText && !utf8.Valid(r.B64Data) {
			return errors.New("b64data replaces a text message with bytes that are not UTF-8")
		}
		r.payload = r.B64Data
	case r.B64Data != nil:
		replaced = r.B64Data
	default:
		return nil
	}
	if replaced != nil {
		// Protocol mode needs compact JSON: it joins pushes with newlines.
		var buf bytes.Buffer
		if err := json.Compact(&buf, replaced); err != nil {
			return errors.New("the replaced data is not JSON")
		}
		r.payload = buf.Bytes()
	}
	if int64(len(r.payload)) > r.max {
		return fmt.Errorf("the replaced data is over RELAY_MAX_MESSAGE_BYTES (%d bytes)", r.max)
	}
	return nil
}

// call POSTs req to url with the forwarded headers h and decodes the
// "result" of an answer that allows into res (nil: ignored). It returns
// nil when the backend allowed, else the error for the client: the
// backend's refusal, proxy_unavailable or proxy_error.
func (p *proxy) call(ctx context.Context, ev proxyEvent, url string, h http.Header, req proxyRequest, res any) *protocol.Error {
	perr, result, err := p.do(ctx, url, h, req, res)
	p.requests.WithLabelValues(string(ev), result).Inc()
	if err != nil {
		// err names neither the URL nor what was forwarded.
		p.warn.Do(func() { p.log.Warn("proxy call failed", "event", ev, "code", perr.Code, "err", err) })
	}
	return perr
}

// do makes one call: it returns the client's error, the metric's result,
// and why the call failed (nil when the backend answered).
func (p *proxy) do(ctx context.Context, url string, h http.Header, req proxyRequest, res any) (*protocol.Error, string, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return errProxyAnswer, resultError, fmt.Errorf("encode request: %w", err)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return errProxyAnswer, resultError, errors.New("bad proxy URL")
	}
	for k, v := range h {
		hr.Header[k] = v
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("User-Agent", "relay")
	resp, err := p.client.Do(hr)
	if err != nil {
		return errProxyUnavailable, resultUnavailable, withoutURL(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, p.maxBody+1))
	switch {
	case err != nil:
		return errProxyUnavailable, resultUnavailable, fmt.Errorf("read answer: %w", withoutURL(err))
	case resp.StatusCode >= 500:
		return errProxyUnavailable, resultUnavailable, fmt.Errorf("answer status %d", resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return errProxyAnswer, resultError, fmt.Errorf("answer status %d, want 200", resp.StatusCode)
	case int64(len(data)) > p.maxBody:
		return errProxyAnswer, resultError, fmt.Errorf("answer over %d bytes", p.maxBody)
	}
	var ans struct {
		Result json.RawMessage `json:"result"`
		Error  json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(data, &ans); err != nil || !isObject(data) {
		return errProxyAnswer, resultError, errors.New("answer is not a JSON object")
	}
	hasResult, hasError := isObject(ans.Result), len(ans.Error) > 0 && string(ans.Error) != "null"
	switch {
	case hasError && !hasResult:
		refusal, err := decodeRefusal(ans.Error)
		if err != nil {
			return errProxyAnswer, resultError, err
		}
		return refusal, resultDeny, nil
	case !hasResult || hasError:
		return errProxyAnswer, resultError, errors.New(`answer has not one of "result" (an object) and "error"`)
	}
	if res != nil {
		if err := json.Unmarshal(ans.Result, res); err != nil {
			return errProxyAnswer, resultError, fmt.Errorf("result: %w", err)
		}
		if c, ok := res.(checker); ok {
			if err := c.check(); err != nil {
				return errProxyAnswer, resultError, fmt.Errorf("result: %w", err)
			}
		}
	}
	return nil, resultAllow, nil
}

// withoutURL returns the error under a *url.Error, whose text quotes the
// URL.
func withoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func isObject(b json.RawMessage) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return len(b) > 0 && b[0] == '{'
}

// decodeRefusal reads the "error" of an answer that refuses:
// {"code":"...","message":"..."}, both optional. A code is 1 to 64
// characters of [a-z0-9_], starting with a letter; none is forbidden.
func decodeRefusal(b json.RawMessage) (*protocol.Error, error) {
	var e struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if !isObject(b) || json.Unmarshal(b, &e) != nil {
		return nil, errors.New(`"error" is not an object of strings code and message`)
	}
	if e.Code == "" {
		e.Code = string(protocol.CodeForbidden)
	}
	if !validCode(e.Code) {
		return nil, errors.New(`"error"."code" is not 1-64 characters of [a-z0-9_] starting with a letter`)
	}
	if e.Message == "" {
		e.Message = "refused by the backend"
	}
	if len(e.Message) > maxProxyMessage {
		e.Message = truncate(e.Message, maxProxyMessage)
	}
	return &protocol.Error{Code: protocol.Code(e.Code), Message: e.Message}, nil
}

func validCode(s string) bool {
	if len(s) > 64 || s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// truncate cuts s to at most n bytes, at a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// proxyRequest is the body of c's proxy calls about channel.
func (c *conn) proxyRequest(channel string) proxyRequest {
	return proxyRequest{Client: c.clientID(), Mode: c.mode, User: c.sess.id.User, Channel: channel}
}

// admitProxy runs the proxy calls of an upgrade that holds a connection
// slot (so that the slots bound the calls under way): connect, for a raw
// or echo connection that carries no token Relay checks (protocol mode
// asks at its connect command or first command: proxyConnectProto), and,
// in raw mode, the subscribe decision. It checks the origin first. On a
// refusal it has answered the request.
func (n *Node) admitProxy(w http.ResponseWriter, r *http.Request, c *conn) bool {
	if n.proxy == nil {
		return true
	}
	if !originAllowed(r, n.cfg.Origins) {
		n.refuse(w, http.StatusForbidden, protocol.CodeForbidden, "request Origin is not allowed: add it to RELAY_ORIGINS")
		return false
	}
	s := c.sess
	if s.pending != nil && c.mode != modeProto {
		id, perr := n.proxyConnect(r.Context(), c)
		if perr != nil {
			n.refuseProxy(w, perr)
			return false
		}
		// Not setIdentity: the session's timer starts when the connection
		// opens.
		s.id, s.name = id, id.User
	}
	if c.mode != modeRaw {
		return true
	}
	if perr := n.allowSubscribe(r.Context(), c, c.channel, "subscribe to"); perr != nil {
		n.refuseProxy(w, perr)
		return false
	}
	s.rawPublish = n.namespaces.For(c.channel).ClientPublish && (n.proxy.publishes() || s.id.MayPublish(n.namespaces, c.channel))
	return true
}

// refuseProxy answers an upgrade refused by the backend or by a failed
// proxy call.
func (n *Node) refuseProxy(w http.ResponseWriter, perr *protocol.Error) {
	status := http.StatusForbidden
	switch perr.Code {
	case protocol.CodeUnauthorized:
		status = http.StatusUnauthorized
	case protocol.CodeProxyUnavailable:
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "1")
	case protocol.CodeProxyError:
		status = http.StatusBadGateway
	}
	n.refuse(w, status, perr.Code, perr.Message)
}

// proxyConnect asks the backend who c is and returns its identity, or the
// error for the client. The forwarded headers are kept only until the
// backend has given an answer.
func (n *Node) proxyConnect(ctx context.Context, c *conn) (*auth.Identity, *protocol.Error) {
	s := c.sess
	var res connectResult
	if perr := n.proxy.call(ctx, eventConnect, n.proxy.connectURL, s.pending, c.proxyRequest(c.channel), &res); perr != nil {
		if perr.Code != protocol.CodeProxyUnavailable && perr.Code != protocol.CodeProxyError {
			s.pending = nil
		}
		return nil, perr
	}
	s.pending, s.proxied = nil, true
	return res.identity(), nil
}

// proxyConnectProto authenticates a protocol-mode connection that carried
// no token, at its connect command (without a token) or at its first
// command other than ping. A refusal closes the connection after its
// reply; a failed call leaves it as it was, to try again.
func (n *Node) proxyConnectProto(c *conn) *protocol.Error {
	id, perr := n.proxyConnect(n.ctx, c)
	if perr != nil {
		if perr.Code != protocol.CodeProxyUnavailable && perr.Code != protocol.CodeProxyError {
			c.proto.closing = errProxyRefused
		}
		return perr
	}
	c.sess.setIdentity(c, id)
	return nil
}

// allowSubscribe decides whether c may subscribe to channel: yes in a
// namespace open to anonymous subscribers; otherwise the backend decides
// when the subscribe proxy is on, else c's token. It returns the error for
// the client, whose refusal names what (such as "read the history of"):
// reading a channel's history or presence needs the right to subscribe.
func (n *Node) allowSubscribe(ctx context.Context, c *conn, channel, what string) *protocol.Error {
	if n.namespaces.For(channel).AnonymousSubscribe {
		return nil
	}
	if n.proxy.subscribes() {
		return n.proxy.call(ctx, eventSubscribe, n.proxy.subscribeURL, nil, c.proxyRequest(channel), nil)
	}
	if !c.sess.id.MaySubscribe(n.namespaces, channel) {
		return forbidden(what, channel)
	}
	return nil
}

// allowPublish decides whether a protocol-mode client c may publish data
// to channel, and returns the data to publish: never where the namespace
// keeps publishing to backends; otherwise the backend decides (and may
// replace the data) when the publish proxy is on, else c's token.
func (n *Node) allowPublish(c *conn, channel string, data json.RawMessage) (json.RawMessage, *protocol.Error) {
	if !n.namespaces.For(channel).ClientPublish {
		return nil, forbidden("publish to", channel)
	}
	if !n.proxy.publishes() {
		if !c.sess.id.MayPublish(n.namespaces, channel) {
			return nil, forbidden("publish to", channel)
		}
		return data, nil
	}
	req := c.proxyRequest(channel)
	req.Data = data
	res := proxyPublishAnswer{typ: websocket.MessageText, payload: data, max: n.cfg.MaxMessageBytes}
	if perr := n.proxy.call(n.ctx, eventPublish, n.proxy.publishURL, nil, req, &res); perr != nil {
		return nil, perr
	}
	return res.payload, nil
}

// proxyRawPublish asks the backend whether raw-mode client c may publish
// the message data of type typ, and returns the message to publish. A
// refusal or a failed call closes the connection: a raw-mode client has no
// error replies.
func (n *Node) proxyRawPublish(c *conn, typ websocket.MessageType, data []byte) (websocket.MessageType, []byte, error) {
	req := c.proxyRequest(c.channel)
	req.B64Data, req.Binary = data, typ == websocket.MessageBinary
	res := proxyPublishAnswer{typ: typ, payload: data, raw: true, max: n.cfg.MaxMessageBytes}
	if perr := n.proxy.call(n.ctx, eventPublish, n.proxy.publishURL, nil, req, &res); perr != nil {
		return typ, nil, rawPublishError(perr)
	}
	return res.typ, res.payload, nil
}

// rawPublishError is the close of a raw-mode connection whose publish the
// backend refused (1008, with its message) or could not decide (1013 when
// it did not answer, 1011 when its answer was not understood).
func rawPublishError(perr *protocol.Error) *wsout.CloseError {
	switch perr.Code {
	case protocol.CodeProxyUnavailable:
		return &wsout.CloseError{Code: protocol.CloseTryAgainLater, Reason: "proxy unavailable, try again later", Flush: true}
	case protocol.CodeProxyError:
		return &wsout.CloseError{Code: protocol.CloseInternalError, Reason: "proxy error", Flush: true}
	}
	// A close reason is at most 123 bytes.
	reason := "publish refused: " + string(perr.Code) + ": " + perr.Message
	return &wsout.CloseError{Code: protocol.ClosePolicyViolation, Reason: truncate(reason, 123), Flush: true}
}
