package pubsubtest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relay-pubsub/relay/pubsub"
)

// The presence cases of the conformance suite (pubsub.PresenceKeeper).

// presenceKeeper returns b as a PresenceKeeper, skipping t if it is none.
func presenceKeeper(t *testing.T, b pubsub.Broker) pubsub.PresenceKeeper {
	p, ok := b.(pubsub.PresenceKeeper)
	if !ok {
		t.Skipf("%T keeps no presence", b)
	}
	return p
}

var presOpts = pubsub.PresenceOptions{Lease: time.Minute}

// AddPresence adds entries to channel with opts, failing t on error, and
// returns the change.
func AddPresence(t testing.TB, p pubsub.PresenceKeeper, channel string, opts pubsub.PresenceOptions, entries ...pubsub.PresenceEntry) pubsub.PresenceChange {
	t.Helper()
	ch, err := p.AddPresence(t.Context(), []pubsub.PresenceUpdate{{Channel: channel, Entries: entries, Opts: opts}})
	if err != nil || len(ch) != 1 {
		t.Fatalf("AddPresence(%q) = %v, %v", channel, ch, err)
	}
	return ch[0]
}

func removePresence(t *testing.T, p pubsub.PresenceKeeper, channel string, opts pubsub.PresenceOptions, clients ...string) pubsub.PresenceChange {
	t.Helper()
	ch, err := p.RemovePresence(t.Context(), channel, clients, opts)
	if err != nil {
		t.Fatalf("RemovePresence(%q, %q) = %v", channel, clients, err)
	}
	return ch
}

func presenceStats(t *testing.T, p pubsub.PresenceKeeper, channel string, opts pubsub.PresenceOptions) (pubsub.PresenceStats, pubsub.PresenceChange) {
	t.Helper()
	st, ch, err := p.PresenceStats(t.Context(), channel, opts)
	if err != nil {
		t.Fatalf("PresenceStats(%q) = %v", channel, err)
	}
	return st, ch
}

// joinedOf and leftOf write a change compactly, sorted: "a", "c:n/1".
func joinedOf(ch pubsub.PresenceChange) string {
	var s []string
	for _, e := range ch.Joined {
		s = append(s, e.Client)
	}
	slices.Sort(s)
	return strings.Join(s, ",")
}

func leftOf(ch pubsub.PresenceChange) string {
	var s []string
	for _, l := range ch.Left {
		if l.User != "" {
			s = append(s, l.User)
		} else {
			s = append(s, "c:"+l.Client)
		}
	}
	slices.Sort(s)
	return strings.Join(s, ",")
}

func testPresenceList(t *testing.T, b pubsub.Broker) {
	p := presenceKeeper(t, b)
	a1 := pubsub.PresenceEntry{Client: "n1/1", User: "alice", Node: "n1", Info: []byte(`{"name":"Alice"}`)}
	a2 := pubsub.PresenceEntry{Client: "n2/1", User: "alice", Node: "n2"}
	bob := pubsub.PresenceEntry{Client: "n2/2", User: "bob", Node: "n2", Info: []byte(`"b:1"`)}
	anon := pubsub.PresenceEntry{Client: "n1/2", Node: "n1"}
	if ch := AddPresence(t, p, "pres:list", presOpts, a1, bob); joinedOf(ch) != "n1/1,n2/2" || len(ch.Left) != 0 {
		t.Errorf("first AddPresence changed joined %q left %q, want joined n1/1,n2/2", joinedOf(ch), leftOf(ch))
	}
	// A second connection of alice is no join; one without a user is.
	if ch := AddPresence(t, p, "pres:list", presOpts, a2, anon); joinedOf(ch) != "n1/2" {
		t.Errorf("AddPresence of alice's second connection and an anonymous one: joined %q, want n1/2", joinedOf(ch))
	}
	// Renewing is no join.
	if ch := AddPresence(t, p, "pres:list", presOpts, a1, a2, bob, anon); joinedOf(ch) != "" || len(ch.Left) != 0 {
		t.Errorf("renewal changed joined %q left %q, want nothing", joinedOf(ch), leftOf(ch))
	}
	entries, _, err := p.Presence(t.Context(), "pres:list", presOpts)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(entries, func(x, y pubsub.PresenceEntry) int { return strings.Compare(x.Client, y.Client) })
	want := []pubsub.PresenceEntry{a1, anon, a2, bob}
	if fmt.Sprintf("%q", entries) != fmt.Sprintf("%q", want) {
		t.Errorf("Presence = %q, want %q", entries, want)
	}
	if st, _ := presenceStats(t, p, "pres:list", presOpts); st != (pubsub.PresenceStats{Clients: 4, Users: 2}) {
		t.Errorf("PresenceStats = %+v, want 4 clients, 2 users", st)
	}
	// Channels are apart.
	if st, _ := presenceStats(t, p, "pres:other", presOpts); st != (pubsub.PresenceStats{}) {
		t.Errorf("PresenceStats of another channel = %+v, want none", st)
	}
}

func testPresenceRemove(t *testing.T, b pubsub.Broker) {
	p := presenceKeeper(t, b)
	AddPresence(t, p, "pres:rm", presOpts,
		pubsub.PresenceEntry{Client: "n/1", User: "alice"}, pubsub.PresenceEntry{Client: "n/2", User: "alice"},
		pubsub.PresenceEntry{Client: "n/3"})
	if ch := removePresence(t, p, "pres:rm", presOpts, "n/1"); len(ch.Left) != 0 {
		t.Errorf("removing one of alice's two connections: left %q, want nothing", leftOf(ch))
	}
	if st, _ := presenceStats(t, p, "pres:rm", presOpts); st != (pubsub.PresenceStats{Clients: 2, Users: 1}) {
		t.Errorf("PresenceStats = %+v, want 2 clients, 1 user", st)
	}
	if ch := removePresence(t, p, "pres:rm", presOpts, "n/2", "n/3", "n/9"); leftOf(ch) != "alice,c:n/3" {
		t.Errorf("removing the rest: left %q, want alice,c:n/3", leftOf(ch))
	}
	if st, _ := presenceStats(t, p, "pres:rm", presOpts); st != (pubsub.PresenceStats{}) {
		t.Errorf("PresenceStats after removing all = %+v, want none", st)
	}
}

func testPresenceGrace(t *testing.T, b pubsub.Broker) {
	p := presenceKeeper(t, b)
	long := pubsub.PresenceOptions{Lease: time.Minute, Grace: time.Minute}
	AddPresence(t, p, "pres:grace", long, pubsub.PresenceEntry{Client: "n1/1", User: "alice"})
	// alice leaves and comes back on another connection within the grace:
	// neither a leave nor a join.
	if ch := removePresence(t, p, "pres:grace", long, "n1/1"); len(ch.Left) != 0 {
		t.Errorf("remove within the grace: left %q, want nothing yet", leftOf(ch))
	}
	if st, _ := presenceStats(t, p, "pres:grace", long); st.Users != 0 {
		t.Errorf("a user held in the grace counts: %+v, want 0 users", st)
	}
	if ch := AddPresence(t, p, "pres:grace", long, pubsub.PresenceEntry{Client: "n2/1", User: "alice"}); len(ch.Joined) != 0 {
		t.Errorf("a return within the grace: joined %q, want nothing", joinedOf(ch))
	}
	// With a short grace, the leave comes once it has passed, reported by
	// exactly one call.
	short := pubsub.PresenceOptions{Lease: time.Minute, Grace: 20 * time.Millisecond}
	if ch := removePresence(t, p, "pres:grace", short, "n2/1"); len(ch.Left) != 0 {
		t.Errorf("remove: left %q, want nothing before the grace passed", leftOf(ch))
	}
	left := awaitLeaves(t, p, "pres:grace", short)
	if left != "alice" {
		t.Errorf("after the grace: left %q, want alice", left)
	}
	if _, ch := presenceStats(t, p, "pres:grace", short); len(ch.Left) != 0 {
		t.Errorf("a leave reported twice: %q", leftOf(ch))
	}
}

// awaitLeaves polls the stats of channel until a call reports leaves, and
// returns them. Expiry is time's doing: there is no event to await.
func awaitLeaves(t *testing.T, p pubsub.PresenceKeeper, channel string, opts pubsub.PresenceOptions) string {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		if _, ch := presenceStats(t, p, channel, opts); len(ch.Left) > 0 {
			return leftOf(ch)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leave on %q after %v", channel, wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testPresenceLease(t *testing.T, b pubsub.Broker) {
	p := presenceKeeper(t, b)
	// Entries of a live node, with a long lease, and of a node that stops
	// renewing: the lapsed ones go, and their leaves are reported.
	short := pubsub.PresenceOptions{Lease: 30 * time.Millisecond}
	if _, err := p.AddPresence(t.Context(), []pubsub.PresenceUpdate{
		{Channel: "pres:lease", Opts: presOpts, Entries: []pubsub.PresenceEntry{{Client: "live/1", User: "bob"}}},
		{Channel: "pres:lease", Opts: short, Entries: []pubsub.PresenceEntry{{Client: "dead/1", User: "alice"}, {Client: "dead/2"}}},
	}); err != nil {
		t.Fatal(err)
	}
	if left := awaitLeaves(t, p, "pres:lease", short); left != "alice,c:dead/2" {
		t.Errorf("after the lease: left %q, want alice,c:dead/2", left)
	}
	entries, _, err := p.Presence(t.Context(), "pres:lease", presOpts)
	if err != nil || len(entries) != 1 || entries[0].Client != "live/1" {
		t.Errorf("Presence after the lease = %q, %v; want only live/1", entries, err)
	}
	if st, _ := presenceStats(t, p, "pres:lease", presOpts); st != (pubsub.PresenceStats{Clients: 1, Users: 1}) {
		t.Errorf("PresenceStats after the lease = %+v, want 1 client, 1 user", st)
	}
}

func testPresenceMany(t *testing.T, b pubsub.Broker) {
	p := presenceKeeper(t, b)
	// One call renews many channels, as a node's refresh does.
	const n = 600
	updates := make([]pubsub.PresenceUpdate, n)
	for i := range updates {
		updates[i] = pubsub.PresenceUpdate{Channel: fmt.Sprintf("pres:many:%d", i), Opts: presOpts,
			Entries: []pubsub.PresenceEntry{{Client: fmt.Sprintf("n/%d", i), User: "u"}}}
	}
	changes, err := p.AddPresence(t.Context(), updates)
	if err != nil || len(changes) != n {
		t.Fatalf("AddPresence of %d channels = %d changes, %v", n, len(changes), err)
	}
	for i, ch := range changes {
		if len(ch.Joined) != 1 || ch.Joined[0].Client != fmt.Sprintf("n/%d", i) {
			t.Fatalf("change %d joined %q, want n/%d", i, joinedOf(ch), i)
		}
	}
	if st, _ := presenceStats(t, p, "pres:many:599", presOpts); st != (pubsub.PresenceStats{Clients: 1, Users: 1}) {
		t.Errorf("PresenceStats of the last channel = %+v, want 1 client, 1 user", st)
	}
	// And many entries of one channel, as a node with a crowded channel.
	big := pubsub.PresenceUpdate{Channel: "pres:big", Opts: presOpts}
	for i := range 1200 {
		big.Entries = append(big.Entries, pubsub.PresenceEntry{Client: fmt.Sprintf("n/%d", i), User: fmt.Sprintf("u%d", i%1000)})
	}
	changes, err = p.AddPresence(t.Context(), []pubsub.PresenceUpdate{big})
	if err != nil || len(changes) != 1 || len(changes[0].Joined) != 1000 {
		t.Fatalf("AddPresence of 1200 entries of 1000 users = %d changes, %v; want 1000 joins", len(changes), err)
	}
	if st, _ := presenceStats(t, p, "pres:big", presOpts); st != (pubsub.PresenceStats{Clients: 1200, Users: 1000}) {
		t.Errorf("PresenceStats of the crowded channel = %+v, want 1200 clients, 1000 users", st)
	}
}

func testPresenceBadOptions(t *testing.T, b pubsub.Broker) {
	p := presenceKeeper(t, b)
	if _, err := p.AddPresence(t.Context(), []pubsub.PresenceUpdate{{Channel: "pres:bad"}}); err == nil {
		t.Error("AddPresence with a zero lease succeeded, want an error")
	}
	if _, _, err := p.PresenceStats(t.Context(), "pres:bad", pubsub.PresenceOptions{Lease: time.Second, Grace: -1}); err == nil {
		t.Error("PresenceStats with a negative grace succeeded, want an error")
	}
}
