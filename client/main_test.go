package client_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/relay-pubsub/relay/internal/testenv"
	"github.com/relay-pubsub/relay/node"
	"github.com/relay-pubsub/relay/node/nodetest"
	"github.com/relay-pubsub/relay/pubsub"
)

// exampleURL is a node with the embedded broker that the examples use.
var exampleURL string

func TestMain(m *testing.M) {
	stop, err := startExampleNode()
	if err != nil {
		fmt.Fprintln(os.Stderr, "example node:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	testenv.Cleanup()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func startExampleNode() (stop func(), err error) {
	n, err := node.New(nodetest.Config(), pubsub.NewMemory(), prometheus.NewRegistry(), nil)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx, ln) }()
	exampleURL = "ws://" + ln.Addr().String()
	return func() { cancel(); <-done }, nil
}
