package bench

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestAppendPublishIsJSON(t *testing.T) {
	h := Header{Stream: 2, Seq: 9, Sent: 77}
	b, _ := appendPublish(nil, nil, 42, "bench.ab.0", h, 128)
	var cmd struct {
		ID      uint64 `json:"id"`
		Cmd     string `json:"cmd"`
		Channel string `json:"channel"`
		Data    string `json:"data"`
	}
	if err := json.Unmarshal(b, &cmd); err != nil {
		t.Fatalf("appendPublish = %s: %v", b, err)
	}
	if cmd.ID != 42 || cmd.Cmd != "publish" || cmd.Channel != "bench.ab.0" || len(cmd.Data) != 128 {
		t.Errorf("appendPublish decoded to %+v", cmd)
	}
	if got, err := ParsePayload([]byte(cmd.Data)); err != nil || got != h {
		t.Errorf("data decodes to %+v, %v; want %+v", got, err, h)
	}
}

// A publish reuses its buffers: it allocates nothing once they are grown.
func TestAppendPublishNoAlloc(t *testing.T) {
	var buf, data []byte
	n := testing.AllocsPerRun(100, func() {
		buf, data = appendPublish(buf[:0], data, 7, "bench.ab.0", Header{Seq: 1}, 128)
	})
	if n != 0 {
		t.Errorf("appendPublish allocates %v times per run, want 0", n)
	}
}

func TestPushPayload(t *testing.T) {
	p := string(AppendPayload(nil, Header{Seq: 5}, 60))
	tests := []struct {
		line string
		want string
	}{
		{`{"channel":"c","data":"` + p + `"}`, p},
		{`{"data" : "` + p + `","channel":"c","offset":3}`, p},
		{`{"channel":"c","data":{"x":1}}`, ""},
		{`{"id":1,"result":{}}`, ""},
		{`{"channel":"c","data":"unterminated`, ""},
		{`{"data"`, ""},
	}
	for _, tt := range tests {
		if got := string(pushPayload([]byte(tt.line))); got != tt.want {
			t.Errorf("pushPayload(%s) = %q, want %q", tt.line, got, tt.want)
		}
	}
}

func TestParseReply(t *testing.T) {
	tests := []struct {
		line string
		want reply
	}{
		{`{"id":7,"result":{}}`, reply{id: 7, ok: true}},
		{`{"id":8,"error":{"code":"unavailable","message":"redis down"}}`, reply{id: 8, code: "unavailable", ok: true}},
		{`{"id":9,"error":{}}`, reply{id: 9, code: "unknown", ok: true}},
		{`{"id":9}`, reply{id: 9}},
		{`{"channel":"c","data":1}`, reply{}},
		{`not json`, reply{}},
	}
	for _, tt := range tests {
		if got := parseReply([]byte(tt.line)); got != tt.want {
			t.Errorf("parseReply(%s) = %+v, want %+v", tt.line, got, tt.want)
		}
	}
}

func TestNextLine(t *testing.T) {
	var got []string
	for line, rest := nextLine([]byte("\na\n\nbc\nd")); line != nil; line, rest = nextLine(rest) {
		got = append(got, string(line))
	}
	if len(got) != 3 || got[0] != "a" || got[1] != "bc" || got[2] != "d" {
		t.Errorf("lines = %q, want [a bc d]", got)
	}
}

// FuzzProtocolFrame feeds arbitrary server frames to the protocol-mode
// decoders: they never panic, lines partition the frame, and a payload
// found in a push decodes only from inside its line.
func FuzzProtocolFrame(f *testing.F) {
	p := string(AppendPayload(nil, Header{Stream: 1, Seq: 2, Sent: 3}, 64))
	f.Add([]byte(`{"channel":"c","data":"` + p + `"}` + "\n" + `{"id":1,"result":{}}`))
	f.Add([]byte(`{"id":2,"error":{"code":"unavailable","message":"x"}}`))
	f.Add([]byte("\n\n{\"data\" :\"rb1 \n"))
	f.Fuzz(func(t *testing.T, frame []byte) {
		var total int
		for line, rest := nextLine(frame); line != nil; line, rest = nextLine(rest) {
			if len(line) == 0 || bytes.IndexByte(line, '\n') >= 0 {
				t.Fatalf("nextLine gave %q", line)
			}
			total += len(line)
			if pl := pushPayload(line); pl != nil && !bytes.Contains(line, pl) {
				t.Fatalf("pushPayload(%q) = %q, not part of the line", line, pl)
			}
			_ = parseReply(line)
		}
		if want := len(frame) - bytes.Count(frame, []byte("\n")); total != want {
			t.Fatalf("lines hold %d bytes, want %d", total, want)
		}
	})
}
