// Package auth decides who may connect to Relay and what they may do: it
// verifies tokens (shared static tokens, and signed JWTs whose keys come
// from a shared HMAC secret, a PEM public key or a JWKS file or URL), turns
// their claims into an Identity, and reads the namespace rules that say
// which channels anonymous users may subscribe to and where clients may
// publish. docs/AUTH.md is the contract; start at Verifier.Verify.
//
// The package knows no HTTP beyond fetching a JWKS, and nothing of
// WebSockets: package node carries the token from a request to Verify and
// applies the Identity and Namespaces it gets back.
package auth
