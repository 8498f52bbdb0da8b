package node

import (
	"net/http"

	"github.com/relay-pubsub/relay/node/protocol"
)

// GET /api/presence?channel=c and GET /api/presence_stats?channel=c
// (docs/API.md): the presence of a channel, for backends, with the API
// key. The backend may read every channel's.

// presence answers GET /api/presence, or with stats /api/presence_stats
// (a GET endpoint: api_get.go checks the method and the key).
func (a *api) presence(r *http.Request, stats bool) (any, *apiError) {
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
