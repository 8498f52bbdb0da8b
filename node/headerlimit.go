package node

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/relay-pubsub/relay/node/protocol"
)

// Request header limits. net/http refuses headers over its MaxHeaderBytes
// itself, with a text/plain 431 written before any handler runs; so the
// server lets through up to hardHeaderBytes (net/http adds 4 KiB of slack
// to it) and limitHeaders refuses anything over maxHeaderBytes with the
// JSON body and the count every other refusal gets.
const (
	// maxHeaderBytes bounds the head of a request: its request line and
	// header lines (docs/PROTOCOL.md).
	maxHeaderBytes = 16 << 10
	// hardHeaderBytes is the server's MaxHeaderBytes.
	hardHeaderBytes = 64 << 10
)

// limitHeaders answers 431 limit_exceeded to a request whose line and
// headers are over maxHeaderBytes, counting it in
// relay_upgrades_refused_total when it asks for a WebSocket endpoint.
func (n *Node) limitHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		size := headerSize(r)
		if size <= maxHeaderBytes {
			h.ServeHTTP(w, r)
			return
		}
		msg := fmt.Sprintf("request line and headers of %d bytes; at most %d", size, maxHeaderBytes)
		if p := r.URL.Path; p == "/ws" || strings.HasPrefix(p, "/ws/") || p == "/echo" {
			n.refuse(w, http.StatusRequestHeaderFieldsTooLarge, protocol.CodeLimitExceeded, msg)
			return
		}
		writeError(w, http.StatusRequestHeaderFieldsTooLarge, protocol.CodeLimitExceeded, msg)
	})
}

// headerSize is the length of the head of r as a client sends it: the
// request line, the header lines and the blank line that ends them, CRLFs
// included (spaces around header values as net/http trims them).
func headerSize(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + 1 + len(r.Proto) + 2 + 2
	if r.Host != "" {
		n += len("Host: ") + len(r.Host) + 2
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n
}
