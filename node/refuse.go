package node

import (
	"net/http"
	"strings"

	"github.com/relay-pubsub/relay/node/protocol"
)

// refusalWriter sits between websocket.Accept and the client. Accept
// answers a handshake it refuses (wrong Sec-WebSocket-Version, a missing or
// malformed Sec-WebSocket-Key, HTTP/1.0, a cross-origin request) with
// http.Error, a text/plain body; refusalWriter holds that answer back so
// that the node can send it as every other refusal: a JSON {code, message}
// body, counted in relay_upgrades_refused_total. Headers Accept sets on a
// refusal (Sec-WebSocket-Version: 13) are kept.
type refusalWriter struct {
	http.ResponseWriter
	status int             // the refusal's status; 0 while none
	msg    strings.Builder // its text/plain body
}

func (w *refusalWriter) WriteHeader(status int) {
	if status < http.StatusBadRequest {
		w.ResponseWriter.WriteHeader(status)
		return
	}
	w.status = status
}

func (w *refusalWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		return w.ResponseWriter.Write(p)
	}
	if w.msg.Len() < 512 {
		w.msg.Write(p)
	}
	return len(p), nil
}

// Unwrap lets http.ResponseController (and so the hijack) reach the
// ResponseWriter of net/http.
func (w *refusalWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// answer sends the held-back refusal, if there is one, with n's refusal
// codes, and reports whether there was.
func (w *refusalWriter) answer(n *Node) bool {
	if w.status == 0 {
		return false
	}
	code := protocol.CodeBadRequest
	switch w.status {
	case http.StatusForbidden:
		code = protocol.CodeForbidden
	case http.StatusUpgradeRequired:
		code = protocol.CodeUpgradeRequired
	}
	n.refuse(w.ResponseWriter, w.status, code, strings.TrimSpace(w.msg.String()))
	return true
}
