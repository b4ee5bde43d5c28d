package worker_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

// poolOf waits until w's warm pool has n free sandboxes and returns their ids.
func poolOf(t testing.TB, env *docker.Env, w *worker.Worker, n int) []string {
	t.Helper()
	var ids []string
	testutil.Eventually(t, 60*time.Second, func() error {
		var err error
		ids, err = freeNow(env, w, n)
		return err
	})
	return ids
}

// freeNow returns the ids of w's free pool sandboxes, or an error unless there are n, as the
// worker says and as the containers do.
func freeNow(env *docker.Env, w *worker.Worker, n int) ([]string, error) {
	list, err := env.List(context.Background(), map[string]string{envs.LabelWorker: w.ID(), envs.LabelPool: "true"})
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, info := range list {
		if info.Free() {
			ids = append(ids, info.ID)
		}
	}
	if free := w.Info().PoolFree; free != n || len(ids) != n {
		return nil, fmt.Errorf("the pool has %d free sandboxes (%d free containers), want %d", free, len(ids), n)
	}
	return ids, nil
}

// containersOf lists the sandboxes labelled with worker id.
func containersOf(t testing.TB, env *docker.Env, id string) []envs.Info {
	t.Helper()
	list, err := env.List(context.Background(), map[string]string{envs.LabelWorker: id})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// TestPoolClaimedOnce: of many new conversations arriving at once, each pool sandbox goes to
// exactly one; the others get sandboxes of their own, all different.
func TestPoolClaimedOnce(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	reg := prometheus.NewPedanticRegistry()
	const pooled, conversations = 2, 8
	w := startWorker(t, ns, env, worker.Config{WarmPool: pooled, Metrics: reg})
	c := newClient(t, ns, w)
	free := poolOf(t, env, w, pooled)

	results := make([]*protocol.RunResult, conversations)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			results[i] = c.run(fmt.Sprintf("race-%d", i), protocol.RunRequest{Language: "bash", Code: "echo $$ > mine; cat mine"})
		}()
	}
	close(start)
	wg.Wait()
	seen := map[string]string{}
	for i, res := range results {
		if res.Error != nil || res.ExitCode != 0 || res.Sandbox == nil || !res.Sandbox.Created {
			t.Fatalf("race-%d: %+v", i, res)
		}
		if other, dup := seen[res.Sandbox.ID]; dup {
			t.Fatalf("race-%d and %s share sandbox %s", i, other, res.Sandbox.ID)
		}
		seen[res.Sandbox.ID] = fmt.Sprintf("race-%d", i)
	}
	for _, id := range free {
		if _, ok := seen[id]; !ok {
			t.Errorf("pool sandbox %s went to no conversation", id)
		}
	}
	claims, misses := value(t, reg, "codefleet_worker_pool_claims_total"), value(t, reg, "codefleet_worker_pool_misses_total")
	if claims < pooled || claims+misses != conversations {
		t.Fatalf("%v claims and %v misses for %d conversations and %d pool sandboxes", claims, misses, conversations, pooled)
	}
	// Each conversation is in its own sandbox, the claimed ones as the others.
	for i := range results {
		conv := fmt.Sprintf("race-%d", i)
		if res := c.ok(conv, "bash", "cat mine"); res.Output != results[i].Output || res.Sandbox.ID != results[i].Sandbox.ID {
			t.Fatalf("%s again: %+v, want %q in sandbox %s", conv, res, results[i].Output, results[i].Sandbox.ID)
		}
	}
	if info := w.Info(); info.Load != conversations {
		t.Fatalf("load %d, want %d", info.Load, conversations)
	}
}

// value is the value of reg's counter or gauge name (without labels).
func value(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			m := f.GetMetric()[0]
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestPoolSandboxEnv: a claimed pool sandbox runs with its conversation's sandbox env (under
// each run's own env, on every run) and none of another conversation's, nor any variables.
func TestPoolSandboxEnv(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	w := startWorker(t, ns, env, worker.Config{WarmPool: 2})
	c := newClient(t, ns, w)
	free := poolOf(t, env, w, 2)

	convs := map[string]*protocol.SandboxOptions{
		"env-a": {Env: map[string]string{"SANDBOX_A": "alpha", "SHARED": "from-a"}, Variables: map[string]string{"api_key": "var-a-secret"}},
		"env-b": {Env: map[string]string{"SANDBOX_B": "beta", "SHARED": "from-b"}, Variables: map[string]string{"api_key": "var-b-secret"}},
	}
	for conv, opts := range convs {
		res := c.run(conv, protocol.RunRequest{Language: "bash", Code: "env", Env: map[string]string{"RUN_ONLY": conv, "SHARED": "run-wins"}, Sandbox: opts})
		if res.Error != nil || !res.Sandbox.Created || !slices.Contains(free, res.Sandbox.ID) {
			t.Fatalf("%s: %+v, want a run in one of the pool's sandboxes %v", conv, res, free)
		}
		own, other := "SANDBOX_A=alpha", "SANDBOX_B"
		if conv == "env-b" {
			own, other = "SANDBOX_B=beta", "SANDBOX_A"
		}
		for _, want := range []string{own, "RUN_ONLY=" + conv, "SHARED=run-wins", "HOME=/workspace"} {
			if !strings.Contains(res.Output, want+"\n") {
				t.Errorf("%s: env has no %s:\n%s", conv, want, res.Output)
			}
		}
		for _, never := range []string{other, "from-a", "from-b", "var-a-secret", "var-b-secret", "api_key"} {
			if strings.Contains(res.Output, never) {
				t.Errorf("%s: env has %q:\n%s", conv, never, res.Output)
			}
		}
		// A later run without env of its own: the sandbox env stays, the run's does not.
		later := c.ok(conv, "bash", `echo "$SHARED ${RUN_ONLY:-none}"`)
		if want := strings.TrimPrefix(strings.Split(own, "=")[0], "SANDBOX_"); later.Output != "from-"+strings.ToLower(want)+" none\n" {
			t.Errorf("%s: later run sees %q", conv, later.Output)
		}
	}
	// A sandbox env the agent must find interpreters by (PATH) is the container's own: such a
	// conversation gets a sandbox of its own, and the pool keeps what it has.
	path := c.run("env-path", protocol.RunRequest{Language: "bash", Code: "echo $PATH", Sandbox: &protocol.SandboxOptions{Env: map[string]string{"PATH": "/usr/local/bin:/usr/bin:/bin:/opt/own"}}})
	if path.Error != nil || slices.Contains(free, path.Sandbox.ID) || !strings.HasSuffix(path.Output, ":/opt/own\n") {
		t.Fatalf("conversation with a PATH: %+v", path)
	}
}

// TestPoolRestart: a worker restarted with the same id re-adopts a conversation's claimed pool
// sandbox (same sandbox, files and sandbox env intact), destroys the free pool sandboxes an
// earlier process left, and builds its pool again, leaking no container.
func TestPoolRestart(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	const id = "w-pool-restart"
	t.Cleanup(func() { testutil.RemoveContainers(envs.LabelWorker, id) })
	nc := testutil.Connect(t, ns)
	first, err := worker.New(worker.Config{ID: id, WarmPool: 2}, nc, env, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	free := poolOf(t, env, first, 2)
	c := &client{t: t, nc: testutil.Connect(t, ns), worker: id}
	claimed := c.run("kept", protocol.RunRequest{Language: "bash", Code: "echo files > f; echo $KEPT", Sandbox: &protocol.SandboxOptions{Env: map[string]string{"KEPT": "env"}}})
	if claimed.Error != nil || claimed.Output != "env\n" || !slices.Contains(free, claimed.Sandbox.ID) {
		t.Fatalf("first run: %+v, want it in a pool sandbox of %v", claimed, free)
	}
	poolOf(t, env, first, 2) // refilled
	if err := first.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A graceful stop keeps the claimed sandbox and destroys the free ones.
	if left := containersOf(t, env, id); len(left) != 1 || left[0].ID != claimed.Sandbox.ID || left[0].Conversation != "kept" {
		t.Fatalf("after shutdown: %+v, want the claimed sandbox only", left)
	}
	// A worker that died would have left its free ones: one, made as the pool makes them.
	stray, err := env.CreateFree(context.Background(), envs.Spec{Labels: map[string]string{envs.LabelWorker: id, envs.LabelFleet: protocol.DefaultPrefix}})
	if err != nil {
		t.Fatal(err)
	}
	stray.Close()

	second := startWorker(t, ns, newDocker(t), worker.Config{ID: id, WarmPool: 2})
	if info := second.Info(); info.Load != 1 {
		t.Fatalf("restarted worker holds %d conversations, want 1", info.Load)
	}
	again := c.ok("kept", "bash", "cat f; echo $KEPT")
	if again.Output != "files\nenv\n" || again.Sandbox.ID != claimed.Sandbox.ID || again.Sandbox.Created || again.Sandbox.Recreated {
		t.Fatalf("after restart: %+v %+v, want the files and env in sandbox %s", again, again.Sandbox, claimed.Sandbox.ID)
	}
	rebuilt := poolOf(t, env, second, 2)
	if slices.Contains(rebuilt, stray.Info().ID) {
		t.Fatalf("the earlier process's free sandbox %s is back in the pool", stray.Info().ID)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := len(containersOf(t, env, id)); n != 3 {
			return fmt.Errorf("%d containers of %s, want the claimed one and 2 free", n, id)
		}
		return nil
	})
	if err := second.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if left := containersOf(t, env, id); len(left) != 0 {
		t.Fatalf("%d containers left after a shutdown with destroy: %+v", len(left), left)
	}
}

// TestPoolOff: without a pool (--warm-pool 0) the worker makes no container before a
// conversation's first run, and one for it, as before pools.
func TestPoolOff(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	reg := prometheus.NewPedanticRegistry()
	w := startWorker(t, ns, env, worker.Config{WarmPool: 0, Metrics: reg, ReapInterval: 50 * time.Millisecond, OrphanGrace: 2 * time.Second})
	c := newClient(t, ns, w)
	// Seconds of reaping passes and heartbeats (an orphan made after the start is gone, past
	// the orphan grace): still nothing.
	orphan, err := env.Create(context.Background(), envs.Spec{Tenant: "default", Conversation: "orphan", Labels: map[string]string{envs.LabelWorker: w.ID()}})
	if err != nil {
		t.Fatal(err)
	}
	orphan.Close()
	t.Cleanup(func() { env.Destroy(context.Background(), orphan.Info().ID) })
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := len(containersOf(t, env, w.ID())); n != 0 {
			return fmt.Errorf("%d containers of the worker, the orphan not reaped yet", n)
		}
		return nil
	})
	if n := len(containersOf(t, env, w.ID())); n != 0 || w.Info().PoolFree != 0 {
		t.Fatalf("%d containers, %d pool sandboxes free before any run, want none", n, w.Info().PoolFree)
	}
	res := c.ok("solo", "bash", "true")
	if list := containersOf(t, env, w.ID()); len(list) != 1 || list[0].ID != res.Sandbox.ID || list[0].Pool {
		t.Fatalf("after one conversation: %+v, want its sandbox only", list)
	}
	if got := string(protocol.Encode(w.Info())); strings.Contains(got, "pool_free") {
		t.Fatalf("registration without a pool: %s", got)
	}
	for _, name := range []string{"codefleet_worker_pool_claims_total", "codefleet_worker_pool_misses_total", "codefleet_worker_pool_sandboxes_created_total", "codefleet_worker_pool_free"} {
		if v := value(t, reg, name); v != 0 {
			t.Errorf("%s is %v without a pool", name, v)
		}
	}
}

// TestPoolCapacity: free pool sandboxes count towards the capacity but never turn a
// conversation away: a new conversation claims one at capacity, one that cannot use the pool
// gets the room of a free one (destroyed), and the pool refills only below the capacity.
func TestPoolCapacity(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	w := startWorker(t, ns, env, worker.Config{Capacity: 2, WarmPool: 2})
	c := newClient(t, ns, w)
	free := poolOf(t, env, w, 2) // at capacity: 2 free, no conversation
	a := c.ok("cap-a", "bash", "true")
	if !slices.Contains(free, a.Sandbox.ID) {
		t.Fatalf("cap-a is in %s, not a pool sandbox of %v", a.Sandbox.ID, free)
	}
	// One conversation and one free sandbox fill the capacity: no refill.
	if info := w.Info(); info.Load != 1 || info.PoolFree != 1 {
		t.Fatalf("after a claim: load %d, %d free, want 1 and 1", info.Load, info.PoolFree)
	}
	own := &protocol.SandboxOptions{Env: map[string]string{"PATH": "/usr/bin:/bin"}} // not for the pool
	if b := c.run("cap-b", protocol.RunRequest{Language: "bash", Code: "true", Sandbox: own}); b.Error != nil || slices.Contains(free, b.Sandbox.ID) {
		t.Fatalf("cap-b: %+v, want a sandbox of its own", b)
	}
	poolOf(t, env, w, 0) // the free one made room
	if res := c.run("cap-c", protocol.RunRequest{Language: "bash", Code: "true"}); res.Error == nil || res.Error.Code != protocol.CodeCapacity {
		t.Fatalf("cap-c at capacity: %+v, want capacity", res)
	}
	if !c.close("cap-b").Closed {
		t.Fatal("close cap-b")
	}
	poolOf(t, env, w, 1) // refilled up to the capacity
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := len(containersOf(t, env, w.ID())); n != 2 {
			return fmt.Errorf("%d containers, want 2 (the capacity)", n)
		}
		return nil
	})
}

// TestPoolReaper: the reaper removes idle conversations and orphans but leaves the pool at its
// size (free pool sandboxes are not idle, nor orphans); free ones past their max life are
// replaced.
func TestPoolReaper(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	w := startWorker(t, ns, env, worker.Config{WarmPool: 2, IdleTTL: 200 * time.Millisecond, ReapInterval: 50 * time.Millisecond, OrphanGrace: 3 * time.Second})
	c := newClient(t, ns, w)
	idle := c.ok("idle", "bash", "true") // in a pool sandbox; the pool refills
	free := poolOf(t, env, w, 2)
	// Two orphans, one after the other: once the second is gone, a whole reaping pass has run
	// since the first (each pass lists the sandboxes once, at its start), with the pool's
	// sandboxes older than the orphan grace.
	for i := range 2 {
		orphan, err := env.Create(context.Background(), envs.Spec{Tenant: "default", Conversation: fmt.Sprintf("orphan-%d", i), Labels: map[string]string{envs.LabelWorker: w.ID()}})
		if err != nil {
			t.Fatal(err)
		}
		orphan.Close()
		t.Cleanup(func() { env.Destroy(context.Background(), orphan.Info().ID) })
		testutil.Eventually(t, 30*time.Second, func() error {
			for _, info := range containersOf(t, env, w.ID()) {
				if info.ID == orphan.Info().ID || info.ID == idle.Sandbox.ID {
					return fmt.Errorf("orphan %d or the idle conversation not reaped yet", i)
				}
			}
			return nil
		})
	}
	if now := poolOf(t, env, w, 2); !slices.Equal(sorted(now), sorted(free)) {
		t.Fatalf("the pool changed under the reaper: %v, was %v", now, free)
	}
	if info := w.Info(); info.Load != 0 {
		t.Fatalf("load %d after reaping", info.Load)
	}

	// Past their max life, free ones are replaced: the pool stays at its size.
	short := startWorker(t, ns, env, worker.Config{ID: "w-pool-maxlife-" + testutil.RunID, WarmPool: 2, MaxLife: 2 * time.Second, ReapInterval: 50 * time.Millisecond})
	first := poolOf(t, env, short, 2)
	testutil.Eventually(t, 60*time.Second, func() error {
		now, err := freeNow(env, short, 2)
		if err != nil {
			return err
		}
		for _, id := range now {
			if slices.Contains(first, id) {
				return fmt.Errorf("pool %v still has sandboxes of %v", now, first)
			}
		}
		return nil
	})
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestPoolIgnoredWithoutPooler: a backend without envs.Pooler (Daytona, the fake) gets no
// pool, and --warm-pool does not change what it does.
func TestPoolIgnoredWithoutPooler(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := fake.New()
	w := startWorker(t, ns, env, worker.Config{WarmPool: 4})
	c := newClient(t, ns, w)
	if res := c.ok("plain", "bash", "true"); !res.Sandbox.Created {
		t.Fatalf("first run: %+v", res.Sandbox)
	}
	if created, free := env.Created(), w.Info().PoolFree; created != 1 || free != 0 {
		t.Fatalf("%d sandboxes created, %d pool sandboxes free: want the conversation's only", created, free)
	}
}
