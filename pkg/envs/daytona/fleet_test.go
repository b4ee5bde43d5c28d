package daytona_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

const fleetTTL = testutil.FleetTTL

// TestWorkerKilledMidConversation: a conversation's worker dies in the middle of a run; the
// in-flight run gets worker_lost, and the conversation goes on on the other worker in the same
// Daytona sandbox, with its files: the result says neither created nor recreated. Each worker has
// a backend of its own, as two processes would, on one Daytona service.
func TestWorkerKilledMidConversation(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	ns := testutil.StartNATS(t)

	// The doomed worker's NATS connection is closed without a shutdown: it just vanishes.
	doomedEnv := newEnv(t, fake, nil)
	doomedNC := testutil.Connect(t, ns)
	doomed, err := worker.New(worker.Config{ID: "doomed", HeartbeatInterval: 200 * time.Millisecond, HeartbeatTTL: fleetTTL}, doomedNC, doomedEnv, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := doomed.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	d := testutil.StartDispatcher(t, ns, dispatcher.Config{})
	testutil.WaitWorkers(t, 1, d)
	c, err := client.New(testutil.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	conv := c.Conversation("moving")
	ctx := context.Background()
	first, err := conv.Run(ctx, "echo 'kept across workers' > notes.txt; pip_cache=1", "bash", nil)
	if err != nil || first.Sandbox == nil || first.Sandbox.Worker != "doomed" || !first.Sandbox.Created {
		t.Fatalf("first run: %+v %v, want a sandbox created on doomed", first, err)
	}
	sandboxID := first.Sandbox.ID
	if res, err := conv.Run(ctx, "print(open('notes.txt').read().strip())", "python", nil); err != nil || res.Output != "kept across workers\n" {
		t.Fatalf("second run: %+v %v", res, err)
	}

	survivorEnv := newEnv(t, fake, nil)
	testutil.StartWorker(t, ns, worker.Config{ID: "survivor"}, survivorEnv)
	testutil.WaitWorkers(t, 2, d)

	// A run is in flight when the doomed worker dies.
	var wg sync.WaitGroup
	var runErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, runErr = conv.Run(ctx, "sleep 30", "bash", nil)
	}()
	testutil.Eventually(t, 10*time.Second, func() error {
		if doomed.Info().Running != 1 {
			return errors.New("the run has not started on doomed")
		}
		return nil
	})
	doomedNC.Close()
	wg.Wait()
	var perr *protocol.Error
	if !errors.As(runErr, &perr) || perr.Code != protocol.CodeWorkerLost {
		t.Fatalf("in-flight run: got %v, want worker_lost", runErr)
	}

	res, err := conv.Run(ctx, "cat notes.txt", "bash", nil)
	if err != nil {
		t.Fatalf("run after the worker died: %v", err)
	}
	if res.Sandbox.Worker != "survivor" || res.Sandbox.ID != sandboxID || res.Sandbox.Created || res.Sandbox.Recreated || res.Output != "kept across workers\n" {
		t.Fatalf("run after the worker died: %+v (sandbox %+v), want the same sandbox %s on survivor with its file, not created nor recreated",
			res, res.Sandbox, sandboxID)
	}
	sb, _ := fake.Get(sandboxID)
	if sb.Labels[envs.LabelWorker] != "survivor" {
		t.Fatalf("sandbox labels %v: the survivor did not take it over", sb.Labels)
	}
	if n := len(fake.Sandboxes()); n != 1 {
		t.Fatalf("%d sandboxes on the service, want the conversation's one", n)
	}

	// The doomed worker is still running somewhere, cut off: its reaper must not delete the
	// sandbox it lost. Its backend refuses, as the sandbox now belongs to the survivor.
	if err := doomedEnv.Destroy(ctx, sandboxID); err != nil {
		t.Fatalf("destroy from the doomed worker: %v", err)
	}
	if sb, ok := fake.Get(sandboxID); !ok || sb.Deleted() {
		t.Fatalf("the doomed worker deleted the survivor's sandbox: %+v", sb)
	}
	// Its stuck run is killed when it shuts down (the run's context ends, and the backend kills
	// the run's processes in the sandbox).
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	doomed.Shutdown(sctx)
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := fake.Running(); n != 0 {
			return fmt.Errorf("%d toolbox commands still running: the abandoned sleep 30 was not killed", n)
		}
		return nil
	})

	// The conversation still works, then closes; its sandbox is deleted.
	if res, err := conv.Run(ctx, "ls", "bash", nil); err != nil || res.Output != "notes.txt\n" {
		t.Fatalf("run after the doomed worker stopped: %+v %v", res, err)
	}
	closed, err := conv.Close(ctx)
	if err != nil || !closed.Closed || closed.Sandbox == nil || closed.Sandbox.ID != sandboxID {
		t.Fatalf("close: %+v %v", closed, err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := fake.Live(); n != 0 {
			return fmt.Errorf("%d sandboxes live after close", n)
		}
		return nil
	})
}

// TestNewConversationCreates: a conversation that never had a sandbox gets a new one (created,
// not recreated), and a second conversation does not pick up the first one's.
func TestNewConversationCreates(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	ns := testutil.StartNATS(t)
	testutil.StartWorker(t, ns, worker.Config{ID: "w1"}, newEnv(t, fake, nil))
	d := testutil.StartDispatcher(t, ns, dispatcher.Config{})
	testutil.WaitWorkers(t, 1, d)
	c, err := client.New(testutil.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, err := c.Conversation("a").Run(ctx, "echo a > who", "bash", nil)
	if err != nil || !a.Sandbox.Created || a.Sandbox.Recreated {
		t.Fatalf("conversation a: %+v %v", a, err)
	}
	b, err := c.Conversation("b").Run(ctx, "cat who 2>/dev/null || echo nobody", "bash", nil)
	if err != nil || !b.Sandbox.Created || b.Sandbox.ID == a.Sandbox.ID || b.Output != "nobody\n" {
		t.Fatalf("conversation b: %+v %v, want a sandbox of its own", b, err)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := c.Conversation(id).Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWorkerRecreatesDeletedSandbox (issue 13, point 2): through a real worker, a conversation
// whose Daytona sandbox was deleted behind the worker's back (the toolbox then answers 401, as
// for a wrong key) gets sandbox_failed for the run that found it gone, and a new sandbox on the
// next run, marked recreated; a key the service no longer takes is backend_unavailable instead,
// and the sandbox is kept.
func TestWorkerRecreatesDeletedSandbox(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	ns := testutil.StartNATS(t)
	testutil.StartWorker(t, ns, worker.Config{ID: "w1"}, newEnv(t, fake, nil))
	d := testutil.StartDispatcher(t, ns, dispatcher.Config{})
	testutil.WaitWorkers(t, 1, d)
	c, err := client.New(testutil.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conv := c.Conversation("deleted")
	first, err := conv.Run(ctx, "echo mine > f", "bash", nil)
	if err != nil || !first.Sandbox.Created {
		t.Fatalf("first run: %+v %v", first, err)
	}
	old := first.Sandbox.ID
	if err := newEnv(t, fake, nil).Destroy(ctx, old); err != nil { // someone, on the dashboard
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if s, _ := fake.Get(old); s.State != "destroyed" {
			return fmt.Errorf("state %s", s.State)
		}
		return nil
	})
	_, err = conv.Run(ctx, "cat f", "bash", nil)
	var perr *protocol.Error
	if !errors.As(err, &perr) || perr.Code != protocol.CodeSandboxFailed || !strings.Contains(perr.Message, "gone") {
		t.Fatalf("run on the deleted sandbox: %v, want sandbox_failed saying it is gone", err)
	}
	res, err := conv.Run(ctx, "cat f 2>/dev/null || echo new", "bash", nil)
	if err != nil || res.Sandbox == nil || !res.Sandbox.Created || !res.Sandbox.Recreated || res.Sandbox.ID == old || res.Output != "new\n" {
		t.Fatalf("next run: %+v (sandbox %+v) %v, want a new sandbox marked recreated", res, res.Sandbox, err)
	}
	again := res.Sandbox.ID
	runBash := func(code string) (*protocol.RunResult, error) { return conv.Run(ctx, code, "bash", nil) }
	runBash("echo again > f")

	// The key is revoked: backend_unavailable, nothing recreated.
	fake.SetAPIKey("dtn_rotated")
	_, err = runBash("cat f")
	if !errors.As(err, &perr) || perr.Code != protocol.CodeBackendUnavailable || !strings.Contains(perr.Message, "refused the credentials") {
		t.Fatalf("run with a refused key: %v, want backend_unavailable", err)
	}
	fake.SetAPIKey("dtn_fake")
	res, err = runBash("cat f")
	if err != nil || res.Sandbox.ID != again || res.Sandbox.Created || res.Sandbox.Recreated || res.Output != "again\n" {
		t.Fatalf("run with the key back: %+v (sandbox %+v) %v, want the same sandbox, kept", res, res.Sandbox, err)
	}
	if _, err := conv.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestStreamAndFilesThroughTheFleet: a dispatcher and a worker on the Daytona backend (the
// fake service): a run printing a line every 200 ms for 3 s is streamed to the client, its first
// line long before the end, every chunk in order, then its result with the exit code; a file put
// in pieces is read by the next snippet and comes back equal; a link a snippet planted is
// refused.
func TestStreamAndFilesThroughTheFleet(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	ns := testutil.StartNATS(t)
	testutil.StartWorker(t, ns, worker.Config{ID: "dt-stream"}, newEnv(t, fake, nil))
	d := testutil.StartDispatcher(t, ns, dispatcher.Config{})
	testutil.WaitWorkers(t, 1, d)
	c, err := client.New(testutil.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	conv := c.Conversation("dt-stream")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := conv.Run(ctx, "true", "bash", nil); err != nil { // the sandbox, made
		t.Fatal(err)
	}

	type arrival struct {
		c  protocol.OutputChunk
		at time.Time
	}
	var got []arrival
	start := time.Now()
	res, err := conv.RunStream(ctx, "import time\nfor i in range(15):\n    print('tick', i, flush=True)\n    time.sleep(0.2)\nraise SystemExit(4)\n", "python", nil,
		func(ch protocol.OutputChunk) { got = append(got, arrival{ch, time.Now()}) })
	end := time.Now()
	if err != nil || res.ExitCode != 4 || res.Lost != 0 || !res.Streamed {
		t.Fatalf("streamed run: %+v %v", res, err)
	}
	var all strings.Builder
	for i, a := range got {
		if a.c.Seq != int64(i+1) {
			t.Fatalf("chunk %d has seq %d", i+1, a.c.Seq)
		}
		all.WriteString(a.c.Data)
	}
	if all.String() != res.Output || strings.Count(res.Output, "\n") != 15 || len(got) < 5 {
		t.Fatalf("streamed %q in %d chunks, result %q", all.String(), len(got), res.Output)
	}
	if lead := end.Sub(got[0].at); lead < 2*time.Second {
		t.Fatalf("first chunk %s before the end of a 3 s run: not streamed", lead)
	}
	t.Logf("Daytona (fake) through the fleet: first chunk %s after the request, %s before the result; %d chunks", got[0].at.Sub(start).Round(time.Millisecond), end.Sub(got[0].at).Round(time.Millisecond), len(got))

	data := []byte(strings.Repeat("daytona file piece\n", 40000)) // 760 000 bytes: two pieces
	if _, err := conv.PutFile(ctx, "in/data.txt", strings.NewReader(string(data)), int64(len(data)), nil); err != nil {
		t.Fatalf("put: %v", err)
	}
	if res, err := conv.Run(ctx, "wc -l < in/data.txt; tr a-z A-Z < in/data.txt > out.txt", "bash", nil); err != nil || strings.TrimSpace(res.Output) != "40000" {
		t.Fatalf("the next snippet reads the file: %+v %v", res, err)
	}
	var back strings.Builder
	if _, err := conv.GetFile(ctx, "out.txt", &back); err != nil || back.String() != strings.ToUpper(string(data)) {
		t.Fatalf("get: %d bytes, %v", back.Len(), err)
	}
	if _, err := conv.Run(ctx, "ln -s /etc/passwd leak.txt", "bash", nil); err != nil {
		t.Fatal(err)
	}
	var leak strings.Builder
	_, err = conv.GetFile(ctx, "leak.txt", &leak)
	var perr *protocol.Error
	if !errors.As(err, &perr) || perr.Code != protocol.CodePathRefused || leak.Len() != 0 {
		t.Fatalf("get of a planted link: %v, %d bytes", err, leak.Len())
	}
}
