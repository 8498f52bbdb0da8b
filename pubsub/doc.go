// Package pubsub moves messages between Relay nodes.
//
// Start with [Broker]: the contract every implementation keeps. [Memory] is
// the embedded broker of a single node; [Redis] relays through Redis
// PUBLISH/SUBSCRIBE so that a message published on one node reaches the
// subscribers of every node. Both pass the conformance suite in
// [github.com/relay-pubsub/relay/pubsub/pubsubtest].
//
// A Redis broker is made by [NewRedis], which starts nothing, run by
// [Redis.Run] and released by [Redis.Close]; it is a Prometheus collector
// of its own counters. Its files follow its parts: redis.go the type and the
// Broker methods, pipeline.go the publish path (publishers send their own
// round trips), shard.go a subscriber connection and its ownership and lock
// order, probe.go the probes that prove a subscriber connection delivers,
// cluster.go Redis Cluster with sharded pub/sub (SPUBLISH and SSUBSCRIBE,
// one subscriber connection per master, following the slot map).
// sentinel.go the Sentinel mode (the master that Redis Sentinel names,
// followed through failovers).
//
// Channels may keep history ([Historian]): each message then carries an
// offset in its channel's epoch, and a subscriber that missed messages reads
// them back. Redis keeps it in a stream per channel, appended to and
// published by one script (history.go). A lost subscription is reported to
// each handler as a [Message] with Gap set.
//
// Between nodes a message travels as an envelope ([Message.AppendEnvelope],
// [DecodeEnvelope]); a payload that is not an envelope, such as one sent with
// a plain redis-cli PUBLISH, is delivered as a text message.
package pubsub
