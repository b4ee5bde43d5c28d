package main

import (
	"context"
	"io"
	"testing"

	"github.com/codefleet/codefleet/internal/testutil"
)

// TestReadinessFollowsNATS: the dispatcher's /readyz says 503 within seconds of its NATS
// server going away and 200 again once the server is back with the buckets, while /healthz
// answers 200 throughout: Kubernetes takes the pod out of service and never kills it for it.
func TestReadinessFollowsNATS(t *testing.T) {
	testutil.ClearEnv(t)
	testutil.ReadinessFollowsNATS(t, "dispatcher", func(ctx context.Context, natsURL, httpAddr string, stderr io.Writer) error {
		return run(ctx, []string{"--nats-url", natsURL, "--http-addr", httpAddr, "--name", "ready-test"}, stderr)
	})
}
