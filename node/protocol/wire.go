package protocol

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// Reply answers one command: Result on success, Error on failure. A
// decoding client reads every server message into Reply or Push: a message
// with "result" or "error" is a reply, one with "channel" a push.
type Reply struct {
	// ID is the command's id, absent in an error reply to a command
	// without one (or whose id could not be read).
	ID     json.RawMessage `json:"id,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Push is a message on a channel the connection subscribed to.
type Push struct {
	Channel string `json:"channel"`
	// Data is the message: a JSON value; with Binary, a JSON string of the
	// standard base64 encoding (with padding) of the bytes.
	Data   json.RawMessage `json:"data"`
	Binary bool            `json:"binary,omitempty"`
	// Offset is the message's offset in the channel's history; absent
	// (0) on a channel without history.
	Offset uint64 `json:"offset,omitempty"`
}

// SubscribeResult is the result of subscribe on a channel with history:
// the channel's position when the subscription went live, and, when the
// subscribe asked for "since", whether every message after it follows.
type SubscribeResult struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
	// Recovered is present only when the subscribe had "since": true when
	// the messages after since.offset follow this reply, in order and
	// before the live ones; false when they cannot (history trimmed or
	// lost, another epoch, or more than the node's bound).
	Recovered *bool `json:"recovered,omitempty"`
}

// GapPush tells a protocol-mode client that messages of a channel may have
// been lost: {"gap":{"channel":"c"}}.
type GapPush struct {
	Gap struct {
		Channel string `json:"channel"`
	} `json:"gap"`
}

// AppendGap appends the gap push of channel to dst.
func AppendGap(dst []byte, channel string) []byte {
	dst = append(dst, `{"gap":{"channel":`...)
	dst = AppendString(dst, channel)
	return append(dst, "}}"...)
}

// ConnectResult is the result of connect.
type ConnectResult struct {
	// Client is the connection's id, unique in the cluster: the node's id,
	// a slash and a number.
	Client string `json:"client"`
	// User is the token's sub; absent for an anonymous connection.
	User string `json:"user,omitempty"`
	// Expires is when the token stops being accepted (its exp plus the
	// node's leeway), in Unix seconds; absent when it never does.
	Expires int64 `json:"expires,omitempty"`
	// Info is the connection's info: the token's info claim, or what the
	// backend proxy's connect answer gave; absent when there is none.
	Info json.RawMessage `json:"info,omitempty"`
}

// Refresh is what the server sends when the connection's token has
// expired: {"refresh":{"grace_ms":10000}}. The client must send a refresh
// command with a new token within GraceMS milliseconds, or be closed with
// CloseTokenExpired.
type Refresh struct {
	GraceMS int64 `json:"grace_ms"`
}

// AppendRefresh appends the refresh request of a grace of graceMS
// milliseconds to dst.
func AppendRefresh(dst []byte, graceMS int64) []byte {
	dst = append(dst, `{"refresh":{"grace_ms":`...)
	dst = strconv.AppendInt(dst, graceMS, 10)
	return append(dst, "}}"...)
}

// AppendResult appends the success reply {"id":id,"result":result} to dst.
// id and result must be valid compact JSON.
func AppendResult(dst []byte, id, result json.RawMessage) []byte {
	dst = append(dst, `{"id":`...)
	dst = append(dst, id...)
	dst = append(dst, `,"result":`...)
	dst = append(dst, result...)
	return append(dst, '}')
}

// AppendError appends the error reply {"id":id,"error":{...}} to dst,
// without "id" when id is nil. id must be valid compact JSON.
func AppendError(dst []byte, id json.RawMessage, e *Error) []byte {
	dst = append(dst, '{')
	if id != nil {
		dst = append(dst, `"id":`...)
		dst = append(dst, id...)
		dst = append(dst, ',')
	}
	dst = append(dst, `"error":{"code":`...)
	dst = AppendString(dst, string(e.Code))
	if e.Reason != "" {
		dst = append(dst, `,"reason":`...)
		dst = AppendString(dst, e.Reason)
	}
	dst = append(dst, `,"message":`...)
	dst = AppendString(dst, e.Message)
	return append(dst, "}}"...)
}

// AppendPush appends the push of a message on channel to dst:
//
//	{"channel":"c","data":<data>}
//	{"channel":"c","data":"<base64>","binary":true}
//
// A binary payload is base64-encoded with the binary flag. A text payload
// that is valid JSON is the data as is (compacted); any other text becomes
// a JSON string (invalid UTF-8 replaced by U+FFFD). The result never holds
// a newline, so pushes can be joined with "\n".
//
// It is called once per message per node; with a dst of enough capacity
// it does not allocate.
func AppendPush(dst []byte, channel string, payload []byte, binary bool) []byte {
	return AppendPushAt(dst, channel, 0, payload, binary)
}

// AppendPushAt is AppendPush for a message of a channel with history: an
// offset above 0 is carried as "offset", after "channel".
func AppendPushAt(dst []byte, channel string, offset uint64, payload []byte, binary bool) []byte {
	dst = append(dst, `{"channel":`...)
	dst = AppendString(dst, channel)
	if offset > 0 {
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendUint(dst, offset, 10)
	}
	dst = append(dst, `,"data":`...)
	switch {
	case binary:
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, payload)
		dst = append(dst, `","binary":true}`...)
		return dst
	case mayBeJSON(payload) && json.Valid(payload):
		dst = append(dst, compact(payload)...)
	default:
		dst = AppendString(dst, string(payload))
	}
	return append(dst, '}')
}

// PushSize is the capacity of a buffer that AppendPush or AppendPushAt
// fills without growing, unless a text payload that is not JSON needs
// escaping.
func PushSize(channel string, payload []byte, binary bool) int {
	n := len(`{"channel":"","offset":18446744073709551615,"data":"","binary":true}`) + len(channel)
	if binary {
		return n + base64.StdEncoding.EncodedLen(len(payload))
	}
	return n + len(payload)
}

// mayBeJSON reports whether b could be a JSON text: its first byte that is
// not whitespace can start a JSON value. It spares json.Valid (and its
// allocations on failure) for most plain text.
func mayBeJSON(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '{', '[', '"', '-', 't', 'f', 'n', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			return true
		}
		return false
	}
	return false
}

// AppendString appends s to dst as a JSON string. It escapes '"', '\\' and
// control characters, and replaces invalid UTF-8 with U+FFFD; everything
// else is copied as is.
func AppendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// Hello is the first object of a protocol-mode connection opened with
// ?hello=true: it names the node that serves the connection, for clients
// that cannot read the handshake's X-Relay-Node header (browsers).
type Hello struct {
	Node string `json:"node"`
}

// AppendHello appends the hello {"node":"<node>"} to dst.
func AppendHello(dst []byte, node string) []byte {
	dst = append(dst, `{"node":`...)
	dst = AppendString(dst, node)
	return append(dst, '}')
}
