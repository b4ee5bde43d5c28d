package dispatcher_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/worker"
)

func TestMain(m *testing.M) { testutil.MainWithLeftoverCheck(m) }

// TestEndToEndOnDocker: a client, a dispatcher and two workers with real Docker sandboxes. Runs
// of one conversation share its files, conversations are isolated, results name the worker and
// the container, and both services answer NATS service discovery.
func TestEndToEndOnDocker(t *testing.T) {
	testutil.RequireDocker(t)
	ns := testutil.StartNATS(t)
	for _, id := range []string{"e2e-a-" + testutil.RunID, "e2e-b-" + testutil.RunID} {
		env, err := docker.New(docker.Config{Image: testutil.SandboxImage(), AgentPath: testutil.AgentBinary(t), Labels: testutil.TestLabels()}, testutil.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { env.Close() })
		startWorker(t, ns, id, env)
	}
	d := startDispatcher(t, ns)
	testutil.WaitWorkers(t, 2, d)
	c := newClient(t, ns)
	ctx := context.Background()

	// Names unique to this test process: container counts must not see other packages' tests.
	alice, bob := c.Conversation("alice-"+testutil.RunID), c.Conversation("bob-"+testutil.RunID)
	first, err := alice.Run(ctx, "open('secret.txt','w').write('alice only')", "python", nil)
	if err != nil || !first.Sandbox.Created || first.Sandbox.Backend != docker.Name || !strings.HasPrefix(first.Sandbox.Worker, "e2e-") {
		t.Fatalf("first run: %+v %v", first, err)
	}
	again, err := alice.Run(ctx, "cat secret.txt", "bash", nil)
	if err != nil || again.Output != "alice only" || again.Sandbox.ID != first.Sandbox.ID || again.Sandbox.Worker != first.Sandbox.Worker || again.Sandbox.Created {
		t.Fatalf("second run of alice: %+v %v, want her file in sandbox %s", again, err, first.Sandbox.ID)
	}
	other, err := bob.Run(ctx, "ls -A; test -e secret.txt", "bash", nil)
	if err != nil || other.ExitCode != 1 || other.Output != "" || other.Sandbox.ID == first.Sandbox.ID {
		t.Fatalf("bob sees alice's files or her sandbox: %+v %v", other, err)
	}
	if n, err := testutil.CountContainers("io.codefleet.conversation", alice.ID()); err != nil || n != 1 {
		t.Fatalf("%d containers for alice (%v)", n, err)
	}

	// NATS service discovery: both services answer PING, INFO and STATS.
	nc := testutil.Connect(t, ns)
	for _, svc := range []string{dispatcher.ServiceName, worker.ServiceName} {
		for _, verb := range []string{"PING", "INFO", "STATS"} {
			msg, err := nc.Request("$SRV."+verb+"."+svc, nil, 5*time.Second)
			if err != nil {
				t.Fatalf("$SRV.%s.%s: %v", verb, svc, err)
			}
			var info micro.Info
			if err := json.Unmarshal(msg.Data, &info); err != nil || info.Name != svc {
				t.Fatalf("$SRV.%s.%s: %s (%v)", verb, svc, msg.Data, err)
			}
		}
	}

	for _, conv := range []*client.Conversation{alice, bob} {
		if res, err := conv.Close(ctx); err != nil || !res.Closed {
			t.Fatalf("close %s: %+v %v", conv.ID(), res, err)
		}
	}
	if n, err := testutil.CountContainers("io.codefleet.conversation", alice.ID()); err != nil || n != 0 {
		t.Fatalf("%d containers for alice after close (%v)", n, err)
	}
}
