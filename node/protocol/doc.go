// Package protocol holds Relay's wire vocabulary shared by the node and its
// clients: channel name rules, error codes and close codes, and the
// protocol-mode messages: commands (DecodeCommand, AppendCommand), replies
// (Reply, AppendResult, AppendError), pushes (Push, AppendPush) and the
// hello that names the node (Hello, AppendHello).
// docs/PROTOCOL.md specifies the format. It imports only the standard
// library.
package protocol
