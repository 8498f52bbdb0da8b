package bench

import (
	"bytes"
	"errors"
)

// Payload layout: a fixed-width ASCII header, then padding up to the message
// size. Every byte is printable and needs no JSON escaping, so protocol mode
// carries the same bytes as a JSON string and both modes decode it without a
// JSON parser:
//
//	rb1 SSSSSSSS QQQQQQQQQQQQQQQQ TTTTTTTTTTTTTTTT ....
//
// S is the stream (one publisher on one channel), Q its sequence number and
// T the send time in nanoseconds since the run's epoch (a monotonic clock
// shared by the publishers and subscribers of one run), all lower-case hex.
const (
	payloadMagic = "rb1 "
	// HeaderLen is the length of the payload header; it is also the smallest
	// message size the generator sends.
	HeaderLen = len(payloadMagic) + 8 + 1 + 16 + 1 + 16 + 1
	padByte   = '.'
)

// ErrNotPayload reports a message that is not a generator payload: a message
// someone else published on the channel, or a mangled one.
var ErrNotPayload = errors.New("not a bench payload")

// Header is what a payload carries besides padding.
type Header struct {
	Stream uint32 // publisher-and-channel identity, dense from 0
	Seq    uint64 // per-stream sequence number, from 0
	Sent   int64  // send time, ns since the run's epoch
}

const hexDigits = "0123456789abcdef"

// AppendPayload appends the payload for h, padded to size bytes (at least
// HeaderLen), to dst and returns the extended slice. It does not allocate
// when dst has room.
func AppendPayload(dst []byte, h Header, size int) []byte {
	if size < HeaderLen {
		size = HeaderLen
	}
	n := len(dst)
	if cap(dst)-n < size {
		grown := make([]byte, n, n+size)
		copy(grown, dst)
		dst = grown
	}
	dst = dst[:n+size]
	p := dst[n:]
	copy(p, payloadMagic)
	i := len(payloadMagic)
	putHex(p[i:i+8], uint64(h.Stream))
	p[i+8] = ' '
	i += 9
	putHex(p[i:i+16], h.Seq)
	p[i+16] = ' '
	i += 17
	putHex(p[i:i+16], uint64(h.Sent))
	p[i+16] = ' '
	i += 17
	for i < size {
		i += copy(p[i:], padding)
	}
	return dst
}

// padding is copied rather than written a byte at a time.
var padding = string(bytes.Repeat([]byte{padByte}, 256))

func putHex(dst []byte, v uint64) {
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = hexDigits[v&0xf]
		v >>= 4
	}
}

// hexVal maps a lower-case hex digit to its value and anything else to 0xff.
var hexVal = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := range 16 {
		t[hexDigits[i]] = byte(i)
	}
	return t
}()

func parseHex(p []byte) (uint64, bool) {
	var v uint64
	var bad byte
	for _, c := range p {
		d := hexVal[c]
		bad |= d
		v = v<<4 | uint64(d&0xf)
	}
	return v, bad&0xf0 == 0
}

// ParsePayload decodes the header of a payload. It reads only the first
// HeaderLen bytes; the padding is not checked. It never panics and does not
// allocate.
func ParsePayload(p []byte) (Header, error) {
	if len(p) < HeaderLen || string(p[:len(payloadMagic)]) != payloadMagic {
		return Header{}, ErrNotPayload
	}
	i := len(payloadMagic)
	s, ok1 := parseHex(p[i : i+8])
	q, ok2 := parseHex(p[i+9 : i+25])
	t, ok3 := parseHex(p[i+26 : i+42])
	if !ok1 || !ok2 || !ok3 || p[i+8] != ' ' || p[i+25] != ' ' || p[i+42] != ' ' {
		return Header{}, ErrNotPayload
	}
	return Header{Stream: uint32(s), Seq: q, Sent: int64(t)}, nil
}
