package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// DecodeReference is decodeReference, for protocol_test.
var DecodeReference = decodeReference

// decodeReference is DecodeCommand written with encoding/json and a map:
// slower, obviously right; FuzzDecodeCommand checks that both agree.
//
// The error, when not nil, is an *Error with the code to reply. Even then
// the returned Command carries the frame's id when it could be read, so that
// the error reply can name the command. DecodeCommand never panics.
func decodeReference(b []byte) (Command, error) {
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
	case CmdSubscribe, CmdUnsubscribe, CmdPublish, CmdPing, CmdConnect, CmdRefresh, CmdHistory, CmdPresence, CmdPresenceStats:
		cmd.Cmd = name
	default:
		return cmd, unknownCommand(name)
	}
	switch cmd.Cmd {
	case CmdPing:
		return cmd, nil
	case CmdConnect, CmdRefresh:
		if _, ok := fields["token"]; !ok && cmd.Cmd == CmdConnect {
			return cmd, nil
		}
		cmd.Token, err = stringField(fields, "token")
		return cmd, err
	}

	if cmd.Channel, err = stringField(fields, "channel"); err != nil {
		return cmd, err
	}
	if err := ValidChannel(cmd.Channel); err != nil {
		return cmd, &Error{Code: CodeInvalidChannel, Message: err.Error()}
	}
	if since, ok := fields["since"]; ok && (cmd.Cmd == CmdSubscribe || cmd.Cmd == CmdHistory) {
		s, err := parseSince(since)
		if err != nil {
			return cmd, err
		}
		cmd.Since = s
	}
	if limit, ok := fields["limit"]; ok && cmd.Cmd == CmdHistory {
		n, err := parseLimit(limit)
		if err != nil {
			return cmd, err
		}
		cmd.Limit = &n
	}
	if cmd.Cmd != CmdPublish {
		return cmd, nil
	}

	data, ok := fields["data"]
	if !ok {
		return cmd, badRequest(`missing field "data"`)
	}
	cmd.Data = compact(data)
	if _, ok := fields["idempotency_key"]; ok {
		if cmd.IdempotencyKey, err = stringField(fields, "idempotency_key"); err != nil {
			return cmd, err
		}
		if err := ValidIdempotencyKey(cmd.IdempotencyKey); err != nil {
			return cmd, badRequest(err.Error())
		}
	}
	return cmd, nil
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
