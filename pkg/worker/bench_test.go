package worker_test

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
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

// BenchmarkFirstRun measures the first run of a new conversation (bash true, through the
// worker over NATS, as BenchmarkWarmRun): */pool claims a free warm pool sandbox (the pool is
// waited for between runs, off the clock, with benchPace after it as for paced runs), */no-pool
// waits for a container to be created and started. Each conversation is closed after its run,
// off the clock.
//
//	go test -run '^$' -bench FirstRun -benchtime 30x ./pkg/worker/
func BenchmarkFirstRun(b *testing.B) {
	ns := testutil.StartNATS(b)
	for _, pool := range []int{1, 0} {
		name := "pool"
		if pool == 0 {
			name = "no-pool"
		}
		env := newDocker(b)
		w := startWorker(b, ns, env, worker.Config{ID: "bench-first-" + name + "-" + testutil.RunID, WarmPool: pool})
		c := newClient(b, ns, w)
		b.Run(name, func(b *testing.B) {
			req := protocol.Encode(&protocol.RunRequest{Language: "bash", Code: "true"})
			lat := make([]time.Duration, 0, b.N)
			i := 0
			for b.Loop() {
				b.StopTimer()
				if pool > 0 {
					poolOf(b, env, w, pool)
					time.Sleep(benchPace) // the pool sandbox's interpreters are started, as for a paced run
				}
				conv := fmt.Sprintf("first-%d", i)
				i++
				b.StartTimer()
				start := time.Now()
				res := c.rawRun("default", conv, req)
				lat = append(lat, time.Since(start))
				b.StopTimer()
				if res.Error != nil || res.ExitCode != 0 || !res.Sandbox.Created {
					b.Fatalf("first run: %+v", res)
				}
				c.close(conv)
				b.StartTimer()
			}
			report(b, lat)
		})
	}
}

// BenchmarkBurst sends the first runs of 50 new conversations at once (bash true) to a worker
// with a warm pool of 16 (full when the burst starts) and to one without, at the default 4
// creations at a time; an op is the whole burst, the percentiles are those of the 50 first
// runs, max-ms is the slowest, and with the pool nth-ms is the slowest of the 16 fastest of a
// burst (those that claimed the pool's sandboxes), over the bursts.
//
//	go test -run '^$' -bench Burst -benchtime 3x ./pkg/worker/
func BenchmarkBurst(b *testing.B) {
	const burst = 50
	ns := testutil.StartNATS(b)
	for _, pool := range []int{16, 0} {
		name := fmt.Sprintf("pool-%d", pool)
		if pool == 0 {
			name = "no-pool"
		}
		env := newDocker(b)
		w := startWorker(b, ns, env, worker.Config{ID: "bench-burst-" + name + "-" + testutil.RunID, WarmPool: pool, Capacity: burst + pool})
		c := newClient(b, ns, w)
		b.Run(name, func(b *testing.B) {
			req := protocol.Encode(&protocol.RunRequest{Language: "bash", Code: "true"})
			var lat []time.Duration
			var nth time.Duration
			round := 0
			for b.Loop() {
				b.StopTimer()
				if pool > 0 {
					poolOf(b, env, w, pool)
				}
				round++
				b.StartTimer()
				var mu sync.Mutex
				var wg sync.WaitGroup
				for i := range burst {
					wg.Add(1)
					go func() {
						defer wg.Done()
						start := time.Now()
						res := c.rawRun("default", fmt.Sprintf("burst-%d-%d", round, i), req)
						took := time.Since(start)
						if res.Error != nil || res.ExitCode != 0 {
							b.Errorf("first run: %+v", res)
						}
						mu.Lock()
						lat = append(lat, took)
						mu.Unlock()
					}()
				}
				wg.Wait()
				b.StopTimer()
				if pool > 0 {
					this := slices.Clone(lat[len(lat)-burst:])
					slices.Sort(this)
					nth = max(nth, this[pool-1])
				}
				for i := range burst {
					wg.Add(1)
					go func() {
						defer wg.Done()
						c.close(fmt.Sprintf("burst-%d-%d", round, i))
					}()
				}
				wg.Wait()
				b.StartTimer()
			}
			report(b, lat)
			b.ReportMetric(float64(slices.Max(lat).Microseconds())/1000, "max-ms")
			if pool > 0 {
				b.ReportMetric(float64(nth.Microseconds())/1000, "nth-ms")
			}
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

// BenchmarkLoad sends bash `true` back to back from 20 conversations at once (each waits for
// its reply before its next run) to one worker on real Docker over NATS, everything on this
// machine: b.N runs in all. Reported: runs per second, the latency percentiles, and sandbox-p50
// and sandbox-p99, those of the duration the agent measured inside the sandbox (ms resolution).
//
//	go test -run '^$' -bench Load -benchtime 4000x ./pkg/worker/
func BenchmarkLoad(b *testing.B) {
	const convs = 20
	ns := testutil.StartNATS(b)
	w := startWorker(b, ns, newDocker(b), worker.Config{ID: "bench-load-" + testutil.RunID, Capacity: convs})
	c := newClient(b, ns, w)
	req := protocol.Encode(&protocol.RunRequest{Language: "bash", Code: "true"})
	var wg sync.WaitGroup
	for i := range convs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.rawRun("default", fmt.Sprintf("load-%d", i), req)
		}()
	}
	wg.Wait()
	time.Sleep(benchPace)
	var mu sync.Mutex
	var lat, inside []time.Duration
	b.ResetTimer()
	start := time.Now()
	for i := range convs {
		n := b.N / convs
		if i < b.N%convs {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			conv := fmt.Sprintf("load-%d", i)
			mine := make([]time.Duration, 0, n)
			in := make([]time.Duration, 0, n)
			for range n {
				t0 := time.Now()
				res := c.rawRun("default", conv, req)
				mine = append(mine, time.Since(t0))
				if res.Error != nil || res.ExitCode != 0 {
					b.Errorf("run: %+v", res)
					return
				}
				in = append(in, time.Duration(res.DurationMS)*time.Millisecond)
			}
			mu.Lock()
			lat, inside = append(lat, mine...), append(inside, in...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	took := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(len(lat))/took.Seconds(), "runs/s")
	report(b, lat)
	sort.Slice(inside, func(i, j int) bool { return inside[i] < inside[j] })
	if len(inside) > 0 {
		b.ReportMetric(float64(inside[len(inside)/2].Milliseconds()), "sandbox-p50-ms")
		b.ReportMetric(float64(inside[min(len(inside)-1, len(inside)*99/100)].Milliseconds()), "sandbox-p99-ms")
	}
}
