package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/testutil"
)

// TestReadinessFollowsNATS: the worker's /readyz (real Docker backend) says 503 within seconds
// of its NATS server going away and 200 again once the server is back, its registry bucket made
// again by its own heartbeats (the bucket lives in memory), while /healthz answers 200.
func TestReadinessFollowsNATS(t *testing.T) {
	testutil.ClearEnv(t)
	testutil.RequireDocker(t)
	id := "cmd-ready-" + strings.ReplaceAll(testutil.RunID, ".", "-")
	testutil.ReadinessFollowsNATS(t, "worker", func(ctx context.Context, natsURL, httpAddr string, stderr io.Writer) error {
		return run(ctx, []string{"--nats-url", natsURL, "--http-addr", httpAddr, "--id", id, "--agent", fakeAgent(t), "--drain-timeout", "2s"}, stderr)
	})
}

// TestReadinessNeedsTheBackend: a worker whose Docker daemon does not answer serves (its
// liveness holds) but is not ready, and /readyz says why.
func TestReadinessNeedsTheBackend(t *testing.T) {
	testutil.ClearEnv(t)
	ns := testutil.StartNATS(t)
	addr := "127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	id := "cmd-nobackend-" + strings.ReplaceAll(testutil.RunID, ".", "-")
	closed := "tcp://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	testutil.RunDaemon(t, 30*time.Second, func(ctx context.Context, stderr io.Writer) error {
		return run(ctx, []string{"--nats-url", ns.ClientURL(), "--http-addr", addr, "--id", id, "--agent", fakeAgent(t), "--docker-host", closed, "--drain-timeout", "1s"}, stderr)
	}, func() error {
		code, body, err := testutil.Get("http://" + addr + testutil.PathReadyz)
		if err != nil {
			return err
		}
		if code != 503 || !strings.Contains(body, "fail worker: docker backend") {
			return fmt.Errorf("/readyz: %d %q, want 503 naming the docker backend", code, body)
		}
		return testutil.WantStatus("http://"+addr+testutil.PathHealthz, 200)
	})
}
