// Package wsout is the outbound half of the node's WebSocket connections:
// frames encoded once and shared, each connection's queue bounded in
// messages and bytes, and the writers that move queues to sockets with
// non-blocking writev calls: the flushers' sweeps (Flusher), the
// delivering goroutine itself (Inline, Conn.Send), and a connection's own
// goroutine for a socket too slow for those and for the close. Pings,
// pongs and coder/websocket's own frames (the close) take the same road.
//
// Start with Conn: Init, Hijacker (for websocket.Accept), Open; then
// Enqueue, Send or Inline to send, Close to close with a cause, Wait to
// wait for the writers.
//
// # One writer per socket
//
// Each Conn has a write turn (its state): the turn's holder is the only
// goroutine that writes the socket, and it writes with no lock held. The
// turn passes from the goroutine that queues to a flusher, from a flusher
// to the connection's own writer, and back, always under Conn.mu; a frame
// that coder/websocket writes while someone else holds the turn is handed
// to the holder, who sends it between two batches, so a frame is never cut
// by another. See Conn for the states. Closing the socket without a close
// frame (websocket.Conn.CloseNow) writes nothing, so it is not a write:
// the writer does it when a write fails, and the node when a connection's
// reader ends and at the drain's deadline; a write under way then fails.
//
// # Locks
//
// Lock order: the caller's (node's hub.mu, then hubChannel.mu), then
// Conn.mu, then Flusher.mu. No goroutine holds two Conns' locks. Every lock
// here is held for memory only (queues, the turn, timers): never across a
// write or any system call that can block. Enqueue and Inline.Add may be
// called under the caller's locks; Inline.Flush and Send write, so the
// caller must hold none that others wait for.
//
// # Goroutines
//
// A flusher's goroutine runs while it has connections queued
// (Flusher.Close stops it and waits). A connection's own writer runs while its
// socket is slow or it closes. A ping timer's callback queues a ping (or
// writes it, holding the turn, when the connection is idle) or closes the
// connection; it re-arms its timer under Conn.mu and never after Close,
// which stops it. Conn.Wait, after Close, waits for every holder of the
// turn, the own writer and a callback's write included.
package wsout
