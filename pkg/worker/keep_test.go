package worker_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

// TestOtherFleetsSandboxesLeftAlone: a worker re-adopts and reaps only the sandboxes of its own
// fleet, though another fleet's worker of the same id (the default id is the host name) shares
// the backend; a sandbox without a fleet label belongs to the default prefix's fleet (made
// before sandboxes were labelled), which adopts it.
func TestOtherFleetsSandboxesLeftAlone(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := fake.New()
	ctx := context.Background()
	create := func(conv string, labels map[string]string) string {
		t.Helper()
		sb, err := env.Create(ctx, envs.Spec{Tenant: "t", Conversation: conv, Labels: labels})
		if err != nil {
			t.Fatal(err)
		}
		return sb.Info().ID
	}
	const id = "same-id"
	create("stg-conv", map[string]string{envs.LabelWorker: id, envs.LabelFleet: "stg"})
	other := create("prd-conv", map[string]string{envs.LabelWorker: id, envs.LabelFleet: "prd"})
	legacy := create("old-conv", map[string]string{envs.LabelWorker: id})

	// Staging's worker reaps its orphans at once.
	stg := startWorker(t, ns, env, worker.Config{ID: id, Prefix: "stg", ReapInterval: 20 * time.Millisecond, OrphanGrace: time.Millisecond})
	if load := stg.Info().Load; load != 1 {
		t.Fatalf("staging's worker re-adopted %d sandboxes, want its own one", load)
	}
	// Two orphans of staging's, one after the other: once the second is gone, a whole reaping
	// pass has run since the first (each pass lists the sandboxes once, at its start).
	for i := range 2 {
		orphan := fmt.Sprintf("orphan-%d", i)
		create(orphan, map[string]string{envs.LabelWorker: id, envs.LabelFleet: "stg"})
		testutil.Eventually(t, 10*time.Second, func() error {
			list, err := env.List(ctx, map[string]string{envs.LabelConversation: orphan})
			if err != nil || len(list) != 0 {
				return fmt.Errorf("staging's %s not reaped yet (%d, %v)", orphan, len(list), err)
			}
			return nil
		})
	}
	list, err := env.List(ctx, map[string]string{envs.LabelWorker: id})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, info := range list {
		ids = append(ids, info.ID)
	}
	if !slices.Contains(ids, other) || !slices.Contains(ids, legacy) {
		t.Fatalf("staging's worker removed another fleet's sandboxes: left %v, want %s (prd) and %s (unlabelled) among them", ids, other, legacy)
	}

	// The default fleet's worker of that id takes the unlabelled one, not prd's.
	def := startWorker(t, ns, env, worker.Config{ID: id})
	if load := def.Info().Load; load != 1 {
		t.Fatalf("the default fleet's worker re-adopted %d sandboxes, want the unlabelled one", load)
	}
}

// TestWhenASandboxIsGivenUp: the errors of a run decide the sandbox's fate by one rule: only
// envs.ErrSandboxGone gives it up (opened again when the backend still has it, else replaced
// on the next run, marked recreated); any other failure is the run's, and the sandbox stays.
func TestWhenASandboxIsGivenUp(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := fake.New()
	var fail atomic.Value // error the next "fail" run returns
	env.RunFunc = func(ctx context.Context, sb envs.Info, ex envs.Exec) (envs.Result, error) {
		if ex.Code == "fail" {
			return envs.Result{}, fail.Load().(error)
		}
		return envs.Result{Output: sb.ID, ExitCode: 0}, nil
	}
	w := startWorker(t, ns, env, worker.Config{})
	c := newClient(t, ns, w)
	first := c.ok("fate", "bash", "x").Sandbox.ID
	for _, tc := range []struct {
		err       error
		code      protocol.Code
		destroyed bool // the sandbox is destroyed behind the worker's back first
		replaced  bool // the next run is in a new, recreated sandbox
	}{
		{fmt.Errorf("%w: refused this run", envs.ErrSandboxFailed), protocol.CodeSandboxFailed, false, false},
		{fmt.Errorf("%w: a bare 502", envs.ErrBackendUnavailable), protocol.CodeBackendUnavailable, false, false},
		{fmt.Errorf("%w: the agent died", envs.ErrSandboxGone), protocol.CodeSandboxFailed, false, false}, // opened again
		{fmt.Errorf("%w: the container was removed", envs.ErrSandboxGone), protocol.CodeSandboxFailed, true, true},
	} {
		fail.Store(tc.err)
		if tc.destroyed {
			if err := env.Destroy(context.Background(), first); err != nil {
				t.Fatal(err)
			}
		}
		res := c.run("fate", protocol.RunRequest{Language: "bash", Code: "fail"})
		if res.Error == nil || res.Error.Code != tc.code {
			t.Fatalf("%v: result %+v, want error %s", tc.err, res, tc.code)
		}
		next := c.ok("fate", "bash", "x")
		if replaced := next.Sandbox.ID != first; replaced != tc.replaced || next.Sandbox.Recreated != tc.replaced {
			t.Fatalf("%v: next run in %s (recreated %v), first sandbox %s: want replaced %v", tc.err, next.Sandbox.ID, next.Sandbox.Recreated, first, tc.replaced)
		}
	}
}

// TestOwnSnippetsKeepTheSandbox: the three ways a conversation's own snippets broke its sandbox
// (issue 11), through the worker on real Docker: afterwards the ordinary runs of both languages
// succeed in the same sandbox, the conversation's file is intact, and no result is an error or
// says created or recreated.
func TestOwnSnippetsKeepTheSandbox(t *testing.T) {
	ns := testutil.StartNATS(t)
	w := startWorker(t, ns, newDocker(t), worker.Config{})
	c := newClient(t, ns, w)
	for name, hostile := range map[string]string{
		"chmod":  "chmod 000 /workspace",
		"setsid": "for i in $(seq 300); do setsid sleep 1000 >/dev/null 2>&1 < /dev/null & done 2>/dev/null; true",
		"stop":   "kill -STOP -1",
	} {
		conv := "own-" + name
		first := c.ok(conv, "bash", "echo kept > f")
		runs := []protocol.RunRequest{
			{Language: "bash", Code: hostile, TimeoutMS: 30_000},
			{Language: "bash", Code: "echo r1", TimeoutMS: 30_000},
			{Language: "bash", Code: "echo r2", TimeoutMS: 30_000},
			{Language: "python", Code: "print('p1')", TimeoutMS: 30_000},
			{Language: "bash", Code: "cat f", TimeoutMS: 30_000},
		}
		for i, req := range runs {
			res := c.run(conv, req)
			if res.Error != nil || res.Sandbox == nil || res.Sandbox.ID != first.Sandbox.ID || res.Sandbox.Created || res.Sandbox.Recreated || res.TimedOut {
				t.Fatalf("%s: run %d (%q): %+v sandbox %+v, want a result in sandbox %s", name, i, req.Code, res, res.Sandbox, first.Sandbox.ID)
			}
			if i == 0 {
				continue // the hostile run itself: its exit code is its own
			}
			if want := map[int]string{1: "r1", 2: "r2", 3: "p1", 4: "kept"}[i]; res.ExitCode != 0 || !strings.HasSuffix(res.Output, want+"\n") {
				t.Fatalf("%s: run %d (%q): exit %d, output %q, want it to end with %q", name, i, req.Code, res.ExitCode, res.Output, want)
			}
		}
	}
}

// TestShutdownWithoutNATS: a worker stopped while its NATS server is away still deals with its
// sandboxes (destroyed here, with DestroyOnShutdown) and returns within seconds, not at the end
// of its stop budget: the registration it cannot remove expires by itself.
func TestShutdownWithoutNATS(t *testing.T) {
	ns := testutil.StartRestartableNATS(t)
	nc, err := nats.Connect(ns.URL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	env := fake.New()
	const id = "w-nonats"
	// A sandbox of an earlier process with this id: adopted at start, destroyed at shutdown.
	sb, err := env.Create(context.Background(), envs.Spec{Tenant: "default", Conversation: "kept", Labels: map[string]string{envs.LabelWorker: id}})
	if err != nil {
		t.Fatal(err)
	}
	sb.Close()
	w, err := worker.New(worker.Config{ID: id, DestroyOnShutdown: true, HeartbeatInterval: 200 * time.Millisecond, HeartbeatTTL: time.Second}, nc, env, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(testutil.Context(t)); err != nil {
		t.Fatal(err)
	}
	if n := w.Info().Load; n != 1 {
		t.Fatalf("adopted %d sandboxes, want 1", n)
	}
	ns.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	err = w.Shutdown(ctx)
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("Shutdown without NATS took %s (err %v): it waited for its whole budget", took, err)
	}
	if err == nil {
		t.Error("Shutdown without NATS reported no error: yet the registration could not be removed")
	}
	if left, err := env.List(context.Background(), map[string]string{envs.LabelWorker: id}); err != nil || len(left) != 0 {
		t.Errorf("sandboxes left after shutdown: %v %v", left, err)
	}
}
