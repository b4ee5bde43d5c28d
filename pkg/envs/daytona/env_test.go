package daytona_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
	"github.com/codefleet/codefleet/pkg/envs/envtest"
)

// TestConformanceOlderService runs the suite against a service from before v0.180 (GET /sandbox
// answers a bare array) whose sandboxes' daemon predates v0.167 (no /process/code-run, execute
// ignores envs) and that does not say the daemon's version: the backend finds out from code-run's
// 404 and goes the way the SDKs went then.
func TestConformanceOlderService(t *testing.T) {
	fake := startFake(t, daytonafake.Options{DaemonVersion: "0.150.0", HideDaemonVersion: true, List: daytonafake.ListArray})
	env := newEnv(t, fake, nil)
	envtest.Run(t, envtest.Config{Env: env, Labels: testutil.TestLabels(), MaxOutput: daytona.DefaultMaxOutput})
}

// TestOldDaemonKnownVersion: when the sandbox says its daemon is old, code-run is not even tried.
func TestOldDaemonKnownVersion(t *testing.T) {
	fake := startFake(t, daytonafake.Options{DaemonVersion: "0.150.0"})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("old-daemon"))
	res, err := sb.Run(context.Background(), envs.Exec{Language: "python", Code: "import os; print(os.environ['TOKEN'])", Env: map[string]string{"TOKEN": "it's \"quoted\" $HOME"}})
	if err != nil || res.Output != "it's \"quoted\" $HOME\n" {
		t.Fatalf("python on an old daemon: %+v %v", res, err)
	}
	if n := fake.Count("code-run"); n != 0 {
		t.Errorf("%d code-run calls to a daemon that has none", n)
	}
}

// TestCreateRequest checks what the backend asks the service for: the labels (ours and the SDKs'
// language label), auto-stop off, the sandbox env, the target, a snapshot or an image.
func TestCreateRequest(t *testing.T) {
	fake := startFake(t, daytonafake.Options{Snapshots: []string{"daytona-small", "my-snap"}})
	env := newEnv(t, fake, func(c *daytona.Config) {
		c.Target = "eu"
		c.Labels = map[string]string{"team": "ml"}
		c.Image = daytona.SnapshotPrefix + "my-snap"
	})
	s := spec("create-request")
	s.Labels = map[string]string{envs.LabelWorker: "w-1", "io.codefleet.test-run": testutil.RunID}
	s.Env = map[string]string{"GREETING": "hello"}
	sb := mustCreate(t, env, s)
	got, _ := fake.Get(sb.Info().ID)
	want := map[string]string{
		envs.LabelManagedBy: envs.ManagedByValue, envs.LabelTenant: "faults", envs.LabelConversation: "create-request",
		envs.LabelWorker: "w-1", "team": "ml", daytona.LabelLanguage: "python",
	}
	for k, v := range want {
		if got.Labels[k] != v {
			t.Errorf("label %s = %q, want %q (labels %v)", k, got.Labels[k], v, got.Labels)
		}
	}
	if got.AutoStopInterval != 0 || got.Target != "eu" || got.Snapshot != "my-snap" || got.BuildInfo != nil || got.Env["GREETING"] != "hello" {
		t.Errorf("sandbox %+v: want auto-stop 0, target eu, snapshot my-snap, env GREETING", got)
	}
	if !strings.HasPrefix(got.Name, "codefleet-faults-create-request-") {
		t.Errorf("name %q", got.Name)
	}
	if res := runBash(t, sb, "echo $GREETING"); res.Output != "hello\n" {
		t.Errorf("sandbox env: %+v", res)
	}
	if info := sb.Info(); info.Image != "snapshot:my-snap" || info.Tenant != "faults" || info.Conversation != "create-request" || info.Created.IsZero() {
		t.Errorf("info %+v", info)
	}

	// An image is built: buildInfo FROM <image>, no snapshot.
	s = spec("create-image")
	s.Image = "python:3.12-slim"
	sb = mustCreate(t, env, s)
	got, _ = fake.Get(sb.Info().ID)
	if got.BuildInfo == nil || got.BuildInfo.DockerfileContent != "FROM python:3.12-slim" || got.Snapshot != "" {
		t.Errorf("image sandbox: build info %+v, snapshot %q", got.BuildInfo, got.Snapshot)
	}
	if sb.Info().Image != "python:3.12-slim" {
		t.Errorf("image sandbox info %+v", sb.Info())
	}

	// An unknown snapshot is refused, clearly, and nothing is left.
	s = spec("create-bad-snapshot")
	s.Image = daytona.SnapshotPrefix + "nope"
	_, err := env.Create(context.Background(), s)
	wantErr(t, err, envs.ErrSandboxFailed, "Snapshot nope not found")
}

// TestReopenStopped: a sandbox stopped behind the backend's back (auto-stop, the dashboard) is
// started again by Open, with its files.
func TestReopenStopped(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("stopped"))
	runBash(t, sb, "echo still here > f")
	if err := fake.Stop(sb.Info().ID); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if s, _ := fake.Get(sb.Info().ID); s.State != "stopped" {
			return fmt.Errorf("state %s", s.State)
		}
		return nil
	})
	again, err := env.Open(context.Background(), sb.Info().ID)
	if err != nil {
		t.Fatalf("open a stopped sandbox: %v", err)
	}
	if res := runBash(t, again, "cat f"); res.Output != "still here\n" {
		t.Errorf("after a restart: %+v", res)
	}
}

// TestReattach: the conversation's sandbox is found by its labels and taken over (its worker
// label changes); none is ErrNotFound; a broken one is deleted and reported as failed.
func TestReattach(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	first, second := newEnv(t, fake, nil), newEnv(t, fake, nil)
	s := spec("reattach")
	s.Labels = map[string]string{envs.LabelWorker: "first"}
	if _, err := second.Reattach(context.Background(), s); !errors.Is(err, envs.ErrNotFound) {
		t.Fatalf("reattach with no sandbox: %v, want ErrNotFound", err)
	}
	sb, err := first.Create(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	runBash(t, sb, "echo mine > f")

	s.Labels = map[string]string{envs.LabelWorker: "second"}
	again, err := second.Reattach(context.Background(), s)
	if err != nil {
		t.Fatalf("reattach: %v", err)
	}
	if again.Info().ID != sb.Info().ID || again.Info().Labels[envs.LabelWorker] != "second" {
		t.Fatalf("reattached %+v, want %s labelled for worker second", again.Info(), sb.Info().ID)
	}
	if res := runBash(t, again, "cat f"); res.Output != "mine\n" {
		t.Fatalf("reattached sandbox: %+v", res)
	}
	got, _ := fake.Get(sb.Info().ID)
	if got.Labels[envs.LabelWorker] != "second" || got.Labels[daytona.LabelLanguage] != "python" {
		t.Fatalf("labels after the take-over %v", got.Labels)
	}
	// The first worker's backend no longer deletes it; the second's does.
	if err := first.Destroy(context.Background(), sb.Info().ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := fake.Get(sb.Info().ID); got.Deleted() {
		t.Fatal("the first worker deleted a sandbox taken over by the second")
	}

	fake.Break(sb.Info().ID, "the runner died")
	_, err = second.Reattach(context.Background(), s)
	wantErr(t, err, envs.ErrSandboxFailed, "the runner died")
	if got, _ := fake.Get(sb.Info().ID); !got.Deleted() {
		t.Fatalf("the broken sandbox was kept: %+v", got)
	}
}

// TestReattachStaysInItsFleet: a staging and a prod fleet share a Daytona account and both have
// the conversation: each fleet's worker re-attaches to its own fleet's sandbox only, and a
// sandbox made before sandboxes were labelled with their fleet belongs to the default fleet.
func TestReattachStaysInItsFleet(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	ctx := context.Background()
	made := map[string]string{}
	for _, fleet := range []string{"stg", "prd", ""} {
		s := spec("fleets")
		s.Labels = map[string]string{envs.LabelWorker: "w"}
		if fleet != "" {
			s.Labels[envs.LabelFleet] = fleet
		}
		sb := mustCreate(t, env, s)
		runBash(t, sb, "echo "+fleet+" > fleet.txt")
		made[fleet] = sb.Info().ID
	}
	for _, fleet := range []string{"stg", "prd", "codefleet"} {
		s := spec("fleets")
		s.Labels = map[string]string{envs.LabelWorker: "w2", envs.LabelFleet: fleet}
		sb, err := env.Reattach(ctx, s)
		if err != nil {
			t.Fatalf("%s: reattach: %v", fleet, err)
		}
		want := made[fleet]
		if fleet == "codefleet" {
			want = made[""] // unlabelled: the default prefix's
		}
		if sb.Info().ID != want {
			t.Fatalf("%s re-attached %s, want %s", fleet, sb.Info().ID, want)
		}
	}
	s := spec("fleets")
	s.Labels = map[string]string{envs.LabelFleet: "other"}
	if _, err := env.Reattach(ctx, s); !errors.Is(err, envs.ErrNotFound) {
		t.Fatalf("a fleet without a sandbox of the conversation: %v, want ErrNotFound", err)
	}
}

// TestTenantsAndVariables: a tenant's account comes from the configuration, with its
// placeholders filled by the request's sandbox.variables (the tenant's own API key here), and
// its sandboxes are made, found and deleted there.
func TestTenantsAndVariables(t *testing.T) {
	shared := startFake(t, daytonafake.Options{})
	acme := startFake(t, daytonafake.Options{APIKey: "dtn_acme_own_key", Target: "default-region"})
	env := newEnv(t, shared, func(c *daytona.Config) {
		c.Tenants = map[string]daytona.Account{"acme": {APIKey: "${daytona_api_key}", APIURL: acme.URL, Target: "eu"}}
	})
	ctx := context.Background()

	s := envs.Spec{Tenant: "acme", Conversation: "c1", Labels: testutil.TestLabels()}
	_, err := env.Create(ctx, s)
	wantErr(t, err, envs.ErrSandboxFailed, `tenant "acme"`, "sandbox.variables.daytona_api_key")

	s.Variables = map[string]string{"daytona_api_key": "dtn_acme_own_key"}
	sb := mustCreate(t, env, s)
	if got, ok := acme.Get(sb.Info().ID); !ok || got.Target != "eu" {
		t.Fatalf("the tenant's sandbox is not in its account, in region eu: %+v", got)
	}
	if res := runBash(t, sb, "echo in acme"); res.Output != "in acme\n" {
		t.Fatalf("run: %+v", res)
	}
	other := mustCreate(t, env, envs.Spec{Tenant: "other", Conversation: "c2", Labels: testutil.TestLabels()})
	if _, ok := shared.Get(other.Info().ID); !ok {
		t.Fatal("another tenant's sandbox is not in the default account")
	}
	// A listing covers both accounts.
	list, err := env.List(ctx, testutil.TestLabels())
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %+v %v, want both sandboxes", list, err)
	}
	// Reattach uses the tenant's account too.
	s.Labels = map[string]string{envs.LabelWorker: "w2"}
	again, err := env.Reattach(ctx, s)
	if err != nil || again.Info().ID != sb.Info().ID {
		t.Fatalf("reattach in the tenant's account: %v", err)
	}
	// A wrong key for the tenant's account is refused there.
	s.Variables = map[string]string{"daytona_api_key": "dtn_wrong"}
	_, err = env.Create(ctx, s)
	wantErr(t, err, envs.ErrBackendUnavailable, "401")
}
