package pubsub

import (
	"bytes"
	"strings"
	"testing"
)

func TestPresenceEntryRoundTrip(t *testing.T) {
	for _, e := range []PresenceEntry{
		{Client: "n/1"},
		{Client: "node-1/42", User: "alice", Node: "node-1", Info: []byte(`{"name":"Alice"}`)},
		{Client: "c", User: "a:1\x00b", Node: strings.Repeat("n", 300), Info: []byte("12:ab")},
	} {
		got, err := parsePresenceEntry(e.Client, appendPresenceEntry(nil, e))
		if err != nil || got.Client != e.Client || got.User != e.User || got.Node != e.Node || !bytes.Equal(got.Info, e.Info) {
			t.Errorf("parse(append(%+v)) = %+v, %v", e, got, err)
		}
	}
	for _, in := range []string{"", ":", "5:ab", "1:a", "1:a1", "x:a0:", "99999999999:a0:", "-1:0:"} {
		if e, err := parsePresenceEntry("c", []byte(in)); err == nil {
			t.Errorf("parsePresenceEntry(%q) = %+v, want an error", in, e)
		}
	}
}

func FuzzPresenceEntry(f *testing.F) {
	f.Add([]byte("5:alice6:node-1{}"))
	f.Add([]byte("0:0:"))
	f.Add([]byte("3:a"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := parsePresenceEntry("c", data) // must not panic
		if err != nil {
			return
		}
		// What parses is what appendPresenceEntry wrote.
		if again := appendPresenceEntry(nil, e); !bytes.Equal(again, data) {
			t.Fatalf("append(parse(%q)) = %q", data, again)
		}
	})
}
