package node

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/relay-pubsub/relay/node/protocol"
)

// GET /api/presence?channel=c and GET /api/presence_stats?channel=c
// (docs/API.md): the presence of a channel, for backends, with the API
// key. The backend may read every channel's.

// presenceHandler serves GET /api/presence, or /api/presence_stats with
// stats, answering as the rest of the API does.
func (a *api) presenceHandler(stats bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Relay-Node", a.n.id)
		result, err := a.presence(r, stats)
		status := http.StatusOK
		if err != nil {
			status = err.status
			switch status {
			case http.StatusUnauthorized:
				w.Header().Set("WWW-Authenticate", `Bearer realm="relay"`)
			case http.StatusMethodNotAllowed:
				w.Header().Set("Allow", http.MethodGet)
			case http.StatusServiceUnavailable:
				w.Header().Set("Retry-After", "1")
			}
		}
		a.requests.WithLabelValues(strconv.Itoa(status)).Inc()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(status)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		if err != nil {
			enc.Encode(err)
			return
		}
		enc.Encode(struct {
			Result any `json:"result"`
		}{result})
	})
}

// presence answers one presence request: the result, or the error.
func (a *api) presence(r *http.Request, stats bool) (any, *apiError) {
	if !a.keys.enabled() {
		return nil, newAPIError(http.StatusNotFound, protocol.CodeNotFound,
			"the HTTP API is off on this node: set RELAY_API_KEY to turn it on")
	}
	if r.Method != http.MethodGet {
		return nil, newAPIError(http.StatusMethodNotAllowed, protocol.CodeBadRequest,
			"method %s not allowed: use GET %s?channel=<channel>", r.Method, r.URL.Path)
	}
	if !a.authorized(r) {
		return nil, newAPIError(http.StatusUnauthorized, protocol.CodeUnauthorized,
			"missing or invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>")
	}
	q := r.URL.Query()
	if !q.Has("channel") {
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, "missing query parameter channel: GET %s?channel=<channel>", r.URL.Path)
	}
	channel := q.Get("channel")
	if err := protocol.ValidChannel(channel); err != nil {
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeInvalidChannel, "%v", err)
	}
	res, perr := a.n.readPresence(channel, stats)
	if perr != nil {
		status := http.StatusBadRequest
		switch perr.Code {
		case protocol.CodeUnavailable:
			status = http.StatusServiceUnavailable
		case protocol.CodeInternal:
			status = http.StatusInternalServerError
		}
		return nil, &apiError{status: status, Error: *perr}
	}
	return res, nil
}
