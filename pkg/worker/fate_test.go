package worker_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

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
