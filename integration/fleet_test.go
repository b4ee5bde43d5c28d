// Package integration tests codefleet as users deploy it: NATS, dispatchers and workers each in
// their own container on a Docker network the test creates, driven by testcontainers-go, with
// workers starting sandboxes as sibling containers through the host's Docker socket, and
// clients we did not write (the stock nats CLI) beside our own.
//
// The images are built at test time from this repository (static binaries FROM scratch); no
// registry is needed. Ryuk is off: every container and network carries the test run's label and
// is removed in t.Cleanup, and TestMain fails the package if any is left.
package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	mobycontainer "github.com/moby/moby/api/types/container"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	tcnetwork "github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/registry"
)

// labelRun marks every container and network of this test process.
const labelRun = "io.codefleet.it-run"

// runTag is this test process's id, short enough for worker ids.
var runTag = "it" + strings.ReplaceAll(testutil.RunID, "-", "")

// socketDir is shared by the host and every worker container at the same path, as a pod shares
// a volume between the worker and a DinD sidecar: the workers reach their sandboxes' agents
// over unix sockets in it (--socket-dir) instead of the attached stream through the daemon.
var socketDir = filepath.Join(os.TempDir(), "codefleet-"+runTag)

// Images built for this run.
var (
	imageNATS       = "codefleet-it/nats:" + runTag
	imageDispatcher = "codefleet-it/dispatcher:" + runTag
	imageWorker     = "codefleet-it/worker:" + runTag
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("integration: skipped with -short (make test runs it)")
		os.Exit(0)
	}
	// Ryuk's image cannot be pulled here; cleanup is explicit.
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	// Published ports are reached on loopback, never through another address of the host.
	os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	if os.Getenv("CODEFLEET_TEST_LOG") == "" {
		tclog.SetDefault(tclog.NewNoopLogger())
	}
	code := 1
	if err := os.MkdirAll(socketDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
	} else if err := buildImages(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: build images:", err)
	} else {
		code = m.Run()
	}
	if err := leftovers(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		code = 1
	}
	removeImages()
	os.RemoveAll(socketDir) // the sandboxes of killed workers were removed without their worker
	os.Exit(code)
}

func dockerClient() (*client.Client, error) {
	return client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
}

// imagesDockerfile defines the images of the dispatcher and the worker (`make images`).
const imagesDockerfile = "../build/Dockerfile"

// buildImages compiles nats-server (from the nats-server/v2 module), the dispatcher, the worker
// and the sandbox agent as static binaries and wraps each in a FROM scratch image: the
// dispatcher's and the worker's from build/Dockerfile, as `make images` does.
func buildImages() error {
	dir, err := os.MkdirTemp("", "codefleet-it-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bins := map[string]string{
		"nats-server":   "github.com/nats-io/nats-server/v2",
		"dispatcher":    "github.com/codefleet/codefleet/cmd/dispatcher",
		"worker":        "github.com/codefleet/codefleet/cmd/worker",
		"sandbox-agent": "github.com/codefleet/codefleet/cmd/sandbox-agent",
	}
	args := []string{"build", "-trimpath", "-ldflags=-s -w", "-o", dir + "/"}
	for _, pkg := range bins {
		args = append(args, pkg)
	}
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	cli, err := dockerClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	// The dispatcher's and the worker's images are those of `make images`, from the one
	// definition in build/Dockerfile; the NATS server's is the test's own.
	ours, err := os.ReadFile(imagesDockerfile)
	if err != nil {
		return err
	}
	images := []struct {
		tag, dockerfile, target string
		files                   []string
	}{
		{imageNATS, "FROM scratch\nCOPY nats-server /nats-server\nEXPOSE 4222\nENTRYPOINT [\"/nats-server\"]\n", "", []string{"nats-server"}},
		// The classic builder builds every stage before the target: give both all three files.
		{imageDispatcher, string(ours), "dispatcher", []string{"dispatcher", "worker", "sandbox-agent"}},
		{imageWorker, string(ours), "worker", []string{"dispatcher", "worker", "sandbox-agent"}},
	}
	version := "it-" + runTag
	for _, img := range images {
		ctx, err := buildContext(dir, img.dockerfile, img.files)
		if err != nil {
			return err
		}
		resp, err := cli.ImageBuild(context.Background(), ctx, build.ImageBuildOptions{
			Tags: []string{img.tag}, Target: img.target, BuildArgs: map[string]*string{"VERSION": &version},
			Remove: true, ForceRemove: true, Labels: map[string]string{labelRun: testutil.RunID},
		})
		if err != nil {
			return fmt.Errorf("build %s: %w", img.tag, err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if bytes.Contains(out, []byte(`"error"`)) {
			return fmt.Errorf("build %s: %s", img.tag, out)
		}
	}
	return nil
}

// buildContext is a tar of a Dockerfile and files from dir.
func buildContext(dir, dockerfile string, files []string) (io.Reader, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte, mode int64) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data))}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := add("Dockerfile", []byte(dockerfile), 0o644); err != nil {
		return nil, err
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return nil, err
		}
		if err := add(f, data, 0o755); err != nil {
			return nil, err
		}
	}
	return &buf, tw.Close()
}

func removeImages() {
	cli, err := dockerClient()
	if err != nil {
		return
	}
	defer cli.Close()
	for _, img := range []string{imageNATS, imageDispatcher, imageWorker} {
		cli.ImageRemove(context.Background(), img, imageRemoveOptions)
	}
}

// leftovers removes and reports what this test process left: its containers and networks, and
// the sandboxes of its workers (worker ids start with runTag).
func leftovers() error {
	cli, err := dockerClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var left []string
	ours, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", labelRun+"="+testutil.RunID))})
	if err != nil {
		return err
	}
	sandboxes, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", envs.LabelManagedBy+"="+envs.ManagedByValue))})
	if err != nil {
		return err
	}
	for _, c := range sandboxes {
		if strings.HasPrefix(c.Labels[envs.LabelWorker], runTag) {
			ours = append(ours, c)
		}
	}
	for _, c := range ours {
		left = append(left, "container "+strings.Join(c.Names, ","))
		cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
	nets, err := cli.NetworkList(ctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("label", labelRun+"="+testutil.RunID))})
	if err != nil {
		return err
	}
	for _, n := range nets {
		left = append(left, "network "+n.Name)
		cli.NetworkRemove(ctx, n.ID)
	}
	if len(left) > 0 {
		return fmt.Errorf("left behind: %s", strings.Join(left, "; "))
	}
	return nil
}

// fleet is one test's deployment: a network, NATS server(s), dispatchers and workers.
type fleet struct {
	t    *testing.T
	net  *testcontainers.DockerNetwork
	cli  *client.Client
	nats []*testcontainers.DockerContainer
	// workerArgs are extra flags of every worker.
	workerArgs []string
	// inNetwork is the NATS URL(s) the fleet's services connect to; replicas is the KV
	// replica count they create buckets with.
	inNetwork string
	replicas  int

	mu         sync.Mutex
	containers []*testcontainers.DockerContainer
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	ctx := context.Background()
	net, err := tcnetwork.New(ctx, tcnetwork.WithLabels(map[string]string{labelRun: testutil.RunID}))
	if err != nil {
		t.Fatalf("network: %v", err)
	}
	cli, err := dockerClient()
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, net: net, cli: cli, inNetwork: "nats://nats:4222", replicas: 1}
	// Cleanups run last-in first-out: containers go before the network.
	t.Cleanup(func() {
		if err := net.Remove(context.Background()); err != nil {
			t.Errorf("remove network: %v", err)
		}
		cli.Close()
	})
	t.Cleanup(f.removeSandboxes)
	return f
}

// start runs a container of ours on the fleet's network, waiting for log to appear. It is
// removed when the test ends; on failure its logs are printed first.
func (f *fleet) start(name, image string, alias []string, log string, cmd []string, opts ...testcontainers.ContainerCustomizer) *testcontainers.DockerContainer {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts = append([]testcontainers.ContainerCustomizer{
		testcontainers.WithName(name),
		testcontainers.WithLabels(map[string]string{labelRun: testutil.RunID}),
		tcnetwork.WithNetwork(alias, f.net),
		testcontainers.WithCmd(cmd...),
		testcontainers.WithWaitStrategy(wait.ForLog(log).WithStartupTimeout(time.Minute)),
	}, opts...)
	c, err := testcontainers.Run(ctx, image, opts...)
	if c != nil {
		f.t.Cleanup(func() {
			if f.t.Failed() {
				f.dumpLogs(name, c)
			}
			if err := c.Terminate(context.Background()); err != nil {
				f.t.Errorf("terminate %s: %v", name, err)
			}
		})
	}
	if err != nil {
		f.t.Fatalf("start %s: %v", name, err)
	}
	f.mu.Lock()
	f.containers = append(f.containers, c)
	f.mu.Unlock()
	return c
}

func (f *fleet) dumpLogs(name string, c *testcontainers.DockerContainer) {
	logs, err := containerLogs(c)
	if err != nil {
		return
	}
	b := []byte(logs)
	if dir := os.Getenv("CODEFLEET_IT_LOGS"); dir != "" {
		os.WriteFile(filepath.Join(dir, name+".log"), b, 0o644)
	}
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	f.t.Logf("--- last logs of %s ---\n%s", name, b)
}

// startNATS starts a NATS server with JetStream, reachable as nats://nats:4222 in the network
// and from the host on a mapped loopback port.
func (f *fleet) startNATS() *testcontainers.DockerContainer {
	c := f.start(runTag+"-nats", imageNATS, []string{"nats"}, "Server is ready",
		[]string{"-js", "-sd", "/data", "-n", "nats"},
		testcontainers.WithExposedPorts("4222/tcp"))
	f.nats = append(f.nats, c)
	return c
}

// startNATSCluster starts a 3-node NATS cluster with JetStream (n1, n2, n3 in the network);
// the fleet's services connect to all three and keep their KV buckets on 3 replicas.
func (f *fleet) startNATSCluster() {
	routes := "nats://n1:6222,nats://n2:6222,nats://n3:6222"
	for _, n := range []string{"n1", "n2", "n3"} {
		c := f.start(runTag+"-"+n, imageNATS, []string{n}, "Server is ready",
			[]string{"-js", "-sd", "/data", "-n", n, "--cluster_name", "codefleet", "--cluster", "nats://0.0.0.0:6222", "--routes", routes},
			testcontainers.WithExposedPorts("4222/tcp"))
		f.nats = append(f.nats, c)
	}
	// Services are given n1 only: they learn the other nodes from it (as clients of a cluster
	// do) and must fail over to them when n1 goes.
	f.inNetwork = "nats://n1:4222"
	f.replicas = 3
	// JetStream is usable once the cluster has elected its meta leader.
	nc := f.connect()
	testutil.Eventually(f.t, time.Minute, func() error {
		js, err := jetstream.New(nc)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = js.AccountInfo(ctx)
		return err
	})
}

// natsURL is the host's URL(s) of the NATS servers still running, on loopback.
func (f *fleet) natsURL() string {
	f.t.Helper()
	var urls []string
	for _, c := range f.nats {
		if st, err := c.State(context.Background()); err != nil || !st.Running {
			continue
		}
		ep, err := c.PortEndpoint(context.Background(), "4222/tcp", "nats")
		if err != nil {
			f.t.Fatal(err)
		}
		urls = append(urls, ep)
	}
	if len(urls) == 0 {
		return "nats://127.0.0.1:1" // none running: refused, never the default URL
	}
	return strings.Join(urls, ",")
}

// connect opens a host-side NATS connection that reconnects forever.
func (f *fleet) connect() *nats.Conn {
	f.t.Helper()
	nc, err := nats.Connect(f.natsURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(nc.Close)
	return nc
}

// heartbeatTTL is the fleet's: a worker silent this long is dead (the default).
const heartbeatTTL = 3 * time.Second

func (f *fleet) startDispatcher(name string) *testcontainers.DockerContainer {
	return f.start(runTag+"-"+name, imageDispatcher, nil, "dispatcher started",
		[]string{"--nats-url", f.inNetwork, "--name", name, "--heartbeat-ttl", heartbeatTTL.String(), "--kv-replicas", strconv.Itoa(f.replicas)})
}

// workerID is the id of a worker named name in this run.
func workerID(name string) string { return runTag + "-" + name }

// startWorker starts a worker with the host's Docker socket (its sandboxes are siblings) and
// the shared socket directory.
func (f *fleet) startWorker(name string, args ...string) *testcontainers.DockerContainer {
	cmd := append([]string{"--nats-url", f.inNetwork, "--kv-replicas", strconv.Itoa(f.replicas), "--id", workerID(name), "--image", testutil.SandboxImage(),
		"--heartbeat-interval", "500ms", "--heartbeat-ttl", heartbeatTTL.String(), "--capacity", "500", "--log-level", "debug", "--socket-dir", socketDir}, f.workerArgs...)
	return f.start(workerID(name), imageWorker, nil, "worker started", append(cmd, args...),
		testcontainers.WithHostConfigModifier(func(hc *mobycontainer.HostConfig) {
			hc.Binds = append(hc.Binds, "/var/run/docker.sock:/var/run/docker.sock", socketDir+":"+socketDir)
		}))
}

// removeSandboxes destroys the sandboxes of this test's workers (a killed worker leaves them).
func (f *fleet) removeSandboxes() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := f.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", envs.LabelManagedBy+"="+envs.ManagedByValue))})
	if err != nil {
		f.t.Errorf("list sandboxes: %v", err)
		return
	}
	for _, c := range list {
		if strings.HasPrefix(c.Labels[envs.LabelWorker], runTag) {
			f.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
	}
}

// sandboxesOf returns the ids of the sandbox containers of a worker's conversations (those
// claimed from its warm pool included, its free pool sandboxes not).
func (f *fleet) sandboxesOf(name string) []string {
	f.t.Helper()
	list, err := f.cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", envs.LabelManagedBy+"="+envs.ManagedByValue), filters.Arg("label", envs.LabelWorker+"="+workerID(name)))})
	if err != nil {
		f.t.Fatal(err)
	}
	var ids []string
	for _, c := range list {
		if !freePoolSandbox(c) {
			ids = append(ids, c.ID)
		}
	}
	return ids
}

// freePoolSandbox reports whether c is a free warm pool sandbox: made for the pool, and not
// yet renamed after the conversation that claimed it (pkg/envs/docker/pool.go).
func freePoolSandbox(c container.Summary) bool {
	return c.Labels[envs.LabelPool] != "" && len(c.Names) > 0 && strings.HasPrefix(c.Names[0], "/codefleet-pool-")
}

var imageRemoveOptions = image.RemoveOptions{Force: true, PruneChildren: true}

// workers reads the registrations of the fleet's workers (default prefix).
func workers(nc *nats.Conn) ([]protocol.WorkerInfo, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return registry.List(ctx, js, protocol.Subjects{})
}

// liveWorkers lists the ids of the registered workers that serve, sorted: not draining (a
// worker says draining from its id's claim until it serves, and while it stops).
func liveWorkers(nc *nats.Conn) ([]string, error) {
	infos, err := workers(nc)
	var ids []string
	for _, info := range infos {
		if !info.Draining {
			ids = append(ids, info.ID)
		}
	}
	return ids, err
}

// workerInfo reads a worker's registration.
func workerInfo(nc *nats.Conn, id string) (protocol.WorkerInfo, error) {
	infos, err := workers(nc)
	if err != nil {
		return protocol.WorkerInfo{}, err
	}
	for _, info := range infos {
		if info.ID == id {
			return info, nil
		}
	}
	return protocol.WorkerInfo{}, fmt.Errorf("worker %s is not registered", id)
}

// logsOf returns a container's logs so far.
func (f *fleet) logsOf(c *testcontainers.DockerContainer) string {
	f.t.Helper()
	logs, err := containerLogs(c)
	if err != nil {
		f.t.Fatal(err)
	}
	return logs
}

func containerLogs(c *testcontainers.DockerContainer) (string, error) {
	rc, err := c.Logs(context.Background())
	if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return string(b), err
}
