package bench

import (
	"bytes"
	"encoding/json"
	"strconv"

	"github.com/relay-pubsub/relay/node/protocol"
)

// Protocol mode frames. Commands are encoded by node/protocol, as the
// node decodes them, into reused buffers; pushes are recognised by a scan
// for their "data" string so that the hot path needs no JSON decoder.
// Replies, one per command, go through encoding/json.

// appendCommand appends the command cmd on channel (none when "") with
// the numeric id and data (none when nil, else valid JSON) to dst.
func appendCommand(dst []byte, id uint64, cmd, channel string, data []byte) []byte {
	var idBuf [20]byte
	return protocol.AppendCommand(dst, protocol.Command{
		ID:      strconv.AppendUint(idBuf[:0], id, 10),
		Cmd:     cmd,
		Channel: channel,
		Data:    data,
	})
}

// appendPublish appends a publish command whose data is the JSON string of
// the payload for h to dst. data is scratch space for the JSON string,
// returned for reuse.
func appendPublish(dst, data []byte, id uint64, channel string, h Header, size int) (cmd, scratch []byte) {
	data = append(data[:0], '"')
	data = AppendPayload(data, h, size) // printable, nothing to escape
	data = append(data, '"')
	return appendCommand(dst, id, protocol.CmdPublish, channel, data), data
}

var dataKey = []byte(`"data"`)

// pushPayload returns the payload bytes of a push line
// {"channel":"c","data":"rb1 ..."} when its data is a string, or nil.
// It accepts keys in any order and blanks around the colon.
func pushPayload(line []byte) []byte {
	i := bytes.Index(line, dataKey)
	if i < 0 {
		return nil
	}
	rest := line[i+len(dataKey):]
	rest = skipBlank(rest)
	if len(rest) == 0 || rest[0] != ':' {
		return nil
	}
	rest = skipBlank(rest[1:])
	if len(rest) == 0 || rest[0] != '"' {
		return nil
	}
	rest = rest[1:]
	if j := bytes.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return nil
}

func skipBlank(p []byte) []byte {
	for len(p) > 0 && (p[0] == ' ' || p[0] == '\t' || p[0] == '\r' || p[0] == '\n') {
		p = p[1:]
	}
	return p
}

// reply is a decoded reply: the command id, and the error code or "".
type reply struct {
	id   uint64
	code string
	ok   bool // a well-formed reply to a command with a numeric id
}

// parseReply decodes a reply line. Replies are rare (one per command), so
// encoding/json is fine here.
func parseReply(line []byte) reply {
	var rep protocol.Reply
	if err := json.Unmarshal(line, &rep); err != nil || rep.ID == nil {
		return reply{}
	}
	id, err := strconv.ParseUint(string(rep.ID), 10, 64)
	if err != nil {
		return reply{}
	}
	r := reply{id: id, ok: true}
	if rep.Error != nil {
		r.code = string(rep.Error.Code)
		if r.code == "" {
			r.code = "unknown"
		}
	} else if rep.Result == nil {
		r.ok = false
	}
	return r
}

// nextLine splits the first non-empty line off a protocol frame: a server
// may batch several pushes into one frame, separated by '\n'. It returns a
// nil line when p holds no more.
func nextLine(p []byte) (line, rest []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			return p, nil
		}
		if i > 0 {
			return p[:i], p[i+1:]
		}
		p = p[1:]
	}
	return nil, nil
}
