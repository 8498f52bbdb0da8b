package protocol

import "encoding/json"

// The presence commands: who is subscribed to a channel whose namespace
// keeps presence (docs/PROTOCOL.md, "Presence").
const (
	// CmdPresence lists the connections subscribed to a channel.
	CmdPresence = "presence"
	// CmdPresenceStats counts them: clients and distinct users.
	CmdPresenceStats = "presence_stats"
)

// CodeNoPresence answers presence and presence_stats on a channel whose
// namespace keeps no presence.
const CodeNoPresence Code = "no_presence"

// ClientInfo is one connection in a presence list, and the subject of a
// join push.
type ClientInfo struct {
	// Client is the connection's id (as in a connect reply).
	Client string `json:"client"`
	// User is the token's sub; absent for a connection without one.
	User string `json:"user,omitempty"`
	// Node is the ID of the node that serves the connection.
	Node string `json:"node"`
	// Info is the token's info claim; absent when it has none.
	Info json.RawMessage `json:"info,omitempty"`
}

// PresenceResult is the result of presence: the clients in no particular
// order.
type PresenceResult struct {
	Clients []ClientInfo `json:"clients"`
}

// PresenceStatsResult is the result of presence_stats.
type PresenceStatsResult struct {
	// NumClients counts the connections subscribed.
	NumClients int `json:"num_clients"`
	// NumUsers counts their distinct user ids; connections without one do
	// not count.
	NumUsers int `json:"num_users"`
}

// JoinPush tells a subscriber that a user (or a connection without one)
// subscribed to the channel: {"join":{"channel":"c","client":…}}.
type JoinPush struct {
	Join struct {
		Channel string `json:"channel"`
		ClientInfo
	} `json:"join"`
}

// LeavePush tells a subscriber that a user's last connection left the
// channel (and did not come back within the grace), or that a connection
// without a user did: {"leave":{"channel":"c","user":"alice"}}.
type LeavePush struct {
	Leave struct {
		Channel string `json:"channel"`
		// User is set for a user's leave, Client for a connection
		// without a user.
		User   string `json:"user,omitempty"`
		Client string `json:"client,omitempty"`
	} `json:"leave"`
}

// AppendJoin appends the join push of ci on channel to dst. ci.Info must
// be valid compact JSON, or nil.
func AppendJoin(dst []byte, channel string, ci ClientInfo) []byte {
	dst = append(dst, `{"join":{"channel":`...)
	dst = AppendString(dst, channel)
	dst = append(dst, `,"client":`...)
	dst = AppendString(dst, ci.Client)
	if ci.User != "" {
		dst = append(dst, `,"user":`...)
		dst = AppendString(dst, ci.User)
	}
	dst = append(dst, `,"node":`...)
	dst = AppendString(dst, ci.Node)
	if len(ci.Info) > 0 {
		dst = append(dst, `,"info":`...)
		dst = append(dst, ci.Info...)
	}
	return append(dst, "}}"...)
}

// AppendLeave appends the leave push of user, or of client when user is
// empty, on channel to dst.
func AppendLeave(dst []byte, channel, user, client string) []byte {
	dst = append(dst, `{"leave":{"channel":`...)
	dst = AppendString(dst, channel)
	if user != "" {
		dst = append(dst, `,"user":`...)
		dst = AppendString(dst, user)
	} else {
		dst = append(dst, `,"client":`...)
		dst = AppendString(dst, client)
	}
	return append(dst, "}}"...)
}
