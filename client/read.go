package client

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/relay-pubsub/relay/node/protocol"
)

// HistoryPage is one page of a channel's history: its messages in order,
// and the channel's position when it was read.
type HistoryPage struct {
	Messages []Message
	// Offset and Epoch are the channel's latest offset and its epoch.
	Offset uint64
	Epoch  string
	// More is true when messages after the last one exist: read the next
	// page from the last message's offset.
	More bool
}

// HistoryOptions chooses what History reads.
type HistoryOptions struct {
	// Limit is the most messages to return: 1 to 1000; 0 means the node's
	// default (100).
	Limit int
	// Since, when Epoch is set, reads the messages after Offset in that
	// epoch, oldest first; otherwise History reads the latest Limit
	// messages.
	Since struct {
		Offset uint64
		Epoch  string
	}
}

// History reads the history of channel (the history command): the
// connection must be allowed to subscribe to it, and its namespace must
// keep history. A node answer is returned as an *Error, such as
// no_history, bad_position or not_recovered (the epoch changed: the
// client's state of the channel is stale).
func (c *Client) History(ctx context.Context, channel string, opts HistoryOptions) (HistoryPage, error) {
	cmd := protocol.Command{Cmd: protocol.CmdHistory, Channel: channel}
	if opts.Limit != 0 {
		cmd.Limit = &opts.Limit
	}
	if opts.Since.Epoch != "" {
		cmd.Since = &protocol.Since{Offset: opts.Since.Offset, Epoch: opts.Since.Epoch}
	}
	var res protocol.HistoryResult
	if err := c.read(ctx, cmd, &res); err != nil {
		return HistoryPage{}, err
	}
	page := HistoryPage{Offset: res.Offset, Epoch: res.Epoch, More: res.More, Messages: make([]Message, 0, len(res.Messages))}
	for _, raw := range res.Messages {
		var o serverObject
		if err := json.Unmarshal(raw, &o); err != nil {
			return HistoryPage{}, err
		}
		page.Messages = append(page.Messages, Message{Channel: o.Channel, Data: o.Data, Binary: o.Binary, Offset: o.Offset})
	}
	return page, nil
}

// Presence lists the connections subscribed to channel across the
// cluster (the presence command), where its namespace keeps presence;
// otherwise the node answers no_presence, returned as an *Error.
func (c *Client) Presence(ctx context.Context, channel string) ([]protocol.ClientInfo, error) {
	var res protocol.PresenceResult
	if err := c.read(ctx, protocol.Command{Cmd: protocol.CmdPresence, Channel: channel}, &res); err != nil {
		return nil, err
	}
	return res.Clients, nil
}

// PresenceStats counts the connections subscribed to channel across the
// cluster and their distinct users (the presence_stats command).
func (c *Client) PresenceStats(ctx context.Context, channel string) (protocol.PresenceStatsResult, error) {
	var res protocol.PresenceStatsResult
	err := c.read(ctx, protocol.Command{Cmd: protocol.CmdPresenceStats, Channel: channel}, &res)
	return res, err
}

// read runs cmd, a command that changes nothing, and decodes its result
// into v. A connection lost before the answer is retried on the next
// connection: reading twice is harmless.
func (c *Client) read(ctx context.Context, cmd protocol.Command, v any) error {
	if err := protocol.ValidChannel(cmd.Channel); err != nil {
		return &Error{Code: protocol.CodeInvalidChannel, Message: err.Error()}
	}
	for {
		s, err := c.session(ctx)
		if err != nil {
			return err
		}
		_, result, err := s.callResult(ctx, cmd)
		if errors.Is(err, errConnLost) {
			continue
		}
		if err != nil {
			return err
		}
		return json.Unmarshal(result, v)
	}
}
