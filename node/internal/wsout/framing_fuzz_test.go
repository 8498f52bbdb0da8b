package wsout

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/coder/websocket"

	"github.com/relay-pubsub/relay/internal/wsclient"
)

// FuzzFraming builds the buffers of one write of the writer (batch.build:
// control frames first, then each queued frame's header and payload, or
// frames joined into one message) from frames described by spec, writes
// them in chunks as partial writes leave them (consume), and parses the
// bytes back with internal/wsclient's reader, an independent
// implementation of RFC 6455 framing: it must give back every message,
// with its type and payload, and nothing else. The seed corpus
// (testdata/fuzz/FuzzFraming) has payloads at the header boundaries 125,
// 126, 65535 and 65536.
//
// spec is read in records of 3 bytes: flags (bit 0 binary, bit 1 one more
// byte, bit 2 joined with the next record's frame, bit 7 of the first
// record a pong queued before the data), then the length, big-endian.
// fill provides the payload bytes, cyclically, and the partial write
// sizes.
func FuzzFraming(f *testing.F) {
	f.Add([]byte{0, 0, 5}, []byte("hello"))
	f.Add([]byte{0x81, 0, 125, 1, 0, 126}, []byte("ab"))
	f.Add([]byte{4, 0, 3, 4, 0, 4, 0, 0, 1}, []byte("xyz\x01"))
	f.Fuzz(func(t *testing.T, spec, fill []byte) {
		const maxFrames, maxBytes = 16, 1 << 18
		var frames []*Frame
		var joinNext []bool
		var ctrl []byte
		total := 0
		for i := 0; i+3 <= len(spec) && len(frames) < maxFrames; i += 3 {
			flags := spec[i]
			n := int(binary.BigEndian.Uint16(spec[i+1:]))
			if flags&2 != 0 {
				n++
			}
			if total+n > maxBytes {
				break
			}
			total += n
			typ := websocket.MessageText
			if flags&1 != 0 {
				typ = websocket.MessageBinary
			}
			p := make([]byte, n)
			for j := range p {
				if len(fill) > 0 {
					p[j] = fill[(j+i)%len(fill)]
				} else {
					p[j] = byte(j)
				}
			}
			frames = append(frames, NewFrame(typ, p))
			joinNext = append(joinNext, flags&4 != 0)
			if i == 0 && flags&0x80 != 0 {
				pong := fill[:min(len(fill), 125)]
				ctrl = append(append(ctrl, opPong, byte(len(pong))), pong...)
			}
		}
		if len(frames) == 0 {
			return
		}
		// join joins a run of frames marked to join with the next, with
		// a newline between payloads, as protocol mode joins pushes.
		index := make(map[*Frame]int, len(frames))
		for i, fr := range frames {
			index[fr] = i
		}
		join := func(dst []byte, batch []*Frame) ([]byte, int) {
			i, n := index[batch[0]], 1
			for n < len(batch) && joinNext[i+n-1] {
				n++
			}
			if n == 1 {
				return dst, 1
			}
			for k, fr := range batch[:n] {
				if k > 0 {
					dst = append(dst, '\n')
				}
				dst = append(dst, fr.Payload()...)
			}
			return dst, n
		}
		// What the reader must give back.
		type msg struct {
			op   byte
			data []byte
		}
		var want []msg
		for i := 0; i < len(frames); {
			fr := frames[i]
			op := byte(wsclient.OpText)
			if fr.Type() == websocket.MessageBinary {
				op = wsclient.OpBinary
			}
			data := fr.Payload()
			j := i + 1
			for j < len(frames) && joinNext[j-1] {
				data = append(append(append([]byte(nil), data...), '\n'), frames[j].Payload()...)
				j++
			}
			want = append(want, msg{op, data})
			i = j
		}

		b := getBatch()
		defer b.release()
		b.ctrl = append(b.ctrl, ctrl...)
		b.build(frames, join)
		if b.frames != len(frames) {
			t.Fatalf("batch counts %d frames, want %d", b.frames, len(frames))
		}
		// Write in the chunk sizes fill gives, as partial writes would.
		var wire []byte
		for k := 0; len(b.rest) > 0; k++ {
			chunk := 1 + total/3
			if len(fill) > 0 {
				chunk = 1 + int(fill[k%len(fill)])*(1+total/256)
			}
			taken := 0
			for _, buf := range b.rest {
				if taken == chunk {
					break
				}
				m := min(len(buf), chunk-taken)
				wire = append(wire, buf[:m]...)
				taken += m
			}
			consume(&b.rest, taken)
		}

		r := bufio.NewReader(bytes.NewReader(wire))
		if len(ctrl) > 0 {
			h, err := wsclient.ReadHeader(r)
			if err != nil || h.Op != wsclient.OpPong || h.Len != uint64(len(ctrl)-2) {
				t.Fatalf("first frame %+v, %v; want the pong", h, err)
			}
			if _, err := r.Discard(int(h.Len)); err != nil {
				t.Fatal(err)
			}
		}
		for i, w := range want {
			op, data, err := wsclient.ReadMessage(r)
			if err != nil {
				t.Fatalf("message %d of %d: %v", i, len(want), err)
			}
			if op != w.op || !bytes.Equal(data, w.data) {
				t.Fatalf("message %d: opcode %d, %d bytes; want opcode %d, %d bytes", i, op, len(data), w.op, len(w.data))
			}
		}
		if _, _, err := wsclient.ReadMessage(r); !errors.Is(err, io.EOF) {
			t.Fatalf("after the last message: %v, want EOF", err)
		}
	})
}
