package daytona_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
	"github.com/codefleet/codefleet/pkg/envs/envtest"
)

// startFake runs a fake Daytona service for the test. When the test ends it checks that no
// sandbox was leaked (every one deleted or being deleted), then stops it.
func startFake(t testing.TB, opts daytonafake.Options) *daytonafake.Server {
	t.Helper()
	if opts.StepDelay == 0 {
		opts.StepDelay = 10 * time.Millisecond
	}
	if opts.CreateWait == 0 {
		opts.CreateWait = 2 * time.Second
	}
	fake, err := daytonafake.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if n := fake.Live(); n != 0 && !t.Failed() {
			t.Errorf("%d sandbox(es) leaked: %+v", n, fake.Sandboxes())
		}
		fake.Close()
	})
	return fake
}

// newEnv returns a backend on the fake, with fast client retries.
func newEnv(t testing.TB, fake *daytonafake.Server, mut func(*daytona.Config)) *daytona.Env {
	t.Helper()
	cfg := daytona.Config{
		Account: daytona.Account{APIKey: "dtn_fake", APIURL: fake.URL},
		// The fake's sandboxes are the host's directories: their uploads are staged in the
		// test's, not in the host's /tmp.
		UploadDir: t.TempDir(),
		NewAPI: func(a daytona.Account) (daytona.API, error) {
			return daytona.NewClient(daytona.ClientConfig{APIURL: a.APIURL, APIKey: a.APIKey, RetryBase: 20 * time.Millisecond})
		},
	}
	if mut != nil {
		mut(&cfg)
	}
	env, err := daytona.New(cfg, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	return env
}

func TestConformance(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	envtest.Run(t, envtest.Config{Env: env, Labels: testutil.TestLabels(), MaxOutput: daytona.DefaultMaxOutput})
	_ = context.Background
	_ = fmt.Sprint
}
