package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/relay-pubsub/relay/node/protocol"
)

// POST /api/broadcast: one message to many channels, each published as
// POST /api/publish would, with a result per channel.

const (
	// maxBroadcastChannels bounds the channels of one broadcast.
	maxBroadcastChannels = 1000
	// broadcastParallel bounds the publishes of one broadcast in flight:
	// enough to fill the broker's pipelines.
	broadcastParallel = 32
)

// BroadcastResult is one channel's result in a broadcast's answer: its
// publish result, or its error.
type broadcastResult struct {
	Channel string `json:"channel"`
	protocol.PublishResult
	Error *protocol.Error `json:"error,omitempty"`
}

// broadcast runs POST /api/broadcast, {"channels":[...],"data":<JSON>}
// with the optional fields of a publish.
func (a *api) broadcast(ctx context.Context, body []byte) (any, *apiError) {
	fields, perr := decodeObject(body, "body", "", "channels", "data", "exclude_client", "idempotency_key")
	if perr != nil {
		return nil, perr
	}
	raw, ok := fields["channels"]
	if !ok {
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, `missing field "channels"`)
	}
	var elems []json.RawMessage
	if raw[0] != '[' || json.Unmarshal(raw, &elems) != nil {
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, `field "channels" must be an array of channel names`)
	}
	if len(elems) == 0 {
		return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, `field "channels" is empty: give at least one channel`)
	}
	if len(elems) > maxBroadcastChannels {
		return nil, newAPIError(http.StatusRequestEntityTooLarge, protocol.CodeLimitExceeded,
			"%d channels; at most %d in a broadcast", len(elems), maxBroadcastChannels)
	}
	channels := make([]string, len(elems))
	seen := make(map[string]bool, len(elems))
	for i, e := range elems {
		if e[0] != '"' || json.Unmarshal(e, &channels[i]) != nil {
			return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, "channels[%d] must be a string", i)
		}
		if err := protocol.ValidChannel(channels[i]); err != nil {
			return nil, newAPIError(http.StatusBadRequest, protocol.CodeInvalidChannel, "channels[%d]: %v", i, err)
		}
		if seen[channels[i]] {
			return nil, newAPIError(http.StatusBadRequest, protocol.CodeBadRequest, "channels[%d]: %q is given twice", i, channels[i])
		}
		seen[channels[i]] = true
	}
	// The other fields are those of a publish: decoded as one, once.
	delete(fields, "channels")
	fields["channel"] = elems[0]
	one, _ := json.Marshal(fields) // cannot fail: raw JSON values
	tmpl, perr := a.decodeMessage(one, "")
	if perr != nil {
		return nil, perr
	}

	results := make([]broadcastResult, len(channels))
	var wg sync.WaitGroup
	sem := make(chan struct{}, broadcastParallel)
	for i, ch := range channels {
		results[i].Channel = ch
		if ctx.Err() != nil {
			results[i].Error = &protocol.Error{Code: protocol.CodeUnavailable, Message: fmt.Sprintf("the request's deadline (%v) passed", apiTimeout)}
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			m := tmpl
			m.channel = ch
			res, perr := a.publish(m)
			results[i].PublishResult = res
			if perr != nil {
				results[i].Error = &perr.Error
			}
		})
	}
	wg.Wait()
	failed := 0
	for _, r := range results {
		if r.Error != nil {
			failed++
		}
	}
	return struct {
		Published int               `json:"published"`
		Failed    int               `json:"failed"`
		Results   []broadcastResult `json:"results"`
	}{len(channels) - failed, failed, results}, nil
}
