package wsclient

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The opcodes of RFC 6455 section 5.2.
const (
	OpContinuation = 0x0
	OpText         = 0x1
	OpBinary       = 0x2
	OpClose        = 0x8
	OpPing         = 0x9
	OpPong         = 0xA
)

// MaxHeaderLen is the longest frame header: 2 bytes, 8 of length, 4 of
// mask.
const MaxHeaderLen = 14

// Header is the header of one frame.
type Header struct {
	Fin    bool   // the last frame of its message
	Op     byte   // opcode
	Masked bool   // a client's frame; a server must not send one
	Len    uint64 // payload length in bytes
	Mask   [4]byte
}

// Control reports whether h is a control frame (close, ping or pong).
func (h Header) Control() bool { return h.Op&0x8 != 0 }

// ParseHeader parses the frame header at the start of p and returns it
// with its length in bytes, or n == 0 when p holds only part of it. It
// never panics and does not allocate.
func ParseHeader(p []byte) (h Header, n int) {
	if len(p) < 2 {
		return h, 0
	}
	h.Fin, h.Op, h.Masked = p[0]&0x80 != 0, p[0]&0x0f, p[1]&0x80 != 0
	h.Len, n = uint64(p[1]&0x7f), 2
	switch h.Len {
	case 126:
		if len(p) < 4 {
			return h, 0
		}
		h.Len, n = uint64(binary.BigEndian.Uint16(p[2:4])), 4
	case 127:
		if len(p) < 10 {
			return h, 0
		}
		h.Len, n = binary.BigEndian.Uint64(p[2:10]), 10
	}
	if h.Masked {
		if len(p) < n+4 {
			return h, 0
		}
		copy(h.Mask[:], p[n:n+4])
		n += 4
	}
	return h, n
}

// headerLen returns the length of the header whose second byte is b1.
func headerLen(b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	return n
}

// ReadHeader reads one frame header from r; the payload, h.Len bytes,
// follows in r. It does not allocate.
func ReadHeader(r *bufio.Reader) (Header, error) {
	p, err := r.Peek(2)
	if err != nil {
		return Header{}, err
	}
	p, err = r.Peek(headerLen(p[1]))
	if err != nil {
		return Header{}, noEOF(err)
	}
	h, n := ParseHeader(p)
	r.Discard(n)
	return h, nil
}

// ErrFragmented reports a fragmented message, which ReadMessage does not
// put together.
var ErrFragmented = errors.New("wsclient: fragmented message")

// A CloseError is the close frame ReadMessage met.
type CloseError struct {
	Code   int // 1005 when the frame has none
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("wsclient: closed with %d %q", e.Code, e.Reason)
}

// ReadMessage reads frames from r until a data frame and returns its
// opcode and payload (unmasked), skipping pings and pongs. A close frame
// ends it with a *CloseError; a fragmented message with ErrFragmented.
func ReadMessage(r *bufio.Reader) (op byte, payload []byte, err error) {
	for {
		h, err := ReadHeader(r)
		if err != nil {
			return 0, nil, err
		}
		p := make([]byte, h.Len)
		if _, err := io.ReadFull(r, p); err != nil {
			return 0, nil, noEOF(err)
		}
		if h.Masked {
			maskBytes(p, h.Mask)
		}
		switch {
		case h.Op == OpClose:
			ce := &CloseError{Code: 1005}
			if len(p) >= 2 {
				ce.Code, ce.Reason = int(binary.BigEndian.Uint16(p)), string(p[2:])
			}
			return 0, nil, ce
		case h.Control():
		case !h.Fin || h.Op == OpContinuation:
			return 0, nil, ErrFragmented
		default:
			return h.Op, p, nil
		}
	}
}

// AppendFrame appends one whole frame of opcode op with payload to dst:
// masked with a random key, as a client sends it, when masked is true;
// unmasked, as a server sends it, otherwise.
func AppendFrame(dst []byte, op byte, payload []byte, masked bool) []byte {
	b1 := byte(0)
	if masked {
		b1 = 0x80
	}
	dst = append(dst, 0x80|op)
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, b1|byte(n))
	case n <= 0xffff:
		dst = append(dst, b1|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, b1|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	if !masked {
		return append(dst, payload...)
	}
	var mask [4]byte
	rand.Read(mask[:])
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	maskBytes(dst[start:], mask)
	return dst
}

// AppendClose appends a masked close frame with code (none for 1005).
func AppendClose(dst []byte, code int) []byte {
	if code == 1005 {
		return AppendFrame(dst, OpClose, nil, true)
	}
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], uint16(code))
	return AppendFrame(dst, OpClose, p[:], true)
}

func maskBytes(p []byte, mask [4]byte) {
	for i := range p {
		p[i] ^= mask[i&3]
	}
}

// noEOF turns an EOF inside a frame into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
