package client_test

import (
	"context"
	"fmt"
	"log"

	"github.com/relay-pubsub/relay/client"
)

// A subscriber and a publisher on one node (behind a load balancer, or on
// two nodes of one cluster, it works the same).
func Example() {
	ctx := context.Background()
	sub, err := client.Dial(ctx, exampleURL, nil) // e.g. "ws://localhost:8080"
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	got := make(chan string)
	if _, err := sub.Subscribe(ctx, "chat:lobby", func(m client.Message) {
		got <- string(m.Bytes())
	}); err != nil {
		log.Fatal(err)
	}

	pub, err := client.Dial(ctx, exampleURL, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	// Publish returns once the node has handed the message to the broker.
	if err := pub.Publish(ctx, "chat:lobby", []byte("hello")); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-got)
	// Output: hello
}

// Events tell an app when it was disconnected and which channels may have
// missed messages meanwhile.
func ExampleOptions_onEvent() {
	c, err := client.Dial(context.Background(), exampleURL, &client.Options{
		OnEvent: func(e client.Event) {
			switch e.Type {
			case client.EventDisconnected:
				log.Printf("disconnected (%d %s), retrying in %v", e.Code, e.Reason, e.Retry)
			case client.EventGap:
				log.Printf("%s may have missed messages: reload it", e.Channel)
			}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(c.Node() != "")
	c.Close()
	// Output: true
}

// JSON values travel as they are; other text as a JSON string.
func ExampleMessage_Bytes() {
	ctx := context.Background()
	c, err := client.Dial(ctx, exampleURL, &client.Options{Echo: true})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	got := make(chan client.Message, 2)
	c.Subscribe(ctx, "news", func(m client.Message) { got <- m })
	c.Publish(ctx, "news", []byte(`{"text":"hi"}`))
	c.Publish(ctx, "news", []byte("plain text"))
	for range 2 {
		m := <-got
		fmt.Printf("%s -> %s\n", m.Data, m.Bytes())
	}
	// Output:
	// {"text":"hi"} -> {"text":"hi"}
	// "plain text" -> plain text
}

// A message published twice with one idempotency key, as a retry after an
// unknown outcome would, is delivered once.
func ExampleClient_PublishOnce() {
	ctx := context.Background()
	sub, err := client.Dial(ctx, exampleURL, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	got := make(chan string, 3)
	if _, err := sub.Subscribe(ctx, "orders", func(m client.Message) {
		got <- string(m.Bytes())
	}); err != nil {
		log.Fatal(err)
	}
	pub, err := client.Dial(ctx, exampleURL, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	for range 2 {
		if err := pub.PublishOnce(ctx, "orders", []byte(`"order 17 paid"`), "order-17-paid"); err != nil {
			log.Fatal(err)
		}
	}
	if err := pub.Publish(ctx, "orders", []byte(`"done"`)); err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-got)
	fmt.Println(<-got)
	// Output:
	// order 17 paid
	// done
}
