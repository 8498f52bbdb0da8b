// Package protocol holds Relay's wire vocabulary shared by the node and its
// clients: channel name rules, error codes and close codes. It imports only
// the standard library.
package protocol
