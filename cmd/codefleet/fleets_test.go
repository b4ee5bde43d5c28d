package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/worker"
)

// TestTwoFleetsOnOneNATS: a staging and a prod fleet (prefixes "stg" and "prd") share one NATS
// server and one Docker daemon, and each has a worker named "shared" (two fleets on one host
// both default to the host name). The same tenant and conversation run in both, each in a
// sandbox of its own fleet; `codefleet status --prefix` lists each fleet's own workers only; and
// killing staging's "shared" worker moves staging's conversation to staging's other worker,
// never prod's conversation, which keeps its sandbox and its files.
func TestTwoFleetsOnOneNATS(t *testing.T) {
	testutil.RequireDocker(t)
	ns := testutil.StartNATS(t)
	newEnv := func() *docker.Env {
		env, err := docker.New(docker.Config{Image: testutil.SandboxImage(), AgentPath: testutil.AgentBinary(t), Labels: testutil.TestLabels()}, testutil.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { env.Close() })
		return env
	}
	shared := "shared-" + testutil.RunID // worker id used by both fleets
	other := map[string]string{"stg": "stg-other-" + testutil.RunID, "prd": "prd-other-" + testutil.RunID}

	// Staging's shared worker is the one the test kills: it runs on a connection of its own.
	stgEnv := newEnv()
	_, stgSharedNC := testutil.StartDoomedWorker(t, ns, worker.Config{ID: shared, Prefix: "stg"}, stgEnv)
	t.Cleanup(func() { destroyAll(t, stgEnv, shared, "stg") }) // a killed worker leaves its sandboxes
	// Prod's shared worker keeps its sandboxes when it stops: the test restarts it below.
	prdEnv := newEnv()
	prdCfg := worker.Config{ID: shared, Prefix: "prd", HeartbeatInterval: 200 * time.Millisecond, HeartbeatTTL: testutil.FleetTTL}
	prdShared, err := worker.New(prdCfg, testutil.Connect(t, ns), prdEnv, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := prdShared.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prdShared.Shutdown(context.Background()) })
	dispatchers := map[string]*dispatcher.Dispatcher{}
	clients := map[string]*client.Client{}
	for _, prefix := range []string{"stg", "prd"} {
		dispatchers[prefix] = testutil.StartDispatcher(t, ns, dispatcher.Config{Prefix: prefix})
		testutil.WaitWorkers(t, 1, dispatchers[prefix])
		c, err := client.New(testutil.Connect(t, ns), client.WithPrefix(prefix), client.WithTenant("acme"))
		if err != nil {
			t.Fatal(err)
		}
		clients[prefix] = c
	}

	// The same tenant and conversation in both fleets: each its own sandbox, its own files.
	ctx := context.Background()
	conv := "chat-" + testutil.RunID
	sandbox := map[string]string{}
	for _, prefix := range []string{"stg", "prd"} {
		res, err := clients[prefix].Conversation(conv).Run(ctx, "echo "+prefix+" > fleet.txt; cat fleet.txt", "bash", nil)
		if err != nil || res.Output != prefix+"\n" || !res.Sandbox.Created || res.Sandbox.Worker != shared {
			t.Fatalf("%s: first run %+v %v", prefix, res, err)
		}
		sandbox[prefix] = res.Sandbox.ID
	}
	if sandbox["stg"] == sandbox["prd"] {
		t.Fatalf("both fleets ran in sandbox %s", sandbox["stg"])
	}
	for _, prefix := range []string{"stg", "prd"} {
		res, err := clients[prefix].Conversation(conv).Run(ctx, "cat fleet.txt", "bash", nil)
		if err != nil || res.Output != prefix+"\n" || res.Sandbox.ID != sandbox[prefix] || res.Sandbox.Created {
			t.Fatalf("%s: second run %+v %v, want its own file in sandbox %s", prefix, res, err, sandbox[prefix])
		}
	}

	// A second worker in each fleet, then status per prefix.
	testutil.StartWorker(t, ns, worker.Config{ID: other["stg"], Prefix: "stg"}, newEnv())
	testutil.StartWorker(t, ns, worker.Config{ID: other["prd"], Prefix: "prd"}, newEnv())
	for _, prefix := range []string{"stg", "prd"} {
		testutil.WaitWorkers(t, 2, dispatchers[prefix])
		out := status(t, ns.ClientURL(), prefix)
		for p, id := range other {
			if strings.Contains(out, id) != (p == prefix) {
				t.Fatalf("codefleet status --prefix %s lists %s: %v\n%s", prefix, id, strings.Contains(out, id), out)
			}
		}
		if !strings.Contains(out, shared) || strings.Count(out, "\n") != 3 {
			t.Fatalf("codefleet status --prefix %s: want a header and 2 workers:\n%s", prefix, out)
		}
	}
	if out := status(t, ns.ClientURL(), "nobody"); !strings.Contains(out, "no live workers") {
		t.Fatalf("codefleet status of a prefix without workers:\n%s", out)
	}

	// Staging's shared worker dies. Prod's conversation on prod's shared worker (same id, same
	// Docker daemon) never moves: same sandbox, files kept, not recreated.
	stgSharedNC.Close()
	testutil.WaitWorkers(t, 1, dispatchers["stg"])
	res, err := clients["stg"].Conversation(conv).Run(ctx, "ls fleet.txt 2>/dev/null; echo moved", "bash", nil)
	if err != nil || res.Output != "moved\n" || res.Sandbox.Worker != other["stg"] || !res.Sandbox.Recreated {
		t.Fatalf("stg after its worker died: %+v %v, want the conversation recreated on %s", res, err, other["stg"])
	}
	for i := 0; i < 3; i++ {
		res, err := clients["prd"].Conversation(conv).Run(ctx, "cat fleet.txt", "bash", nil)
		if err != nil || res.Output != "prd\n" || res.Sandbox.ID != sandbox["prd"] || res.Sandbox.Worker != shared || res.Sandbox.Recreated || res.Sandbox.Created {
			t.Fatalf("prd after stg's worker died: %+v %v, want its sandbox %s on %s", res, err, sandbox["prd"], shared)
		}
	}
	if got := len(dispatchers["prd"].Workers()); got != 2 {
		t.Fatalf("prd sees %d workers after stg lost one", got)
	}
	// Prod's shared worker restarts (a rolling update) and re-adopts the sandboxes labelled with
	// its id: its own, not staging's of the dead worker (same id, same daemon), which stays for
	// staging's next worker with that id.
	if err := prdShared.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := testutil.StartWorker(t, ns, prdCfg, prdEnv)
	if load := restarted.Info().Load; load != 1 {
		t.Fatalf("prod's restarted %s holds %d sandboxes, want its own one", shared, load)
	}
	testutil.WaitWorkers(t, 2, dispatchers["prd"])
	res, err = clients["prd"].Conversation(conv).Run(ctx, "cat fleet.txt", "bash", nil)
	if err != nil || res.Output != "prd\n" || res.Sandbox.ID != sandbox["prd"] || res.Sandbox.Recreated || res.Sandbox.Created {
		t.Fatalf("prd after its worker restarted: %+v %v, want its sandbox %s", res, err, sandbox["prd"])
	}
	list, err := stgEnv.List(ctx, map[string]string{envs.LabelWorker: shared, envs.LabelFleet: "stg"})
	if err != nil || len(list) != 1 || list[0].ID != sandbox["stg"] {
		t.Fatalf("staging's sandboxes of the dead worker: %+v %v", list, err)
	}
}

// status runs `codefleet status --prefix prefix` and returns what it printed.
func status(t *testing.T, url, prefix string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"status", "--prefix", prefix, "--nats-url", url}, nil, &out, &errOut); code != 0 {
		t.Fatalf("codefleet status --prefix %s exited %d: %s", prefix, code, errOut.String())
	}
	return out.String()
}

// destroyAll removes the sandboxes a worker of a fleet left.
func destroyAll(t *testing.T, env envs.Env, workerID, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := env.List(ctx, map[string]string{envs.LabelWorker: workerID, envs.LabelFleet: prefix})
	if err != nil {
		t.Errorf("list sandboxes of %s: %v", workerID, err)
	}
	for _, info := range list {
		if err := env.Destroy(ctx, info.ID); err != nil {
			t.Error(fmt.Errorf("destroy %s: %w", info.ID, err))
		}
	}
}
