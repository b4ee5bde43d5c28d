package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/registry"
)

// upgradeFrom is the last commit whose KV buckets were the constants codefleet-workers and
// codefleet-affinity, before bucket names followed the prefix and sandboxes carried their fleet.
const upgradeFrom = "c178502"

// The bucket names a fleet of the default prefix has had from the start: an upgrade must keep
// them, or the new code would not see the old fleet's workers and conversations.
const (
	oldWorkersBucket  = "codefleet-workers"
	oldAffinityBucket = "codefleet-affinity"
)

// TestUpgradeInPlace: a fleet of the default prefix running the code of upgradeFrom is stopped
// (SIGTERM: the worker keeps its sandboxes) and started again from this tree with the same
// worker id. The new code finds the same buckets, the worker re-adopts the sandbox the old one
// made (which has no fleet label, so it counts as the default fleet's) and the conversation goes
// on in it with its files: neither created nor recreated.
//
// The daemons run as processes on the host, not in containers, so two sets of binaries need no
// images; NATS is in-process. The old worker cannot label its sandboxes with the test run, so
// the test removes them itself.
func TestUpgradeInPlace(t *testing.T) {
	root := repoRoot(t)
	oldBins := buildUpgradeBinaries(t, "old ("+upgradeFrom+")", oldTree(t, root))
	newBins := buildUpgradeBinaries(t, "new (working tree)", root)

	ns := testutil.StartNATS(t)
	nc := testutil.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := dockerClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })

	id := "up-" + testutil.RunID
	// A short directory: the sandboxes' unix sockets live under it, and a socket path is
	// limited to 108 bytes.
	socketDir, err := os.MkdirTemp("", "cfu")
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in first-out: the daemons are killed (registered as they start), then
	// their sandboxes are removed, then the socket directory.
	t.Cleanup(func() { os.RemoveAll(socketDir) })
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
			filters.Arg("label", envs.LabelManagedBy+"="+envs.ManagedByValue), filters.Arg("label", envs.LabelWorker+"="+id))})
		if err != nil {
			t.Errorf("list the sandboxes of %s: %v", id, err)
			return
		}
		for _, c := range list {
			if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
				t.Errorf("remove sandbox %s: %v", c.ID[:12], err)
			}
		}
	})

	// The worker and the dispatcher get the same flags before and after: an upgrade changes
	// the binaries, not the deployment.
	workerArgs := func(agent string) []string {
		return []string{"--nats-url", ns.ClientURL(), "--id", id, "--agent", agent, "--image", testutil.SandboxImage(),
			"--socket-dir", socketDir, "--log-level", "debug"}
	}
	dispatcherArgs := []string{"--nats-url", ns.ClientURL(), "--name", "up-d-" + testutil.RunID}

	// The old fleet. The dispatcher starts once the worker is registered, so that its first
	// view of the registry has the worker and the first run finds somewhere to go.
	oldWorker := startDaemon(t, "old worker", oldBins.worker, workerArgs(oldBins.agent)...)
	waitRegistered(t, js, id, oldWorker)
	oldDispatcher := startDaemon(t, "old dispatcher", oldBins.dispatcher, dispatcherArgs...)
	waitDispatcherProc(t, nc, oldDispatcher)

	c, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	conv := c.Conversation("upgrade-" + testutil.RunID)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first, err := conv.Run(ctx, "echo before-upgrade > kept.txt", "bash", nil)
	if err != nil || first.ExitCode != 0 || first.Sandbox == nil || !first.Sandbox.Created || first.Sandbox.Worker != id {
		t.Fatalf("first run on the old fleet: %s %v, want a new sandbox on %s", describe(first), err, id)
	}
	sandbox := first.Sandbox.ID
	second, err := conv.Run(ctx, "cat kept.txt", "bash", nil)
	if err != nil || second.Output != "before-upgrade\n" || second.Sandbox == nil || second.Sandbox.ID != sandbox || second.Sandbox.Created {
		t.Fatalf("second run on the old fleet: %s %v, want before-upgrade from sandbox %s", describe(second), err, sandbox)
	}
	// The old code made the sandbox without a fleet label: the new one must take it for the
	// default fleet's (envs.InFleet), or it would leave it unadopted.
	info, err := cli.ContainerInspect(ctx, sandbox)
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := info.Config.Labels[envs.LabelFleet]; ok {
		t.Fatalf("the old worker's sandbox has %s=%s: the test must start from a sandbox made before fleet labels", envs.LabelFleet, f)
	}

	// The names the old code used are the names the new code derives from the default prefix.
	fleet := protocol.Subjects{}
	if fleet.WorkersBucket() != oldWorkersBucket || fleet.AffinityBucket() != oldAffinityBucket {
		t.Fatalf("the default prefix names buckets %s and %s, want %s and %s", fleet.WorkersBucket(), fleet.AffinityBucket(), oldWorkersBucket, oldAffinityBucket)
	}
	buckets := kvBuckets(t, js)
	if !slices.Contains(buckets, oldWorkersBucket) || !slices.Contains(buckets, oldAffinityBucket) {
		t.Fatalf("the old fleet's KV buckets are %v, want %s and %s among them", buckets, oldWorkersBucket, oldAffinityBucket)
	}
	key := protocol.Key(protocol.DefaultTenant, conv.ID())
	if owner := affinityOwner(t, js, key); owner != id {
		t.Fatalf("%s %s names worker %q, want %s", oldAffinityBucket, key, owner, id)
	}
	streams := streamNames(t, js)

	// The upgrade: SIGTERM, as a rolling update sends. The worker keeps its sandboxes and
	// removes its registration, so the next worker with its id claims the id at once.
	stopDaemon(t, oldDispatcher)
	stopDaemon(t, oldWorker)
	if infos, err := registry.List(ctx, js, fleet); err != nil || slices.ContainsFunc(infos, func(w protocol.WorkerInfo) bool { return w.ID == id }) {
		t.Fatalf("registrations after the old worker stopped: %+v %v, want %s gone", infos, err, id)
	}

	newWorker := startDaemon(t, "new worker", newBins.worker, workerArgs(newBins.agent)...)
	// The old worker's registration is gone, so the one listed now is the new worker's.
	waitRegistered(t, js, id, newWorker)
	newDispatcher := startDaemon(t, "new dispatcher", newBins.dispatcher, dispatcherArgs...)
	waitDispatcherProc(t, nc, newDispatcher)

	after, err := conv.Run(ctx, "cat kept.txt", "bash", nil)
	if err != nil || after.ExitCode != 0 || after.Output != "before-upgrade\n" || after.Sandbox == nil {
		t.Fatalf("run after the upgrade: %s %v, want before-upgrade from sandbox %s", describe(after), err, sandbox)
	}
	if s := after.Sandbox; s.ID != sandbox || s.Worker != id || s.Created || s.Recreated {
		t.Fatalf("run after the upgrade ran in %+v, want sandbox %s on %s, neither created nor recreated", s, sandbox, id)
	}
	if owner := affinityOwner(t, js, key); owner != id {
		t.Fatalf("after the upgrade %s %s names worker %q, want %s", oldAffinityBucket, key, owner, id)
	}
	// The new worker speaks to the agent the old one put in the sandbox (PID 1 stays the old
	// binary), over the socket as before, not by falling back to the attached stream.
	if !regexp.MustCompile(`"transport":"socket"[^\n]*"sandbox re-attached"`).MatchString(newWorker.logs.String()) {
		t.Fatalf("the new worker does not reach the old sandbox over the socket:\n%s", newWorker.logs.String())
	}
	// The new worker makes a warm pool beside it (the old one had none): its free sandboxes
	// are not counted.
	held, err := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", envs.LabelManagedBy+"="+envs.ManagedByValue), filters.Arg("label", envs.LabelWorker+"="+id))})
	n := 0
	for _, c := range held {
		if !freePoolSandbox(c) {
			n++
		}
	}
	if err != nil || n != 1 {
		t.Fatalf("%d sandboxes of %s after the upgrade (%v), want the one it had", n, id, err)
	}
	// No bucket (or other stream) under a new name: the new code found the old fleet's state
	// where it was instead of starting an empty one beside it.
	if got := streamNames(t, js); !slices.Equal(got, streams) {
		t.Fatalf("JetStream streams after the upgrade %v, before %v: the new code made new ones", got, streams)
	}
	t.Logf("conversation %s kept sandbox %s on %s across the upgrade from %s; KV buckets %v",
		conv.ID(), sandbox[:12], id, upgradeFrom, kvBuckets(t, js))
}

// describe shows a run's result with its sandbox (which %+v prints as a pointer).
func describe(res *protocol.RunResult) string {
	if res == nil {
		return "no result"
	}
	return fmt.Sprintf("output %q, exit code %d, sandbox %+v, error %v", res.Output, res.ExitCode, res.Sandbox, res.Error)
}

// repoRoot is the directory of the module this test belongs to.
func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("go env GOMOD: the test is not run inside the codefleet module")
	}
	return filepath.Dir(gomod)
}

// oldTree extracts the tree of upgradeFrom into a temporary directory with git archive, which
// leaves the repository (and other people's work in it) untouched, unlike a worktree.
func oldTree(t *testing.T, root string) string {
	t.Helper()
	if err := exec.Command("git", "-C", root, "cat-file", "-e", upgradeFrom+"^{commit}").Run(); err != nil {
		t.Fatalf("commit %s is not in %s (%v): this test builds the code of that commit and needs the repository's full history (not a shallow clone or a source archive); fetch it with git fetch --unshallow", upgradeFrom, root, err)
	}
	dir := t.TempDir()
	archive := exec.Command("git", "-C", root, "archive", upgradeFrom)
	untar := exec.Command("tar", "-x", "-C", dir)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	untar.Stdin = pipe
	var archiveErr, untarErr bytes.Buffer
	archive.Stderr, untar.Stderr = &archiveErr, &untarErr
	if err := untar.Start(); err != nil {
		t.Fatalf("tar: %v", err)
	}
	if err := archive.Run(); err != nil {
		untar.Wait()
		t.Fatalf("git archive %s: %v\n%s", upgradeFrom, err, archiveErr.String())
	}
	if err := untar.Wait(); err != nil {
		t.Fatalf("tar -x of %s: %v\n%s", upgradeFrom, err, untarErr.String())
	}
	return dir
}

// upgradeBinaries are one version's daemons and agent.
type upgradeBinaries struct{ worker, dispatcher, agent string }

// buildUpgradeBinaries builds cmd/worker, cmd/dispatcher and cmd/sandbox-agent of the module in
// src, static, with one go build (which shares the packages the three have in common and runs
// at most GOMAXPROCS compilations at once). The flags are TestMain's, so that the working
// tree's build is a cache hit and the old tree's compiles only the packages that changed.
func buildUpgradeBinaries(t *testing.T, what, src string) upgradeBinaries {
	t.Helper()
	out := t.TempDir()
	start := time.Now()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out+"/", "./cmd/worker", "./cmd/dispatcher", "./cmd/sandbox-agent")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the %s binaries: %v\n%s", what, err, b)
	}
	t.Logf("built the %s binaries in %s", what, time.Since(start).Round(time.Millisecond))
	return upgradeBinaries{filepath.Join(out, "worker"), filepath.Join(out, "dispatcher"), filepath.Join(out, "sandbox-agent")}
}

// daemon is a codefleet daemon running as a process of the test.
type daemon struct {
	name string
	cmd  *exec.Cmd
	logs *testutil.SyncBuffer
	done chan struct{} // closed when the process has exited; err is then its exit status
	err  error
}

// exited returns the daemon's exit status, or false while it runs.
func (d *daemon) exited() (error, bool) {
	select {
	case <-d.done:
		return d.err, true
	default:
		return nil, false
	}
}

// startDaemon starts bin with args. When the test ends it is killed if still running, and on
// failure its last logs go to the test log.
func startDaemon(t *testing.T, name, bin string, args ...string) *daemon {
	t.Helper()
	d := &daemon{name: name, cmd: exec.Command(bin, args...), logs: &testutil.SyncBuffer{}, done: make(chan struct{})}
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	d.cmd.Env = daemonEnv()
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start the %s: %v", name, err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		if _, ok := d.exited(); !ok {
			// SIGTERM first: a worker killed outright may leave a warm pool creation the
			// daemon finishes after the sandboxes' cleanup has listed them.
			d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(30 * time.Second):
				d.cmd.Process.Kill()
				<-d.done
			}
		}
		if t.Failed() {
			b := d.logs.String()
			if len(b) > 8<<10 {
				b = b[len(b)-8<<10:]
			}
			t.Logf("--- last logs of the %s ---\n%s", name, b)
		}
	})
	return d
}

// daemonEnv is the test's environment without the variables that configure codefleet's
// daemons, so that only the flags the test gives them count.
func daemonEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "CODEFLEET_") || strings.HasPrefix(k, "DAYTONA_") || k == "NATS_URL" {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// stopDaemon sends SIGTERM and waits for the daemon to exit with status 0.
func stopDaemon(t *testing.T, d *daemon) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to the %s: %v", d.name, err)
	}
	select {
	case <-d.done:
	case <-time.After(time.Minute):
		t.Fatalf("the %s did not exit within a minute of SIGTERM", d.name)
	}
	if d.err != nil {
		t.Fatalf("the %s exited with %v after SIGTERM, want status 0", d.name, d.err)
	}
}

// alive fails the test when d has exited: a daemon that cannot start exits, and waiting on
// would only hide why.
func alive(t *testing.T, d *daemon) {
	t.Helper()
	if err, ok := d.exited(); ok {
		t.Fatalf("the %s exited early: %v", d.name, err)
	}
}

// waitRegistered waits until worker id is in the default fleet's registry.
func waitRegistered(t *testing.T, js jetstream.JetStream, id string, d *daemon) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, func() error {
		alive(t, d)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		infos, err := registry.List(ctx, js, protocol.Subjects{})
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(infos, func(w protocol.WorkerInfo) bool { return w.ID == id }) {
			return fmt.Errorf("worker %s is not registered (registrations: %+v)", id, infos)
		}
		return nil
	})
}

// waitDispatcherProc waits until a dispatcher answers service discovery.
func waitDispatcherProc(t *testing.T, nc *nats.Conn, d *daemon) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, func() error {
		alive(t, d)
		_, err := nc.Request("$SRV.PING.codefleet-dispatcher", nil, time.Second)
		return err
	})
}

// kvBuckets lists the KV buckets (the streams KV_<bucket>), sorted.
func kvBuckets(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	var out []string
	for _, name := range streamNames(t, js) {
		if bucket, ok := strings.CutPrefix(name, "KV_"); ok {
			out = append(out, bucket)
		}
	}
	return out
}

// streamNames lists every JetStream stream (KV buckets are streams KV_<bucket>), sorted.
func streamNames(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l := js.StreamNames(ctx)
	names := sortedNames(l.Name())
	if err := l.Err(); err != nil {
		t.Fatalf("list streams: %v", err)
	}
	return names
}

// sortedNames drains a lister's channel of names.
func sortedNames(ch <-chan string) []string {
	var names []string
	for n := range ch {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// affinityOwner reads the worker a conversation's affinity key names, decoding only the field
// every version writes, so that the old code's values are read as they are.
func affinityOwner(t *testing.T, js jetstream.JetStream, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, oldAffinityBucket)
	if err != nil {
		t.Fatalf("bucket %s: %v", oldAffinityBucket, err)
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		t.Fatalf("%s %s: %v", oldAffinityBucket, key, err)
	}
	var owner struct {
		Worker string `json:"worker"`
	}
	if err := json.Unmarshal(e.Value(), &owner); err != nil {
		t.Fatalf("%s %s = %q: %v", oldAffinityBucket, key, e.Value(), err)
	}
	return owner.Worker
}
