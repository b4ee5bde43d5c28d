package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// TestDevMetrics: `codefleet dev` serves the worker's and the dispatcher's metrics and probes
// on one address. Across a run that exits 0, a run that times out and a malformed request, the
// counters and histograms move by exactly those, and the text passes promlint.
func TestDevMetrics(t *testing.T) {
	testutil.RequireDocker(t)
	base := "http://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	id := "devm-" + testutil.RunID
	url := startDev(t, func() {}, "--http-addr", strings.TrimPrefix(base, "http://"), "--worker-id", id,
		"--agent", testutil.AgentBinary(t), "--image", testutil.SandboxImage())
	testutil.Eventually(t, 30*time.Second, func() error { return testutil.WantStatus(base+"/readyz", 200) })
	if err := testutil.WantStatus(base+"/healthz", 200); err != nil {
		t.Fatal(err)
	}

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cl, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	conv := cl.Conversation("metrics-" + testutil.RunID)
	defer conv.Close(context.Background())
	before := testutil.Scrape(t, base+"/metrics")

	ctx := testutil.Context(t)
	if res, err := conv.Run(ctx, "print(6*7)", protocol.LangPython, nil); err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %+v, %v", res, err)
	}
	if res, err := conv.Run(ctx, "import time\nprint('started', flush=True)\ntime.sleep(30)", protocol.LangPython, &client.RunOptions{Timeout: time.Second}); err != nil || !res.TimedOut {
		t.Fatalf("timeout run: %+v, %v", res, err)
	}
	msg, err := nc.Request(protocol.Subjects{Prefix: protocol.DefaultPrefix}.Run(protocol.DefaultTenant, "metrics-bad"), []byte("{not json"), 10*time.Second)
	if err != nil || !strings.Contains(string(msg.Data), string(protocol.CodeBadRequest)) {
		t.Fatalf("malformed request: %v %q", err, msg.Data)
	}

	after := testutil.Scrape(t, base+"/metrics")
	for _, c := range []struct {
		name   string
		labels []string
		delta  float64
	}{
		{"codefleet_worker_runs_total", []string{"language", "python", "outcome", "ok"}, 1},
		{"codefleet_worker_runs_total", []string{"language", "python", "outcome", "timeout"}, 1},
		{"codefleet_worker_runs_total", nil, 2}, // the malformed request never reached the worker
		{"codefleet_worker_run_duration_seconds", []string{"language", "python"}, 2},
		{"codefleet_worker_sandboxes_created_total", nil, 1},
		{"codefleet_worker_sandbox_create_duration_seconds", nil, 1},
		{"codefleet_worker_sandboxes", nil, 1},
		{"codefleet_dispatcher_requests_total", []string{"verb", "run", "outcome", "ok"}, 2},
		{"codefleet_dispatcher_requests_total", []string{"verb", "run", "outcome", "bad_request"}, 1},
		{"codefleet_dispatcher_requests_total", nil, 3},
		{"codefleet_dispatcher_relay_duration_seconds", []string{"verb", "run"}, 2},
		{"codefleet_dispatcher_placement_duration_seconds", []string{"outcome", "ok"}, 1},
	} {
		if got := after.Value(c.name, c.labels...) - before.Value(c.name, c.labels...); got != c.delta {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, got, c.delta)
		}
	}
	for _, g := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"codefleet_worker_capacity", nil, 32},
		{"codefleet_worker_runs_running", nil, 0},
		{"codefleet_worker_runs_pending", nil, 0},
		{"codefleet_dispatcher_workers", nil, 1},
		{"codefleet_nats_connected", []string{"connection", "worker"}, 1},
		{"codefleet_nats_connected", []string{"connection", "dispatcher"}, 1},
	} {
		if got := after.Value(g.name, g.labels...); got != g.want {
			t.Errorf("%s%v = %v, want %v", g.name, g.labels, got, g.want)
		}
	}
	// The Docker backend's own metrics are the worker's: the egress proxy's, every refusal
	// reason shown from the start.
	if f := after.Families["codefleet_worker_egress_refused_total"]; f == nil || len(f.GetMetric()) != 5 {
		t.Errorf("egress refusals: %v, want a sample per reason", f)
	}
	// The run duration of the timed-out run is its timeout, in the 1 s to 2.5 s bucket.
	if h := after.Families["codefleet_worker_run_duration_seconds"]; h == nil || h.GetMetric()[0].GetHistogram().GetSampleSum() < 1 {
		t.Errorf("run duration sum: %v", h)
	}
	problems, err := promlint.New(strings.NewReader(after.Text)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	// No label carries a conversation or worker id: label values stay bounded.
	if strings.Contains(after.Text, "metrics-") || strings.Contains(after.Text, id) {
		t.Errorf("a conversation or worker id is a label value:\n%s", after.Text)
	}
}
