package node

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/node/protocol"
)

// POST /api/subscribe and POST /api/unsubscribe: server-side subscriptions
// of a user's protocol-mode connections, on every node, through
// controlChannel as disconnect does. Each node subscribes (or unsubscribes)
// its protocol-mode connections of the user that are open when the request
// arrives, and pushes {"subscribed":{...}} (or {"unsubscribed":{...}}) to
// each connection it changed. Raw-mode connections are bound to their one
// channel and are left alone.

// serverSub is a server-side subscribe or unsubscribe request.
type serverSub struct {
	User    string `json:"user"`
	Channel string `json:"channel"`
}

// serverSubscribe runs POST /api/subscribe, {"user":"alice","channel":"c"}.
func (a *api) serverSubscribe(ctx context.Context, body []byte) (any, *apiError) {
	req, err := decodeServerSub(body)
	if err != nil {
		return nil, err
	}
	return a.sendServerSub(ctx, controlExtra{Subscribe: &req})
}

// serverUnsubscribe runs POST /api/unsubscribe, {"user":"alice","channel":"c"}.
func (a *api) serverUnsubscribe(ctx context.Context, body []byte) (any, *apiError) {
	req, err := decodeServerSub(body)
	if err != nil {
		return nil, err
	}
	return a.sendServerSub(ctx, controlExtra{Unsubscribe: &req})
}

// sendServerSub publishes the request and answers once the broker holds it.
func (a *api) sendServerSub(ctx context.Context, cx controlExtra) (any, *apiError) {
	if err := a.n.publishControl(ctx, controlMessage{controlExtra: cx}); err != nil {
		return nil, a.controlError("api subscribe failed", err)
	}
	return struct{}{}, nil
}

func decodeServerSub(body []byte) (serverSub, *apiError) {
	fields, perr := decodeObject(body, "body", "", "user", "channel")
	if perr != nil {
		return serverSub{}, perr
	}
	var req serverSub
	raw, ok := fields["user"]
	if !ok || raw[0] != '"' || json.Unmarshal(raw, &req.User) != nil || req.User == "" {
		return req, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, `field "user" must be a non-empty string (a token's sub)`)
	}
	raw, ok = fields["channel"]
	if !ok {
		return req, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, `missing field "channel"`)
	}
	if raw[0] != '"' || json.Unmarshal(raw, &req.Channel) != nil {
		return req, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, `field "channel" must be a string`)
	}
	if err := protocol.ValidChannel(req.Channel); err != nil {
		return req, newAPIError(http.StatusBadRequest, protocol.CodeInvalidChannel, "%v", err)
	}
	return req, nil
}

// subscribeUser subscribes (or unsubscribes) the node's protocol-mode
// connections of req.User to req.Channel.
func (n *Node) subscribeUser(req serverSub, subscribe bool) {
	if protocol.ValidChannel(req.Channel) != nil || req.User == "" {
		n.log.Warn("control channel: a subscribe request that is not valid")
		return
	}
	var conns []*conn
	n.mu.Lock()
	for c := range n.conns {
		if c.proto != nil && c.sess.user() == req.User {
			conns = append(conns, c)
		}
	}
	n.mu.Unlock()
	changed := 0
	for _, c := range conns {
		var ok bool
		if subscribe {
			ok = n.serverSubscribe(c, req.Channel)
		} else {
			ok = n.serverUnsubscribe(c, req.Channel)
		}
		if ok {
			changed++
		}
	}
	n.log.Info("server-side subscription", "subscribe", subscribe, "channel", req.Channel, "conns", changed)
}

// serverSubscribe subscribes c to channel unless it is already, or has
// ended, and pushes the news to it. It reports whether it subscribed c.
// It holds c's subscription lock across the broker's subscribe: only c's
// own reader waits for it.
func (n *Node) serverSubscribe(c *conn, channel string) bool {
	p := c.proto
	p.subsMu.Lock()
	defer p.subsMu.Unlock()
	if p.ended {
		return false
	}
	if _, ok := p.subs[channel]; ok {
		return false
	}
	var push protocol.SubscribedPush
	push.Subscribed.Channel = channel
	if hist, opts, ok := n.historyOf(channel); ok {
		n.presence.join(c, channel) // present before the push, as in subscribe
		pos, _, finish, perr := n.recoverFor(c, channel, hist, opts, nil)
		if perr != nil {
			n.presence.leave(c, channel)
			return false // logged by recoverFor's brokerError
		}
		p.subs[channel] = struct{}{}
		push.Subscribed.Offset, push.Subscribed.Epoch = pos.Offset, pos.Epoch
		finish(jsonFrame(push))
		return true
	}
	if err := n.hub.subscribe(n.ctx, channel, c, nil); err != nil {
		n.brokerError(c, "server-side subscribe failed", channel, err)
		return false
	}
	p.subs[channel] = struct{}{}
	n.presence.join(c, channel)
	c.out.Send(jsonFrame(push))
	return true
}

// serverUnsubscribe unsubscribes c from channel, if it is subscribed, and
// pushes the news to it. It reports whether it unsubscribed c.
func (n *Node) serverUnsubscribe(c *conn, channel string) bool {
	p := c.proto
	p.subsMu.Lock()
	defer p.subsMu.Unlock()
	if _, ok := p.subs[channel]; !ok || p.ended {
		return false
	}
	delete(p.subs, channel)
	n.presence.leave(c, channel)
	n.hub.unsubscribe(channel, c)
	var push protocol.UnsubscribedPush
	push.Unsubscribed.Channel = channel
	c.out.Send(jsonFrame(push))
	return true
}

// jsonFrame is the text frame of v, a value that encodes without error.
func jsonFrame(v any) *wsout.Frame {
	b, _ := json.Marshal(v)
	return wsout.NewFrame(websocket.MessageText, b)
}
