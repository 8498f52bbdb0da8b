// Package node is one Relay node: the HTTP server, the WebSocket endpoints,
// the connection lifecycle and the local hub that fans messages out to the
// node's subscribers.
//
// Start with [New] and [Node.Serve]. A node publishes what its clients send
// to a [pubsub.Broker] and holds one broker subscription per channel with
// local subscribers (see hub.go); it does not know which broker it has.
// Each connection has one reader goroutine and, only while it has something
// to send, one writer goroutine (see conn.go).
package node
