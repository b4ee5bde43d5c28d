package worker_test

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

func (c *client) file(conv string, req protocol.FileRequest) *protocol.FileResult {
	c.t.Helper()
	return c.rawFile(conv, protocol.Encode(&req))
}

func (c *client) rawFile(conv string, body []byte) *protocol.FileResult {
	c.t.Helper()
	msg := nats.NewMsg(subjects.Worker(c.worker, "files"))
	msg.Header.Set(protocol.HeaderTenant, "default")
	msg.Header.Set(protocol.HeaderConversation, conv)
	msg.Data = body
	reply, err := c.nc.RequestMsg(msg, time.Minute)
	if err != nil {
		c.t.Fatalf("request: %v", err)
	}
	res, err := protocol.DecodeFileResult(reply.Data)
	if err != nil {
		c.t.Fatalf("decode %q: %v", reply.Data, err)
	}
	return res
}

// TestFileRequestsQueueWithRuns: a put sent right behind a run that is still going waits for it
// (the conversation's order), and the run after the put sees the file; a file request may be
// the conversation's first, creating its sandbox; malformed ones are refused naming the field.
func TestFileRequestsQueueWithRuns(t *testing.T) {
	ns := testutil.StartNATS(t)
	w := startWorker(t, ns, fake.New(), worker.Config{})
	c := newClient(t, ns, w)

	first := c.file("q", protocol.FileRequest{Op: protocol.FileOpList})
	if first.Error != nil || first.Sandbox == nil || !first.Sandbox.Created || len(first.Entries) != 0 {
		t.Fatalf("a list as the conversation's first request: %+v", first)
	}
	wait := c.running(w, "q", protocol.RunRequest{Code: "sleep 0.5; echo first > order.txt", Language: "bash"})
	put := c.file("q", protocol.FileRequest{Op: protocol.FileOpPut, Path: "order.txt", Data: []byte("second\n")})
	if res := wait(); res.Error != nil || put.Error != nil {
		t.Fatalf("run %+v, put %+v", res.Error, put.Error)
	}
	if res := c.ok("q", "bash", "cat order.txt"); res.Output != "second\n" {
		t.Fatalf("after a run and a put queued behind it, the file holds %q: the put overtook the run", res.Output)
	}
	for body, field := range map[string]string{
		`{"op":"put"}`:                                         "path",
		`{"op":"rename","path":"a"}`:                           "op",
		`{"op":"put","path":"a","data":"***"}`:                 "base64",
		`{"op":"put","path":"a","offset":-1}`:                  "offset",
		`{"op":"put","path":"a","mode":"999"}`:                 "mode",
		`{"op":"put","path":"a","more":true}`:                  "upload",
		`{"op":"put","path":"a","sha256":"abc"}`:               "sha256",
		`{"op":"get","path":"a","sandbox":{"backend":"nope"}}`: "sandbox.backend",
		`[1]`: "object",
	} {
		res := c.rawFile("q", []byte(body))
		if res.Error == nil || res.Error.Code != protocol.CodeBadRequest || !strings.Contains(res.Error.Message, field) {
			t.Errorf("%s: %+v; want bad_request naming %s", body, res.Error, field)
		}
	}
}

// TestStreamedRunRetried: a streamed run retried with its id is answered with the first
// result, and its chunks are not published again.
func TestStreamedRunRetried(t *testing.T) {
	ns := testutil.StartNATS(t)
	w := startWorker(t, ns, fake.New(), worker.Config{})
	c := newClient(t, ns, w)
	var mu sync.Mutex
	var chunks []protocol.OutputChunk
	sub, err := c.nc.Subscribe(subjects.Stream("default", "s", "r1"), func(m *nats.Msg) {
		ch, err := protocol.DecodeOutputChunk(m.Data)
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		chunks = append(chunks, *ch)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	c.nc.Flush()
	req := protocol.RunRequest{ID: "r1", Code: "for i in 1 2 3; do echo $i; sleep 0.1; done", Language: "bash", Stream: true}
	res := c.run("s", req)
	if res.Error != nil || res.Stream == nil || res.Stream.Chunks < 2 || res.Output != "1\n2\n3\n" {
		t.Fatalf("streamed run: %+v stream %+v", res, res.Stream)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if int64(len(chunks)) != res.Stream.Chunks {
			return fmt.Errorf("%d of %d chunks", len(chunks), res.Stream.Chunks)
		}
		return nil
	})
	again := c.run("s", req)
	if again.Output != res.Output || again.Stream == nil || again.Stream.Chunks != res.Stream.Chunks {
		t.Fatalf("retry: %+v, want the first result", again)
	}
	// A run after the retry, on the same subject's conversation, proves the retry published
	// nothing: its own chunks go to its own subject, and none came to r1's meanwhile.
	c.ok("s", "bash", "echo later")
	mu.Lock()
	defer mu.Unlock()
	if int64(len(chunks)) != res.Stream.Chunks {
		t.Fatalf("%d chunks on r1's subject after the retry, want the first run's %d", len(chunks), res.Stream.Chunks)
	}
}

// TestGetFitsTheMaxPayload: on a server with a 64 KiB max payload, a get returns what fits
// (in base64 and JSON), and a client reading until EOF gets the whole file.
func TestGetFitsTheMaxPayload(t *testing.T) {
	ns := testutil.StartNATSWith(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), MaxPayload: 64 << 10})
	w := startWorker(t, ns, fake.New(), worker.Config{})
	c := newClient(t, ns, w)
	c.ok("m", "python", "open('big.txt','w').write('x' * 200000)")
	var got []byte
	for {
		res := c.file("m", protocol.FileRequest{Op: protocol.FileOpGet, Path: "big.txt", Offset: int64(len(got))})
		if res.Error != nil {
			t.Fatalf("get at %d: %v", len(got), res.Error)
		}
		got = append(got, res.Data...)
		if res.EOF {
			break
		}
	}
	if !bytes.Equal(got, bytes.Repeat([]byte("x"), 200000)) {
		t.Fatalf("got %d bytes, want 200000 x", len(got))
	}
}
