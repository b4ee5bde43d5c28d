package worker_test

import (
	"context"
	"io"
	"sort"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	dockerclient "github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

// BenchmarkWarmRun measures a warm run (sandbox already up) through the worker over NATS,
// beside the same snippet through `docker exec` into the same container (what AG2's
// DockerCodeEnvironment does with docker-py's exec_run), in the same process and run.
//
// */worker/* sends the runs back to back; */worker-paced/* pauses benchPace between them (untimed),
// as a client does while its model thinks, which leaves the sandbox agent the time to start the
// language's next interpreter ahead of the run (internal/agent/warm.go).
//
//	go test -run '^$' -bench WarmRun -benchtime 200x ./pkg/worker/
func BenchmarkWarmRun(b *testing.B) {
	ns := testutil.StartNATS(b)
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()

	snippets := []struct{ lang, code string }{{"bash", "true"}, {"python", "print(1)"}}
	var sandbox string
	// The worker's transport to the sandbox agent: the unix socket it shares with the container
	// (the default when the worker and the daemon share a filesystem), or the attached stream
	// through the daemon (the fallback).
	for _, transport := range []struct{ name, socketDir string }{{"socket", ""}, {"attach", docker.NoSocketDir}} {
		w := startWorker(b, ns, newDockerSockets(b, transport.socketDir), worker.Config{ID: "bench-" + transport.name + "-" + testutil.RunID})
		c := newClient(b, ns, w)
		warm := c.ok("bench", "bash", "true")
		sandbox = warm.Sandbox.ID
		for _, path := range []struct {
			name string
			pace time.Duration
		}{{"worker", 0}, {"worker-paced", benchPace}} {
			for _, sn := range snippets {
				b.Run(transport.name+"/"+path.name+"/"+sn.lang, func(b *testing.B) {
					req := protocol.Encode(&protocol.RunRequest{Language: sn.lang, Code: sn.code})
					lat := make([]time.Duration, 0, b.N)
					for b.Loop() {
						testutil.Pace(b, path.pace)
						start := time.Now()
						res := c.rawRun("default", "bench", req)
						lat = append(lat, time.Since(start))
						if res.Error != nil || res.ExitCode != 0 {
							b.Fatalf("run: %+v", res)
						}
					}
					report(b, lat)
				})
			}
		}
	}
	argv := map[string][]string{"bash": {"bash", "-c", "true"}, "python": {"python3", "-c", "print(1)"}}
	for _, sn := range snippets {
		b.Run("docker-exec/"+sn.lang, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				start := time.Now()
				code := dockerExec(b, cli, sandbox, argv[sn.lang])
				lat = append(lat, time.Since(start))
				if code != 0 {
					b.Fatalf("docker exec exit %d", code)
				}
			}
			report(b, lat)
		})
	}
}

// benchPace is the pause between paced runs: longer than a python start in the sandbox and
// than the agent's wait before it starts the other languages again, far shorter than a model's
// turn.
const benchPace = 100 * time.Millisecond

// dockerExec is exec_run: create an exec, attach to it, read its output to the end and
// inspect it for the exit code.
func dockerExec(b *testing.B, cli *dockerclient.Client, id string, cmd []string) int {
	ctx := context.Background()
	ex, err := cli.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true, WorkingDir: "/workspace"})
	if err != nil {
		b.Fatal(err)
	}
	att, err := cli.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
	if err != nil {
		b.Fatal(err)
	}
	_, err = stdcopy.StdCopy(io.Discard, io.Discard, att.Reader)
	att.Close()
	if err != nil {
		b.Fatal(err)
	}
	insp, err := cli.ContainerExecInspect(ctx, ex.ID)
	if err != nil {
		b.Fatal(err)
	}
	return insp.ExitCode
}

// report adds latency percentiles to the benchmark's output.
func report(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.90), "p90-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
