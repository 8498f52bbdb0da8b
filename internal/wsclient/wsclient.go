package wsclient

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// AcceptKey returns the Sec-WebSocket-Accept a server answers the
// Sec-WebSocket-Key key with (RFC 6455 section 4.2.2).
func AcceptKey(key string) string {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// NewKey returns a random Sec-WebSocket-Key.
func NewKey() string {
	var nonce [16]byte
	rand.Read(nonce[:])
	return base64.StdEncoding.EncodeToString(nonce[:])
}

// SetUpgrade sets the headers that make a GET request a WebSocket upgrade
// with the Sec-WebSocket-Key key on h.
func SetUpgrade(h http.Header, key string) {
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", "websocket")
	h.Set("Sec-WebSocket-Version", "13")
	h.Set("Sec-WebSocket-Key", key)
}

// A HandshakeError is a server's answer other than a valid 101.
type HandshakeError struct {
	Status string // the status line's text, such as "503 Service Unavailable"
	Reason string // what is wrong with a 101, or ""
}

func (e *HandshakeError) Error() string {
	if e.Reason != "" {
		return "handshake: " + e.Reason
	}
	return "handshake: " + e.Status
}

// Handshake performs the client's opening handshake on nc for the request
// URI uri (path and query) on host, with the extra request headers header
// (may be nil). It uses nc's deadlines as they are.
//
// It returns the server's response (its body is empty) whenever one was
// read: with a *HandshakeError when it is not a valid 101. rest holds the
// bytes that followed the response in the same reads, frames the server
// sent at once: they come before anything read from nc afterwards.
func Handshake(nc net.Conn, host, uri string, header http.Header) (resp *http.Response, rest []byte, err error) {
	key := NewKey()
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\n", uri, host)
	h := header.Clone()
	if h == nil {
		h = http.Header{}
	}
	SetUpgrade(h, key)
	h.Write(&b)
	b.WriteString("\r\n")
	if _, err := nc.Write([]byte(b.String())); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(nc, 1024)
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, err
	}
	resp.Body.Close()
	if n := br.Buffered(); n > 0 {
		p, _ := br.Peek(n)
		rest = append([]byte(nil), p...)
	}
	switch {
	case resp.StatusCode != http.StatusSwitchingProtocols:
		return resp, nil, &HandshakeError{Status: resp.Status}
	case !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket"):
		return resp, nil, &HandshakeError{Status: resp.Status, Reason: "no Upgrade: websocket"}
	case resp.Header.Get("Sec-WebSocket-Accept") != AcceptKey(key):
		return resp, nil, &HandshakeError{Status: resp.Status, Reason: "bad Sec-WebSocket-Accept"}
	}
	return resp, rest, nil
}

// Options change what Dial does; the zero value dials with the system's
// socket buffers and no extra headers.
type Options struct {
	// Header holds extra request headers, such as Authorization.
	Header http.Header
	// ReadBuffer, when positive, is the socket's receive buffer in bytes,
	// set before connecting: a client that does not read then fills it, and
	// the server's writes find its socket full, after a few KiB.
	ReadBuffer int
}

// Dial connects to addr (host:port) and performs the handshake for uri,
// within ctx. The connection it returns reads first what came with the
// response; the caller closes it.
func Dial(ctx context.Context, addr, uri string, o Options) (net.Conn, *http.Response, error) {
	var d net.Dialer
	if o.ReadBuffer > 0 {
		d.Control = ReadBufferControl(o.ReadBuffer)
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		nc.SetDeadline(deadline)
	}
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { nc.Close(); close(closed) })
	resp, rest, err := Handshake(nc, addr, uri, o.Header)
	if !stop() { // ctx ended: nc is (being) closed
		<-closed
		err = errors.Join(err, context.Cause(ctx))
	}
	if err != nil {
		nc.Close()
		return nil, resp, err
	}
	nc.SetDeadline(time.Time{})
	if len(rest) == 0 {
		return nc, resp, nil // no wrapper: what idle clients cost stays the socket's
	}
	return &conn{Conn: nc, rest: rest}, resp, nil
}

// conn reads rest before its connection.
type conn struct {
	net.Conn
	rest []byte
}

func (c *conn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
