package daytona_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
	"github.com/codefleet/codefleet/pkg/envs/envtest"
)

// TestRealService runs the conformance suite against the real Daytona service when
// DAYTONA_API_KEY is set (DAYTONA_API_URL and DAYTONA_TARGET are honoured, and
// CODEFLEET_DAYTONA_IMAGE picks the image or snapshot:NAME). It makes a few sandboxes at a time
// (the free tier allows 10) and deletes every one it made, even when a case fails.
func TestRealService(t *testing.T) {
	key := os.Getenv("DAYTONA_API_KEY")
	if key == "" {
		t.Skip("DAYTONA_API_KEY not set: skipping the test against the real Daytona service")
	}
	labels := testutil.TestLabels()
	env, err := daytona.New(daytona.Config{
		Account: daytona.Account{APIKey: key, APIURL: os.Getenv("DAYTONA_API_URL"), Target: os.Getenv("DAYTONA_TARGET")},
		Image:   os.Getenv("CODEFLEET_DAYTONA_IMAGE"),
		Labels:  labels,
	}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		left, err := env.List(ctx, labels)
		if err != nil {
			t.Errorf("list leftovers: %v", err)
		}
		for _, info := range left {
			t.Errorf("sandbox %s left behind; deleting it", info.ID)
			env.Destroy(ctx, info.ID)
		}
		env.Close()
	})
	envtest.Run(t, envtest.Config{Env: env, Labels: labels, MaxOutput: daytona.DefaultMaxOutput, Concurrency: 2})
}
