// Package pubsub moves messages between Relay nodes.
//
// Start with [Broker]: the contract every implementation keeps. [Memory] is
// the embedded broker of a single node; [Redis] relays through Redis
// PUBLISH/SUBSCRIBE so that a message published on one node reaches the
// subscribers of every node. Both pass the conformance suite in
// [github.com/relay-pubsub/relay/pubsub/pubsubtest].
//
// Between nodes a message travels as an envelope ([Message.AppendEnvelope],
// [DecodeEnvelope]); a payload that is not an envelope, such as one sent with
// a plain redis-cli PUBLISH, is delivered as a text message.
package pubsub
