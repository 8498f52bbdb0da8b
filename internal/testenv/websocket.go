package testenv

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/internal/wsclient"
)

// DialWebSocket opens a bare WebSocket (package wsclient) to uri on addr
// (host:port), failing t when the handshake does not succeed within 10 s,
// and closes it at the end of the test. The connection reads first the
// bytes that came with the server's answer.
func DialWebSocket(t testing.TB, addr, uri string, o wsclient.Options) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, resp, err := wsclient.Dial(ctx, addr, uri, o)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial ws://%s%s: %v (HTTP %d)", addr, uri, err, status)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}
