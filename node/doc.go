// Package node is one Relay node: the HTTP server, the WebSocket endpoints,
// the connection lifecycle and the local hub that fans messages out to the
// node's subscribers.
//
// Start with [New] and [Node.Serve]. A node publishes what its clients send
// to a [pubsub.Broker] and holds one broker subscription per channel with
// local subscribers (see hub.go); it does not know which broker it has.
// Each connection has one reader goroutine. What is written to it goes
// through node/internal/wsout, one writer at a time: the goroutine that
// delivers a message when the write is due, else a flusher's sweep, and a
// goroutine of the connection's own only while its socket is slow or it
// closes (see conn.go and docs/DESIGN.md).
package node
