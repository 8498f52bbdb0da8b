package protocol_test

import (
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/relay-pubsub/relay/node/protocol"
)

// channelRule is the rule of docs/PROTOCOL.md, written as a regular
// expression: an independent statement of what ValidChannel checks.
var channelRule = regexp.MustCompile(`^[A-Za-z0-9_\-:.@/=]{1,255}$`)

// FuzzValidChannel: ValidChannel accepts exactly the documented names, and
// an accepted name survives every place a channel name travels unchanged:
// the path of /ws/{channel} and the JSON string of a command.
func FuzzValidChannel(f *testing.F) {
	for _, s := range []string{"lobby", "chat:room-1", "a/b=c@d.e_f", "", " ", "a b", "é", "__relay_probe:x",
		"__relay", "_relay", "x\x00", "ok\n", strings.Repeat("a", 255), strings.Repeat("a", 256), "%2F", "?q", "#"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := protocol.ValidChannel(name)
		want := channelRule.MatchString(name) && !strings.HasPrefix(name, protocol.ReservedPrefix)
		if (err == nil) != want {
			t.Fatalf("ValidChannel(%q) = %v, want valid = %v", name, err, want)
		}
		if err != nil {
			if err.Error() == "" || strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("ValidChannel(%q) error %q is not one line", name, err)
			}
			return
		}
		u, perr := url.Parse("ws://localhost/ws/" + name)
		if perr != nil || u.Path != "/ws/"+name || u.RawQuery != "" || u.Fragment != "" {
			t.Fatalf("channel %q does not travel as the path of /ws/{channel}: %v %q", name, perr, u)
		}
		cmd, derr := protocol.DecodeCommand([]byte(`{"cmd":"subscribe","channel":"` + name + `"}`))
		if derr != nil || cmd.Channel != name {
			t.Fatalf("channel %q in a command decodes as %q, %v", name, cmd.Channel, derr)
		}
	})
}
