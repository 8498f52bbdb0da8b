package node

import (
	"github.com/relay-pubsub/relay/pubsub"
)

// historyOf returns the history options of channel and whether it keeps
// history: its namespace's history_size and history_ttl when the namespace
// file gives them (a missing TTL is RELAY_HISTORY_TTL), else
// RELAY_HISTORY_SIZE and RELAY_HISTORY_TTL. A broker that keeps no history
// keeps none for any channel.
func (n *Node) historyOf(channel string) (pubsub.Historian, pubsub.HistoryOptions, bool) {
	h, ok := n.broker.(pubsub.Historian)
	if !ok {
		return nil, pubsub.HistoryOptions{}, false
	}
	opts := pubsub.HistoryOptions{Size: n.cfg.HistorySize, TTL: n.cfg.HistoryTTL}
	if ns := n.namespaces.For(channel); ns.HistorySet {
		opts.Size = ns.HistorySize
		if ns.HistoryTTL > 0 {
			opts.TTL = ns.HistoryTTL
		}
	}
	return h, opts, opts.Size > 0 && opts.TTL > 0
}
