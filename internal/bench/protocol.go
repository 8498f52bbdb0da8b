package bench

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// Protocol mode frames. Commands are built by appending to reused buffers;
// pushes are recognised by a scan for their "data" string so that the hot
// path needs no JSON decoder. Anything the scan does not recognise goes
// through encoding/json.

// appendCommand appends {"id":id,"cmd":cmd,"channel":channel} without the
// closing brace when open is true, so that a publish can add its data.
func appendCommand(dst []byte, id uint64, cmd, channel string, open bool) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendUint(dst, id, 10)
	dst = append(dst, `,"cmd":"`...)
	dst = append(dst, cmd...)
	dst = append(dst, '"')
	if channel != "" {
		dst = append(dst, `,"channel":`...)
		dst = strconv.AppendQuote(dst, channel)
	}
	if !open {
		dst = append(dst, '}')
	}
	return dst
}

// appendPublish appends a publish command whose data is the JSON string of
// the payload for h.
func appendPublish(dst []byte, id uint64, channel string, h Header, size int) []byte {
	dst = appendCommand(dst, id, "publish", channel, true)
	dst = append(dst, `,"data":"`...)
	dst = AppendPayload(dst, h, size)
	return append(dst, `"}`...)
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

// frame is one server frame of protocol mode, decoded the slow way.
type frame struct {
	ID     *uint64         `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

// reply is a decoded reply: the command id, and the error code or "".
type reply struct {
	id   uint64
	code string
	ok   bool // a well-formed reply
}

// parseReply decodes a reply line. Replies are rare (one per command), so
// encoding/json is fine here.
func parseReply(line []byte) reply {
	var f frame
	if err := json.Unmarshal(line, &f); err != nil || f.ID == nil {
		return reply{}
	}
	r := reply{id: *f.ID, ok: true}
	if f.Error != nil {
		r.code = f.Error.Code
		if r.code == "" {
			r.code = "unknown"
		}
	} else if f.Result == nil {
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
