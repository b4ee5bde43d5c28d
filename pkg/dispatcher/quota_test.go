package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
	"github.com/codefleet/codefleet/pkg/worker"
)

// quotaFleet is two workers and two dispatchers with the same quotas, each dispatcher with
// its own metrics.
type quotaFleet struct {
	ns   *server.Server
	ds   []*dispatcher.Dispatcher
	regs []*prometheus.Registry
}

func startQuotaFleet(t *testing.T, limits quota.Limits, workers map[string]envs.Env) *quotaFleet {
	t.Helper()
	f := &quotaFleet{ns: testutil.StartNATS(t)}
	for id, env := range workers {
		startWorker(t, f.ns, id, env)
	}
	for i := range 2 {
		reg := prometheus.NewPedanticRegistry()
		f.regs = append(f.regs, reg)
		f.ds = append(f.ds, testutil.StartDispatcher(t, f.ns, dispatcher.Config{Name: fmt.Sprintf("d%d", i), Quotas: limits, Metrics: reg}))
	}
	testutil.WaitWorkers(t, len(workers), f.ds...)
	return f
}

// client returns a client of tenant on a connection of its own.
func (f *quotaFleet) client(t *testing.T, tenant string) *client.Client {
	t.Helper()
	c, err := client.New(testutil.Connect(t, f.ns), client.WithTenant(tenant))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// metric sums a dispatcher metric over the fleet's dispatchers.
func (f *quotaFleet) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	var sum float64
	for _, reg := range f.regs {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		metric:
			for _, m := range mf.GetMetric() {
				for i := 0; i+1 < len(labels); i += 2 {
					found := false
					for _, lp := range m.GetLabel() {
						found = found || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
					}
					if !found {
						continue metric
					}
				}
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// refused fails unless err is quota_exceeded naming tenant and the quota.
func refused(t *testing.T, err error, tenant, quotaName string) {
	t.Helper()
	var perr *protocol.Error
	if !errors.As(err, &perr) || perr.Code != protocol.CodeQuotaExceeded {
		t.Fatalf("got %v, want quota_exceeded", err)
	}
	if !strings.Contains(perr.Message, "tenant "+tenant+" ") || !strings.Contains(perr.Message, "("+quotaName+" ") {
		t.Fatalf("message %q names neither tenant %s nor %s", perr.Message, tenant, quotaName)
	}
}

// raceNew runs code in n new conversations of c at once and returns the conversations that
// got a result and the errors of the others.
func raceNew(t *testing.T, c *client.Client, prefix string, n int, code string) (won []*client.Conversation, errs []error) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		conv := c.Conversation(fmt.Sprintf("%s-%d", prefix, i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := conv.Run(context.Background(), code, "bash", nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			} else {
				won = append(won, conv)
			}
		}()
	}
	close(start)
	wg.Wait()
	return won, errs
}

// TestSandboxQuota: tenant A with a sandbox quota of 3, on two workers and two dispatchers: of
// 8 new conversations sent at once exactly 3 get a sandbox, the 5 others quota_exceeded naming
// the tenant and max_sandboxes, counted by the dispatchers; tenant B, sending its own at the
// same time, gets all of its sandboxes; A's existing conversations keep running; closing one
// of them lets a new one in at once, and only one.
func TestSandboxQuota(t *testing.T) {
	wa, wb := fake.New(), fake.New()
	f := startQuotaFleet(t, quota.Limits{Tenants: map[string]quota.Limit{"tenant-a": {MaxSandboxes: 3}}}, map[string]envs.Env{"qa": wa, "qb": wb})
	a, b := f.client(t, "tenant-a"), f.client(t, "tenant-b")

	var bWon []*client.Conversation
	var bErrs []error
	done := make(chan struct{})
	go func() {
		defer close(done)
		bWon, bErrs = raceNew(t, b, "b", 6, "true")
	}()
	won, errs := raceNew(t, a, "a", 8, "true")
	<-done
	if len(won) != 3 || len(errs) != 5 {
		t.Fatalf("tenant A: %d conversations placed, %d refused (%v); want 3 and 5", len(won), len(errs), errs)
	}
	for _, err := range errs {
		refused(t, err, "tenant-a", "max_sandboxes")
	}
	if len(bWon) != 6 {
		t.Fatalf("tenant B got %d of its 6 sandboxes: %v", len(bWon), bErrs)
	}
	if n := wa.Live() + wb.Live(); n != 9 {
		t.Fatalf("%d sandboxes on the workers, want A's 3 and B's 6", n)
	}
	if n := f.metric(t, "codefleet_dispatcher_quota_refusals_total", "quota", "sandboxes"); n != 5 {
		t.Fatalf("%v sandbox refusals counted, want 5", n)
	}
	if n := f.metric(t, "codefleet_dispatcher_requests_total", "outcome", "quota_exceeded"); n != 5 {
		t.Fatalf("%v requests answered quota_exceeded, want 5", n)
	}
	for i, reg := range f.regs { // the queue group spread the race over both dispatchers
		if n, err := promtest.GatherAndCount(reg, "codefleet_dispatcher_requests_total"); err != nil || n == 0 {
			t.Fatalf("dispatcher %d answered no request (%v)", i, err)
		}
	}
	ctx := testutil.Context(t)
	for _, conv := range won {
		if _, err := conv.Run(ctx, "true", "bash", nil); err != nil {
			t.Fatalf("A's conversation %s at the quota: %v", conv.ID(), err)
		}
	}

	if res, err := won[0].Close(ctx); err != nil || !res.Closed {
		t.Fatalf("close: %+v %v", res, err)
	}
	won, errs = raceNew(t, a, "after-close", 3, "true")
	if len(won) != 1 {
		t.Fatalf("after a close: %d new conversations placed (%v), want 1", len(won), errs)
	}
	for _, err := range errs {
		refused(t, err, "tenant-a", "max_sandboxes")
	}
}

// TestRunQuota: tenant A with a run quota of 2 sends 6 runs at once, in 6 conversations: 2 run,
// never more at once, the 4 others are refused at once with quota_exceeded naming max_runs
// while the 2 go on; tenant B runs meanwhile; once the 2 are answered A runs again, back to
// back through both dispatchers without a refusal.
func TestRunQuota(t *testing.T) {
	release := make(chan struct{})
	var running, most atomic.Int64
	hold := func(_ context.Context, _ envs.Info, ex envs.Exec) (envs.Result, error) {
		if ex.Code == "hold" {
			n := running.Add(1)
			defer running.Add(-1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			<-release
		}
		return envs.Result{Output: "done"}, nil
	}
	wa, wb := fake.New(), fake.New()
	wa.RunFunc, wb.RunFunc = hold, hold
	f := startQuotaFleet(t, quota.Limits{Tenants: map[string]quota.Limit{"tenant-a": {MaxRuns: 2}}}, map[string]envs.Env{"qa": wa, "qb": wb})
	a, b := f.client(t, "tenant-a"), f.client(t, "tenant-b")
	ctx := testutil.Context(t)
	const n = 6
	for i := range n { // sandboxes first: the race is for run slots only
		if _, err := a.Conversation(fmt.Sprintf("r-%d", i)).Run(ctx, "true", "bash", nil); err != nil {
			t.Fatal(err)
		}
	}

	var wg sync.WaitGroup
	results := make(chan error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := a.Conversation(fmt.Sprintf("r-%d", i)).Run(ctx, "hold", "bash", nil)
			results <- err
		}()
	}
	close(start)
	// The refusals come while the 2 admitted runs are held.
	for range n - 2 {
		refused(t, <-results, "tenant-a", "max_runs")
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if r := running.Load(); r != 2 {
			return fmt.Errorf("%d runs running, want 2", r)
		}
		return nil
	})
	if res, err := b.Conversation("b").Run(ctx, "true", "bash", nil); err != nil || res.Output != "done" {
		t.Fatalf("tenant B while A is at its run quota: %+v %v", res, err)
	}
	close(release)
	wg.Wait()
	for range 2 {
		if err := <-results; err != nil {
			t.Fatalf("an admitted run: %v", err)
		}
	}
	if m := most.Load(); m != 2 {
		t.Fatalf("at most %d runs ran at once, want 2", m)
	}
	if n := f.metric(t, "codefleet_dispatcher_quota_refusals_total", "quota", "runs"); n != 4 {
		t.Fatalf("%v run refusals counted, want 4", n)
	}
	// Back to back: each run's slot is free by the time its answer arrives.
	for i := range 40 {
		if _, err := a.Conversation("r-0").Run(ctx, "true", "bash", nil); err != nil {
			t.Fatalf("run %d back to back: %v", i, err)
		}
	}
}

// TestSandboxQuotaThroughWorkerLoss: a tenant's conversations moved off a lost worker keep
// their sandbox slots (one sandbox each still), so the tenant is still at its quota; a close
// frees one.
func TestSandboxQuotaThroughWorkerLoss(t *testing.T) {
	ns := testutil.StartNATS(t)
	_, doomedNC := testutil.StartDoomedWorker(t, ns, worker.Config{ID: "doomed"}, fake.New())
	limits := quota.Limits{Default: quota.Limit{MaxSandboxes: 2}}
	ds := []*dispatcher.Dispatcher{
		testutil.StartDispatcher(t, ns, dispatcher.Config{Quotas: limits}),
		testutil.StartDispatcher(t, ns, dispatcher.Config{Quotas: limits}),
	}
	testutil.WaitWorkers(t, 1, ds...)
	c, err := client.New(testutil.Connect(t, ns), client.WithTenant("acme"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t)
	for _, conv := range []string{"one", "two"} {
		if res, err := c.Conversation(conv).Run(ctx, "true", "bash", nil); err != nil || res.Sandbox.Worker != "doomed" {
			t.Fatalf("%s: %+v %v", conv, res, err)
		}
	}
	startWorker(t, ns, "survivor", fake.New())
	testutil.WaitWorkers(t, 2, ds...)
	doomedNC.Close()
	testutil.WaitWorkers(t, 1, ds...)
	for _, conv := range []string{"one", "two"} {
		if res, err := c.Conversation(conv).Run(ctx, "true", "bash", nil); err != nil || res.Sandbox.Worker != "survivor" || !res.Sandbox.Recreated {
			t.Fatalf("%s after its worker was lost: %+v %v, want it recreated on survivor", conv, res, err)
		}
	}
	_, err = c.Conversation("three").Run(ctx, "true", "bash", nil)
	refused(t, err, "acme", "max_sandboxes")
	if res, err := c.Conversation("one").Close(ctx); err != nil || !res.Closed {
		t.Fatalf("close: %+v %v", res, err)
	}
	if _, err := c.Conversation("three").Run(ctx, "true", "bash", nil); err != nil {
		t.Fatalf("a new conversation after a close: %v", err)
	}
}

// TestReapedConversationFreesItsSlot: a conversation whose sandbox its worker reaped (idle)
// no longer counts against its tenant's sandbox quota: the worker drops its ownership, and its
// slot is reclaimed as soon as the tenant needs it. The conversation's next run is a new
// conversation's, which the quota then refuses.
func TestReapedConversationFreesItsSlot(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := fake.New()
	testutil.StartWorker(t, ns, worker.Config{ID: "reaper", IdleTTL: 300 * time.Millisecond, ReapInterval: 50 * time.Millisecond}, env)
	d := testutil.StartDispatcher(t, ns, dispatcher.Config{Quotas: quota.Limits{Default: quota.Limit{MaxSandboxes: 1}}, QuotaGrace: 100 * time.Millisecond})
	testutil.WaitWorkers(t, 1, d)
	c, err := client.New(testutil.Connect(t, ns), client.WithTenant("acme"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t)
	if _, err := c.Conversation("first").Run(ctx, "true", "bash", nil); err != nil {
		t.Fatal(err)
	}
	_, err = c.Conversation("second").Run(ctx, "true", "bash", nil)
	refused(t, err, "acme", "max_sandboxes")
	testutil.Eventually(t, 10*time.Second, func() error {
		_, err := c.Conversation("second").Run(ctx, "true", "bash", nil)
		return err
	})
	if n := env.Live(); n != 1 {
		t.Fatalf("%d sandboxes, want second's alone", n)
	}
	_, err = c.Conversation("first").Run(ctx, "true", "bash", nil)
	refused(t, err, "acme", "max_sandboxes")
}

// TestNoQuotaNoBucket: without quotas the dispatchers make no quota bucket (and so write none).
func TestNoQuotaNoBucket(t *testing.T) {
	ns := testutil.StartNATS(t)
	startWorker(t, ns, "wa", fake.New())
	d := startDispatcher(t, ns)
	testutil.WaitWorkers(t, 1, d)
	c := newClient(t, ns)
	ctx := testutil.Context(t)
	if _, err := c.Conversation("plain").Run(ctx, "true", "bash", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Conversation("plain").Close(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := testutil.JetStream(t, ns).KeyValue(ctx, protocol.Subjects{}.QuotasBucket())
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("quota bucket without quotas: %v, want none", err)
	}
}

// TestQuotaMetricsLint: the refusal counter passes client_golang's lint and exists for both
// quotas from the start.
func TestQuotaMetricsLint(t *testing.T) {
	f := startQuotaFleet(t, quota.Limits{Default: quota.Limit{MaxRuns: 1}}, map[string]envs.Env{"qa": fake.New()})
	problems, err := promtest.GatherAndLint(f.regs[0], "codefleet_dispatcher_quota_refusals_total")
	if err != nil || len(problems) != 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	if n, err := promtest.GatherAndCount(f.regs[0], "codefleet_dispatcher_quota_refusals_total"); err != nil || n != 2 {
		t.Fatalf("%d series (%v), want one per quota", n, err)
	}
}
