package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/affinity"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

const ttl = testutil.FleetTTL

func startWorker(t testing.TB, ns *server.Server, id string, env envs.Env) *worker.Worker {
	t.Helper()
	return testutil.StartWorker(t, ns, worker.Config{ID: id}, env)
}

func startDispatcher(t testing.TB, ns *server.Server) *dispatcher.Dispatcher {
	t.Helper()
	return testutil.StartDispatcher(t, ns, dispatcher.Config{})
}

func newClient(t testing.TB, ns *server.Server) *client.Client {
	c, err := client.New(testutil.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRoutesConversationsToTheirWorker(t *testing.T) {
	ns := testutil.StartNATS(t)
	startWorker(t, ns, "wa", fake.New())
	startWorker(t, ns, "wb", fake.New())
	d := startDispatcher(t, ns)
	testutil.WaitWorkers(t, 2, d)
	c := newClient(t, ns)
	ctx := context.Background()
	owners := map[string]string{}
	for i := 0; i < 6; i++ {
		conv := c.Conversation(fmt.Sprintf("conv-%d", i))
		res, err := conv.Run(ctx, fmt.Sprintf("echo %d > mine", i), "bash", nil)
		if err != nil {
			t.Fatalf("first run: %v", err)
		}
		owners[conv.ID()] = res.Sandbox.Worker
		res, err = conv.Run(ctx, "cat mine", "bash", nil)
		if err != nil || res.Output != fmt.Sprintf("%d\n", i) || res.Sandbox.Worker != owners[conv.ID()] {
			t.Fatalf("second run of %s: %+v %v, want its file on worker %s", conv.ID(), res, err, owners[conv.ID()])
		}
	}
	spread := map[string]int{}
	for _, w := range owners {
		spread[w]++
	}
	if len(spread) != 2 {
		t.Fatalf("6 conversations all on %v", spread)
	}
	closed, err := c.Conversation("conv-0").Close(ctx)
	if err != nil || !closed.Closed {
		t.Fatalf("close: %+v %v", closed, err)
	}
	if again, err := c.Conversation("conv-0").Close(ctx); err != nil || again.Closed {
		t.Fatalf("close twice: %+v %v", again, err)
	}
	_, err = c.Conversation("bad").Run(ctx, "x", "cobol", nil)
	if perr := (*protocol.Error)(nil); !errors.As(err, &perr) || perr.Code != protocol.CodeUnsupportedLanguage {
		t.Fatalf("cobol: %v", err)
	}
}

// TestWorkerLostMidRun: a worker that dies mid-run gets its in-flight clients worker_lost within
// the heartbeat TTL plus a second; the next run of the conversation succeeds on the other worker.
func TestWorkerLostMidRun(t *testing.T) {
	ns := testutil.StartNATS(t)
	// The doomed worker's connection is closed without a shutdown: it just vanishes.
	doomed, doomedNC := testutil.StartDoomedWorker(t, ns, worker.Config{ID: "doomed", HeartbeatTTL: ttl}, fake.New())
	d := startDispatcher(t, ns)
	testutil.WaitWorkers(t, 1, d)
	c := newClient(t, ns)
	conv := c.Conversation("victim")
	if _, err := conv.Run(context.Background(), "true", "bash", nil); err != nil {
		t.Fatal(err)
	}
	startWorker(t, ns, "survivor", fake.New())

	var wg sync.WaitGroup
	wg.Add(1)
	var runErr error
	var took time.Duration
	go func() {
		defer wg.Done()
		start := time.Now()
		_, runErr = conv.Run(context.Background(), "sleep 30", "bash", nil)
		took = time.Since(start)
	}()
	testutil.Eventually(t, 5*time.Second, func() error {
		if doomed.Info().Running != 1 {
			return errors.New("not running")
		}
		return nil
	})
	killed := time.Now()
	doomedNC.Close()
	wg.Wait()
	var perr *protocol.Error
	if !errors.As(runErr, &perr) || perr.Code != protocol.CodeWorkerLost {
		t.Fatalf("in-flight run: got %v, want worker_lost", runErr)
	}
	if since := time.Since(killed); since > ttl+time.Second+500*time.Millisecond {
		t.Fatalf("worker_lost came %s after the worker died (run took %s)", since, took)
	}
	t.Logf("worker_lost %s after the worker died", time.Since(killed))
	res, err := conv.Run(context.Background(), "echo again", "bash", nil)
	if err != nil || res.Sandbox.Worker != "survivor" || !res.Sandbox.Recreated || res.Output != "again\n" {
		t.Fatalf("next run: %+v %v, want it on survivor, recreated", res, err)
	}
	// The doomed process is gone as far as the fleet knows; stop its leftover run quickly.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	doomed.Shutdown(ctx)
}

// TestOwnerWithoutResponders: a worker whose process is gone but whose registration has not
// expired yet answers "no responders". The run is not lost: once the registration expires, the
// conversation is moved to a live worker and the run sent there, its result marked recreated.
func TestOwnerWithoutResponders(t *testing.T) {
	const gonesTTL = 2 * time.Second
	ns := testutil.StartNATS(t)
	_, goneNC := testutil.StartDoomedWorker(t, ns, worker.Config{ID: "gone", HeartbeatTTL: gonesTTL}, fake.New())
	d := testutil.StartDispatcher(t, ns, dispatcher.Config{HeartbeatTTL: gonesTTL})
	c := newClient(t, ns)
	conv := c.Conversation("orphaned")
	if res, err := conv.Run(context.Background(), "true", "bash", nil); err != nil || res.Sandbox.Worker != "gone" {
		t.Fatalf("first run: %+v %v", res, err)
	}
	startWorker(t, ns, "alive", fake.New())
	testutil.WaitWorkers(t, 2, d)
	goneNC.Close() // its subscriptions vanish at once; its registration only after the TTL
	start := time.Now()
	res, err := conv.Run(context.Background(), "echo moved", "bash", nil)
	if err != nil || res.Sandbox.Worker != "alive" || !res.Sandbox.Recreated || res.Output != "moved\n" {
		t.Fatalf("run after the owner vanished: %+v %v, want it on alive, recreated", res, err)
	}
	if took := time.Since(start); took > gonesTTL+time.Second {
		t.Fatalf("the run took %s, want it moved within the TTL (%s) and a second", took, gonesTTL)
	}
}

// TestOwnerReconnecting: a worker that has no responders only for a moment (a NATS restart, a
// new connection of the same worker) keeps its conversation: the run waits for it and runs in
// the same sandbox, not recreated.
func TestOwnerReconnecting(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := fake.New()
	cfg := worker.Config{ID: "blinking", HeartbeatInterval: 200 * time.Millisecond, HeartbeatTTL: 3 * time.Second}
	_, firstNC := testutil.StartDoomedWorker(t, ns, cfg, env)
	d := testutil.StartDispatcher(t, ns, dispatcher.Config{HeartbeatTTL: cfg.HeartbeatTTL})
	testutil.WaitWorkers(t, 1, d)
	c := newClient(t, ns)
	conv := c.Conversation("steady")
	res, err := conv.Run(context.Background(), "echo kept > f", "bash", nil)
	if err != nil || res.Sandbox.Worker != "blinking" {
		t.Fatalf("first run: %+v %v", res, err)
	}
	// Another worker is there to take the conversation, should the dispatcher move it.
	startWorker(t, ns, "other", fake.New())
	testutil.WaitWorkers(t, 2, d)
	firstNC.Close() // no responders from now on...
	done := make(chan struct{})
	var again *protocol.RunResult
	go func() {
		defer close(done)
		again, err = conv.Run(context.Background(), "cat f", "bash", nil)
	}()
	// ...until the same worker is back on a new connection with the same sandboxes.
	testutil.StartWorker(t, ns, cfg, env)
	<-done
	if err != nil || again.Output != "kept\n" || again.Sandbox.Worker != "blinking" || again.Sandbox.Recreated || again.Sandbox.ID != res.Sandbox.ID {
		t.Fatalf("run during the reconnect: %+v %v, want it in sandbox %s on blinking", again, err, res.Sandbox.ID)
	}
}

// TestStaleSandboxesRemoved: a worker that was unreachable while its conversations moved away
// (its registration expired, a dispatcher gave them to another worker) removes its stale copies
// of them when it is back, and keeps the conversations that are still its own.
func TestStaleSandboxesRemoved(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := fake.New()
	testutil.StartWorker(t, ns, worker.Config{ID: "returning", ReapInterval: 50 * time.Millisecond, HeartbeatTTL: ttl}, env)
	d := startDispatcher(t, ns)
	testutil.WaitWorkers(t, 1, d)
	c := newClient(t, ns)
	ctx := context.Background()
	for _, conv := range []string{"moved", "kept"} {
		if res, err := c.Conversation(conv).Run(ctx, "echo hi > f", "bash", nil); err != nil || res.Sandbox.Worker != "returning" {
			t.Fatalf("%s: %+v %v", conv, res, err)
		}
	}
	// What a dispatcher does when the worker is lost: the conversation gets a new owner.
	store, err := affinity.OpenStore(ctx, testutil.JetStream(t, ns), affinity.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Stop()
	cur, ok, err := store.Get(ctx, protocol.DefaultTenant, "moved")
	if err != nil || !ok {
		t.Fatalf("owner of moved: %+v %v %v", cur, ok, err)
	}
	if _, won, err := store.Move(ctx, protocol.DefaultTenant, "moved", cur, affinity.Owner{Worker: "elsewhere", Backend: fake.Name}); err != nil || !won {
		t.Fatalf("move: %v %v", won, err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := env.Live(); n != 1 {
			return fmt.Errorf("%d sandboxes on the worker, want only kept's", n)
		}
		return nil
	})
	res, err := c.Conversation("kept").Run(ctx, "cat f", "bash", nil)
	if err != nil || res.Output != "hi\n" || res.Sandbox.Created {
		t.Fatalf("kept lost its sandbox: %+v %v", res, err)
	}
}

// TestResentRunsKeepTheirOrder: runs of one conversation that all bounce off an owner without
// responders are sent to the new owner in the order they arrived.
func TestResentRunsKeepTheirOrder(t *testing.T) {
	ns := testutil.StartNATS(t)
	_, goneNC := testutil.StartDoomedWorker(t, ns, worker.Config{ID: "gone", HeartbeatTTL: ttl}, fake.New())
	d := startDispatcher(t, ns)
	testutil.WaitWorkers(t, 1, d)
	c := newClient(t, ns)
	if _, err := c.Conversation("ordered").Run(context.Background(), "first", "bash", nil); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []string
	alive := fake.New()
	alive.RunFunc = func(_ context.Context, _ envs.Info, ex envs.Exec) (envs.Result, error) {
		mu.Lock()
		order = append(order, ex.Code)
		mu.Unlock()
		return envs.Result{Output: ex.Code}, nil
	}
	startWorker(t, ns, "alive", alive)
	testutil.WaitWorkers(t, 2, d)

	goneNC.Close() // from now on its subject has no responders; its registration lives on
	nc := testutil.Connect(t, ns)
	inbox := nats.NewInbox()
	replies, err := nc.SubscribeSync(inbox + ".*")
	if err != nil {
		t.Fatal(err)
	}
	subject := protocol.Subjects{Prefix: protocol.DefaultPrefix}.Run(protocol.DefaultTenant, "ordered")
	const n = 5
	for i := 0; i < n; i++ { // one connection: the dispatcher gets them in this order
		req := protocol.RunRequest{Code: fmt.Sprintf("run-%d", i), Language: "bash"}
		if err := nc.PublishRequest(subject, fmt.Sprintf("%s.%d", inbox, i), protocol.Encode(&req)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		m, err := replies.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if res, err := protocol.DecodeRunResult(m.Data); err != nil || res.Error != nil || res.Sandbox.Worker != "alive" {
			t.Fatalf("reply on %s: %+v %v", m.Subject, res, err)
		}
	}
	want := []string{"run-0", "run-1", "run-2", "run-3", "run-4"}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(order, want) {
		t.Fatalf("the new owner ran %v, want %v", order, want)
	}
}

// TestCreatedSandboxRecorded: the run that creates a conversation's sandbox has it recorded in
// the conversation's ownership (from the worker's Codefleet-Sandbox-Created header, which the
// client never sees); a later run, which creates nothing, leaves it alone.
func TestCreatedSandboxRecorded(t *testing.T) {
	ns := testutil.StartNATS(t)
	startWorker(t, ns, "rec", fake.New())
	d := startDispatcher(t, ns)
	testutil.WaitWorkers(t, 1, d)
	nc := testutil.Connect(t, ns)
	run := func() (*protocol.RunResult, nats.Header) {
		t.Helper()
		msg, err := nc.Request(protocol.Subjects{}.Run(protocol.DefaultTenant, "recorded"), []byte(`{"code":"true","language":"bash"}`), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		res, err := protocol.DecodeRunResult(msg.Data)
		if err != nil || res.Error != nil || res.Sandbox == nil {
			t.Fatalf("run: %+v %v", res, err)
		}
		return res, msg.Header
	}
	first, header := run()
	if !first.Sandbox.Created || header.Get(protocol.HeaderSandboxCreated) != "" {
		t.Fatalf("first run: created %v, header %v: want created, and no internal header for the client", first.Sandbox.Created, header)
	}
	store, err := affinity.OpenStore(testutil.Context(t), testutil.JetStream(t, ns), affinity.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Stop()
	owner := func() affinity.Owner {
		o, ok, err := store.Get(testutil.Context(t), protocol.DefaultTenant, "recorded")
		if err != nil || !ok {
			t.Fatalf("owner: %+v %v %v", o, ok, err)
		}
		return o
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if o := owner(); o.Sandbox != first.Sandbox.ID || o.Worker != "rec" {
			return fmt.Errorf("ownership %+v, want sandbox %s on rec", o, first.Sandbox.ID)
		}
		return nil
	})
	rev := owner().Revision
	if second, _ := run(); second.Sandbox.Created || second.Sandbox.ID != first.Sandbox.ID {
		t.Fatalf("second run: %+v", second.Sandbox)
	}
	if o := owner(); o.Revision != rev {
		t.Fatalf("a run that created nothing rewrote the ownership: revision %d, was %d", o.Revision, rev)
	}
}

// TestSystemReplySubjectRefused: a request whose reply subject is a system subject is dropped.
// The dispatcher answers with its own permissions: without this, a run sent with the reply
// subject of another tenant's affinity entry would overwrite that entry with a RunResult.
func TestSystemReplySubjectRefused(t *testing.T) {
	ns := testutil.StartNATS(t)
	startWorker(t, ns, "wa", fake.New())
	d := startDispatcher(t, ns)
	testutil.WaitWorkers(t, 1, d)
	c := newClient(t, ns)
	ctx := testutil.Context(t)
	if _, err := c.Conversation("victim").Run(ctx, "echo mine > f", "bash", nil); err != nil {
		t.Fatal(err)
	}
	js := testutil.JetStream(t, ns)
	kv, err := js.KeyValue(ctx, protocol.Subjects{}.AffinityBucket())
	if err != nil {
		t.Fatal(err)
	}
	before, err := kv.Get(ctx, protocol.Key(protocol.DefaultTenant, "victim"))
	if err != nil {
		t.Fatal(err)
	}
	nc := testutil.Connect(t, ns)
	run := protocol.Encode(&protocol.RunRequest{Code: "true", Language: "bash"})
	for _, subject := range []string{protocol.Subjects{}.Run("other", "x"), protocol.Subjects{}.Close("other", "x")} {
		reply := "$KV." + protocol.Subjects{}.AffinityBucket() + "." + protocol.Key(protocol.DefaultTenant, "victim")
		if err := nc.PublishMsg(&nats.Msg{Subject: subject, Reply: reply, Data: run}); err != nil {
			t.Fatal(err)
		}
	}
	// A request after them, answered, shows the dispatcher has handled the two before it.
	if _, err := c.Conversation("later").Run(ctx, "true", "bash", nil); err != nil {
		t.Fatal(err)
	}
	after, err := kv.Get(ctx, protocol.Key(protocol.DefaultTenant, "victim"))
	if err != nil || after.Revision() != before.Revision() {
		t.Fatalf("the victim's affinity entry changed: revision %d -> %v (%v)", before.Revision(), after, err)
	}
	if res, err := c.Conversation("victim").Run(ctx, "cat f", "bash", nil); err != nil || res.Output != "mine\n" {
		t.Fatalf("victim after: %+v %v", res, err)
	}
}
