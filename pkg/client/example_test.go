package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// An agent framework runs a snippet in a conversation's sandbox, through a fleet on NATS
// (`codefleet dev` is one), and shows the model the result.
func Example() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc, client.WithTenant("acme"))
	if err != nil {
		log.Fatal(err)
	}
	conv := c.Conversation("chat-42")
	ctx := context.Background()

	res, err := conv.Run(ctx, "print(40+2)", protocol.LangPython, &client.RunOptions{Timeout: 30 * time.Second})
	var perr *protocol.Error
	switch {
	case errors.As(err, &perr):
		fmt.Println("the fleet could not run it:", perr.Code, perr.Message) // busy, capacity, ...
	case err != nil:
		fmt.Println("no answer:", err) // NATS down, no dispatcher after the retries
	default:
		fmt.Print(client.ForModel(res)) // "42\n"; a failing snippet adds "[exit code: N]"
	}

	// The sandbox (and its files) stays until the conversation is closed or idle too long.
	if _, err := conv.Close(ctx); err != nil {
		fmt.Println("close:", err)
	}
}
