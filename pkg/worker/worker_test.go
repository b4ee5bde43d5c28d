package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dockerclient "github.com/docker/docker/client"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/affinity"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/registry"
	"github.com/codefleet/codefleet/pkg/worker"
)

func TestMain(m *testing.M) { testutil.MainWithLeftoverCheck(m) }

var subjects = protocol.Subjects{}

// newDocker returns a Docker backend whose containers carry this test run's label.
func newDocker(t testing.TB) *docker.Env { return newDockerSockets(t, "") }

// newDockerSockets is newDocker with the socket directory given (docker.NoSocketDir: none).
func newDockerSockets(t testing.TB, socketDir string) *docker.Env {
	t.Helper()
	testutil.RequireDocker(t)
	env, err := docker.New(docker.Config{Image: testutil.SandboxImage(), AgentPath: testutil.AgentBinary(t), Labels: testutil.TestLabels(), SocketDir: socketDir}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	return env
}

// startWorker starts a worker on its own NATS connection; it is shut down, destroying its
// sandboxes, when the test ends.
func startWorker(t testing.TB, ns *server.Server, env envs.Env, cfg worker.Config) *worker.Worker {
	t.Helper()
	if cfg.ID == "" {
		cfg.ID = "w-" + strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())
		if len(cfg.ID) > 100 {
			cfg.ID = cfg.ID[:100]
		}
	}
	cfg.DestroyOnShutdown = true
	nc := testutil.Connect(t, ns)
	w, err := worker.New(cfg, nc, env, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	t.Cleanup(func() {
		if err := w.Shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return w
}

// client sends requests to one worker as a dispatcher would.
type client struct {
	t      testing.TB
	nc     *nats.Conn
	worker string
}

func newClient(t testing.TB, ns *server.Server, w *worker.Worker) *client {
	return &client{t: t, nc: testutil.Connect(t, ns), worker: w.ID()}
}

func (c *client) rawRun(tenant, conv string, body []byte) *protocol.RunResult {
	c.t.Helper()
	msg := nats.NewMsg(subjects.Worker(c.worker, "run"))
	msg.Header.Set(protocol.HeaderTenant, tenant)
	msg.Header.Set(protocol.HeaderConversation, conv)
	msg.Data = body
	reply, err := c.nc.RequestMsg(msg, time.Minute)
	if err != nil {
		c.t.Fatalf("request: %v", err)
	}
	res, err := protocol.DecodeRunResult(reply.Data)
	if err != nil {
		c.t.Fatalf("decode %q: %v", reply.Data, err)
	}
	return res
}

func (c *client) run(conv string, req protocol.RunRequest) *protocol.RunResult {
	c.t.Helper()
	return c.rawRun("default", conv, protocol.Encode(&req))
}

// ok runs code and fails the test unless it ran (whatever its exit code).
// running sends a run in the background, waits until w is executing it, and returns what waits
// for its result.
func (c *client) running(w *worker.Worker, conv string, req protocol.RunRequest) (wait func() *protocol.RunResult) {
	c.t.Helper()
	done := make(chan *protocol.RunResult, 1)
	go func() { done <- c.run(conv, req) }()
	testutil.Eventually(c.t, 10*time.Second, func() error {
		if w.Info().Running != 1 {
			return fmt.Errorf("the run of %s is not executing yet", conv)
		}
		return nil
	})
	return func() *protocol.RunResult { return <-done }
}

func (c *client) ok(conv, lang, code string) *protocol.RunResult {
	c.t.Helper()
	res := c.run(conv, protocol.RunRequest{Code: code, Language: lang})
	if res.Error != nil {
		c.t.Fatalf("run %q in %s: %v", code, conv, res.Error)
	}
	return res
}

func (c *client) close(conv string) *protocol.CloseResult {
	c.t.Helper()
	msg := nats.NewMsg(subjects.Worker(c.worker, "close"))
	msg.Header.Set(protocol.HeaderTenant, "default")
	msg.Header.Set(protocol.HeaderConversation, conv)
	msg.Data = []byte("{}")
	reply, err := c.nc.RequestMsg(msg, time.Minute)
	if err != nil {
		c.t.Fatalf("close: %v", err)
	}
	res, err := protocol.DecodeCloseResult(reply.Data)
	if err != nil {
		c.t.Fatal(err)
	}
	return res
}

func TestRunsThroughWorker(t *testing.T) {
	ns := testutil.StartNATS(t)
	w := startWorker(t, ns, newDocker(t), worker.Config{})
	c := newClient(t, ns, w)

	first := c.ok("alice", "bash", "echo draft > notes.txt; echo written")
	if first.Output != "written\n" || first.ExitCode != 0 || first.Sandbox == nil || !first.Sandbox.Created ||
		first.Sandbox.Worker != w.ID() || first.Sandbox.Backend != "docker" || first.Sandbox.ID == "" || first.ID == "" {
		t.Fatalf("first run: %+v sandbox %+v", first, first.Sandbox)
	}
	second := c.ok("alice", "python", "print(open('notes.txt').read().strip())")
	if second.Output != "draft\n" || second.Sandbox.Created || second.Sandbox.ID != first.Sandbox.ID {
		t.Fatalf("second run: %+v sandbox %+v, want draft from sandbox %s", second, second.Sandbox, first.Sandbox.ID)
	}
	other := c.ok("bob", "bash", "cat notes.txt")
	if other.ExitCode == 0 || strings.Contains(other.Output, "draft") || other.Sandbox.ID == first.Sandbox.ID {
		t.Fatalf("bob sees alice's files: %+v", other)
	}

	timedOut := c.run("alice", protocol.RunRequest{Code: "print('started', flush=True)\nwhile True: pass", Language: "python", TimeoutMS: 1000})
	if timedOut.Error != nil || !timedOut.TimedOut || timedOut.ExitCode != 124 || timedOut.Output != "started\n" {
		t.Fatalf("timeout: %+v", timedOut)
	}
	if again := c.ok("alice", "bash", "cat notes.txt"); again.Output != "draft\n" {
		t.Fatalf("files after a timeout: %q", again.Output)
	}
	for _, code := range []int{0, 1, 3} {
		if res := c.ok("alice", "bash", fmt.Sprintf("exit %d", code)); res.ExitCode != code {
			t.Errorf("exit %d: got %d", code, res.ExitCode)
		}
	}
	if res := c.ok("alice", "bash", "kill -KILL $$"); res.ExitCode != 137 {
		t.Errorf("killed: got %d, want 137", res.ExitCode)
	}

	closed := c.close("alice")
	if !closed.Closed || closed.Sandbox == nil || closed.Sandbox.ID != first.Sandbox.ID {
		t.Fatalf("close: %+v", closed)
	}
	if again := c.close("alice"); again.Closed || again.Error != nil {
		t.Fatalf("close twice: %+v", again)
	}
	fresh := c.ok("alice", "bash", "ls notes.txt")
	if fresh.ExitCode == 0 || !fresh.Sandbox.Created || fresh.Sandbox.Recreated {
		t.Fatalf("after close, a new sandbox without the old files: %+v %+v", fresh, fresh.Sandbox)
	}
}

// TestDiskLimitError: a run ended by the sandbox's disk limit is a result with the error code
// disk_limit, the output so far and exit code 137; the sandbox and its files stay, and serve
// again once the files are removed.
func TestDiskLimitError(t *testing.T) {
	ns := testutil.StartNATS(t)
	testutil.RequireDocker(t)
	env, err := docker.New(docker.Config{Image: testutil.SandboxImage(), AgentPath: testutil.AgentBinary(t), Labels: testutil.TestLabels(), Disk: 32 << 20}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	w := startWorker(t, ns, env, worker.Config{})
	c := newClient(t, ns, w)
	first := c.ok("filler", "bash", "echo keep > kept.txt")
	res := c.run("filler", protocol.RunRequest{Language: "python", Code: `
import os
print("filling", flush=True)
os.makedirs("d", exist_ok=True)
for i in range(1000):
    with open(f"d/{i}", "wb") as f:
        f.write(os.urandom(1 << 20))
print("done")`})
	if res.Error == nil || res.Error.Code != protocol.CodeDiskLimit || res.ExitCode != 137 || res.Output != "filling\n" {
		t.Fatalf("a run past the disk limit: %+v error %v, want disk_limit, exit 137 and the output so far", res, res.Error)
	}
	t.Logf("disk_limit: %s", res.Error.Message)
	if again := c.ok("filler", "bash", "rm -rf d; cat kept.txt"); again.Output != "keep\n" || again.Sandbox.ID != first.Sandbox.ID {
		t.Fatalf("after the disk limit: %+v %+v, want the same sandbox and its files", again, again.Sandbox)
	}
}

// TestManyConversations: 20 conversations run concurrently on one worker, each in its own
// sandbox, and their runs overlap in time.
func TestManyConversations(t *testing.T) {
	ns := testutil.StartNATS(t)
	w := startWorker(t, ns, newDocker(t), worker.Config{Capacity: 20})
	c := newClient(t, ns, w)
	const n = 20
	var wg sync.WaitGroup
	type span struct{ start, end time.Time }
	spans := make([]span, n)
	sandboxes := make([]string, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conv := fmt.Sprintf("many-%d", i)
			res := c.run(conv, protocol.RunRequest{Language: "bash", Code: fmt.Sprintf("echo %d > me; sleep 0.5", i)})
			if res.Error != nil {
				errs <- fmt.Errorf("%s: %v", conv, res.Error)
				return
			}
			start := time.Now()
			res = c.run(conv, protocol.RunRequest{Language: "bash", Code: "sleep 0.5; cat me"})
			spans[i] = span{start, time.Now()}
			if res.Error != nil || res.Output != fmt.Sprintf("%d\n", i) {
				errs <- fmt.Errorf("%s: got %+v, want its own file", conv, res)
				return
			}
			sandboxes[i] = res.Sandbox.ID
		}()
	}
	wg.Wait()
	testutil.Check(t, errs)
	seen := map[string]bool{}
	for _, id := range sandboxes {
		if seen[id] {
			t.Fatalf("two conversations share sandbox %s", id)
		}
		seen[id] = true
	}
	// The most second-runs in flight at one instant: serial execution would give 1.
	most := 0
	for _, a := range spans {
		k := 0
		for _, b := range spans {
			if !b.start.After(a.start) && b.end.After(a.start) {
				k++
			}
		}
		most = max(most, k)
	}
	if most < 2 {
		t.Fatalf("runs of different conversations never overlapped")
	}
	t.Logf("up to %d runs in flight at once", most)
	if info := w.Info(); info.Load != n {
		t.Fatalf("registration load %d, want %d", info.Load, n)
	}
}

// TestRestartReadopts: a worker restarted with the same id serves its old conversations with
// their files, in the same sandboxes.
func TestRestartReadopts(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	id := "w-restart"
	nc := testutil.Connect(t, ns)
	first, err := worker.New(worker.Config{ID: id}, nc, env, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, nc: testutil.Connect(t, ns), worker: id}
	a := c.ok("keep-a", "bash", "echo alpha > a.txt")
	b := c.ok("keep-b", "bash", "echo beta > b.txt")
	if err := first.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	second := startWorker(t, ns, newDocker(t), worker.Config{ID: id, DestroyOnShutdown: true})
	if second.Info().Load != 2 {
		t.Fatalf("restarted worker holds %d sandboxes, want 2", second.Info().Load)
	}
	ra := c.ok("keep-a", "bash", "cat a.txt")
	rb := c.ok("keep-b", "bash", "cat b.txt")
	if ra.Output != "alpha\n" || rb.Output != "beta\n" || ra.Sandbox.ID != a.Sandbox.ID || rb.Sandbox.ID != b.Sandbox.ID || ra.Sandbox.Created {
		t.Fatalf("after restart: %+v %+v, want the old files in sandboxes %s and %s", ra, rb, a.Sandbox.ID, b.Sandbox.ID)
	}
}

// TestBadRequests: each kind of bad request gets its error code, and the worker keeps serving.
func TestBadRequests(t *testing.T) {
	ns := testutil.StartNATS(t)
	w := startWorker(t, ns, newDocker(t), worker.Config{})
	c := newClient(t, ns, w)
	huge := strings.Repeat("x", protocol.MaxCodeBytes+1)
	cases := []struct {
		name, tenant, conv, body string
		want                     protocol.Code
	}{
		{"malformed JSON", "default", "bad", `{"code": "print(1)", "language": `, protocol.CodeBadRequest},
		{"not an object", "default", "bad", `[1,2,3]`, protocol.CodeBadRequest},
		{"empty body", "default", "bad", ``, protocol.CodeBadRequest},
		{"missing code", "default", "bad", `{"language":"python"}`, protocol.CodeBadRequest},
		{"unknown language", "default", "bad", `{"code":"x","language":"cobol"}`, protocol.CodeUnsupportedLanguage},
		{"huge code", "default", "bad", `{"code":"` + huge + `","language":"python"}`, protocol.CodeBadRequest},
		{"negative timeout", "default", "bad", `{"code":"x","language":"python","timeout_ms":-5}`, protocol.CodeBadRequest},
		{"huge timeout", "default", "bad", `{"code":"x","language":"python","timeout_ms":999999999999}`, protocol.CodeBadRequest},
		{"bad env key", "default", "bad", `{"code":"x","language":"python","env":{"A B":"c"}}`, protocol.CodeBadRequest},
		{"bad request id", "default", "bad", `{"id":"a/b","code":"x","language":"python"}`, protocol.CodeBadRequest},
		{"bad conversation id", "default", "no.dots", `{"code":"x","language":"python"}`, protocol.CodeBadRequest},
		{"missing tenant", "", "bad", `{"code":"x","language":"python"}`, protocol.CodeBadRequest},
		{"image not allowed", "default", "bad", `{"code":"x","language":"python","sandbox":{"image":"evil:latest"}}`, protocol.CodeImageNotAllowed},
		{"other backend", "default", "bad", `{"code":"x","language":"python","sandbox":{"backend":"daytona"}}`, protocol.CodeBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &client{t: t, nc: c.nc, worker: c.worker}
			res := c.rawRun(tc.tenant, tc.conv, []byte(tc.body))
			if res.Error == nil || res.Error.Code != tc.want || res.Error.Message == "" {
				t.Fatalf("got %+v, want error %s", res.Error, tc.want)
			}
		})
	}
	if n := w.Info().Load; n != 0 {
		t.Fatalf("bad requests created %d sandboxes", n)
	}
	if res := c.ok("good", "python", "print(40 + 2)"); res.Output != "42\n" {
		t.Fatalf("after bad requests: %+v", res)
	}
	// A language the image lacks, in an existing sandbox.
	if res := c.run("good", protocol.RunRequest{Code: "x", Language: "cobol"}); res.Error == nil || res.Error.Code != protocol.CodeUnsupportedLanguage {
		t.Fatalf("cobol: %+v", res)
	}
}

// TestFIFOBusyAndRetries uses the fake backend: the order of runs, the bounded queue and
// request-id deduplication are the worker's logic, not the backend's.
func TestFIFOBusyAndRetries(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := fake.New()
	w := startWorker(t, ns, env, worker.Config{QueueDepth: 3})
	c := newClient(t, ns, w)
	c.ok("fifo", "bash", "true")

	// Occupy the conversation, then send 6 more runs in order without waiting.
	inbox := nats.NewInbox()
	replies, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	send := func(id, code string) {
		msg := nats.NewMsg(subjects.Worker(w.ID(), "run"))
		msg.Reply = inbox
		msg.Header.Set(protocol.HeaderTenant, "default")
		msg.Header.Set(protocol.HeaderConversation, "fifo")
		msg.Data = protocol.Encode(&protocol.RunRequest{ID: id, Language: "bash", Code: code})
		if err := c.nc.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	send("slow", "sleep 1; echo slow >> order")
	for i := 0; i < 6; i++ {
		send(fmt.Sprintf("r%d", i), fmt.Sprintf("echo r%d >> order", i))
	}
	var accepted []string
	busy := 0
	for i := 0; i < 7; i++ {
		m, err := replies.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var res protocol.RunResult
		json.Unmarshal(m.Data, &res)
		switch {
		case res.Error != nil && res.Error.Code == protocol.CodeBusy:
			busy++
		case res.Error != nil:
			t.Fatalf("unexpected error %+v", res.Error)
		case res.ID != "slow":
			accepted = append(accepted, res.ID)
		}
	}
	if busy != 3 || len(accepted) != 3 {
		t.Fatalf("got %d busy and %d accepted, want 3 and 3 (queue depth 3)", busy, len(accepted))
	}
	order := c.ok("fifo", "bash", "cat order").Output
	if want := "slow\nr0\nr1\nr2\n"; order != want {
		t.Fatalf("runs ran in order %q, want %q", order, want)
	}

	// A retry with the same id returns the first result and does not run again, even when
	// it arrives while the first is still running.
	var wg sync.WaitGroup
	results := make([]*protocol.RunResult, 3)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.run("fifo", protocol.RunRequest{ID: "once", Language: "bash", Code: "sleep 0.3; echo ran >> count; wc -l < count"})
		}()
	}
	wg.Wait()
	for _, r := range results {
		if r.Error != nil || r.Output != "1\n" || r.ID != "once" {
			t.Fatalf("retries: got %+v, want each to see the single run's output", r)
		}
	}
	if got := c.ok("fifo", "bash", "wc -l < count").Output; got != "1\n" {
		t.Fatalf("the code ran %s times, want once", strings.TrimSpace(got))
	}
	if created := env.Created(); created != 1 {
		t.Fatalf("%d sandboxes created, want 1", created)
	}
}

func TestCapacity(t *testing.T) {
	ns := testutil.StartNATS(t)
	w := startWorker(t, ns, fake.New(), worker.Config{Capacity: 2})
	c := newClient(t, ns, w)
	c.ok("one", "bash", "true")
	c.ok("two", "bash", "true")
	res := c.run("three", protocol.RunRequest{Language: "bash", Code: "true"})
	if res.Error == nil || res.Error.Code != protocol.CodeCapacity {
		t.Fatalf("third conversation: got %+v, want capacity", res)
	}
	c.ok("one", "bash", "true") // existing conversations still run
	if !c.close("two").Closed {
		t.Fatal("close two")
	}
	c.ok("three", "bash", "true")
}

func TestSandboxCreationFailure(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	w := startWorker(t, ns, env, worker.Config{AllowedImages: []string{"codefleet-missing:nope"}, Capacity: 1})
	c := newClient(t, ns, w)
	res := c.run("missing", protocol.RunRequest{Language: "bash", Code: "true", Sandbox: &protocol.SandboxOptions{Image: "codefleet-missing:nope"}})
	if res.Error == nil || res.Error.Code != protocol.CodeSandboxFailed || !strings.Contains(res.Error.Message, "codefleet-missing:nope") {
		t.Fatalf("got %+v, want sandbox_failed naming the image", res.Error)
	}
	// The failed conversation holds no capacity: another one (capacity 1) gets a sandbox.
	c.ok("fine", "bash", "true")
}

// TestSandboxLost: a sandbox removed behind the worker's back fails its run with
// sandbox_failed, and the next run gets a new sandbox marked recreated.
func TestSandboxLost(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	w := startWorker(t, ns, env, worker.Config{})
	c := newClient(t, ns, w)
	first := c.ok("lost", "bash", "echo x > f")
	waitDuring := c.running(w, "lost", protocol.RunRequest{Language: "bash", Code: "echo running; sleep 30"})
	if err := env.Destroy(context.Background(), first.Sandbox.ID); err != nil {
		t.Fatal(err)
	}
	during := waitDuring()
	if during.Error == nil || during.Error.Code != protocol.CodeSandboxFailed {
		t.Fatalf("run in a removed sandbox: %+v", during)
	}
	next := c.ok("lost", "bash", "ls f")
	if !next.Sandbox.Created || !next.Sandbox.Recreated || next.ExitCode == 0 {
		t.Fatalf("next run: %+v %+v, want a recreated sandbox without the old file", next, next.Sandbox)
	}
}

// TestSandboxAgentKilled: a sandbox whose agent died (its container killed from outside, as the
// kernel's OOM killer or an operator would) but whose container is still there is started
// again with its files: the run in flight fails with sandbox_failed saying so, and the next
// run finds the files, in the same sandbox, neither created nor recreated.
func TestSandboxAgentKilled(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	w := startWorker(t, ns, env, worker.Config{})
	c := newClient(t, ns, w)
	first := c.ok("killed", "bash", "echo kept > f")
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	waitDuring := c.running(w, "killed", protocol.RunRequest{Language: "bash", Code: "sleep 30"})
	if err := cli.ContainerKill(context.Background(), first.Sandbox.ID, "KILL"); err != nil {
		t.Fatal(err)
	}
	during := waitDuring()
	if during.Error == nil || during.Error.Code != protocol.CodeSandboxFailed || !strings.Contains(during.Error.Message, "started again with its files") {
		t.Fatalf("run whose agent was killed: %+v", during)
	}
	next := c.ok("killed", "bash", "cat f")
	if next.Output != "kept\n" || next.Sandbox.ID != first.Sandbox.ID || next.Sandbox.Created || next.Sandbox.Recreated {
		t.Fatalf("next run: %+v %+v, want the file in the same sandbox", next, next.Sandbox)
	}
}

func TestReapingAndOrphans(t *testing.T) {
	ns := testutil.StartNATS(t)
	env := newDocker(t)
	w := startWorker(t, ns, env, worker.Config{IdleTTL: 300 * time.Millisecond, ReapInterval: 50 * time.Millisecond, OrphanGrace: 3 * time.Second})
	c := newClient(t, ns, w)
	res := c.ok("idle", "bash", "true")
	// An orphan: a container labelled with this worker that no session owns.
	orphan, err := env.Create(context.Background(), envs.Spec{Tenant: "default", Conversation: "orphan",
		Labels: map[string]string{envs.LabelWorker: w.ID()}})
	if err != nil {
		t.Fatal(err)
	}
	orphan.Close()
	t.Cleanup(func() { env.Destroy(context.Background(), orphan.Info().ID) })
	testutil.Eventually(t, 30*time.Second, func() error {
		list, err := env.List(context.Background(), map[string]string{envs.LabelWorker: w.ID()})
		if err != nil {
			return err
		}
		if len(list) != 0 {
			return fmt.Errorf("%d sandboxes left (idle %s, orphan %s)", len(list), res.Sandbox.ID[:12], orphan.Info().ID[:12])
		}
		return nil
	})
	if n := w.Info().Load; n != 0 {
		t.Fatalf("load %d after reaping", n)
	}
}

// TestReapedConversationsDisowned: a conversation whose sandbox the worker reaps (idle) loses
// its ownership, so its next run is placed as a new conversation's and its tenant's sandbox
// quota counts it out; the ownership of a conversation moved to another worker meanwhile is
// left alone.
func TestReapedConversationsDisowned(t *testing.T) {
	ns := testutil.StartNATS(t)
	ctx := testutil.Context(t)
	store, err := affinity.OpenStore(ctx, testutil.JetStream(t, ns), affinity.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Stop)
	env := fake.New()
	w := startWorker(t, ns, env, worker.Config{IdleTTL: 300 * time.Millisecond, ReapInterval: 50 * time.Millisecond})
	c := newClient(t, ns, w)
	for conv, owner := range map[string]string{"idle": w.ID(), "elsewhere": "other-worker"} {
		if _, _, err := store.Claim(ctx, protocol.DefaultTenant, conv, affinity.Owner{Worker: owner, Backend: fake.Name}); err != nil {
			t.Fatal(err)
		}
		c.ok(conv, "bash", "true")
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := env.Live(); n != 0 {
			return fmt.Errorf("%d sandboxes not reaped yet", n)
		}
		if _, ok, err := store.Get(ctx, protocol.DefaultTenant, "idle"); ok || err != nil {
			return fmt.Errorf("idle still has an owner (%v)", err)
		}
		return nil
	})
	if o, ok, err := store.Get(ctx, protocol.DefaultTenant, "elsewhere"); !ok || err != nil || o.Worker != "other-worker" {
		t.Fatalf("the ownership of a conversation moved away: %+v %v %v, want it left to other-worker", o, ok, err)
	}
}

func TestRegistrationAndGracefulShutdown(t *testing.T) {
	ns := testutil.StartNATS(t)
	nc := testutil.Connect(t, ns)
	env := newDocker(t)
	w, err := worker.New(worker.Config{ID: "w-graceful", DestroyOnShutdown: true}, nc, env, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	readInfo := func() (protocol.WorkerInfo, error) {
		workers, err := registry.List(context.Background(), js, protocol.Subjects{})
		for _, info := range workers {
			if info.ID == "w-graceful" {
				return info, nil
			}
		}
		return protocol.WorkerInfo{}, errors.Join(err, errors.New("w-graceful is not registered"))
	}
	c := &client{t: t, nc: testutil.Connect(t, ns), worker: "w-graceful"}
	c.ok("g", "bash", "true")
	testutil.Eventually(t, 5*time.Second, func() error {
		info, err := readInfo()
		if err != nil {
			return err
		}
		if info.Load != 1 || info.Capacity != worker.DefaultCapacity || info.Draining || len(info.Backends) != 1 || info.Backends[0] != "docker" ||
			!strings.Contains(strings.Join(info.Languages, ","), "python,bash,javascript") {
			return fmt.Errorf("registration %+v", info)
		}
		return nil
	})

	// A run in flight when shutdown starts finishes and is answered.
	waitInflight := c.running(w, "g", protocol.RunRequest{Language: "bash", Code: "sleep 1; echo finished"})
	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- w.Shutdown(context.Background()) }()
	testutil.Eventually(t, 5*time.Second, func() error {
		info, err := readInfo()
		if err == nil && !info.Draining {
			return fmt.Errorf("not draining yet")
		}
		return nil // draining, or already deregistered
	})
	if err := <-shutdownDone; err != nil {
		t.Fatal(err)
	}
	inflight := waitInflight()
	if inflight.Error != nil || inflight.Output != "finished\n" {
		t.Fatalf("in-flight run during shutdown: %+v", inflight)
	}
	if _, err := readInfo(); err == nil {
		t.Fatal("registration still present after shutdown")
	}
	list, _ := env.List(context.Background(), map[string]string{envs.LabelWorker: "w-graceful"})
	if len(list) != 0 {
		t.Fatalf("%d sandboxes left after shutdown with destroy", len(list))
	}
}

// TestDuplicateIDRefused: a second worker started with the id of a live one refuses to start
// (it would re-adopt and fight over the first one's sandboxes), and the first keeps serving; a
// worker whose predecessor died (its registration no longer refreshed) starts without waiting
// out the whole TTL.
func TestDuplicateIDRefused(t *testing.T) {
	ns := testutil.StartNATS(t)
	cfg := worker.Config{ID: "w-dup", HeartbeatInterval: 100 * time.Millisecond, HeartbeatTTL: 10 * time.Second}
	env := fake.New()
	first := startWorker(t, ns, env, cfg)
	c := newClient(t, ns, first)
	c.ok("conv", "bash", "echo one > f")

	second, err := worker.New(cfg, testutil.Connect(t, ns), env, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Start(context.Background()); !errors.Is(err, worker.ErrIDInUse) || !strings.Contains(err.Error(), "own --id") {
		t.Fatalf("second worker with the same id: %v, want ErrIDInUse", err)
	}
	if res := c.ok("conv", "bash", "cat f"); res.Output != "one\n" {
		t.Fatalf("the first worker after the refused second: %+v", res)
	}

	// A worker that died: its connection is gone, its registration stays until the TTL (10 s).
	_, doomedNC := testutil.StartDoomedWorker(t, ns, worker.Config{ID: "w-dead", HeartbeatInterval: 100 * time.Millisecond, HeartbeatTTL: 10 * time.Second}, fake.New())
	doomedNC.Close()
	start := time.Now()
	successor := startWorker(t, ns, fake.New(), worker.Config{ID: "w-dead", HeartbeatInterval: 100 * time.Millisecond, HeartbeatTTL: 10 * time.Second})
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the successor of a dead worker took %s to start, want it well within the 10 s TTL", took)
	}
	newClient(t, ns, successor).ok("conv", "bash", "true")
}

// TestDuplicateIDWaitsForDraining: a worker started while one with its id drains (a graceful
// stop finishing its runs) waits for it to be gone, then starts.
func TestDuplicateIDWaitsForDraining(t *testing.T) {
	ns := testutil.StartNATS(t)
	cfg := worker.Config{ID: "w-drain", HeartbeatInterval: 100 * time.Millisecond, HeartbeatTTL: 10 * time.Second, DestroyOnShutdown: true}
	old, err := worker.New(cfg, testutil.Connect(t, ns), fake.New(), testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, ns, old)
	ran := make(chan *protocol.RunResult, 1)
	go func() { ran <- c.run("conv", protocol.RunRequest{Language: "bash", Code: "sleep 1; date +%s%N"}) }()
	testutil.Eventually(t, 10*time.Second, func() error {
		if old.Info().Running == 0 {
			return errors.New("the run has not started")
		}
		return nil
	})
	go old.Shutdown(context.Background())
	testutil.Eventually(t, 10*time.Second, func() error {
		if !old.Info().Draining {
			return errors.New("not draining yet")
		}
		return nil
	})
	startWorker(t, ns, fake.New(), cfg)
	started := time.Now()
	res := <-ran
	end, err := strconv.ParseInt(strings.TrimSpace(res.Output), 10, 64)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("the draining worker's run: %+v", res)
	}
	if ended := time.Unix(0, end); started.Before(ended) {
		t.Fatalf("the new worker started %s before the draining one's run ended", ended.Sub(started))
	}
}
