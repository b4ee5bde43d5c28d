package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/nats-io/nats.go"
	"github.com/testcontainers/testcontainers-go"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// newClient is a Go client on a host connection to the fleet.
func (f *fleet) newClient(opts ...client.Option) *client.Client {
	f.t.Helper()
	c, err := client.New(f.connect(), opts...)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// waitWorkers waits until the fleet's registry lists exactly ids as live workers.
func (f *fleet) waitWorkers(c *client.Client, names ...string) {
	f.t.Helper()
	want := make([]string, len(names))
	for i, n := range names {
		want[i] = workerID(n)
	}
	slices.Sort(want)
	nc := f.connect()
	testutil.Eventually(f.t, 30*time.Second, func() error {
		got, err := liveWorkers(nc)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("live workers %v, want %v", got, want)
		}
		return nil
	})
}

func isCode(err error, code protocol.Code) bool {
	var perr *protocol.Error
	return errors.As(err, &perr) && perr.Code == code
}

// waitRunning waits until a worker's registration says n runs are executing.
func (f *fleet) waitRunning(name string, n int) {
	f.t.Helper()
	nc := f.connect()
	testutil.Eventually(f.t, 30*time.Second, func() error {
		info, err := workerInfo(nc, workerID(name))
		if err != nil {
			return err
		}
		if info.Running != n {
			return fmt.Errorf("%s has %d runs executing, want %d", name, info.Running, n)
		}
		return nil
	})
}

// holding starts NATS, a dispatcher and worker first, gives it n conversations (prefix-0 ...)
// that each write a file f, then starts worker second, which has none. It returns a client and first's container.
func (f *fleet) holding(first string, n int, prefix, second string) (*client.Client, *testcontainers.DockerContainer) {
	f.t.Helper()
	f.startNATS()
	f.startDispatcher("d1")
	w := f.startWorker(first)
	c := f.newClient()
	f.waitWorkers(c, first)
	for i := 0; i < n; i++ {
		if _, err := c.Conversation(fmt.Sprintf("%s-%d", prefix, i)).Run(context.Background(), "echo before > f", "bash", nil); err != nil {
			f.t.Fatal(err)
		}
	}
	f.startWorker(second)
	f.waitWorkers(c, first, second)
	return c, w
}

// TestScaleOut: one worker carries 200 conversations that keep running; two workers join. New
// conversations go to the new workers, and every run of the old ones stays on the first.
func TestScaleOut(t *testing.T) {
	const active, fresh = 200, 40
	f := newFleet(t)
	f.startNATS()
	f.startDispatcher("d1")
	f.startDispatcher("d2")
	f.startWorker("w1")
	c := f.newClient()
	f.waitWorkers(c, "w1")
	ctx := context.Background()

	// 200 conversations, each with a file, on w1.
	var wg sync.WaitGroup
	errs := make(chan error, active+fresh)
	for i := 0; i < active; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conv := c.Conversation(fmt.Sprintf("old-%03d", i))
			res, err := conv.Run(ctx, fmt.Sprintf("echo %d > id", i), "bash", nil)
			if err != nil || res.Sandbox.Worker != workerID("w1") {
				errs <- fmt.Errorf("%s: %+v %v", conv.ID(), res, err)
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}

	// They keep running while the fleet grows, each every few seconds, as agents do (back to
	// back, 200 conversations would saturate this machine's two cores).
	stop := make(chan struct{})
	var runs atomic.Int64
	for i := 0; i < active; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conv := c.Conversation(fmt.Sprintf("old-%03d", i))
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := conv.Run(ctx, "cat id", "bash", nil)
				if err != nil || res.Sandbox.Worker != workerID("w1") || res.Output != fmt.Sprintf("%d\n", i) {
					if res != nil && res.Sandbox != nil {
						err = errors.Join(err, fmt.Errorf("output %q, exit code %d, on %s", res.Output, res.ExitCode, res.Sandbox.Worker))
					}
					errs <- fmt.Errorf("%s moved or lost its file: %v", conv.ID(), err)
					return
				}
				runs.Add(1)
				select {
				case <-stop:
					return
				case <-time.After(2*time.Second + time.Duration(rand.IntN(3000))*time.Millisecond):
				}
			}
		}()
	}
	f.startWorker("w2")
	f.startWorker("w3")
	f.waitWorkers(c, "w1", "w2", "w3")

	placed := map[string]int{}
	var mu sync.Mutex
	var nwg sync.WaitGroup
	for i := 0; i < fresh; i++ {
		nwg.Add(1)
		go func() {
			defer nwg.Done()
			res, err := c.Conversation(fmt.Sprintf("new-%03d", i)).Run(ctx, "true", "bash", nil)
			if err != nil {
				errs <- fmt.Errorf("new-%03d: %v", i, err)
				return
			}
			mu.Lock()
			placed[res.Sandbox.Worker]++
			mu.Unlock()
		}()
	}
	nwg.Wait()
	close(stop)
	wg.Wait()
	testutil.Check(t, errs)
	if placed[workerID("w1")] != 0 || placed[workerID("w2")] == 0 || placed[workerID("w3")] == 0 {
		t.Fatalf("new conversations placed %v: want them all on the new workers, on both", placed)
	}
	t.Logf("%d runs of the old conversations during the scale-out, all on w1; new conversations: %v", runs.Load(), placed)
}

// TestWorkerKilled: `docker kill` of a worker mid-run. Its in-flight runs get worker_lost
// within the heartbeat TTL plus a second, every request gets a reply, and the next runs of its
// conversations succeed on the other worker with recreated: true.
func TestWorkerKilled(t *testing.T) {
	const convs = 6
	f := newFleet(t)
	c, doomed := f.holding("doomed", convs, "k", "survivor")
	ctx := context.Background()

	type outcome struct {
		err error
		at  time.Time
	}
	results := make(chan outcome, convs)
	for i := 0; i < convs; i++ {
		go func() {
			_, err := c.Conversation(fmt.Sprintf("k-%d", i)).Run(ctx, "sleep 60", "bash", nil)
			results <- outcome{err, time.Now()}
		}()
	}
	f.waitRunning("doomed", convs)
	killed := time.Now()
	if err := f.cli.ContainerKill(ctx, doomed.GetContainerID(), "KILL"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < convs; i++ {
		o := <-results
		if !isCode(o.err, protocol.CodeWorkerLost) {
			t.Fatalf("in-flight run: %v, want worker_lost", o.err)
		}
		if d := o.at.Sub(killed); d > heartbeatTTL+time.Second {
			t.Fatalf("worker_lost %s after the kill (heartbeat TTL %s)", d, heartbeatTTL)
		}
	}
	for i := 0; i < convs; i++ {
		res, err := c.Conversation(fmt.Sprintf("k-%d", i)).Run(ctx, "ls", "bash", nil)
		if err != nil || res.Sandbox.Worker != workerID("survivor") || !res.Sandbox.Recreated || res.Output != "" {
			t.Fatalf("k-%d after the kill: %+v %v, want a new empty sandbox on survivor, recreated", i, res, err)
		}
	}
}

// TestWorkerRestart: a worker container stopped (SIGTERM; sandboxes kept) and started again
// with the same id re-adopts its sandboxes: same containers, files intact.
func TestWorkerRestart(t *testing.T) {
	f := newFleet(t)
	f.startNATS()
	f.startDispatcher("d1")
	w := f.startWorker("phoenix")
	c := f.newClient()
	f.waitWorkers(c, "phoenix")
	ctx := context.Background()
	conv := c.Conversation("restart")
	first, err := conv.Run(ctx, "echo survived > f", "bash", nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := 30 * time.Second
	if err := w.Stop(ctx, &stop); err != nil {
		t.Fatal(err)
	}
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	f.waitWorkers(c, "phoenix")
	res, err := conv.Run(ctx, "cat f", "bash", nil)
	if err != nil || res.Output != "survived\n" || res.Sandbox.ID != first.Sandbox.ID || res.Sandbox.Created || res.Sandbox.Recreated {
		t.Fatalf("after the restart: %+v %v, want sandbox %s re-adopted with its file", res, err, first.Sandbox.ID)
	}
	if logs := f.logsOf(w); !regexp.MustCompile(`"transport":"socket"[^\n]*"sandbox re-attached"`).MatchString(logs) {
		t.Fatalf("the restarted worker does not reach its sandbox over the socket again:\n%s", logs)
	}
}

// TestGracefulStop: SIGTERM during runs. The runs finish with their output, no new
// conversation lands on the stopping worker, and it leaves the registry.
func TestGracefulStop(t *testing.T) {
	const inFlight = 4
	f := newFleet(t)
	c, leaving := f.holding("leaving", inFlight, "g", "staying")
	ctx := context.Background()

	var wg sync.WaitGroup
	outs := make([]string, inFlight)
	errs := make([]error, inFlight)
	for i := 0; i < inFlight; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Conversation(fmt.Sprintf("g-%d", i)).Run(ctx, "sleep 3; echo finished", "bash", nil)
			if res != nil {
				outs[i] = res.Output
			}
			errs[i] = err
		}()
	}
	f.waitRunning("leaving", inFlight)
	nc := f.connect()
	stopped := make(chan error, 1)
	go func() {
		timeout := 30 * time.Second
		stopped <- leaving.Stop(ctx, &timeout) // SIGTERM, then wait
	}()
	// While it drains, new conversations go elsewhere.
	testutil.Eventually(t, 10*time.Second, func() error {
		info, err := workerInfo(nc, workerID("leaving"))
		if err != nil {
			return err
		}
		if !info.Draining {
			return errors.New("not draining yet")
		}
		return nil
	})
	for i := 0; i < 5; i++ {
		res, err := c.Conversation(fmt.Sprintf("during-%d", i)).Run(ctx, "true", "bash", nil)
		if err != nil || res.Sandbox.Worker != workerID("staying") {
			t.Fatalf("new conversation during the drain: %+v %v, want it on staying", res, err)
		}
	}
	wg.Wait()
	for i := range outs {
		if errs[i] != nil || outs[i] != "finished\n" {
			t.Fatalf("in-flight run %d: %q %v, want it finished", i, outs[i], errs[i])
		}
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	f.waitWorkers(c, "staying")
}

// TestNetworkCut: a worker cut off the network loses its conversations to another worker while
// it is away; when it comes back it does not serve them twice: the new owner keeps them, and
// the returning worker removes its stale sandboxes.
func TestNetworkCut(t *testing.T) {
	f := newFleet(t)
	f.workerArgs = []string{"--reap-interval", "1s"}
	f.startNATS()
	f.startDispatcher("d1")
	away := f.startWorker("away")
	c := f.newClient()
	f.waitWorkers(c, "away")
	ctx := context.Background()
	conv := c.Conversation("cut")
	if _, err := conv.Run(ctx, "echo old > f", "bash", nil); err != nil {
		t.Fatal(err)
	}
	kept := c.Conversation("stays-home")
	f.startWorker("home")
	f.waitWorkers(c, "away", "home")
	// Placement prefers a worker with a free warm pool sandbox: home's pool fills after it
	// registers; once it has one, the less loaded of the two takes the conversation.
	nc := f.connect()
	testutil.Eventually(t, 30*time.Second, func() error {
		info, err := workerInfo(nc, workerID("home"))
		if err == nil && info.PoolFree == 0 {
			err = errors.New("home's warm pool is still empty")
		}
		return err
	})
	if res, err := kept.Run(ctx, "echo home > f", "bash", nil); err != nil || res.Sandbox.Worker != workerID("home") {
		t.Fatalf("second conversation: %+v %v", res, err)
	}

	if err := f.cli.NetworkDisconnect(ctx, f.net.ID, away.GetContainerID(), true); err != nil {
		t.Fatal(err)
	}
	f.waitWorkers(c, "home") // its registration expires
	res, err := conv.Run(ctx, "ls; echo new > f", "bash", nil)
	if err != nil || res.Sandbox.Worker != workerID("home") || !res.Sandbox.Recreated || res.Output != "" {
		t.Fatalf("run while the worker is away: %+v %v, want a new sandbox on home", res, err)
	}
	if n := len(f.sandboxesOf("away")); n != 1 {
		t.Fatalf("the cut-off worker has %d sandboxes, want its stale one", n)
	}

	if err := f.cli.NetworkConnect(ctx, f.net.ID, away.GetContainerID(), nil); err != nil {
		t.Fatal(err)
	}
	f.waitWorkers(c, "away", "home") // it is back
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := len(f.sandboxesOf("away")); n != 0 {
			return fmt.Errorf("the returning worker still has %d stale sandboxes", n)
		}
		return nil
	})
	res, err = conv.Run(ctx, "cat f", "bash", nil)
	if err != nil || res.Sandbox.Worker != workerID("home") || res.Output != "new\n" {
		t.Fatalf("after the return: %+v %v, want the conversation still on home with its file", res, err)
	}
	// The returning worker takes new conversations again.
	testutil.Eventually(t, 30*time.Second, func() error {
		res, err := c.Conversation(fmt.Sprintf("fresh-%d", time.Now().UnixNano())).Run(ctx, "true", "bash", nil)
		if err != nil {
			return err
		}
		if res.Sandbox.Worker != workerID("away") {
			return fmt.Errorf("new conversation on %s", res.Sandbox.Worker)
		}
		return nil
	})
}

// TestNATSRestart: the NATS server restarts (same storage). Workers and dispatchers reconnect,
// the fleet serves again within 5 s, and no KV state is lost: conversations keep their workers
// and files.
func TestNATSRestart(t *testing.T) {
	f := newFleet(t)
	ns := f.startNATS()
	f.startDispatcher("d1")
	f.startWorker("w1")
	f.startWorker("w2")
	c := f.newClient()
	f.waitWorkers(c, "w1", "w2")
	ctx := context.Background()
	owners := map[string]string{}
	for i := 0; i < 6; i++ {
		conv := fmt.Sprintf("r-%d", i)
		res, err := c.Conversation(conv).Run(ctx, "echo "+conv+" > f", "bash", nil)
		if err != nil {
			t.Fatal(err)
		}
		owners[conv] = res.Sandbox.Worker
	}

	stop := 10
	if err := f.cli.ContainerStop(ctx, ns.GetContainerID(), container.StopOptions{Timeout: &stop}); err != nil {
		t.Fatal(err)
	}
	if err := f.cli.ContainerStart(ctx, ns.GetContainerID(), container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	// Up when it takes connections again (from the host, on its possibly new port).
	testutil.Eventually(t, 30*time.Second, func() error {
		nc, err := nats.Connect(f.natsURL())
		if err != nil {
			return err
		}
		nc.Close()
		return nil
	})
	up := time.Now()
	// The host port may change with the restart: a new client connection.
	c = f.newClient()
	var res *protocol.RunResult
	testutil.Eventually(t, 30*time.Second, func() error {
		var err error
		res, err = c.Conversation("r-0").Run(ctx, "cat f", "bash", &client.RunOptions{})
		return err
	})
	back := time.Since(up)
	if res.Output != "r-0\n" || res.Sandbox.Worker != owners["r-0"] {
		t.Fatalf("r-0 after the restart: %+v, want its file on %s", res, owners["r-0"])
	}
	if back > 5*time.Second {
		t.Fatalf("the fleet served again %s after NATS was up, want within 5 s", back)
	}
	for conv, owner := range owners {
		res, err := c.Conversation(conv).Run(ctx, "cat f", "bash", nil)
		if err != nil || res.Output != conv+"\n" || res.Sandbox.Worker != owner || res.Sandbox.Recreated {
			t.Fatalf("%s after the restart: %+v %v, want its file on %s", conv, res, err, owner)
		}
	}
	t.Logf("served again %s after NATS was up", back.Round(time.Millisecond))
}

// TestNATSClusterNodeLoss: on a 3-node NATS cluster (KV on 3 replicas), one node is killed.
// Workers and dispatchers connected to it reconnect to the others; the fleet serves again within
// 5 s with its KV state: conversations keep their workers and files, new ones are placed.
func TestNATSClusterNodeLoss(t *testing.T) {
	f := newFleet(t)
	f.startNATSCluster()
	services := []*testcontainers.DockerContainer{f.startDispatcher("d1"), f.startDispatcher("d2"), f.startWorker("w1"), f.startWorker("w2")}
	c := f.newClient()
	f.waitWorkers(c, "w1", "w2")
	ctx := context.Background()
	owners := map[string]string{}
	for i := 0; i < 6; i++ {
		conv := fmt.Sprintf("c-%d", i)
		res, err := c.Conversation(conv).Run(ctx, "echo "+conv+" > f", "bash", nil)
		if err != nil {
			t.Fatal(err)
		}
		owners[conv] = res.Sandbox.Worker
	}
	victim := f.nats[0]
	killed := time.Now()
	if err := f.cli.ContainerKill(ctx, victim.GetContainerID(), "KILL"); err != nil {
		t.Fatal(err)
	}
	c = f.newClient() // on the surviving nodes
	testutil.Eventually(t, 30*time.Second, func() error {
		res, err := c.Conversation("c-0").Run(ctx, "cat f", "bash", nil)
		if err != nil {
			return err
		}
		if res.Output != "c-0\n" {
			return fmt.Errorf("c-0: %+v", res)
		}
		return nil
	})
	back := time.Since(killed)
	for conv, owner := range owners {
		res, err := c.Conversation(conv).Run(ctx, "cat f", "bash", nil)
		if err != nil || res.Output != conv+"\n" || res.Sandbox.Worker != owner {
			t.Fatalf("%s after the node loss: %+v %v, want its file on %s", conv, res, err, owner)
		}
	}
	if back > 5*time.Second {
		t.Fatalf("the fleet served again %s after the node was killed, want within 5 s", back)
	}
	// A new conversation needs a write to the affinity bucket, so a leader for its stream: when
	// the killed node led it, JetStream's Raft elects another after its election timeout (4 to
	// 9 s in nats-server); the dispatcher retries meanwhile instead of failing the run.
	if res, err := c.Conversation("after-loss").Run(ctx, "true", "bash", nil); err != nil {
		t.Fatalf("new conversation after the node loss: %+v %v", res, err)
	}
	placed := time.Since(killed)
	for _, svc := range services {
		if !strings.Contains(f.logsOf(svc), "NATS reconnected") {
			t.Fatalf("%s did not reconnect: it was not on the killed node", svc.GetContainerID()[:12])
		}
	}
	t.Logf("existing conversations served again %s after the node all services were on was killed; a new one placed after %s",
		back.Round(time.Millisecond), placed.Round(time.Millisecond))
}
