// Package bench is `relay bench`, the load generator of Relay: it opens
// subscriber and publisher WebSockets to one or more nodes, publishes paced,
// self-describing messages and measures what arrives.
//
// Start at [Command], which parses the flags and prints the reports, or at
// [Run] with a [Config] to run in code and get a [Result].
//
// Scenarios: fanout (many subscribers on one channel, paced publishers),
// channels (many channels with few subscribers each), idle (connections
// held; server RSS per connection) and connect (connection storm). Both
// wire modes of Relay are supported: raw (GET /ws/{channel}, one frame per
// message) and protocol (GET /ws, JSON commands, pushes possibly batched
// one per line).
//
// Every message carries a fixed-width text header (see [AppendPayload]):
// its stream (one publisher on one channel), its sequence number and its
// send time on the run's monotonic clock, padded to the message size. A
// subscriber decodes it without JSON, so it measures end-to-end latency and
// detects duplicates and reordering per stream (a sliding 1,024-message
// window per stream and subscriber); loss is expected minus unique
// deliveries of the messages sent inside the measurement window, counted
// after a drain period. Latencies go into HDR histograms.
//
// Hot path: each subscriber has one goroutine that reads with
// websocket.Conn.Reader into a reused buffer, with a context that cannot be
// cancelled (coder/websocket arms a timer per frame otherwise; the
// generator ends connections by closing them). Publishers are one goroutine
// each, paced by a ticker: each tick writes the messages due so far.
//
// Server cost comes from /proc of the -pids: utime+stime over the window
// divided by the deliveries made in it, and RSS from /proc/PID/status.
package bench
