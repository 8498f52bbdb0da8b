module github.com/relay-pubsub/relay

go 1.26

require (
	github.com/HdrHistogram/hdrhistogram-go v1.4.0
	github.com/coder/websocket v1.8.15
)
