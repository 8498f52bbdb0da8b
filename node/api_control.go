package node

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/relay-pubsub/relay/pubsub"
)

// Requests between nodes beyond disconnect, on controlChannel (see
// disconnect.go): membership announcements, channel surveys (GET
// /api/channels) and server-side subscriptions (POST /api/subscribe and
// /api/unsubscribe).
//
// Membership: a node announces itself with hello once its control
// subscription is live, with alive every announceInterval, and with bye
// when it stops; a node that hears another's hello announces itself at
// once, so that the newcomer (or a node that restarted) learns of it too. A
// node counts as a member while it was heard within memberTTL: one that
// vanished without a bye (SIGKILL, a cut link) is expected in surveys for
// up to that long, and reported missing.

const (
	// announceInterval is how often a node says it is alive.
	announceInterval = 10 * time.Second
	// memberTTL is how long a node counts as a member after it was last
	// heard.
	memberTTL = 3 * announceInterval
)

// controlExtra are the requests of controlChannel besides disconnect; a
// message carries one of them.
type controlExtra struct {
	// Hello, Alive and Bye announce the node so named: it started, is
	// still there, or stops.
	Hello string `json:"hello,omitempty"`
	Alive string `json:"alive,omitempty"`
	Bye   string `json:"bye,omitempty"`
	// Survey asks every node for its channels (api_channels.go).
	Survey *surveyRequest `json:"survey,omitempty"`
	// Subscribe and Unsubscribe change the subscriptions of a user's
	// connections (api_subscribe.go).
	Subscribe   *serverSub `json:"subscribe,omitempty"`
	Unsubscribe *serverSub `json:"unsubscribe,omitempty"`
}

// cluster is what a node knows of the others, from controlChannel. The
// goroutine of runControl owns announcing; members is under mu.
type cluster struct {
	mu      sync.Mutex
	members map[string]time.Time // node ID → when last heard

	// ctx ends when the control subscription stops; work are the
	// goroutines that run requests (they may use the broker, which the
	// handler may not), waited for then.
	ctx  context.Context
	work sync.WaitGroup
	// announce asks the announcer to say alive now (buffer 1).
	announce chan struct{}
}

// heard records that node is alive.
func (cl *cluster) heard(node string, now time.Time) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.members == nil {
		cl.members = make(map[string]time.Time)
	}
	cl.members[node] = now
}

// left forgets node.
func (cl *cluster) left(node string) {
	cl.mu.Lock()
	delete(cl.members, node)
	cl.mu.Unlock()
}

// expected returns the members heard within memberTTL and self, sorted.
func (cl *cluster) expected(self string, now time.Time) []string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	nodes := []string{self}
	for id, last := range cl.members {
		if now.Sub(last) > memberTTL {
			delete(cl.members, id)
		} else if id != self {
			nodes = append(nodes, id)
		}
	}
	slices.Sort(nodes)
	return nodes
}

// announceLoop announces the node until ctx ends, then says bye.
func (n *Node) announceLoop(ctx context.Context) {
	n.publishControl(ctx, controlMessage{controlExtra: controlExtra{Hello: n.id}})
	t := time.NewTicker(announceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			bctx, cancel := context.WithTimeout(context.Background(), time.Second)
			n.publishControl(bctx, controlMessage{controlExtra: controlExtra{Bye: n.id}})
			cancel()
			return
		case <-t.C:
		case <-n.cluster.announce:
		}
		n.publishControl(ctx, controlMessage{controlExtra: controlExtra{Alive: n.id}})
	}
}

// publishControl publishes cm on controlChannel; a failure is logged at
// debug level: the broker reports outages.
func (n *Node) publishControl(ctx context.Context, cm controlMessage) error {
	payload, _ := json.Marshal(cm) // cannot fail
	err := n.broker.Publish(ctx, controlChannel, pubsub.Message{Origin: n.id, Payload: payload})
	if err != nil {
		n.log.Debug("control channel: publish failed", "err", err)
	}
	return err
}

// onControlExtra runs a request of controlChannel other than disconnect,
// on the broker's goroutine, and reports whether there was one. Requests
// that use the broker or may wait run on a goroutine of n.cluster.work.
func (n *Node) onControlExtra(cx controlExtra) bool {
	now := time.Now()
	switch {
	case cx.Hello != "":
		if cx.Hello != n.id {
			n.cluster.heard(cx.Hello, now)
			select { // let the newcomer learn of this node
			case n.cluster.announce <- struct{}{}:
			default:
			}
		}
	case cx.Alive != "":
		n.cluster.heard(cx.Alive, now)
	case cx.Bye != "":
		n.cluster.left(cx.Bye)
	case cx.Survey != nil:
		req := *cx.Survey
		n.controlWork(func(ctx context.Context) { n.answerSurvey(ctx, req) })
	case cx.Subscribe != nil:
		req := *cx.Subscribe
		n.controlWork(func(context.Context) { n.subscribeUser(req, true) })
	case cx.Unsubscribe != nil:
		req := *cx.Unsubscribe
		n.controlWork(func(context.Context) { n.subscribeUser(req, false) })
	default:
		return false
	}
	return true
}

// controlWork runs f on a goroutine that the control subscription's stop
// waits for.
func (n *Node) controlWork(f func(ctx context.Context)) {
	n.cluster.work.Add(1)
	go func() {
		defer n.cluster.work.Done()
		f(n.cluster.ctx)
	}()
}
