package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

// ledger is a fast fake backend's record of every snippet it executed, by code, so tests can
// tell that each run executed exactly once.
type ledger struct {
	mu    sync.Mutex
	execs map[string]int
	delay time.Duration
}

func newLedger(delay time.Duration) *ledger { return &ledger{execs: map[string]int{}, delay: delay} }

// env returns a fake backend that records into the ledger and echoes the code.
func (l *ledger) env() *fake.Env {
	e := fake.New()
	e.RunFunc = func(ctx context.Context, sb envs.Info, ex envs.Exec) (envs.Result, error) {
		l.mu.Lock()
		l.execs[ex.Code]++
		l.mu.Unlock()
		if l.delay > 0 {
			select {
			case <-time.After(l.delay):
			case <-ctx.Done():
			}
		}
		return envs.Result{Output: ex.Code}, nil
	}
	return e
}

func (l *ledger) count(code string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.execs[code]
}

// loadTTL is the heartbeat TTL of the fleets under load: these tests are not about noticing a
// dead worker, and a loaded machine (the race detector, other packages' tests beside) must not
// make a live one look dead.
const loadTTL = 10 * time.Second

// fleetWorker starts a worker with room for a large test.
func fleetWorker(t testing.TB, ns *server.Server, id string, env envs.Env) *worker.Worker {
	t.Helper()
	return testutil.StartWorker(t, ns, worker.Config{ID: id, Capacity: 5000, QueueDepth: 64, HeartbeatTTL: loadTTL}, env)
}

// loadDispatcher starts a dispatcher for a fleet under load.
func loadDispatcher(t testing.TB, ns *server.Server) *dispatcher.Dispatcher {
	t.Helper()
	return testutil.StartDispatcher(t, ns, dispatcher.Config{HeartbeatTTL: loadTTL})
}

// replyCounter sends raw requests, each with its own reply subject, and counts every reply that
// comes back, so a lost or a duplicated reply shows (a NATS request mux would hide duplicates).
type replyCounter struct {
	nc     *nats.Conn
	prefix string
	seq    atomic.Int64
	mu     sync.Mutex
	counts map[string]int
	wait   map[string]chan *nats.Msg
}

func newReplyCounter(t *testing.T, ns *server.Server) *replyCounter {
	rc := &replyCounter{nc: testutil.Connect(t, ns), prefix: nats.NewInbox() + ".", counts: map[string]int{}, wait: map[string]chan *nats.Msg{}}
	sub, err := rc.nc.Subscribe(rc.prefix+"*", func(m *nats.Msg) {
		rc.mu.Lock()
		rc.counts[m.Subject]++
		ch := rc.wait[m.Subject]
		delete(rc.wait, m.Subject)
		rc.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	sub.SetPendingLimits(-1, -1)
	return rc
}

// request publishes data to subject and waits for the first reply.
func (rc *replyCounter) request(ctx context.Context, subject string, data []byte) (*nats.Msg, error) {
	reply := rc.prefix + strconv.FormatInt(rc.seq.Add(1), 36)
	ch := make(chan *nats.Msg, 1)
	rc.mu.Lock()
	rc.counts[reply] = 0
	rc.wait[reply] = ch
	rc.mu.Unlock()
	if err := rc.nc.PublishRequest(subject, reply, data); err != nil {
		return nil, err
	}
	select {
	case m := <-ch:
		return m, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("no reply on %s: %w", reply, ctx.Err())
	}
}

// tally returns how many requests were sent, how many got no reply and how many more than one.
func (rc *replyCounter) tally() (sent, lost, duplicated int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, n := range rc.counts {
		sent++
		switch {
		case n == 0:
			lost++
		case n > 1:
			duplicated++
		}
	}
	return
}

// TestAffinityAtScale: 3 workers and 2 dispatchers carry 2,000 conversations of 5 runs each, all
// at once. Every run of a conversation lands on the same worker and sandbox, the conversations
// spread over the workers within ±15% of even, every run executes once and every request gets
// exactly one reply.
func TestAffinityAtScale(t *testing.T) {
	const (
		convs = 2000
		runs  = 5
	)
	ns := testutil.StartNATS(t)
	led := newLedger(0)
	ids := []string{"w1", "w2", "w3"}
	for _, id := range ids {
		fleetWorker(t, ns, id, led.env())
	}
	d1, d2 := loadDispatcher(t, ns), loadDispatcher(t, ns)
	testutil.WaitWorkers(t, len(ids), d1, d2)

	rc := newReplyCounter(t, ns)
	subjects := protocol.Subjects{Prefix: protocol.DefaultPrefix}
	owners := make([]string, convs)
	errs := make(chan error, convs)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < convs; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conv := fmt.Sprintf("conv-%04d", c)
			var sandbox string
			for r := 0; r < runs; r++ {
				code := fmt.Sprintf("%s run %d", conv, r)
				req := protocol.RunRequest{ID: fmt.Sprintf("%s-%d", conv, r), Code: code, Language: "bash"}
				m, err := rc.request(ctx, subjects.Run("default", conv), protocol.Encode(&req))
				if err != nil {
					errs <- fmt.Errorf("%s run %d: %w", conv, r, err)
					return
				}
				res, err := protocol.DecodeRunResult(m.Data)
				if err != nil || res.Error != nil || res.Output != code || res.Sandbox == nil {
					errs <- fmt.Errorf("%s run %d: %+v %v", conv, r, res, err)
					return
				}
				if r == 0 {
					owners[c], sandbox = res.Sandbox.Worker, res.Sandbox.ID
				} else if res.Sandbox.Worker != owners[c] || res.Sandbox.ID != sandbox {
					errs <- fmt.Errorf("%s run %d on %s/%s, earlier runs on %s/%s", conv, r, res.Sandbox.Worker, res.Sandbox.ID, owners[c], sandbox)
					return
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	var failed []error
	for err := range errs {
		failed = append(failed, err)
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d conversations failed, e.g.: %v", len(failed), convs, errors.Join(failed[:min(5, len(failed))]...))
	}
	// Replies still on their way would show up before a round trip through the server.
	if err := rc.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	sent, lost, dup := rc.tally()
	if sent != convs*runs || lost != 0 || dup != 0 {
		t.Fatalf("%d requests sent (want %d): %d without a reply, %d with more than one", sent, convs*runs, lost, dup)
	}
	for c := 0; c < convs; c++ {
		for r := 0; r < runs; r++ {
			if n := led.count(fmt.Sprintf("conv-%04d run %d", c, r)); n != 1 {
				t.Fatalf("conv-%04d run %d executed %d times", c, r, n)
			}
		}
	}
	spread := map[string]int{}
	for _, w := range owners {
		spread[w]++
	}
	even := float64(convs) / float64(len(ids))
	for _, id := range ids {
		if dev := (float64(spread[id]) - even) / even; dev > 0.15 || dev < -0.15 {
			t.Fatalf("conversations per worker %v: %s is %+.0f%% off even", spread, id, dev*100)
		}
	}
	t.Logf("%d runs of %d conversations in %s (%.0f runs/s); conversations per worker %v", convs*runs, convs, took.Round(time.Millisecond), float64(convs*runs)/took.Seconds(), spread)
}

// TestClaimRace: many dispatchers get the first run of the same new conversation at once; they
// agree on one owner, so exactly one sandbox is created and every run sees it.
func TestClaimRace(t *testing.T) {
	const (
		dispatchers = 8
		convs       = 10
		perConv     = 24
	)
	ns := testutil.StartNATS(t)
	led := newLedger(0)
	envsByWorker := map[string]*fake.Env{}
	for _, id := range []string{"w1", "w2", "w3"} {
		envsByWorker[id] = led.env()
		fleetWorker(t, ns, id, envsByWorker[id])
	}
	var ds []*dispatcher.Dispatcher
	for i := 0; i < dispatchers; i++ {
		ds = append(ds, loadDispatcher(t, ns))
	}
	testutil.WaitWorkers(t, 3, ds...)

	// Each request has its own connection, so the queue group spreads them over the dispatchers.
	conns := make([]*client.Client, perConv)
	for i := range conns {
		conns[i] = newClient(t, ns)
	}
	for c := 0; c < convs; c++ {
		conv := fmt.Sprintf("contested-%d", c)
		results := make([]*protocol.RunResult, perConv)
		errs := make([]error, perConv)
		var ready, wg sync.WaitGroup
		ready.Add(1)
		for i := 0; i < perConv; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ready.Wait()
				results[i], errs[i] = conns[i].Conversation(conv).Run(context.Background(), fmt.Sprintf("%s from %d", conv, i), "bash", nil)
			}()
		}
		ready.Done()
		wg.Wait()
		for i := range results {
			if errs[i] != nil {
				t.Fatalf("%s request %d: %v", conv, i, errs[i])
			}
			if results[i].Sandbox.Worker != results[0].Sandbox.Worker || results[i].Sandbox.ID != results[0].Sandbox.ID {
				t.Fatalf("%s: request %d ran in %s/%s, request 0 in %s/%s", conv, i, results[i].Sandbox.Worker, results[i].Sandbox.ID, results[0].Sandbox.Worker, results[0].Sandbox.ID)
			}
		}
	}
	var created int64
	for _, e := range envsByWorker {
		created += e.Created()
	}
	if created != convs {
		t.Fatalf("%d sandboxes created for %d contested conversations", created, convs)
	}
	// How the first runs spread over the dispatchers: the race was real only if several took part.
	var relayed []int64
	busy := 0
	for _, d := range ds {
		n := d.Relayed()
		relayed = append(relayed, n)
		if n > 0 {
			busy++
		}
	}
	if busy < 2 {
		t.Fatalf("only %d dispatcher(s) relayed runs (%v): no race took place", busy, relayed)
	}
	t.Logf("runs relayed per dispatcher: %v", relayed)
}

// TestDispatcherCrashUnderLoad: one of two dispatchers dies (its connection drops) while
// conversations run. The other carries on; clients that retry with the same request id get one
// execution of each run, never two, and every run gets its result.
func TestDispatcherCrashUnderLoad(t *testing.T) {
	const (
		convs = 100
		runs  = 10
	)
	ns := testutil.StartNATS(t)
	led := newLedger(20 * time.Millisecond) // runs in flight when the dispatcher dies
	fleetWorker(t, ns, "w1", led.env())
	fleetWorker(t, ns, "w2", led.env())
	doomedNC := testutil.Connect(t, ns)
	doomed, err := dispatcher.New(dispatcher.Config{HeartbeatTTL: loadTTL}, doomedNC, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := doomed.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	survivor := loadDispatcher(t, ns)
	testutil.WaitWorkers(t, 2, doomed, survivor)

	// A short attempt timeout: a request lost with the dispatcher is retried after 2 s.
	c, err := client.New(testutil.Connect(t, ns), client.WithOverhead(time.Second), client.WithAttempts(5))
	if err != nil {
		t.Fatal(err)
	}
	var done atomic.Int64
	errs := make(chan error, convs)
	var wg sync.WaitGroup
	for i := 0; i < convs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conv := c.Conversation(fmt.Sprintf("load-%03d", i))
			for r := 0; r < runs; r++ {
				code := fmt.Sprintf("%s run %d", conv.ID(), r)
				res, err := conv.Run(context.Background(), code, "bash", &client.RunOptions{Timeout: time.Second})
				if err != nil || res.Output != code {
					errs <- fmt.Errorf("%s run %d: %+v %v", conv.ID(), r, res, err)
					return
				}
				done.Add(1)
			}
		}()
	}
	// Kill the dispatcher once it has carried part of the load.
	testutil.Eventually(t, 30*time.Second, func() error {
		if doomed.Relayed() < convs {
			return fmt.Errorf("doomed dispatcher relayed %d runs", doomed.Relayed())
		}
		return nil
	})
	doomedNC.Close()
	killedAt := done.Load()
	wg.Wait()
	testutil.Check(t, errs)
	for i := 0; i < convs; i++ {
		for r := 0; r < runs; r++ {
			code := fmt.Sprintf("load-%03d run %d", i, r)
			if n := led.count(code); n != 1 {
				t.Fatalf("%s executed %d times", code, n)
			}
		}
	}
	if survivor.Relayed() == 0 {
		t.Fatal("the surviving dispatcher relayed nothing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	doomed.Stop(ctx)
	t.Logf("dispatcher killed after %d of %d runs; all runs done once; relayed: doomed %d, survivor %d",
		killedAt, convs*runs, doomed.Relayed(), survivor.Relayed())
}
