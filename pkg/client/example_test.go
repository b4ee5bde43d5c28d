package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
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

// A streamed run hands its output on as it is produced: a long job shows its progress.
func ExampleConversation_RunStream() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	code := "for i in 1 2 3; do echo step $i; sleep 1; done"
	res, err := c.Conversation("chat-42").RunStream(context.Background(), code, protocol.LangBash, nil, func(ch protocol.OutputChunk) {
		os.Stdout.WriteString(ch.Data) // "step 1\n" now, "step 2\n" a second later...
	})
	if err != nil {
		log.Fatal(err)
	}
	if res.Lost > 0 {
		// Chunks lost on the way; res.Output has the whole output (within its cap).
		fmt.Fprintf(os.Stderr, "%d chunks of output were lost\n", res.Lost)
	}
	fmt.Println("exit code", res.ExitCode)
}

// Files go into the conversation's workspace before a run reads them, and come out after.
func ExampleConversation_PutFile() {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	conv := c.Conversation("chat-42")
	ctx := context.Background()

	in, err := os.Open("data.csv")
	if err != nil {
		log.Fatal(err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		log.Fatal(err)
	}
	// In pieces when large; the sandbox sees the file only once it landed whole.
	if _, err := conv.PutFile(ctx, "input/data.csv", in, st.Size(), nil); err != nil {
		log.Fatal(err) // a *protocol.Error: path_refused, file_too_large, ...
	}
	code := "import csv\nrows = list(csv.reader(open('input/data.csv')))\nopen('count.txt', 'w').write(str(len(rows)))"
	if _, err := conv.Run(ctx, code, protocol.LangPython, nil); err != nil {
		log.Fatal(err)
	}
	var out bytes.Buffer
	info, err := conv.GetFile(ctx, "count.txt", &out) // checked against the file's SHA-256
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(out.String(), "rows;", info.Size, "bytes, sha256", info.SHA256)
}
