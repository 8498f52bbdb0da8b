// Package wsclient is a bare WebSocket client for tests and the load
// generator: the opening handshake over a TCP connection, and the part of
// RFC 6455 framing a client needs (parse and read the server's unmasked
// frames, build masked ones), with no goroutine and no buffer of its own
// once the handshake is done. Tests use it where coder/websocket hides
// what they look at (a peer that never answers pings, a socket nobody
// reads, the bytes of a batch) and the generator's epoll loops read their
// subscribers with it; anything else should use coder/websocket.
//
// Start with Dial (or Handshake on a connection of your own), then
// ReadHeader and ReadMessage, or ParseHeader on bytes already read.
package wsclient
