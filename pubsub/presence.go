package pubsub

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// PresenceEntry is one connection present in a channel.
type PresenceEntry struct {
	// Client names the connection, unique in the cluster.
	Client string
	// User is the connection's user id; empty for a connection without
	// one, which counts as a client but not as a user.
	User string
	// Node is the ID of the node that serves the connection.
	Node string
	// Info is free data kept with the entry (the token's info claim),
	// nil for none.
	Info []byte
}

// PresenceOptions say how long presence entries live.
type PresenceOptions struct {
	// Lease is how long an entry stays after it was added or renewed; an
	// entry its node stops renewing (the node crashed) is gone after it.
	// It must be at least a millisecond.
	Lease time.Duration
	// Grace is how long a user whose last connection left the channel is
	// held before the leave is reported: a connection of the same user that
	// joins within it makes neither a leave nor a join. Zero reports the
	// leave at once. A user held in the grace does not count in the stats.
	Grace time.Duration
}

// PresenceUpdate adds or renews the entries of one channel.
type PresenceUpdate struct {
	Channel string
	Entries []PresenceEntry
	Opts    PresenceOptions
}

// PresenceChange is what a presence call changed that subscribers of the
// channel may be told: who joined and who left.
type PresenceChange struct {
	// Joined are the entries of the call whose user was not present
	// before (nor held in the grace), and the new entries without a user.
	Joined []PresenceEntry
	// Left are the users whose last entry went (removed or expired) and
	// whose grace has passed, and the entries without a user that went.
	Left []PresenceLeave
}

// PresenceLeave is one leave: of a user (User set), or of a connection
// without a user (Client set, User empty).
type PresenceLeave struct {
	User   string
	Client string
}

// PresenceStats count a channel's presence.
type PresenceStats struct {
	// Clients counts the entries.
	Clients int
	// Users counts the distinct non-empty user ids of the entries.
	Users int
}

// PresenceKeeper is implemented by brokers that keep the presence of
// channels, shared by every node of the broker: both Memory and Redis do.
// Which channels keep presence is the caller's choice.
//
// Every call first drops the channel's entries whose lease has passed and
// reports the leaves that causes, and those of users whose grace has
// passed, in its PresenceChange: exactly one call reports each leave.
// Reading the counts costs O(1) beside that.
type PresenceKeeper interface {
	// AddPresence adds or renews each update's entries, each kept for its
	// Opts.Lease from now, and returns the change of each update, in
	// order. An update without entries only drops what expired.
	AddPresence(ctx context.Context, updates []PresenceUpdate) ([]PresenceChange, error)
	// RemovePresence removes the entries of clients from channel.
	RemovePresence(ctx context.Context, channel string, clients []string, opts PresenceOptions) (PresenceChange, error)
	// Presence returns the entries of channel, in no particular order.
	Presence(ctx context.Context, channel string, opts PresenceOptions) ([]PresenceEntry, PresenceChange, error)
	// PresenceStats returns the counts of channel.
	PresenceStats(ctx context.Context, channel string, opts PresenceOptions) (PresenceStats, PresenceChange, error)
}

// checkPresence reports invalid PresenceOptions.
func checkPresence(opts PresenceOptions) error {
	if opts.Lease < time.Millisecond || opts.Grace < 0 {
		return fmt.Errorf("presence lease %v, grace %v: want a lease of at least 1ms and a grace of 0 or more", opts.Lease, opts.Grace)
	}
	return nil
}

// appendPresenceEntry appends the stored form of e (its client is the key):
// the length of the user, ':', the user, the length of the node, ':', the
// node, then the info. The Redis scripts read the user the same way.
func appendPresenceEntry(dst []byte, e PresenceEntry) []byte {
	dst = strconv.AppendInt(dst, int64(len(e.User)), 10)
	dst = append(dst, ':')
	dst = append(dst, e.User...)
	dst = strconv.AppendInt(dst, int64(len(e.Node)), 10)
	dst = append(dst, ':')
	dst = append(dst, e.Node...)
	return append(dst, e.Info...)
}

// parsePresenceEntry reads what appendPresenceEntry wrote, for client.
func parsePresenceEntry(client string, b []byte) (PresenceEntry, error) {
	e := PresenceEntry{Client: client}
	field := func() (string, bool) {
		i := 0
		for i < len(b) && i < 10 && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == 0 || i >= len(b) || b[i] != ':' || (i > 1 && b[0] == '0') { // as written: no leading zeros
			return "", false
		}
		n, err := strconv.Atoi(string(b[:i]))
		if err != nil || n > len(b)-i-1 {
			return "", false
		}
		s := string(b[i+1 : i+1+n])
		b = b[i+1+n:]
		return s, true
	}
	var ok1, ok2 bool
	e.User, ok1 = field()
	e.Node, ok2 = field()
	if !ok1 || !ok2 {
		return PresenceEntry{}, fmt.Errorf("presence entry of %q is malformed", client)
	}
	if len(b) > 0 {
		e.Info = b
	}
	return e, nil
}
