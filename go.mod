module github.com/relay-pubsub/relay

go 1.26
