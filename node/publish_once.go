package node

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/node/internal/wsout"
	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// defaultIdempotencyWindow is IdempotencyWindow when it is zero.
const defaultIdempotencyWindow = 5 * time.Minute

// errNoOnce is the error of a publish with an idempotency key through a
// broker that cannot publish idempotently (neither Memory nor Redis).
var errNoOnce = errors.New("the broker does not publish idempotently")

// publishOnce is publish with an idempotency key: a retry with the same
// key on the same channel within RELAY_IDEMPOTENCY_WINDOW publishes
// nothing, on any node, and is answered as a success, with the position of
// the first publish on a channel with history.
func (n *Node) publishOnce(channel string, m pubsub.Message, key string) (protocol.PublishResult, error) {
	o, ok := n.broker.(pubsub.OncePublisher)
	if !ok {
		return protocol.PublishResult{}, errNoOnce
	}
	start := time.Now()
	m.Time = start.UnixNano()
	var hist *pubsub.HistoryOptions
	if _, opts, ok := n.historyOf(channel); ok {
		hist = &opts
	}
	pos, dup, err := o.PublishOnce(n.ctx, channel, m, pubsub.Once{Key: key, Window: n.cfg.IdempotencyWindow}, hist)
	n.metrics.publishSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		n.metrics.publishErrors.Inc()
		return protocol.PublishResult{}, err
	}
	return protocol.PublishResult{Offset: pos.Offset, Epoch: pos.Epoch, Duplicate: dup}, nil
}

// publishResult is the JSON result of a publish: {} without a key.
func publishResult(res protocol.PublishResult) json.RawMessage {
	if res == (protocol.PublishResult{}) {
		return emptyResult
	}
	b, _ := json.Marshal(res) // cannot fail
	return b
}

// publishOnceReply runs a protocol-mode publish with an idempotency key,
// m, whose permission was checked, and queues its reply (its result
// carries the duplicate flag and the position); or returns its error
// reply.
func (n *Node) publishOnceReply(c *conn, cmd protocol.Command, m pubsub.Message) *protocol.Error {
	res, err := n.publishOnce(cmd.Channel, m, cmd.IdempotencyKey)
	if err != nil {
		return n.brokerError(c, "publish failed", cmd.Channel, err)
	}
	queueResult(c, cmd.ID, publishResult(res))
	return nil
}

// queueResult queues the success reply of a command that answers with a
// result of its own, and tells protoMessage that it did.
func queueResult(c *conn, id, result json.RawMessage) {
	if id != nil {
		c.out.Send(wsout.NewFrame(websocket.MessageText, protocol.AppendResult(nil, id, result)))
	}
	c.proto.replied = true
}
