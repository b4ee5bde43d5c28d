package dispatcher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
	"github.com/codefleet/codefleet/pkg/worker"
)

// newDockerEnv returns a Docker backend whose containers carry this test run's label, closed
// when the test ends (its worker destroys its sandboxes first: StartWorker).
func newDockerEnv(t *testing.T) *docker.Env {
	t.Helper()
	env, err := docker.New(docker.Config{Image: testutil.SandboxImage(), AgentPath: testutil.AgentBinary(t), Labels: testutil.TestLabels()}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	return env
}

func TestMain(m *testing.M) { testutil.MainWithLeftoverCheck(m) }

// TestEndToEndOnDocker: a client, a dispatcher and two workers with real Docker sandboxes. Runs
// of one conversation share its files, conversations are isolated, results name the worker and
// the container, and both services answer NATS service discovery.
func TestEndToEndOnDocker(t *testing.T) {
	testutil.RequireDocker(t)
	ns := testutil.StartNATS(t)
	for _, id := range []string{"e2e-a-" + testutil.RunID, "e2e-b-" + testutil.RunID} {
		startWorker(t, ns, id, newDockerEnv(t))
	}
	d := startDispatcher(t, ns)
	testutil.WaitWorkers(t, 2, d)
	c := newClient(t, ns)
	ctx := context.Background()

	// Names unique to this test process: container counts must not see other packages' tests.
	alice, bob := c.Conversation("alice-"+testutil.RunID), c.Conversation("bob-"+testutil.RunID)
	first, err := alice.Run(ctx, "open('secret.txt','w').write('alice only')", "python", nil)
	if err != nil || !first.Sandbox.Created || first.Sandbox.Backend != docker.Name || !strings.HasPrefix(first.Sandbox.Worker, "e2e-") {
		t.Fatalf("first run: %+v %v", first, err)
	}
	again, err := alice.Run(ctx, "cat secret.txt", "bash", nil)
	if err != nil || again.Output != "alice only" || again.Sandbox.ID != first.Sandbox.ID || again.Sandbox.Worker != first.Sandbox.Worker || again.Sandbox.Created {
		t.Fatalf("second run of alice: %+v %v, want her file in sandbox %s", again, err, first.Sandbox.ID)
	}
	other, err := bob.Run(ctx, "ls -A; test -e secret.txt", "bash", nil)
	if err != nil || other.ExitCode != 1 || other.Output != "" || other.Sandbox.ID == first.Sandbox.ID {
		t.Fatalf("bob sees alice's files or her sandbox: %+v %v", other, err)
	}
	if n, err := testutil.CountContainers("io.codefleet.conversation", alice.ID()); err != nil || n != 1 {
		t.Fatalf("%d containers for alice (%v)", n, err)
	}

	// NATS service discovery: both services answer PING, INFO and STATS.
	nc := testutil.Connect(t, ns)
	for _, svc := range []string{dispatcher.ServiceName, worker.ServiceName} {
		for _, verb := range []string{"PING", "INFO", "STATS"} {
			msg, err := nc.Request("$SRV."+verb+"."+svc, nil, 5*time.Second)
			if err != nil {
				t.Fatalf("$SRV.%s.%s: %v", verb, svc, err)
			}
			var info micro.Info
			if err := json.Unmarshal(msg.Data, &info); err != nil || info.Name != svc {
				t.Fatalf("$SRV.%s.%s: %s (%v)", verb, svc, msg.Data, err)
			}
		}
	}

	for _, conv := range []*client.Conversation{alice, bob} {
		if res, err := conv.Close(ctx); err != nil || !res.Closed {
			t.Fatalf("close %s: %+v %v", conv.ID(), res, err)
		}
	}
	if n, err := testutil.CountContainers("io.codefleet.conversation", alice.ID()); err != nil || n != 0 {
		t.Fatalf("%d containers for alice after close (%v)", n, err)
	}
}

// TestQuotasOnDocker: the tenants' quotas on a fleet of two Docker workers and two dispatchers.
// Tenant A (sandbox quota 3) sends 8 new conversations at once: 3 get a container, 5 get
// quota_exceeded naming max_sandboxes, while tenant B gets its containers; a close lets one new
// conversation of A in. Tenant R (run quota 2) sends 5 sleeping runs at once, one into each of
// its 5 sandboxes: 2 run, side by side, the 3 others are refused at once; B runs meanwhile;
// once the 2 are done R runs again.
func TestQuotasOnDocker(t *testing.T) {
	testutil.RequireDocker(t)
	// Tenants of this test process only: the containers counted are its own.
	tenantA, tenantB, tenantR := "qa-"+testutil.RunID, "qb-"+testutil.RunID, "qr-"+testutil.RunID
	limits := quota.Limits{Tenants: map[string]quota.Limit{tenantA: {MaxSandboxes: 3}, tenantR: {MaxRuns: 2}}}
	f := startQuotaFleet(t, limits, map[string]envs.Env{"qd-a-" + testutil.RunID: newDockerEnv(t), "qd-b-" + testutil.RunID: newDockerEnv(t)})
	a, b, r := f.client(t, tenantA), f.client(t, tenantB), f.client(t, tenantR)
	ctx := testutil.Context(t)
	containers := func(tenant string) int {
		t.Helper()
		n, err := testutil.CountContainers(envs.LabelTenant, tenant)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	var bWon []*client.Conversation
	var bErrs []error
	done := make(chan struct{})
	go func() {
		defer close(done)
		bWon, bErrs = raceNew(t, b, "b", 2, "true")
	}()
	won, errs := raceNew(t, a, "a", 8, "true")
	<-done
	if len(won) != 3 || len(errs) != 5 {
		t.Fatalf("tenant A: %d conversations placed, %d refused (%v); want 3 and 5", len(won), len(errs), errs)
	}
	for _, err := range errs {
		refused(t, err, tenantA, "max_sandboxes")
	}
	if len(bWon) != 2 {
		t.Fatalf("tenant B got %d of its 2 sandboxes: %v", len(bWon), bErrs)
	}
	if n := containers(tenantA); n != 3 {
		t.Fatalf("%d containers of tenant A, want 3", n)
	}
	if res, err := won[0].Close(ctx); err != nil || !res.Closed {
		t.Fatalf("close: %+v %v", res, err)
	}
	won, errs = raceNew(t, a, "after-close", 2, "true")
	if len(won) != 1 || len(errs) != 1 {
		t.Fatalf("after a close: %d new conversations placed, %d refused (%v); want 1 and 1", len(won), len(errs), errs)
	}
	refused(t, errs[0], tenantA, "max_sandboxes")
	if n := containers(tenantA); n != 3 {
		t.Fatalf("%d containers of tenant A after the close and a new one, want 3", n)
	}

	// Runs: sandboxes first, so the race is for run slots only.
	const runs = 5
	for i := range runs {
		if _, err := r.Conversation(fmt.Sprintf("r-%d", i)).Run(ctx, "true", "bash", nil); err != nil {
			t.Fatal(err)
		}
	}
	type outcome struct {
		res *protocol.RunResult
		err error
	}
	results := make(chan outcome, runs)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			// When it started and ended, by the host's clock (the containers share it).
			res, err := r.Conversation(fmt.Sprintf("r-%d", i)).Run(ctx, "date +%s%N; sleep 2; date +%s%N", "bash", nil)
			results <- outcome{res, err}
		}()
	}
	close(start)
	for range runs - 2 { // refused at once, while the 2 admitted runs sleep
		o := <-results
		refused(t, o.err, tenantR, "max_runs")
	}
	if res, err := b.Conversation("b-0").Run(ctx, "echo meanwhile", "bash", nil); err != nil || res.Output != "meanwhile\n" {
		t.Fatalf("tenant B while R is at its run quota: %+v %v", res, err)
	}
	wg.Wait()
	var spans [][2]int64
	for range 2 {
		o := <-results
		if o.err != nil {
			t.Fatalf("an admitted run: %v", o.err)
		}
		var span [2]int64
		for j, field := range strings.Fields(o.res.Output) {
			if j < 2 {
				span[j], _ = strconv.ParseInt(field, 10, 64)
			}
		}
		spans = append(spans, span)
	}
	if spans[0][0] >= spans[1][1] || spans[1][0] >= spans[0][1] {
		t.Fatalf("the 2 admitted runs did not run side by side: %v", spans)
	}
	if _, err := r.Conversation("r-0").Run(ctx, "true", "bash", nil); err != nil {
		t.Fatalf("a run once the 2 were done: %v", err)
	}
}
