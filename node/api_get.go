package node

import (
	"context"
	"net/http"

	"github.com/relay-pubsub/relay/node/protocol"
)

// The GET endpoints of the HTTP API: their parameters are in the query
// string, and they change nothing.

// getEndpoint returns the handler of the GET endpoint path, nil for none.
func (a *api) getEndpoint(path string) func(context.Context, *http.Request) (any, *apiError) {
	switch path {
	case "/api/history":
		return a.history
	case "/api/channels":
		return a.channels
	case "/api/presence":
		return func(_ context.Context, r *http.Request) (any, *apiError) { return a.presence(r, false) }
	case "/api/presence_stats":
		return func(_ context.Context, r *http.Request) (any, *apiError) { return a.presence(r, true) }
	}
	return nil
}

// serveGet runs a GET endpoint: the checks of serve, in the same order,
// then get with the request's deadline.
func (a *api) serveGet(w http.ResponseWriter, r *http.Request, get func(context.Context, *http.Request) (any, *apiError)) (any, *apiError) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return nil, newAPIError(http.StatusMethodNotAllowed, protocol.CodeBadRequest,
			"method %s not allowed: use GET %s", r.Method, r.URL.Path)
	}
	if !a.authorized(r) {
		return nil, newAPIError(http.StatusUnauthorized, protocol.CodeUnauthorized,
			"missing or invalid API key: send Authorization: Bearer <key> or X-API-Key: <key>")
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	return get(ctx, r)
}
