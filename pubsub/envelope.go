package pubsub

import (
	"encoding/binary"
	"errors"
	"strconv"
)

// The envelope is how a Message travels between nodes:
//
//	magic "\xffRLY" | version 1 | flags | time (8 bytes, big endian) |
//	conn (uvarint) | origin length (1 byte) | origin | payload
//
// A message published with history travels with its position before the
// envelope, put there by the publish script (redis.go):
//
//	magic "\xffRLH" | offset length (1 byte) | offset (decimal) |
//	epoch length (1 byte) | epoch | envelope
//
// It starts with 0xff, a byte that never starts valid UTF-8, so no text a
// client publishes with a plain PUBLISH is mistaken for an envelope.
const (
	envelopeMagic   = "\xffRLY"
	positionMagic   = "\xffRLH"
	envelopeVersion = 1
	flagBinary      = 1 << 0
	// maxOrigin is the longest origin (node ID) an envelope carries.
	maxOrigin = 255
)

var errNotEnvelope = errors.New("not an envelope")

// AppendEnvelope appends the envelope encoding of m to b and returns the
// extended buffer. Origins longer than 255 bytes are cut to 255.
func (m Message) AppendEnvelope(b []byte) []byte {
	origin := m.Origin
	if len(origin) > maxOrigin {
		origin = origin[:maxOrigin]
	}
	var flags byte
	if m.Binary {
		flags |= flagBinary
	}
	b = append(b, envelopeMagic...)
	b = append(b, envelopeVersion, flags)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Time))
	b = binary.AppendUvarint(b, m.Conn)
	b = append(b, byte(len(origin)))
	b = append(b, origin...)
	return append(b, m.Payload...)
}

// DecodeEnvelope decodes an envelope made by AppendEnvelope. Anything else,
// such as the payload of a plain PUBLISH, decodes as a text message with no
// origin and the data as its payload. The returned Payload aliases data.
//
// A position prefix (history) is taken once: what follows it decodes as an
// envelope or a plain payload, never as another position.
func DecodeEnvelope(data []byte) Message {
	pos, rest, ok := decodePosition(data)
	if !ok {
		rest = data
	}
	m, err := decodeEnvelope(rest)
	if err != nil {
		m = Message{Payload: rest}
	}
	if ok {
		m.Offset, m.Epoch = pos.Offset, pos.Epoch
	}
	return m
}

func decodeEnvelope(b []byte) (Message, error) {
	const fixed = len(envelopeMagic) + 2 + 8
	if len(b) < fixed || string(b[:len(envelopeMagic)]) != envelopeMagic || b[len(envelopeMagic)] != envelopeVersion {
		return Message{}, errNotEnvelope
	}
	flags := b[len(envelopeMagic)+1]
	m := Message{
		Binary: flags&flagBinary != 0,
		Time:   int64(binary.BigEndian.Uint64(b[len(envelopeMagic)+2:])),
	}
	b = b[fixed:]
	conn, n := binary.Uvarint(b)
	if n <= 0 || len(b) < n+1 {
		return Message{}, errNotEnvelope
	}
	m.Conn = conn
	b = b[n:]
	olen := int(b[0])
	b = b[1:]
	if len(b) < olen {
		return Message{}, errNotEnvelope
	}
	m.Origin = string(b[:olen])
	m.Payload = b[olen:]
	return m, nil
}

// decodePosition splits off the position prefix of b, if b has a valid one.
func decodePosition(b []byte) (pos Position, rest []byte, ok bool) {
	if len(b) < len(positionMagic)+2 || string(b[:len(positionMagic)]) != positionMagic {
		return pos, nil, false
	}
	b = b[len(positionMagic):]
	n := int(b[0])
	if n == 0 || len(b) < 1+n+1 {
		return pos, nil, false
	}
	off, err := strconv.ParseUint(string(b[1:1+n]), 10, 64)
	if err != nil || off == 0 {
		return pos, nil, false
	}
	b = b[1+n:]
	n = int(b[0])
	if len(b) < 1+n {
		return pos, nil, false
	}
	return Position{Offset: off, Epoch: string(b[1 : 1+n])}, b[1+n:], true
}
