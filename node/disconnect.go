package node

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// POST /api/disconnect closes every connection of a user on every node.
// The node that takes the request publishes it on controlChannel, which
// every node subscribes to while it serves; each closes its own
// connections of that user.

// controlChannel carries disconnect requests between nodes. Its name has
// protocol.ReservedPrefix, so no client can subscribe or publish to it.
const controlChannel = protocol.ReservedPrefix + ":control"

// errDisconnected closes the connections of a user the API disconnected.
var errDisconnected = &wsout.CloseError{Code: protocol.CloseDisconnected, Reason: "disconnected by the server: fetch a new token before reconnecting", Flush: true}

// controlMessage is a request on controlChannel.
type controlMessage struct {
	// Disconnect is the user whose connections close.
	Disconnect   string `json:"disconnect,omitempty"`
	controlExtra        // the other requests (api_control.go)
}

// runControl subscribes the node to controlChannel until the returned
// stop is called, retrying every second while the broker cannot
// subscribe; stop waits for it.
func (n *Node) runControl() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	n.cluster.ctx, n.cluster.announce = ctx, make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for warned := false; ; {
			unsub, err := n.broker.Subscribe(ctx, controlChannel, n.onControl)
			if err == nil {
				if warned {
					n.log.Info("control channel subscribed")
				}
				n.announceLoop(ctx)
				unsub()
				n.cluster.work.Wait() // no request starts after unsub
				return
			}
			if errors.Is(err, pubsub.ErrClosed) || ctx.Err() != nil {
				return
			}
			if !warned {
				n.log.Warn("control channel: subscribe failed; POST /api/disconnect from other nodes does not reach this one until it succeeds", "err", err)
				warned = true
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
	return func() { cancel(); <-done }
}

// onControl runs a request from controlChannel, on the broker's goroutine:
// it closes connections, which does not block.
func (n *Node) onControl(m pubsub.Message) {
	var cm controlMessage
	if err := json.Unmarshal(m.Payload, &cm); err != nil || (cm.Disconnect == "" && !n.onControlExtra(cm.controlExtra)) {
		n.log.Warn("control channel: a message that is not a request", "origin", m.Origin)
		return
	}
	if cm.Disconnect == "" {
		return // onControlExtra ran it
	}
	closed := 0
	n.mu.Lock()
	for c := range n.conns {
		if c.sess.user() == cm.Disconnect {
			c.close(errDisconnected)
			closed++
		}
	}
	n.mu.Unlock()
	n.log.Info("user disconnected", "conns", closed, "requested_by", m.Origin)
}

// disconnect runs POST /api/disconnect, {"user":"alice"}: it returns once
// the broker holds the request; every node then closes that user's
// connections with 4004.
func (a *api) disconnect(ctx context.Context, body []byte) (any, *apiError) {
	fields, perr := decodeObject(body, "body", "", "user")
	if perr != nil {
		return nil, perr
	}
	raw, ok := fields["user"]
	var user string
	if !ok || raw[0] != '"' || json.Unmarshal(raw, &user) != nil || user == "" {
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, `field "user" must be a non-empty string (a token's sub)`)
	}
	payload, _ := json.Marshal(controlMessage{Disconnect: user})
	if err := a.n.broker.Publish(ctx, controlChannel, pubsub.Message{Origin: a.n.id, Payload: payload}); err != nil {
		if errors.Is(err, pubsub.ErrUnavailable) || errors.Is(err, pubsub.ErrClosed) || errors.Is(err, context.Canceled) {
			return nil, newAPIError(http.StatusServiceUnavailable, protocol.CodeUnavailable, "the broker is unavailable, try again later")
		}
		a.n.log.Error("api disconnect failed", "err", err)
		return nil, newAPIError(http.StatusInternalServerError, protocol.CodeInternal, "internal error")
	}
	return struct{}{}, nil
}
