package protocol_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/relay-pubsub/relay/node/protocol"
)

func TestDecodeCommand(t *testing.T) {
	long := strings.Repeat("a", 256)
	tests := []struct {
		in   string
		want protocol.Command
		code protocol.Code // "" for success
	}{
		// Every command, with and without id.
		{`{"id":1,"cmd":"subscribe","channel":"news"}`, protocol.Command{ID: raw(`1`), Cmd: "subscribe", Channel: "news"}, ""},
		{`{"cmd":"subscribe","channel":"a:b.c@d/e=f_g-h"}`, protocol.Command{Cmd: "subscribe", Channel: "a:b.c@d/e=f_g-h"}, ""},
		{`{"id":"u-2","cmd":"unsubscribe","channel":"news"}`, protocol.Command{ID: raw(`"u-2"`), Cmd: "unsubscribe", Channel: "news"}, ""},
		{`{"id":3,"cmd":"publish","channel":"news","data":{"text":"hi"}}`, protocol.Command{ID: raw(`3`), Cmd: "publish", Channel: "news", Data: raw(`{"text":"hi"}`)}, ""},
		{`{"cmd":"publish","channel":"n","data":null}`, protocol.Command{Cmd: "publish", Channel: "n", Data: raw(`null`)}, ""},
		{`{"cmd":"publish","channel":"n","data":"x"}`, protocol.Command{Cmd: "publish", Channel: "n", Data: raw(`"x"`)}, ""},
		{"{\"cmd\":\"publish\",\"channel\":\"n\",\"data\":[1, 2,\n\t{\"a b\": \"c d\"}]}", protocol.Command{Cmd: "publish", Channel: "n", Data: raw(`[1,2,{"a b":"c d"}]`)}, ""},
		{`{"id":-1.5e3,"cmd":"ping"}`, protocol.Command{ID: raw(`-1.5e3`), Cmd: "ping"}, ""},
		{` { "cmd" : "ping" , "channel" : 5 , "extra" : [] } `, protocol.Command{Cmd: "ping"}, ""},
		{`{"cmd":"ping","cmd":"ping"}`, protocol.Command{Cmd: "ping"}, ""},
		{`{"cmd":"jump","cmd":"ping"}`, protocol.Command{Cmd: "ping"}, ""},
		{`{"\u0063md":"p\u0069ng","i\u0064":7}`, protocol.Command{ID: raw(`7`), Cmd: "ping"}, ""},
		{`{"cmd":"publish","channel":"n\/x","data":{"a":[{"b":"]}"},"}"]}}`, protocol.Command{Cmd: "publish", Channel: "n/x", Data: raw(`{"a":[{"b":"]}"},"}"]}`)}, ""},
		{`{"cmd":"publish","data":-1.5e-3,"channel":"n","id":"\"q\""}`, protocol.Command{ID: raw(`"\"q\""`), Cmd: "publish", Channel: "n", Data: raw(`-1.5e-3`)}, ""},
		{`{"x":{"cmd":"jump"},"cmd":"ping","y":["cmd"]}`, protocol.Command{Cmd: "ping"}, ""},
		{`{"cmd":"subscribe","channel":"n","since":{"offset":18446744073709551615,"epoch":"AB7-x.1:_"}}`,
			protocol.Command{Cmd: "subscribe", Channel: "n", Since: &protocol.Since{Offset: 1<<64 - 1, Epoch: "AB7-x.1:_"}}, ""},
		{`{"cmd":"subscribe","channel":"n","since":{"epoch":"e","offset":0,"x":1}}`,
			protocol.Command{Cmd: "subscribe", Channel: "n", Since: &protocol.Since{Epoch: "e"}}, ""},
		{`{"cmd":"unsubscribe","channel":"n","since":5}`, protocol.Command{Cmd: "unsubscribe", Channel: "n"}, ""},

		// Bad since: an offset in the wrong format, an epoch Relay never gave.
		{`{"cmd":"subscribe","channel":"n","since":5}`, protocol.Command{Cmd: "subscribe", Channel: "n"}, protocol.CodeBadRequest},
		{`{"cmd":"subscribe","channel":"n","since":{"epoch":"e"}}`, protocol.Command{Cmd: "subscribe", Channel: "n"}, protocol.CodeBadRequest},
		{`{"cmd":"subscribe","channel":"n","since":{"offset":-1,"epoch":"e"}}`, protocol.Command{Cmd: "subscribe", Channel: "n"}, protocol.CodeBadRequest},
		{`{"cmd":"subscribe","channel":"n","since":{"offset":1.5,"epoch":"e"}}`, protocol.Command{Cmd: "subscribe", Channel: "n"}, protocol.CodeBadRequest},
		{`{"cmd":"subscribe","channel":"n","since":{"offset":"1","epoch":"e"}}`, protocol.Command{Cmd: "subscribe", Channel: "n"}, protocol.CodeBadRequest},
		{`{"cmd":"subscribe","channel":"n","since":{"offset":18446744073709551616,"epoch":"e"}}`, protocol.Command{Cmd: "subscribe", Channel: "n"}, protocol.CodeBadRequest},
		{`{"cmd":"subscribe","channel":"n","since":{"offset":1,"epoch":""}}`, protocol.Command{Cmd: "subscribe", Channel: "n"}, protocol.CodeBadRequest},
		{`{"cmd":"subscribe","channel":"n","since":{"offset":1,"epoch":"a b"}}`, protocol.Command{Cmd: "subscribe", Channel: "n"}, protocol.CodeBadRequest},
		{`{"cmd":"subscribe","channel":"n","since":{"offset":1,"epoch":7}}`, protocol.Command{Cmd: "subscribe", Channel: "n"}, protocol.CodeBadRequest},

		// Bad requests: not JSON, not an object, missing or mistyped fields.
		{`{"id":1,"cmd":`, protocol.Command{}, protocol.CodeBadRequest},
		{`not json`, protocol.Command{}, protocol.CodeBadRequest},
		{``, protocol.Command{}, protocol.CodeBadRequest},
		{"{\"cmd\":\"ping\"}\xff", protocol.Command{}, protocol.CodeBadRequest},
		{"{\"cmd\":\"ping\",\"id\":\"\xff\"}", protocol.Command{}, protocol.CodeBadRequest},
		{`[1,2]`, protocol.Command{}, protocol.CodeBadRequest},
		{`"ping"`, protocol.Command{}, protocol.CodeBadRequest},
		{`null`, protocol.Command{}, protocol.CodeBadRequest},
		{`42`, protocol.Command{}, protocol.CodeBadRequest},
		{`{"id":1}`, protocol.Command{ID: raw(`1`)}, protocol.CodeBadRequest},
		{`{"id":1,"cmd":5}`, protocol.Command{ID: raw(`1`)}, protocol.CodeBadRequest},
		{`{"id":1,"cmd":null}`, protocol.Command{ID: raw(`1`)}, protocol.CodeBadRequest},
		{`{"id":[1],"cmd":"ping"}`, protocol.Command{}, protocol.CodeBadRequest},
		{`{"id":null,"cmd":"ping"}`, protocol.Command{}, protocol.CodeBadRequest},
		{`{"id":true,"cmd":"ping"}`, protocol.Command{}, protocol.CodeBadRequest},
		{`{"id":{},"cmd":"ping"}`, protocol.Command{}, protocol.CodeBadRequest},
		{`{"id":2,"cmd":"subscribe"}`, protocol.Command{ID: raw(`2`), Cmd: "subscribe"}, protocol.CodeBadRequest},
		{`{"id":2,"cmd":"unsubscribe","channel":7}`, protocol.Command{ID: raw(`2`), Cmd: "unsubscribe"}, protocol.CodeBadRequest},
		{`{"id":2,"cmd":"publish","channel":"n"}`, protocol.Command{ID: raw(`2`), Cmd: "publish", Channel: "n"}, protocol.CodeBadRequest},

		// connect and refresh carry a token; connect's is optional.
		{`{"id":5,"cmd":"connect"}`, protocol.Command{ID: raw(`5`), Cmd: "connect"}, ""},
		{`{"id":5,"cmd":"connect","token":"a.b.c","channel":7}`, protocol.Command{ID: raw(`5`), Cmd: "connect", Token: "a.b.c"}, ""},
		{`{"cmd":"refresh","token":"a\u002eb"}`, protocol.Command{Cmd: "refresh", Token: "a.b"}, ""},
		{`{"id":5,"cmd":"refresh"}`, protocol.Command{ID: raw(`5`), Cmd: "refresh"}, protocol.CodeBadRequest},
		{`{"id":5,"cmd":"connect","token":1}`, protocol.Command{ID: raw(`5`), Cmd: "connect"}, protocol.CodeBadRequest},

		// Unknown commands: names are exact.
		{`{"id":3,"cmd":"jump"}`, protocol.Command{ID: raw(`3`)}, protocol.CodeUnknownCommand},
		{`{"id":3,"cmd":"PING"}`, protocol.Command{ID: raw(`3`)}, protocol.CodeUnknownCommand},
		{`{"id":3,"cmd":""}`, protocol.Command{ID: raw(`3`)}, protocol.CodeUnknownCommand},
		{`{"id":3,"CMD":"ping"}`, protocol.Command{ID: raw(`3`)}, protocol.CodeBadRequest},

		// Channel names outside the rules.
		{`{"id":4,"cmd":"subscribe","channel":""}`, protocol.Command{ID: raw(`4`), Cmd: "subscribe"}, protocol.CodeInvalidChannel},
		{`{"id":4,"cmd":"subscribe","channel":"a b"}`, protocol.Command{ID: raw(`4`), Cmd: "subscribe", Channel: "a b"}, protocol.CodeInvalidChannel},
		{`{"id":4,"cmd":"publish","channel":"` + long + `","data":1}`, protocol.Command{ID: raw(`4`), Cmd: "publish", Channel: long}, protocol.CodeInvalidChannel},
		{`{"id":4,"cmd":"unsubscribe","channel":"caf\u00e9"}`, protocol.Command{ID: raw(`4`), Cmd: "unsubscribe", Channel: "café"}, protocol.CodeInvalidChannel},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := protocol.DecodeCommand([]byte(tt.in))
			if ref, refErr := protocol.DecodeReference([]byte(tt.in)); !sameCommand(got, ref) || fmt.Sprint(err) != fmt.Sprint(refErr) {
				t.Errorf("DecodeCommand(%q) = %+v, %v; reference decoder: %+v, %v", tt.in, show(got), err, show(ref), refErr)
			}
			code := protocol.Code("")
			if err != nil {
				var pe *protocol.Error
				if !errors.As(err, &pe) {
					t.Fatalf("DecodeCommand(%q) error %T %v, want *protocol.Error", tt.in, err, err)
				}
				if pe.Message == "" {
					t.Errorf("DecodeCommand(%q) error %q has no message", tt.in, pe.Code)
				}
				code = pe.Code
			}
			if code != tt.code {
				t.Errorf("DecodeCommand(%q) code = %q (%v), want %q", tt.in, code, err, tt.code)
			}
			if !sameCommand(got, tt.want) {
				t.Errorf("DecodeCommand(%q) = %+v, want %+v", tt.in, show(got), show(tt.want))
			}
		})
	}
}

func TestAppendReplies(t *testing.T) {
	tests := []struct {
		got, want string
	}{
		{string(protocol.AppendResult(nil, raw(`1`), raw(`{}`))), `{"id":1,"result":{}}`},
		{string(protocol.AppendResult(nil, raw(`"a"`), raw(`{}`))), `{"id":"a","result":{}}`},
		{string(protocol.AppendError(nil, raw(`7`), &protocol.Error{Code: protocol.CodeNotSubscribed, Message: `not subscribed to "x"`})),
			`{"id":7,"error":{"code":"not_subscribed","message":"not subscribed to \"x\""}}`},
		{string(protocol.AppendError(nil, nil, &protocol.Error{Code: protocol.CodeBadRequest, Message: "a\nb\\c\x01"})),
			`{"error":{"code":"bad_request","message":"a\nb\\c\u0001"}}`},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %s, want %s", tt.got, tt.want)
		}
		var r protocol.Reply
		if err := json.Unmarshal([]byte(tt.got), &r); err != nil {
			t.Errorf("%s does not decode as a Reply: %v", tt.got, err)
		}
	}
}

func TestAppendPush(t *testing.T) {
	tests := []struct {
		payload string
		binary  bool
		want    string
	}{
		{`{"text":"hi"}`, false, `{"channel":"news","data":{"text":"hi"}}`},
		{"{ \"a\" :\n [1, 2] }", false, `{"channel":"news","data":{"a":[1,2]}}`},
		{`{"a": "x y", "b": "q\" \\"}`, false, `{"channel":"news","data":{"a":"x y","b":"q\" \\"}}`},
		{` true `, false, `{"channel":"news","data":true}`},
		{`tru`, false, `{"channel":"news","data":"tru"}`},
		{`42`, false, `{"channel":"news","data":42}`},
		{`"quoted"`, false, `{"channel":"news","data":"quoted"}`},
		{`null`, false, `{"channel":"news","data":null}`},
		{`hello`, false, `{"channel":"news","data":"hello"}`},
		{"line1\nline2 \"q\" \\ \t", false, `{"channel":"news","data":"line1\nline2 \"q\" \\ \t"}`},
		{"caf\u00e9 \u2028", false, "{\"channel\":\"news\",\"data\":\"caf\u00e9 \u2028\"}"},
		{"bad \xff utf8", false, `{"channel":"news","data":"bad \ufffd utf8"}`},
		{``, false, `{"channel":"news","data":""}`},
		{"\x00\xff\xfex", true, `{"channel":"news","data":"AP/+eA==","binary":true}`},
		{``, true, `{"channel":"news","data":"","binary":true}`},
	}
	for _, tt := range tests {
		got := string(protocol.AppendPush(nil, "news", []byte(tt.payload), tt.binary))
		if got != tt.want {
			t.Errorf("AppendPush(%q, binary %v) = %s, want %s", tt.payload, tt.binary, got, tt.want)
		}
		if strings.Contains(got, "\n") {
			t.Errorf("AppendPush(%q) has a newline", tt.payload)
		}
		var p protocol.Push
		if err := json.Unmarshal([]byte(got), &p); err != nil || p.Channel != "news" || p.Binary != tt.binary {
			t.Errorf("AppendPush(%q) = %s decodes to %+v, %v", tt.payload, got, p, err)
		}
	}
}

// TestAppendPushAllocs: with a buffer of PushSize, encoding a push
// allocates nothing.
func TestAppendPushAllocs(t *testing.T) {
	payload := []byte(`{"text":"hello","n":1}`)
	var buf []byte
	allocs := testing.AllocsPerRun(100, func() {
		buf = make([]byte, 0, protocol.PushSize("news", payload, false))
		buf = protocol.AppendPush(buf, "news", payload, false)
	})
	if allocs > 1 {
		t.Errorf("AppendPush with a buffer of PushSize: %v allocations, want 1 (the buffer)", allocs)
	}
}

func BenchmarkAppendPush(b *testing.B) {
	for _, bm := range []struct {
		name    string
		payload []byte
		binary  bool
	}{
		{"json", []byte(`{"user":"ada","text":"hello, world","n":12345}`), false},
		{"text", []byte(`hello, world: not JSON`), false},
		{"binary", bytes.Repeat([]byte{0, 1, 2, 0xff}, 16), true},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(bm.payload)))
			for b.Loop() {
				buf := make([]byte, 0, protocol.PushSize("chat:lobby", bm.payload, bm.binary))
				_ = protocol.AppendPush(buf, "chat:lobby", bm.payload, bm.binary)
			}
		})
	}
}

func BenchmarkDecodeCommand(b *testing.B) {
	in := []byte(`{"id":42,"cmd":"publish","channel":"chat:lobby","data":{"user":"ada","text":"hello, world","n":12345}}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := protocol.DecodeCommand(in); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzDecodeCommand: the decoder never panics; it returns either a valid
// command that encodes and decodes to itself, or a *protocol.Error with a
// known code and an id that is a JSON number or string.
func FuzzDecodeCommand(f *testing.F) {
	seeds, err := filepath.Glob("testdata/*.json")
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range seeds {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		cmd, err := protocol.DecodeCommand(in)
		// The fast decoder agrees with the encoding/json one.
		ref, refErr := protocol.DecodeReference(in)
		if !sameCommand(cmd, ref) || fmt.Sprint(err) != fmt.Sprint(refErr) {
			t.Fatalf("DecodeCommand(%q) = %+v, %v; reference decoder: %+v, %v", in, show(cmd), err, show(ref), refErr)
		}
		if cmd.ID != nil && (!json.Valid(cmd.ID) || !strings.ContainsRune(`"-0123456789`, rune(cmd.ID[0]))) {
			t.Fatalf("DecodeCommand(%q) id %q is not a JSON number or string", in, cmd.ID)
		}
		if err != nil {
			var pe *protocol.Error
			if !errors.As(err, &pe) {
				t.Fatalf("DecodeCommand(%q) error %T, want *protocol.Error", in, err)
			}
			switch pe.Code {
			case protocol.CodeBadRequest, protocol.CodeUnknownCommand, protocol.CodeInvalidChannel:
			default:
				t.Fatalf("DecodeCommand(%q) code %q", in, pe.Code)
			}
			reply := protocol.AppendError(nil, cmd.ID, pe)
			if !json.Valid(reply) || bytes.ContainsRune(reply, '\n') {
				t.Fatalf("error reply %q is not one line of JSON", reply)
			}
			return
		}
		switch cmd.Cmd {
		case protocol.CmdPing, protocol.CmdConnect, protocol.CmdRefresh:
		default:
			if err := protocol.ValidChannel(cmd.Channel); err != nil {
				t.Fatalf("DecodeCommand(%q) accepted channel %q: %v", in, cmd.Channel, err)
			}
		}
		if cmd.Data != nil {
			if !json.Valid(cmd.Data) || bytes.ContainsAny(cmd.Data, "\n\r\t") {
				t.Fatalf("DecodeCommand(%q) data %q is not compact JSON", in, cmd.Data)
			}
			push := protocol.AppendPush(nil, cmd.Channel, cmd.Data, false)
			var p protocol.Push
			if err := json.Unmarshal(push, &p); err != nil || !bytes.Equal(p.Data, cmd.Data) {
				t.Fatalf("push %q of data %q decodes to %q, %v", push, cmd.Data, p.Data, err)
			}
		}
		enc := protocol.AppendCommand(nil, cmd)
		again, err := protocol.DecodeCommand(enc)
		if err != nil || !sameCommand(again, cmd) {
			t.Fatalf("DecodeCommand(%q) = %+v; encoded %q decodes to %+v, %v", in, show(cmd), enc, show(again), err)
		}
	})
}

// FuzzAppendPush: any payload becomes one line of valid JSON whose data is
// the payload: as is when it is JSON, else as a string or base64.
func FuzzAppendPush(f *testing.F) {
	for _, s := range []string{`{"a": [1, "x y"]}`, "plain", "\xff\x00", ` "s" `, `-`, `nul`} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, payload []byte, binary bool) {
		push := protocol.AppendPush(nil, "c", payload, binary)
		if !json.Valid(push) || bytes.ContainsAny(push, "\n\r") {
			t.Fatalf("AppendPush(%q) = %q, not one line of JSON", payload, push)
		}
		var p protocol.Push
		if err := json.Unmarshal(push, &p); err != nil || p.Channel != "c" || p.Binary != binary {
			t.Fatalf("AppendPush(%q) = %q decodes to %+v, %v", payload, push, p, err)
		}
		var want bytes.Buffer
		switch {
		case binary:
			var b []byte
			if json.Unmarshal(p.Data, &b) != nil || !bytes.Equal(b, payload) {
				t.Fatalf("AppendPush(%q, binary) data %s", payload, p.Data)
			}
		case json.Compact(&want, payload) == nil:
			if !bytes.Equal(p.Data, want.Bytes()) {
				t.Fatalf("AppendPush(%q) data %s, want %s", payload, p.Data, want.Bytes())
			}
		default:
			// As encoding/json: each invalid byte becomes U+FFFD.
			ref, _ := json.Marshal(string(payload))
			var s, w string
			json.Unmarshal(ref, &w)
			if json.Unmarshal(p.Data, &s) != nil || s != w {
				t.Fatalf("AppendPush(%q) data %s, want the text as a string %s", payload, p.Data, ref)
			}
		}
	})
}

func raw(s string) json.RawMessage { return json.RawMessage(s) }

func sameCommand(a, b protocol.Command) bool {
	return bytes.Equal(a.ID, b.ID) && a.Cmd == b.Cmd && a.Channel == b.Channel && bytes.Equal(a.Data, b.Data) && a.Token == b.Token &&
		(a.Since == nil) == (b.Since == nil) && (a.Since == nil || *a.Since == *b.Since)
}

type shown struct{ ID, Cmd, Channel, Data, Token, Since string }

func show(c protocol.Command) shown {
	since := ""
	if c.Since != nil {
		since = fmt.Sprint(*c.Since)
	}
	return shown{string(c.ID), c.Cmd, c.Channel, string(c.Data), c.Token, since}
}

func TestAppendPushAtAndGap(t *testing.T) {
	tests := []struct{ got, want string }{
		{string(protocol.AppendPushAt(nil, "news", 42, []byte(`{"a":1}`), false)), `{"channel":"news","offset":42,"data":{"a":1}}`},
		{string(protocol.AppendPushAt(nil, "news", 1<<64-1, []byte{0xff}, true)), `{"channel":"news","offset":18446744073709551615,"data":"/w==","binary":true}`},
		{string(protocol.AppendPushAt(nil, "news", 0, []byte(`x`), false)), `{"channel":"news","data":"x"}`},
		{string(protocol.AppendGap(nil, "chat:1")), `{"gap":{"channel":"chat:1"}}`},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %s, want %s", tt.got, tt.want)
		}
	}
	var g protocol.GapPush
	if err := json.Unmarshal(protocol.AppendGap(nil, "c"), &g); err != nil || g.Gap.Channel != "c" {
		t.Errorf("AppendGap decodes to %+v, %v", g, err)
	}
	// PushSize leaves room for the largest offset.
	payload := []byte(`{"text":"hi"}`)
	buf := make([]byte, 0, protocol.PushSize("news", payload, false))
	if out := protocol.AppendPushAt(buf, "news", 1<<64-1, payload, false); cap(out) != cap(buf) {
		t.Errorf("AppendPushAt grew a buffer of PushSize %d to %d", cap(buf), cap(out))
	}
}
