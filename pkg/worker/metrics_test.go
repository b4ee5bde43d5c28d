package worker_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

// TestMetricsOfSandboxes: the sandbox counters follow a sandbox's life on real Docker: created
// by a first run, destroyed by a close or by the idle reaper, re-adopted by a restarted worker,
// each with its reason; the error codes of runs refused are outcomes; and the exported
// metrics pass client_golang's lint.
func TestMetricsOfSandboxes(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	id := "w-metrics"
	reg := prometheus.NewPedanticRegistry()
	nc := testutil.Connect(t, ns)
	first, err := worker.New(worker.Config{ID: id, Metrics: reg}, nc, env, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	// The first worker keeps its sandboxes for the second; they go when the test ends anyway.
	t.Cleanup(func() { testutil.RemoveContainers(envs.LabelWorker, id) })
	if err := first.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, nc: testutil.Connect(t, ns), worker: id}
	c.ok("m-closed", "bash", "true")
	c.ok("m-kept", "bash", "exit 3")
	if res := c.run("m-kept", protocol.RunRequest{Code: "x", Language: "cobol"}); res.Error == nil || res.Error.Code != protocol.CodeUnsupportedLanguage {
		t.Fatalf("cobol: %+v", res)
	}
	if !c.close("m-closed").Closed {
		t.Fatal("close: nothing closed")
	}
	want := `
# HELP codefleet_worker_runs_total Run requests answered, by language and outcome: ok, exit_nonzero, timeout, or the error code of the reply.
# TYPE codefleet_worker_runs_total counter
codefleet_worker_runs_total{language="bash",outcome="exit_nonzero"} 1
codefleet_worker_runs_total{language="bash",outcome="ok"} 1
codefleet_worker_runs_total{language="other",outcome="unsupported_language"} 1
# HELP codefleet_worker_sandboxes_created_total Sandboxes created for new conversations (re-attached ones not included).
# TYPE codefleet_worker_sandboxes_created_total counter
codefleet_worker_sandboxes_created_total 2
# HELP codefleet_worker_sandboxes_destroyed_total Sandboxes destroyed, by reason: closed, idle, max_life, moved, orphan, lost, shutdown, adopt, pool.
# TYPE codefleet_worker_sandboxes_destroyed_total counter
codefleet_worker_sandboxes_destroyed_total{reason="closed"} 1
# HELP codefleet_worker_sandboxes Conversations the worker holds: sandboxes active or being created.
# TYPE codefleet_worker_sandboxes gauge
codefleet_worker_sandboxes 1
`
	if err := promtest.GatherAndCompare(reg, strings.NewReader(want), "codefleet_worker_runs_total", "codefleet_worker_sandboxes_created_total",
		"codefleet_worker_sandboxes_destroyed_total", "codefleet_worker_sandboxes"); err != nil {
		t.Error(err)
	}
	if problems, err := promtest.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	if err := first.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	// The restarted worker re-adopts the kept sandbox, then reaps it once idle.
	reg2 := prometheus.NewPedanticRegistry()
	second := startWorker(t, ns, env, worker.Config{ID: id, Metrics: reg2, IdleTTL: 300 * time.Millisecond, ReapInterval: 50 * time.Millisecond})
	if err := promtest.GatherAndCompare(reg2, strings.NewReader(`
# HELP codefleet_worker_sandboxes_adopted_total Sandboxes of an earlier process with this worker id re-adopted at start.
# TYPE codefleet_worker_sandboxes_adopted_total counter
codefleet_worker_sandboxes_adopted_total 1
`), "codefleet_worker_sandboxes_adopted_total"); err != nil {
		t.Error(err)
	}
	// The session leaves the worker's load before its sandbox is destroyed and counted: both
	// are waited for.
	testutil.Eventually(t, 30*time.Second, func() error {
		if second.Info().Load != 0 {
			return fmt.Errorf("load %d", second.Info().Load)
		}
		return promtest.GatherAndCompare(reg2, strings.NewReader(`
# HELP codefleet_worker_sandboxes_destroyed_total Sandboxes destroyed, by reason: closed, idle, max_life, moved, orphan, lost, shutdown, adopt, pool.
# TYPE codefleet_worker_sandboxes_destroyed_total counter
codefleet_worker_sandboxes_destroyed_total{reason="idle"} 1
`), "codefleet_worker_sandboxes_destroyed_total")
	})
}
