package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Version is the version of the protocol-mode wire format that
// docs/PROTOCOL.md specifies.
const Version = 1

// The commands of protocol mode.
const (
	CmdSubscribe   = "subscribe"
	CmdUnsubscribe = "unsubscribe"
	CmdPublish     = "publish"
	CmdPing        = "ping"
	// CmdConnect authenticates a connection that sent no token with its
	// upgrade, and answers with the connection's client id; at most once.
	CmdConnect = "connect"
	// CmdRefresh replaces the connection's token before it expires.
	CmdRefresh = "refresh"
	// CmdHistory reads the messages of a channel's history.
	CmdHistory = "history"
)

// Command is one command a protocol-mode client sends: one JSON object in
// one text frame.
type Command struct {
	// ID is the client's id for the command, verbatim: a JSON number or
	// string. Nil when the command has none; then a success gets no reply.
	ID json.RawMessage
	// Cmd is the command's name, one of the Cmd constants.
	Cmd string
	// Channel is the channel of subscribe, unsubscribe and publish.
	Channel string
	// Data is what publish publishes: a JSON value in compact form (no
	// whitespace outside strings), so never a newline.
	Data json.RawMessage
	// Token is the token of connect (optional) and refresh (required).
	Token string
	// Since is the position subscribe recovers from, or history reads
	// after (optional); nil when absent.
	Since *Since
	// Limit is how many messages history reads at most (optional); nil
	// when absent.
	Limit *int
	// IdempotencyKey names a publish so that a retry of it is delivered
	// once (optional; ValidIdempotencyKey); empty when absent.
	IdempotencyKey string
}

// Since is where a subscribe with "since" recovers from: the offset of the
// last message the client received on the channel, and the channel's epoch
// then, as the subscribe reply and the pushes told it.
type Since struct {
	Offset uint64
	Epoch  string
}

// maxEpoch is the longest epoch a client may send back.
const maxEpoch = 64

// parseSince reads the value of "since": {"offset":N,"epoch":"e"}, N an
// integer from 0 to 2^64-1, e 1 to 64 bytes of [A-Za-z0-9_.:-]. Both
// decoders use it, so they agree on it by construction.
func parseSince(raw []byte) (*Since, *Error) {
	const want = `field "since" must be {"offset":<integer >= 0>,"epoch":"<epoch>"}`
	var f map[string]json.RawMessage
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &f) != nil {
		return nil, badRequest(want)
	}
	off, ok := f["offset"]
	if !ok {
		return nil, badRequest(want + `: missing "offset"`)
	}
	n, err := strconv.ParseUint(string(off), 10, 64)
	if err != nil {
		return nil, badRequest(want + `: "offset" is not an integer from 0 to 18446744073709551615`)
	}
	var epoch string
	if e, ok := f["epoch"]; !ok || len(e) == 0 || e[0] != '"' || json.Unmarshal(e, &epoch) != nil {
		return nil, badRequest(want + `: "epoch" must be a string`)
	}
	if epoch == "" || len(epoch) > maxEpoch || strings.ContainsFunc(epoch, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_.:-", r))
	}) {
		return nil, badRequest(want + `: "epoch" is not an epoch Relay gave`)
	}
	return &Since{Offset: n, Epoch: epoch}, nil
}

// DecodeCommand parses and validates one command frame. Fields it does not
// know are ignored, as are fields the command does not use; of a field
// given twice the last counts.
//
// The error, when not nil, is an *Error with the code to reply. Even then
// the returned Command carries the frame's id when it could be read, so that
// the error reply can name the command. ID and Data alias b. DecodeCommand
// never panics.
//
// It checks b with json.Valid, then walks the members of the top-level
// object without decoding what it does not need: a publish costs one
// allocation (the channel name) instead of the two dozen of decoding into a
// map (BenchmarkDecodeCommand).
func DecodeCommand(b []byte) (Command, error) {
	var cmd Command
	if !utf8.Valid(b) {
		return cmd, badRequest("command is not valid UTF-8")
	}
	if !json.Valid(b) {
		var v struct{}
		err := json.Unmarshal(b, &v) // for the syntax error's text
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return cmd, badRequest("invalid JSON: " + se.Error())
		}
		return cmd, badRequest("invalid JSON")
	}
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return cmd, badRequest("command must be a JSON object")
	}
	var id, name, channel, data, token, since, limit, idemKey []byte // raw values; nil when absent
	for i++; i < len(b); {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] == '}' {
			break
		}
		if b[i] == ',' {
			i++
			continue
		}
		kend := stringEnd(b, i)
		key := b[i:kend]
		i = skipSpace(b, kend) + 1 // past ':'
		i = skipSpace(b, i)
		vend := valueEnd(b, i)
		val := b[i:vend:vend]
		i = vend
		switch keyName(key) {
		case "id":
			id = val
		case "cmd":
			name = val
		case "channel":
			channel = val
		case "data":
			data = val
		case "token":
			token = val
		case "since":
			since = val
		case "limit":
			limit = val
		case "idempotency_key":
			idemKey = val
		}
	}

	if id != nil {
		if !validID(id) {
			return cmd, badRequest(`field "id" must be a number or a string`)
		}
		cmd.ID = id
	}
	if name == nil {
		return cmd, badRequest(`missing field "cmd"`)
	}
	if name[0] != '"' {
		return cmd, badRequest(`field "cmd" must be a string`)
	}
	switch n := cmdName(name); n {
	case CmdSubscribe, CmdUnsubscribe, CmdPublish, CmdPing, CmdConnect, CmdRefresh, CmdHistory, CmdPresence, CmdPresenceStats:
		cmd.Cmd = n
	default:
		return cmd, unknownCommand(n)
	}
	switch cmd.Cmd {
	case CmdPing:
		return cmd, nil
	case CmdConnect, CmdRefresh:
		if token == nil {
			if cmd.Cmd == CmdRefresh {
				return cmd, badRequest(`missing field "token"`)
			}
			return cmd, nil
		}
		if token[0] != '"' {
			return cmd, badRequest(`field "token" must be a string`)
		}
		cmd.Token = stringValue(token)
		return cmd, nil
	}

	if channel == nil {
		return cmd, badRequest(`missing field "channel"`)
	}
	if channel[0] != '"' {
		return cmd, badRequest(`field "channel" must be a string`)
	}
	cmd.Channel = stringValue(channel)
	if err := ValidChannel(cmd.Channel); err != nil {
		return cmd, &Error{Code: CodeInvalidChannel, Message: err.Error()}
	}
	if (cmd.Cmd == CmdSubscribe || cmd.Cmd == CmdHistory) && since != nil {
		s, err := parseSince(since)
		if err != nil {
			return cmd, err
		}
		cmd.Since = s
	}
	if cmd.Cmd == CmdHistory && limit != nil {
		n, err := parseLimit(limit)
		if err != nil {
			return cmd, err
		}
		cmd.Limit = &n
	}
	if cmd.Cmd != CmdPublish {
		return cmd, nil
	}

	if data == nil {
		return cmd, badRequest(`missing field "data"`)
	}
	cmd.Data = compact(data)
	if idemKey != nil {
		if idemKey[0] != '"' {
			return cmd, badRequest(`field "idempotency_key" must be a string`)
		}
		cmd.IdempotencyKey = stringValue(idemKey)
		if err := ValidIdempotencyKey(cmd.IdempotencyKey); err != nil {
			return cmd, badRequest(err.Error())
		}
	}
	return cmd, nil
}

// The scanners below walk JSON text that json.Valid accepted; their bounds
// checks only keep a mistake from becoming a panic.

// skipSpace returns the index of the first byte at or after i that is not
// JSON whitespace.
func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// stringEnd returns the index just past the string that starts at i.
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// valueEnd returns the index just past the value that starts at i.
func valueEnd(b []byte, i int) int {
	if i >= len(b) {
		return len(b)
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = stringEnd(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i // a number, true, false or null
	for j < len(b) {
		switch b[j] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return j
		}
		j++
	}
	return j
}

// keyName returns the member name key (a JSON string), decoding escapes
// only when it has some.
func keyName(key []byte) string {
	if len(key) < 2 {
		return ""
	}
	if bytes.IndexByte(key, '\\') < 0 {
		switch string(key[1 : len(key)-1]) { // compared without allocating
		case "id":
			return "id"
		case "cmd":
			return "cmd"
		case "channel":
			return "channel"
		case "data":
			return "data"
		case "token":
			return "token"
		case "since":
			return "since"
		case "limit":
			return "limit"
		case "idempotency_key":
			return "idempotency_key"
		}
		return ""
	}
	return stringValue(key)
}

// cmdName returns the string of the valid JSON string raw, without
// allocating when it is the name of a command.
func cmdName(raw []byte) string {
	if len(raw) >= 2 {
		switch string(raw[1 : len(raw)-1]) {
		case CmdSubscribe:
			return CmdSubscribe
		case CmdUnsubscribe:
			return CmdUnsubscribe
		case CmdPublish:
			return CmdPublish
		case CmdPing:
			return CmdPing
		case CmdConnect:
			return CmdConnect
		case CmdRefresh:
			return CmdRefresh
		case CmdHistory:
			return CmdHistory
		case CmdPresence:
			return CmdPresence
		case CmdPresenceStats:
			return CmdPresenceStats
		}
	}
	return stringValue(raw)
}

// stringValue returns the string of the valid JSON string raw.
func stringValue(raw []byte) string {
	if len(raw) >= 2 && bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1])
	}
	var s string
	json.Unmarshal(raw, &s)
	return s
}

// validID reports whether raw, a valid JSON value, is a number or a string.
func validID(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return false
	}
	c := raw[0]
	return c == '"' || c == '-' || ('0' <= c && c <= '9')
}

// compact returns the valid JSON value raw without insignificant
// whitespace, raw itself when it has none.
func compact(raw json.RawMessage) json.RawMessage {
	if !hasSpace(raw) {
		return raw
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return raw // unreachable: raw is valid JSON
	}
	return buf.Bytes()
}

// hasSpace reports whether the valid JSON text b has whitespace outside
// its strings.
func hasSpace(b []byte) bool {
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inString {
			switch c {
			case '\\':
				i++ // the escaped byte
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case ' ', '\t', '\n', '\r':
			return true
		}
	}
	return false
}

func badRequest(msg string) *Error { return &Error{Code: CodeBadRequest, Message: msg} }

// quoteShort quotes s for an error message, cut to 64 bytes.
func quoteShort(s string) string {
	const max = 64
	if len(s) <= max {
		return fmt.Sprintf("%q", s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%q…", strings.ToValidUTF8(s[:cut], ""))
}

// AppendCommand appends the JSON encoding of cmd, as a client sends it, to
// dst: the fields id (when set), cmd, channel (when set), data (when set),
// token (when set), since (when set), limit (when set) and idempotency_key
// (when set), in that order. ID and Data must be valid JSON.
func AppendCommand(dst []byte, cmd Command) []byte {
	dst = append(dst, '{')
	if cmd.ID != nil {
		dst = append(dst, `"id":`...)
		dst = append(dst, cmd.ID...)
		dst = append(dst, ',')
	}
	dst = append(dst, `"cmd":`...)
	dst = AppendString(dst, cmd.Cmd)
	if cmd.Channel != "" {
		dst = append(dst, `,"channel":`...)
		dst = AppendString(dst, cmd.Channel)
	}
	if cmd.Data != nil {
		dst = append(dst, `,"data":`...)
		dst = append(dst, cmd.Data...)
	}
	if cmd.Token != "" {
		dst = append(dst, `,"token":`...)
		dst = AppendString(dst, cmd.Token)
	}
	if cmd.Since != nil {
		dst = append(dst, `,"since":{"offset":`...)
		dst = strconv.AppendUint(dst, cmd.Since.Offset, 10)
		dst = append(dst, `,"epoch":`...)
		dst = AppendString(dst, cmd.Since.Epoch)
		dst = append(dst, '}')
	}
	if cmd.Limit != nil {
		dst = append(dst, `,"limit":`...)
		dst = strconv.AppendInt(dst, int64(*cmd.Limit), 10)
	}
	if cmd.IdempotencyKey != "" {
		dst = append(dst, `,"idempotency_key":`...)
		dst = AppendString(dst, cmd.IdempotencyKey)
	}
	return append(dst, '}')
}
