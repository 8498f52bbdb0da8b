package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// The HTTP API for backends: POST /api/publish and POST /api/publish/batch
// here, the other endpoints in disconnect.go and api_*.go, all
// authenticated with an API key (RELAY_API_KEY). docs/API.md is the
// contract; these files and it must agree.

const (
	// apiTimeout bounds one API request: its body must arrive within it,
	// and a batch stops publishing when it has passed.
	apiTimeout = 10 * time.Second
	// maxBatchMessages bounds the messages of one batch.
	maxBatchMessages = 1000
	// batchBodyFactor bounds a batch's body: this many times
	// RELAY_MAX_MESSAGE_BYTES.
	batchBodyFactor = 16
)

// api serves the HTTP API of a node. It holds no state of its own besides
// the key digests and a counter, so it is safe for concurrent use.
type api struct {
	n *Node
	// keys holds the digests of RELAY_API_KEY; none means the API is off.
	keys     *authenticator
	requests *prometheus.CounterVec
}

// newAPI returns the API handler of n and registers its metrics.
func newAPI(n *Node) *api {
	a := &api{
		n:    n,
		keys: newAuthenticator(n.cfg.APIKeys),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_api_requests_total",
			Help: "HTTP API requests (/api/...), by HTTP status.",
		}, []string{"status"}),
	}
	n.metrics.reg.MustRegister(a.requests)
	for _, status := range []int{200, 400, 401, 413, 503} {
		a.requests.WithLabelValues(strconv.Itoa(status))
	}
	return a
}

// apiError is an error answer of the API: an HTTP status and the body.
type apiError struct {
	status int
	protocol.Error
	// Published is the count of a batch's messages published before it
	// stopped; only batch errors that may follow a publish carry it.
	Published *int `json:"published,omitempty"`
}

func newAPIError(status int, code protocol.Code, format string, args ...any) *apiError {
	return &apiError{status: status, Error: protocol.Error{Code: code, Message: fmt.Sprintf(format, args...)}}
}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Relay-Node", a.n.id)
	result, err := a.serve(w, r)
	status := http.StatusOK
	if err != nil {
		status = err.status
		switch status {
		case http.StatusUnauthorized:
			w.Header().Set("WWW-Authenticate", `Bearer realm="relay"`)
		case http.StatusMethodNotAllowed:
			if w.Header().Get("Allow") == "" {
				w.Header().Set("Allow", http.MethodPost)
			}
		case http.StatusServiceUnavailable:
			w.Header().Set("Retry-After", "1")
		}
	}
	a.requests.WithLabelValues(strconv.Itoa(status)).Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // a JSON body, never HTML: "<key>" stays readable
	if err != nil {
		enc.Encode(err)
		return
	}
	enc.Encode(struct {
		Result any `json:"result"`
	}{result})
}

// serve runs the request and returns the result of a success or the error.
func (a *api) serve(w http.ResponseWriter, r *http.Request) (any, *apiError) {
	if !a.keys.enabled() {
		return nil, newAPIError(http.StatusNotFound, protocol.CodeNotFound,
			"the HTTP API is off on this node: set RELAY_API_KEY to turn it on")
	}
	if get := a.getEndpoint(r.URL.Path); get != nil {
		return a.serveGet(w, r, get)
	}
	var batch, disconnect bool
	var handle func(context.Context, []byte) (any, *apiError) // endpoints of api_*.go
	switch r.URL.Path {
	case "/api/publish":
	case "/api/publish/batch":
		batch = true
	case "/api/disconnect":
		disconnect = true
	case "/api/broadcast":
		handle, batch = a.broadcast, true // a batch's body limit
	case "/api/subscribe":
		handle = a.serverSubscribe
	case "/api/unsubscribe":
		handle = a.serverUnsubscribe
	default:
		return nil, newAPIError(http.StatusNotFound, protocol.CodeNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	}
	if r.Method != http.MethodPost {
		return nil, newAPIError(http.StatusMethodNotAllowed, protocol.CodeBadRequest,
			"method %s not allowed: use POST %s", r.Method, r.URL.Path)
	}
	if !a.authorized(r) {
		return nil, newAPIError(http.StatusUnauthorized, protocol.CodeUnauthorized,
			"missing or invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>")
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return nil, newAPIError(http.StatusUnsupportedMediaType, protocol.CodeBadRequest,
			"Content-Type must be application/json")
	}

	// The deadline covers reading the body and, for a batch, publishing;
	// one publish is bounded by the broker (RELAY_REDIS_TIMEOUT).
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	http.NewResponseController(w).SetReadDeadline(deadline)
	limit := a.n.cfg.MaxMessageBytes
	if batch {
		limit *= batchBodyFactor
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, newAPIError(http.StatusRequestEntityTooLarge, protocol.CodeLimitExceeded,
				"body over %d bytes", limit)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest,
				"the body did not arrive within %v", apiTimeout)
		}
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, "reading the body: %v", err)
	}
	if disconnect {
		return a.disconnect(ctx, body)
	}
	if handle != nil {
		return handle(ctx, body)
	}
	if !batch {
		msg, err := a.decodeMessage(body, "")
		if err != nil {
			return nil, err
		}
		res, err := a.publish(msg)
		if err != nil {
			return nil, err
		}
		return publishResult(res), nil
	}
	msgs, perr := a.decodeBatch(body)
	if perr != nil {
		return nil, perr
	}
	dups := 0
	for i, m := range msgs {
		var perr *apiError
		if ctx.Err() != nil {
			perr = newAPIError(http.StatusServiceUnavailable, protocol.CodeUnavailable,
				"the request's deadline (%v) passed", apiTimeout)
		} else {
			var res protocol.PublishResult
			res, perr = a.publish(m)
			if res.Duplicate {
				dups++
			}
		}
		if perr != nil {
			perr.Message += fmt.Sprintf("; published %d of %d messages", i, len(msgs))
			perr.Published = &i
			return nil, perr
		}
	}
	return struct {
		Published  int `json:"published"`
		Duplicates int `json:"duplicates,omitempty"`
	}{len(msgs), dups}, nil
}

// authorized reports whether r carries an API key in X-API-Key or, without
// that header, in Authorization: Bearer. As for tokens, fixed-size digests
// are compared in constant time, with every key.
func (a *api) authorized(r *http.Request) bool {
	key := r.Header.Get("X-API-Key")
	if key == "" {
		h := strings.TrimSpace(r.Header.Get("Authorization"))
		if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			key = h[7:]
		}
	}
	key = strings.TrimSpace(key)
	if key == "" {
		return false
	}
	d := sha256.Sum256([]byte(key))
	ok := 0
	for i := range a.keys.digests {
		ok |= subtle.ConstantTimeCompare(d[:], a.keys.digests[i][:])
	}
	return ok == 1
}

// apiMessage is one message to publish.
type apiMessage struct {
	channel string
	data    []byte // compact JSON
	// exclude, when set, is the client id of a connection that does not get
	// the message (exclude_client): its node and connection number.
	excludeNode string
	excludeConn uint64
	// key is the idempotency_key; empty for none.
	key string
}

// decodeBatch parses the body of a batch: {"messages":[message, ...]}.
func (a *api) decodeBatch(body []byte) ([]apiMessage, *apiError) {
	fields, err := decodeObject(body, "body", "", "messages")
	if err != nil {
		return nil, err
	}
	raw, ok := fields["messages"]
	if !ok {
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, `missing field "messages"`)
	}
	var elems []json.RawMessage
	if raw[0] != '[' {
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, `field "messages" must be an array`)
	}
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, "messages: %v", err)
	}
	if len(elems) > maxBatchMessages {
		return nil, newAPIError(http.StatusRequestEntityTooLarge, protocol.CodeLimitExceeded,
			"%d messages; at most %d in a batch", len(elems), maxBatchMessages)
	}
	msgs := make([]apiMessage, 0, len(elems))
	for i, e := range elems {
		m, err := a.decodeMessage(e, fmt.Sprintf("messages[%d]: ", i))
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// decodeMessage parses one message, {"channel":"c","data":<JSON>} with an
// optional "exclude_client"; the messages of its errors start with where.
func (a *api) decodeMessage(b []byte, where string) (apiMessage, *apiError) {
	what := "body"
	if where != "" {
		what = "message"
	}
	fields, err := decodeObject(b, what, where, "channel", "data", "exclude_client", "idempotency_key")
	if err != nil {
		return apiMessage{}, err
	}
	bad := func(format string, args ...any) (apiMessage, *apiError) {
		return apiMessage{}, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, where+format, args...)
	}
	ch, ok := fields["channel"]
	if !ok {
		return bad(`missing field "channel"`)
	}
	var m apiMessage
	if ch[0] != '"' || json.Unmarshal(ch, &m.channel) != nil {
		return bad(`field "channel" must be a string`)
	}
	if err := protocol.ValidChannel(m.channel); err != nil {
		return apiMessage{}, newAPIError(http.StatusBadRequest, protocol.CodeInvalidChannel, "%s%v", where, err)
	}
	if ex, ok := fields["exclude_client"]; ok {
		var id string
		if ex[0] != '"' || json.Unmarshal(ex, &id) != nil {
			return bad(`field "exclude_client" must be a string`)
		}
		if m.excludeNode, m.excludeConn, ok = parseClientID(id); !ok {
			return bad(`exclude_client %q is not a client id (the "client" of a connect reply, such as node-1/42)`, id)
		}
	}
	if k, ok := fields["idempotency_key"]; ok {
		if k[0] != '"' || json.Unmarshal(k, &m.key) != nil {
			return bad(`field "idempotency_key" must be a string`)
		}
		if err := protocol.ValidIdempotencyKey(m.key); err != nil {
			return bad("%v", err)
		}
	}
	data, ok := fields["data"]
	if !ok {
		return bad(`missing field "data"`)
	}
	var buf bytes.Buffer
	buf.Grow(len(data))
	if err := json.Compact(&buf, data); err != nil {
		return bad("data: %v", err) // unreachable: the body was valid JSON
	}
	if limit := a.n.cfg.MaxMessageBytes; int64(buf.Len()) > limit {
		return apiMessage{}, newAPIError(http.StatusRequestEntityTooLarge, protocol.CodeLimitExceeded,
			"%sdata is %d bytes; at most %d (RELAY_MAX_MESSAGE_BYTES)", where, buf.Len(), limit)
	}
	m.data = buf.Bytes()
	return m, nil
}

// decodeObject parses b, a JSON object with no fields but known, into its
// raw fields; of a field given twice the last counts. Field names are
// exact. The messages of its errors start with where and call b what.
func decodeObject(b []byte, what, where string, known ...string) (map[string]json.RawMessage, *apiError) {
	bad := func(format string, args ...any) (map[string]json.RawMessage, *apiError) {
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, where+format, args...)
	}
	if !utf8.Valid(b) {
		return bad("%s is not valid UTF-8", what)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		var se *json.SyntaxError
		switch {
		case errors.As(err, &se):
			return bad("invalid JSON: %v", se)
		case errors.As(err, new(*json.UnmarshalTypeError)):
			return bad("%s must be a JSON object", what)
		}
		return bad("invalid JSON")
	}
	if fields == nil { // null
		return bad("%s must be a JSON object", what)
	}
	var unknown []string
	for k := range fields {
		if !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown) // a stable answer
		quoted := make([]string, len(known))
		for i, k := range known {
			quoted[i] = strconv.Quote(k)
		}
		return bad("unknown field %q; known are %s", unknown[0], strings.Join(quoted, ", "))
	}
	return fields, nil
}

// publish publishes m as a protocol-mode publish from no connection, so
// every subscriber on every node gets it, and maps a broker error to its
// answer: unavailable (503) when the broker cannot take it now, internal
// (500) otherwise. With exclude_client the message is published as if
// that connection had sent it: every node's hub skips a connection's own
// messages (unless it asked for echo).
func (a *api) publish(m apiMessage) (protocol.PublishResult, *apiError) {
	msg := pubsub.Message{Origin: a.n.id, Payload: m.data}
	if m.excludeNode != "" {
		msg.Origin, msg.Conn = m.excludeNode, m.excludeConn
	}
	var res protocol.PublishResult
	var err error
	if m.key != "" {
		res, err = a.n.publishOnce(m.channel, msg, m.key)
	} else {
		err = a.n.publish(m.channel, msg)
	}
	if err == nil {
		return res, nil
	}
	return res, a.brokerError("api publish failed", m.channel, err)
}

// brokerError maps a broker error of a publish to its answer:
// unknown_outcome (504) when it may have been published, unavailable
// (503) when the broker cannot take it now, internal (500) otherwise.
func (a *api) brokerError(msg, channel string, err error) *apiError {
	if errors.Is(err, pubsub.ErrOutcomeUnknown) {
		a.n.log.Debug(msg, "channel", channel, "err", err)
		return newAPIError(http.StatusGatewayTimeout, protocol.CodeUnknownOutcome, outcomeUnknown)
	}
	if errors.Is(err, pubsub.ErrUnavailable) || errors.Is(err, pubsub.ErrClosed) || errors.Is(err, context.Canceled) {
		// A Redis outage is the broker's to report, not once per request.
		a.n.log.Debug(msg, "channel", channel, "err", err)
		return newAPIError(http.StatusServiceUnavailable, protocol.CodeUnavailable, "the broker is unavailable, try again later")
	}
	a.n.log.Error(msg, "channel", channel, "err", err)
	return newAPIError(http.StatusInternalServerError, protocol.CodeInternal, "internal error")
}
