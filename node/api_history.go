package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/relay-pubsub/relay/node/protocol"
	"github.com/relay-pubsub/relay/pubsub"
)

// Reading a channel's history: the protocol-mode history command and GET
// /api/history. Both answer a protocol.HistoryResult: the latest messages,
// or those after an offset, bounded in count and bytes; a client pages on
// from the last offset while "more" is true.

const (
	// defaultHistoryLimit is the limit of a history read that gives none.
	defaultHistoryLimit = 100
	// maxHistoryLimit bounds the limit of one history read.
	maxHistoryLimit = 1000
	// maxHistoryBytes bounds the messages of one history answer: it stops
	// before a message that would take it over, but always holds one. In
	// protocol mode the bound is at most a quarter of RELAY_QUEUE_BYTES,
	// so that a reply never makes its own connection a slow consumer.
	maxHistoryBytes = 256 << 10
)

// historyError is an error of a history read, with its HTTP status.
type historyError struct {
	status int
	protocol.Error
}

func newHistoryError(status int, code protocol.Code, format string, args ...any) *historyError {
	return &historyError{status: status, Error: protocol.Error{Code: code, Message: fmt.Sprintf(format, args...)}}
}

// readHistory reads channel's history: with since, the messages after it
// in the same epoch; without, the latest limit messages; at most maxBytes
// of them.
func (n *Node) readHistory(ctx context.Context, channel string, since *protocol.Since, limit *int, maxBytes int) (*protocol.HistoryResult, *historyError) {
	lim := defaultHistoryLimit
	if limit != nil {
		lim = *limit
	}
	if lim > maxHistoryLimit {
		return nil, newHistoryError(http.StatusBadRequest, protocol.CodeLimitExceeded, "limit %d is above the maximum, %d", lim, maxHistoryLimit)
	}
	hist, opts, ok := n.historyOf(channel)
	if !ok {
		return nil, newHistoryError(http.StatusBadRequest, protocol.CodeNoHistory, "channel %q keeps no history", channel)
	}
	var from uint64
	if since != nil {
		from = since.Offset
	} else {
		// The latest: where the channel stands, then the messages up to there.
		_, pos, err := hist.History(ctx, channel, opts, 0, 0)
		if err != nil {
			return nil, n.historyBrokerError(channel, err)
		}
		from = pos.Offset - min(pos.Offset, uint64(lim))
	}
	// One more than asked, to tell whether more follow.
	msgs, pos, err := hist.History(ctx, channel, opts, from, lim+1)
	if err != nil {
		return nil, n.historyBrokerError(channel, err)
	}
	if since != nil {
		if since.Epoch != pos.Epoch {
			return nil, newHistoryError(http.StatusConflict, protocol.CodeNotRecovered,
				"channel %q is at epoch %q now, not %q: offsets of another epoch mean nothing in it; read without since", channel, pos.Epoch, since.Epoch)
		}
		if since.Offset > pos.Offset {
			return nil, newHistoryError(http.StatusConflict, protocol.CodeBadPosition,
				"offset %d is beyond the latest of channel %q, %d", since.Offset, channel, pos.Offset)
		}
	}
	res := &protocol.HistoryResult{Offset: pos.Offset, Epoch: pos.Epoch, Messages: []json.RawMessage{}}
	size := 0
	for i, m := range msgs {
		b := appendHistoryPush(nil, channel, m)
		if i == lim || (i > 0 && size+len(b) > maxBytes) {
			res.More = true
			break
		}
		size += len(b)
		res.Messages = append(res.Messages, b)
	}
	return res, nil
}

// appendHistoryPush appends m as the push it was delivered as.
func appendHistoryPush(dst []byte, channel string, m pubsub.Message) []byte {
	binary := m.Binary || (m.Origin == "" && !utf8.Valid(m.Payload))
	return protocol.AppendPushAt(dst, channel, m.Offset, m.Payload, binary)
}

// historyBrokerError is the answer of a history read the broker failed.
func (n *Node) historyBrokerError(channel string, err error) *historyError {
	n.log.Debug("history failed", "channel", channel, "err", err)
	return newHistoryError(http.StatusServiceUnavailable, protocol.CodeUnavailable, "the broker is unavailable, try again later")
}

// runHistory runs the protocol-mode history command and queues its reply,
// or returns its error reply. The connection must be allowed to subscribe
// to the channel (by its token, or by the backend proxy when that decides
// subscriptions).
func (n *Node) runHistory(c *conn, cmd protocol.Command) *protocol.Error {
	if perr := n.allowSubscribe(n.ctx, c, cmd.Channel, "read the history of"); perr != nil {
		return perr
	}
	ctx, cancel := context.WithTimeout(n.ctx, apiTimeout)
	defer cancel()
	res, herr := n.readHistory(ctx, cmd.Channel, cmd.Since, cmd.Limit, min(maxHistoryBytes, n.cfg.QueueBytes/4))
	if herr != nil {
		return &herr.Error
	}
	b, _ := json.Marshal(res) // cannot fail: the messages are valid JSON
	queueResult(c, cmd.ID, b)
	return nil
}

// history runs GET /api/history?channel=c[&limit=n][&since=offset&epoch=e].
func (a *api) history(ctx context.Context, r *http.Request) (any, *apiError) {
	q := r.URL.Query()
	bad := func(code protocol.Code, format string, args ...any) (any, *apiError) {
		return nil, newAPIError(http.StatusBadRequest, code, format, args...)
	}
	channel := q.Get("channel")
	if !q.Has("channel") {
		return bad(protocol.CodeBadRequest, "missing query parameter channel")
	}
	if err := protocol.ValidChannel(channel); err != nil {
		return bad(protocol.CodeInvalidChannel, "%v", err)
	}
	var limit *int
	if q.Has("limit") {
		n, err := strconv.ParseUint(q.Get("limit"), 10, 31)
		if err != nil {
			return bad(protocol.CodeBadRequest, "limit: want an integer from 0 to %d", maxHistoryLimit)
		}
		l := int(n)
		limit = &l
	}
	since, err := rawSince(r)
	if err != nil {
		return bad(protocol.CodeBadRequest, "%v", err)
	}
	res, herr := a.n.readHistory(ctx, channel, since, limit, maxHistoryBytes)
	if herr != nil {
		return nil, &apiError{status: herr.status, Error: herr.Error}
	}
	return res, nil
}
