package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
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
}

// DecodeCommand parses and validates one command frame. Fields it does not
// know are ignored, as are fields the command does not use.
//
// The error, when not nil, is an *Error with the code to reply. Even then
// the returned Command carries the frame's id when it could be read, so that
// the error reply can name the command. DecodeCommand never panics.
func DecodeCommand(b []byte) (Command, error) {
	var cmd Command
	if !utf8.Valid(b) {
		return cmd, badRequest("command is not valid UTF-8")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return cmd, badRequest("invalid JSON: " + se.Error())
		}
		return cmd, badRequest("command must be a JSON object")
	}
	if fields == nil { // the JSON literal null
		return cmd, badRequest("command must be a JSON object")
	}

	if id, ok := fields["id"]; ok {
		if !validID(id) {
			return cmd, badRequest(`field "id" must be a number or a string`)
		}
		cmd.ID = id
	}
	name, err := stringField(fields, "cmd")
	if err != nil {
		return cmd, err
	}
	switch name {
	case CmdSubscribe, CmdUnsubscribe, CmdPublish, CmdPing:
		cmd.Cmd = name
	default:
		return cmd, &Error{Code: CodeUnknownCommand, Message: fmt.Sprintf(
			"unknown command %s; known are subscribe, unsubscribe, publish and ping", quoteShort(name))}
	}
	if cmd.Cmd == CmdPing {
		return cmd, nil
	}

	if cmd.Channel, err = stringField(fields, "channel"); err != nil {
		return cmd, err
	}
	if err := ValidChannel(cmd.Channel); err != nil {
		return cmd, &Error{Code: CodeInvalidChannel, Message: err.Error()}
	}
	if cmd.Cmd != CmdPublish {
		return cmd, nil
	}

	data, ok := fields["data"]
	if !ok {
		return cmd, badRequest(`missing field "data"`)
	}
	cmd.Data = compact(data)
	return cmd, nil
}

// validID reports whether raw, a valid JSON value, is a number or a string.
func validID(raw json.RawMessage) bool {
	if len(raw) == 0 {
		return false
	}
	c := raw[0]
	return c == '"' || c == '-' || ('0' <= c && c <= '9')
}

// stringField returns the string field key of fields.
func stringField(fields map[string]json.RawMessage, key string) (string, error) {
	raw, ok := fields[key]
	if !ok {
		return "", badRequest(fmt.Sprintf("missing field %q", key))
	}
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", badRequest(fmt.Sprintf("field %q must be a string", key))
	}
	return s, nil
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
// dst: the fields id (when set), cmd, channel (when set) and data (when
// set), in that order. ID and Data must be valid JSON.
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
	return append(dst, '}')
}
