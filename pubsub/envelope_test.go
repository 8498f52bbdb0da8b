package pubsub

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	tests := []Message{
		{},
		{Origin: "node-1", Conn: 1, Payload: []byte("hello")},
		{Origin: "n", Conn: 1<<64 - 1, Binary: true, Time: -1, Payload: []byte{0xff, 0, 1}},
		{Origin: strings.Repeat("o", 255), Time: 1 << 62, Payload: bytes.Repeat([]byte("x"), 70000)},
	}
	for _, m := range tests {
		got, err := decodeEnvelope(m.AppendEnvelope(nil))
		if err != nil {
			t.Fatalf("decode(encode(%+v)) error %v", m, err)
		}
		if got.Origin != m.Origin || got.Conn != m.Conn || got.Binary != m.Binary || got.Time != m.Time || !bytes.Equal(got.Payload, m.Payload) {
			t.Errorf("decode(encode(%+v)) = %+v", m, got)
		}
	}
}

func TestEnvelopeLongOriginCut(t *testing.T) {
	m := Message{Origin: strings.Repeat("o", 300), Payload: []byte("p")}
	got := DecodeEnvelope(m.AppendEnvelope(nil))
	if len(got.Origin) != 255 || string(got.Payload) != "p" {
		t.Errorf("DecodeEnvelope(origin of 300 bytes) = origin of %d bytes, payload %q; want 255, p", len(got.Origin), got.Payload)
	}
}

func TestDecodePlainPayload(t *testing.T) {
	for _, in := range []string{"", "hello", "\xffRL", "\xffRLY\x02" + strings.Repeat("x", 20), "\xffRLY\x01\x00" + "12345678" + "\xff"} {
		got := DecodeEnvelope([]byte(in))
		if got.Origin != "" || got.Binary || got.Conn != 0 || string(got.Payload) != in {
			t.Errorf("DecodeEnvelope(%q) = %+v, want a plain text message", in, got)
		}
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	f.Add([]byte("hello"))
	f.Add(Message{Origin: "node", Conn: 300, Binary: true, Time: 5, Payload: []byte("p")}.AppendEnvelope(nil))
	f.Add([]byte("\xffRLY\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m := DecodeEnvelope(data) // must not panic
		if pos, rest, ok := decodePosition(data); ok {
			// A position prefix is taken once; the rest follows the
			// rules below.
			if m.Offset != pos.Offset || m.Epoch != pos.Epoch {
				t.Fatalf("DecodeEnvelope(%q) position %d %q, want %d %q", data, m.Offset, m.Epoch, pos.Offset, pos.Epoch)
			}
			data, m.Offset, m.Epoch = rest, 0, ""
		} else if m.Offset != 0 || m.Epoch != "" {
			t.Fatalf("DecodeEnvelope(%q) has a position without a prefix", data)
		}
		if m.Origin == "" && m.Conn == 0 && !m.Binary && m.Time == 0 && !bytes.Equal(m.Payload, data) {
			if _, err := decodeEnvelope(data); err != nil {
				t.Fatalf("plain payload changed: %q -> %q", data, m.Payload)
			}
		}
		if _, err := decodeEnvelope(data); err == nil {
			// A valid envelope survives a round trip.
			again := DecodeEnvelope(m.AppendEnvelope(nil))
			if again.Origin != m.Origin || again.Conn != m.Conn || again.Binary != m.Binary || again.Time != m.Time || !bytes.Equal(again.Payload, m.Payload) {
				t.Fatalf("round trip of %+v = %+v", m, again)
			}
		}
	})
}

func BenchmarkEnvelope(b *testing.B) {
	m := Message{Origin: "relay-1", Conn: 12345, Time: 1, Payload: bytes.Repeat([]byte("x"), 128)}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = m.AppendEnvelope(buf[:0])
		if _, err := decodeEnvelope(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// appendPosition appends the position prefix of a message with history, as
// the publish script writes it.
func appendPosition(b []byte, pos Position) []byte {
	off := strconv.FormatUint(pos.Offset, 10)
	b = append(b, positionMagic...)
	b = append(b, byte(len(off)))
	b = append(b, off...)
	b = append(b, byte(len(pos.Epoch)))
	return append(b, pos.Epoch...)
}

func TestPositionRoundTrip(t *testing.T) {
	m := Message{Origin: "n", Conn: 3, Payload: []byte("hi")}
	pos := Position{Offset: 1<<64 - 1, Epoch: "e-1"}
	got := DecodeEnvelope(append(appendPosition(nil, pos), m.AppendEnvelope(nil)...))
	if got.Offset != pos.Offset || got.Epoch != pos.Epoch || got.Origin != "n" || got.Conn != 3 || string(got.Payload) != "hi" {
		t.Errorf("DecodeEnvelope(position + envelope) = %+v", got)
	}
	for _, in := range []string{"\xffRLH", "\xffRLH\x00", "\xffRLH\x01x\x00", "\xffRLH\x010\x00", "\xffRLH\x011\x05e"} {
		if got := DecodeEnvelope([]byte(in)); got.Offset != 0 || string(got.Payload) != in {
			t.Errorf("DecodeEnvelope(%q) = %+v, want a plain text message", in, got)
		}
	}
}
