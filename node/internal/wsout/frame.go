package wsout

import (
	"encoding/binary"

	"github.com/coder/websocket"
)

// A Frame is one outbound WebSocket message with its frame header, encoded
// once. It is immutable and shared by every connection it is queued for:
// the writer hands the same header and payload to the kernel for each
// (writev), without copying them.
type Frame struct {
	typ    websocket.MessageType
	data   []byte
	hdr    []byte // hdrBuf[:n]
	hdrBuf [maxHeader]byte
}

// maxHeader is the longest header of an unmasked server frame.
const maxHeader = 10

// NewFrame returns the frame of a message of type typ with payload data,
// which the frame owns from then on.
func NewFrame(typ websocket.MessageType, data []byte) *Frame {
	f := &Frame{typ: typ, data: data}
	f.hdr = AppendHeader(f.hdrBuf[:0], typ, len(data))
	return f
}

// Type is the frame's message type.
func (f *Frame) Type() websocket.MessageType { return f.typ }

// Payload is the frame's payload; the caller must not change it.
func (f *Frame) Payload() []byte { return f.data }

// AppendHeader appends the header of a final, unmasked (server) data frame
// of n payload bytes (RFC 6455 section 5.2).
func AppendHeader(b []byte, typ websocket.MessageType, n int) []byte {
	op := byte(0x1) // text
	if typ == websocket.MessageBinary {
		op = 0x2
	}
	b = append(b, 0x80|op)
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xffff:
		return append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

// Control frames the writer sends: a ping with no payload, and the header
// of a pong (its payload, at most 125 bytes, is the ping's).
const (
	opPing = 0x89
	opPong = 0x8a
)
