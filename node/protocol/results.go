package protocol

import "encoding/json"

// PublishResult is the result of a publish with an idempotency key:
// {} on a channel without history, unless it was a duplicate.
type PublishResult struct {
	// Offset and Epoch are the message's position on a channel with
	// history: for a duplicate, those of the publish it repeats.
	Offset uint64 `json:"offset,omitempty"`
	Epoch  string `json:"epoch,omitempty"`
	// Duplicate is true when a publish with the same key on the same
	// channel took effect within the window: this one published nothing.
	Duplicate bool `json:"duplicate,omitempty"`
}

// HistoryResult is the result of history (and of GET /api/history): the
// channel's position and its messages after since (or the latest), oldest
// first.
type HistoryResult struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
	// Messages are pushes, {"channel":…,"offset":…,"data":…}, as the
	// messages were delivered.
	Messages []json.RawMessage `json:"messages"`
	// More is true when messages after the last one exist: read on from
	// the last offset.
	More bool `json:"more,omitempty"`
}

// SubscribedPush tells a protocol-mode client that the server subscribed
// it to a channel (POST /api/subscribe): from now on it gets its pushes.
// Offset and Epoch are the channel's position on a channel with history.
type SubscribedPush struct {
	Subscribed struct {
		Channel string `json:"channel"`
		Offset  uint64 `json:"offset,omitempty"`
		Epoch   string `json:"epoch,omitempty"`
	} `json:"subscribed"`
}

// UnsubscribedPush tells a protocol-mode client that the server
// unsubscribed it from a channel (POST /api/unsubscribe).
type UnsubscribedPush struct {
	Unsubscribed struct {
		Channel string `json:"channel"`
	} `json:"unsubscribed"`
}

// ChannelsResult is the result of GET /api/channels: the channels with
// subscribers on the nodes that answered, and who answered.
type ChannelsResult struct {
	Channels map[string]ChannelInfo `json:"channels"`
	// Nodes are the nodes that answered, sorted.
	Nodes []string `json:"nodes"`
	// Missing are the nodes known to be in the cluster that did not answer
	// in time: their subscribers are not counted.
	Missing []string `json:"missing,omitempty"`
	// Truncated is true when a node had more matching channels than it
	// answers with: some are left out.
	Truncated bool `json:"truncated,omitempty"`
}

// ChannelInfo is one channel of a ChannelsResult.
type ChannelInfo struct {
	// Subscribers counts the connections subscribed to the channel, in
	// raw and protocol mode, on the nodes that answered.
	Subscribers int `json:"subscribers"`
}
