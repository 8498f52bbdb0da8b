// Package client is the Go SDK of Relay: one protocol-mode connection
// (GET /ws, docs/PROTOCOL.md) that subscribes, publishes and keeps itself
// connected.
//
// Start with [Dial], then [Client.Subscribe] and [Client.Publish]; [Client.Close]
// ends it. When the connection breaks, the client reconnects by itself,
// with exponential backoff and full jitter, trying the URLs it was given in
// turn, and subscribes again to every channel it had before anything else
// is sent. What happens is reported through [Options.OnEvent]: connected,
// disconnected (with the close code), resubscribed, and a gap for every
// channel whose messages published while it was away it could not recover.
//
// The package imports only Relay's wire types (node/protocol) and
// github.com/coder/websocket, so an app that uses it pulls in no Redis
// client and no metrics library.
package client
