package bench

import (
	"bytes"
	"math"
	"testing"
)

func TestPayloadRoundTrip(t *testing.T) {
	tests := []struct {
		h    Header
		size int
	}{
		{Header{}, 128},
		{Header{Stream: 1, Seq: 2, Sent: 3}, HeaderLen},
		{Header{Stream: math.MaxUint32, Seq: math.MaxUint64, Sent: math.MaxInt64}, 4096},
		{Header{Stream: 7, Seq: 1 << 40, Sent: 1}, 0}, // below the minimum: header only
	}
	for _, tt := range tests {
		p := AppendPayload([]byte("prefix"), tt.h, tt.size)
		if !bytes.HasPrefix(p, []byte("prefix")) {
			t.Fatalf("AppendPayload dropped the prefix: %q", p)
		}
		p = p[len("prefix"):]
		if want := max(tt.size, HeaderLen); len(p) != want {
			t.Errorf("len(AppendPayload(%+v, %d)) = %d, want %d", tt.h, tt.size, len(p), want)
		}
		got, err := ParsePayload(p)
		if err != nil || got != tt.h {
			t.Errorf("ParsePayload(AppendPayload(%+v)) = %+v, %v; want %+v", tt.h, got, err, tt.h)
		}
	}
}

func TestPayloadFormat(t *testing.T) {
	p := AppendPayload(nil, Header{Stream: 0xab, Seq: 0x10, Sent: 0xff}, 50)
	want := "rb1 000000ab 0000000000000010 00000000000000ff ..."
	if string(p) != want {
		t.Errorf("AppendPayload = %q, want %q", p, want)
	}
}

func TestParsePayloadRejects(t *testing.T) {
	good := AppendPayload(nil, Header{Stream: 1, Seq: 2, Sent: 3}, 64)
	tests := map[string][]byte{
		"empty":      nil,
		"short":      good[:HeaderLen-1],
		"magic":      append([]byte("rb2 "), good[4:]...),
		"upper hex":  bytes.Replace(good, []byte("00000001"), []byte("0000000A"), 1),
		"separator":  append(append(append([]byte{}, good[:12]...), '_'), good[13:]...),
		"json":       []byte(`{"hello":"world","padding":"................................"}`),
		"binary hex": append(append([]byte("rb1 "), 0xff), good[5:]...),
	}
	for name, p := range tests {
		if h, err := ParsePayload(p); err == nil {
			t.Errorf("%s: ParsePayload(%q) = %+v, nil; want ErrNotPayload", name, p, h)
		}
	}
}

func TestAppendPayloadNoAlloc(t *testing.T) {
	buf := make([]byte, 0, 256)
	n := testing.AllocsPerRun(100, func() {
		buf = AppendPayload(buf[:0], Header{Stream: 3, Seq: 4, Sent: 5}, 128)
		if _, err := ParsePayload(buf); err != nil {
			t.Fatal(err)
		}
	})
	if n != 0 {
		t.Errorf("AppendPayload+ParsePayload allocate %v times per run, want 0", n)
	}
}

func FuzzPayload(f *testing.F) {
	f.Add(uint32(0), uint64(0), int64(0), 128, []byte("rb1 00000000 0000000000000000 0000000000000000 "))
	f.Add(uint32(1), uint64(99), int64(-1), 47, []byte("garbage"))
	f.Add(uint32(math.MaxUint32), uint64(math.MaxUint64), int64(math.MinInt64), 1000, []byte{})
	f.Fuzz(func(t *testing.T, stream uint32, seq uint64, sent int64, size int, junk []byte) {
		// Decoding arbitrary input never panics.
		if h, err := ParsePayload(junk); err == nil {
			// What decodes re-encodes to the same header.
			p := AppendPayload(nil, h, HeaderLen)
			if !bytes.Equal(p, junk[:HeaderLen]) {
				t.Errorf("ParsePayload(%q) = %+v, which encodes to %q", junk, h, p)
			}
		}
		size = size % 8192
		h := Header{Stream: stream, Seq: seq, Sent: sent}
		p := AppendPayload(nil, h, size)
		if len(p) != max(size, HeaderLen) {
			t.Fatalf("len = %d, want %d", len(p), max(size, HeaderLen))
		}
		got, err := ParsePayload(p)
		if err != nil || got != h {
			t.Fatalf("round trip of %+v = %+v, %v", h, got, err)
		}
		// Split inputs: any strict prefix of the header is refused.
		for i := range HeaderLen {
			if _, err := ParsePayload(p[:i]); err == nil {
				t.Fatalf("ParsePayload accepted a %d-byte prefix", i)
			}
		}
	})
}

func BenchmarkAppendPayload(b *testing.B) {
	b.ReportAllocs()
	buf := make([]byte, 0, 256)
	var seq uint64
	for b.Loop() {
		seq++
		buf = AppendPayload(buf[:0], Header{Stream: 3, Seq: seq, Sent: int64(seq)}, 128)
	}
	b.SetBytes(128)
}

func BenchmarkParsePayload(b *testing.B) {
	b.ReportAllocs()
	p := AppendPayload(nil, Header{Stream: 3, Seq: 12345, Sent: 67890}, 128)
	for b.Loop() {
		if _, err := ParsePayload(p); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(128)
}

func BenchmarkPushPayload(b *testing.B) {
	b.ReportAllocs()
	line := []byte(`{"channel":"bench.x.0","data":"` + string(AppendPayload(nil, Header{Seq: 1}, 128)) + `"}`)
	for b.Loop() {
		if _, err := ParsePayload(pushPayload(line)); err != nil {
			b.Fatal(err)
		}
	}
}
