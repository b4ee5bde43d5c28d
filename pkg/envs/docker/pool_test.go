package docker_test

import (
	"context"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/docker"
)

// TestPoolSandboxClaim: a pool sandbox is made for no conversation; a claim binds a tenant and
// conversation (reported by Info, List and Open, and found by `docker ps --filter name=`, as
// operations.md says) and a sandbox-wide env applied to every run, which a re-opened sandbox
// (a restarted worker) keeps; a claimed sandbox cannot be claimed again, and what a free one
// cannot take is refused.
func TestPoolSandboxClaim(t *testing.T) {
	env := newEnv(t, nil)
	ctx := context.Background()
	conv := "claim-" + testutil.RunID
	labels := testutil.TestLabels()
	sb, err := env.CreateFree(ctx, envs.Spec{Labels: labels, Tenant: "ignored", Conversation: "ignored", Env: map[string]string{"IGNORED": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	id := sb.Info().ID
	t.Cleanup(func() {
		sb.Close()
		env.Destroy(context.Background(), id)
	})
	if info := sb.Info(); !info.Free() || info.Tenant != "" || info.Conversation != "" {
		t.Fatalf("free pool sandbox: %+v", info)
	}
	if out := runOK(t, sb, "bash", "env | grep -c IGNORED"); out.Output != "0\n" {
		t.Fatalf("a pool sandbox has its spec's env: %q", out.Output)
	}
	listed := func(match map[string]string) []envs.Info {
		t.Helper()
		list, err := env.List(ctx, match)
		if err != nil {
			t.Fatal(err)
		}
		return list
	}
	if list := listed(map[string]string{envs.LabelPool: "true", testutil.LabelTestRun: testutil.RunID}); len(list) != 1 || !list[0].Free() ||
		list[0].Labels[envs.LabelConversation] != "" || list[0].Labels[envs.LabelTenant] != "" {
		t.Fatalf("List of the free one: %+v", list)
	}

	if env.Claimable(envs.Spec{Env: map[string]string{"PATH": "/opt/bin"}}) || !env.Claimable(envs.Spec{Env: map[string]string{"A": "1"}}) {
		t.Fatal("Claimable: a PATH must be the container's, any other env can be bound")
	}
	spec := envs.Spec{Tenant: "acme", Conversation: conv, Env: map[string]string{"CLAIMED": "yes", "HOME": "/tmp"}}
	if err := env.Claim(ctx, sb, envs.Spec{Tenant: "acme", Conversation: conv, Image: "other:image"}); err == nil {
		t.Fatal("claim for another image succeeded")
	}
	if err := env.Claim(ctx, sb, spec); err != nil {
		t.Fatal(err)
	}
	if info := sb.Info(); info.Free() || !info.Pool || info.Tenant != "acme" || info.Conversation != conv || info.Labels[envs.LabelConversation] != conv {
		t.Fatalf("claimed: %+v", info)
	}
	if err := env.Claim(ctx, sb, envs.Spec{Tenant: "acme", Conversation: "thief"}); err == nil {
		t.Fatal("a claimed sandbox was claimed again")
	}
	runEnv := func(sb envs.Sandbox) string {
		t.Helper()
		res, err := sb.Run(ctx, envs.Exec{Language: "bash", Code: `echo "$CLAIMED $HOME $RUN"`, Env: map[string]string{"RUN": "own"}})
		if err != nil {
			t.Fatal(err)
		}
		return res.Output
	}
	if got := runEnv(sb); got != "yes /tmp own\n" {
		t.Fatalf("claimed sandbox's env: %q, want the claim's under the run's", got)
	}
	runOK(t, sb, "bash", "echo kept > f")

	for _, match := range []map[string]string{{envs.LabelConversation: conv}, {envs.LabelTenant: "acme", envs.LabelConversation: conv, testutil.LabelTestRun: testutil.RunID}} {
		if list := listed(match); len(list) != 1 || list[0].ID != id || list[0].Tenant != "acme" || list[0].Conversation != conv {
			t.Fatalf("List(%v) after the claim: %+v", match, list)
		}
	}
	if list := listed(map[string]string{envs.LabelConversation: "thief"}); len(list) != 0 {
		t.Fatalf("List of another conversation: %+v", list)
	}
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ps, err := cli.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("name", `^codefleet\.acme\.`+conv+`\.`))})
	if err != nil || len(ps) != 1 || ps[0].ID != id {
		t.Fatalf("docker ps --filter name=^codefleet.acme.%s.: %d containers, %v", conv, len(ps), err)
	}

	// A restarted worker: the sandbox opened again by id is the conversation's, env and files.
	sb.Close()
	again, err := env.Open(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if info := again.Info(); info.Tenant != "acme" || info.Conversation != conv || !info.Pool {
		t.Fatalf("re-opened: %+v", info)
	}
	if got := runEnv(again); got != "yes /tmp own\n" {
		t.Fatalf("re-opened sandbox's env: %q", got)
	}
	if got := runOK(t, again, "bash", "cat f; cat /.codefleet/env.json 2>&1 >/dev/null | grep -c 'Permission denied'"); got.Output != "kept\n1\n" {
		t.Fatalf("re-opened sandbox: %q, want its file, and the claim's env file out of the snippet's reach", got.Output)
	}
}

// TestPoolSandboxReadonlyRootfs: with a read-only root filesystem a claim cannot write the
// sandbox env, so only conversations without one may take a pool sandbox.
func TestPoolSandboxReadonlyRootfs(t *testing.T) {
	env := newEnv(t, func(c *docker.Config) { c.ReadonlyRootfs = true })
	if env.Claimable(envs.Spec{Env: map[string]string{"A": "1"}}) || !env.Claimable(envs.Spec{}) {
		t.Fatal("Claimable with a read-only root filesystem: want no env only")
	}
}

// TestCreateCancelledLeavesNothing: a creation cancelled part way (a worker stopping cancels
// its warm pool's) leaves no container behind, wherever the cancel falls.
func TestCreateCancelledLeavesNothing(t *testing.T) {
	env := newEnv(t, nil)
	run := "cancelled-" + testutil.RunID
	labels := map[string]string{testutil.LabelTestRun: testutil.RunID, "io.codefleet.test-case": run}
	for _, after := range []time.Duration{0, time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond} {
		ctx, cancel := context.WithTimeout(context.Background(), after)
		sb, err := env.CreateFree(ctx, envs.Spec{Labels: labels})
		cancel()
		if err == nil { // it was quicker
			sb.Close()
			env.Destroy(context.Background(), sb.Info().ID)
		}
	}
	list, err := env.List(context.Background(), map[string]string{"io.codefleet.test-case": run})
	if err != nil || len(list) != 0 {
		t.Fatalf("%d containers left by cancelled creations (%v)", len(list), err)
	}
}
