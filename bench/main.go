// Command bench is `make bench`: codefleet end to end beside AG2's path, measured in one run on
// one Docker daemon and one sandbox image, written as a new section of docs/benchmarks.md.
//
//	go run ./bench                 # the full run, a few minutes
//	go run ./bench -quick -out -   # a short one, printed instead of written
//	go run ./bench -quick -streaming-only -out -   # the phase "streaming and files" alone, short
//
// It builds nats-server, the dispatcher, the worker and the sandbox agent into a temporary
// directory and runs them as separate processes, as a deployment does (one NATS hop to the
// dispatcher, one to the worker, over loopback TCP; the worker's memory is its own). Beside it
// runs bench/dockerpy_peer.py, AG2's DockerSandbox with Debian's python3-docker, and `docker
// exec`. Variants of a phase alternate (rounds, each variant in turn, the order rotating), so a
// noisy moment of this shared machine falls on all of them; only the ratios of one run mean
// much.
//
// The phases: memory of idle sandboxes, one conversation, throughput, first runs, then
// streaming and files (streaming.go): a run's output streamed as it is printed (RunStream
// against docker-py's exec_run(stream=True)) and a file put and got (PutFile and GetFile
// against put_archive and get_archive).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"

	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/envs"
)

type options struct {
	image, out, python string
	rounds             int           // rounds of the one-conversation phase
	fleetRuns          int           // codefleet runs per variant and round
	peerRuns           int           // docker-py and docker CLI runs per variant and round
	pace               time.Duration // untimed pause before each paced run
	convs              int           // conversations of the throughput phase
	window             time.Duration // length of one throughput window
	loadRounds         int
	firstRuns          int           // first runs of new conversations, per variant
	firstGap           time.Duration // pause after each (the pool refills)
	pool               int           // --warm-pool of the main fleet, when the worker has it
	memSandboxes       int
	streamRuns         int  // streamed runs per path
	fileMiB            int  // size of the file put and got
	fileRounds         int  // rounds of the file's put and get
	streamingOnly      bool // only the phase "streaming and files"
}

type snippet struct{ lang, code, label string }

var snippets = []snippet{{"bash", "true", "bash `true`"}, {"python", "print(1)", "python `print(1)`"}}

// The paths compared.
const (
	pathFleet    = "codefleet"
	pathDockerPy = "docker-py exec_run"
	pathCLI      = "docker exec (CLI)"
)

func main() {
	var o options
	quick := false
	flag.StringVar(&o.image, "image", envOr("CODEFLEET_IMAGE", "codefleet-sandbox:bookworm"), "sandbox image, for every path")
	flag.StringVar(&o.out, "out", "docs/benchmarks.md", "file the run's section is inserted into; - prints it instead")
	flag.StringVar(&o.python, "python", "/usr/bin/python3", "Python with Debian's python3-docker")
	flag.IntVar(&o.rounds, "rounds", 10, "rounds of the one-conversation phase")
	flag.IntVar(&o.fleetRuns, "fleet-runs", 20, "codefleet runs per variant and round")
	flag.IntVar(&o.peerRuns, "peer-runs", 10, "docker-py and docker CLI runs per variant and round")
	flag.DurationVar(&o.pace, "pace", 100*time.Millisecond, "untimed pause before each paced run")
	flag.IntVar(&o.convs, "convs", 20, "conversations of the throughput phase")
	flag.DurationVar(&o.window, "window", 5*time.Second, "length of one throughput window")
	flag.IntVar(&o.loadRounds, "load-rounds", 2, "throughput windows per variant")
	flag.IntVar(&o.firstRuns, "first-runs", 20, "first runs of new conversations per variant")
	flag.DurationVar(&o.firstGap, "first-gap", 500*time.Millisecond, "pause after each first run")
	flag.IntVar(&o.pool, "warm-pool", 4, "--warm-pool of the main fleet's worker (when it has the flag)")
	flag.IntVar(&o.memSandboxes, "mem-sandboxes", 20, "new idle sandboxes measured for memory")
	flag.IntVar(&o.streamRuns, "stream-runs", 15, "streamed runs per path (phase \"streaming and files\")")
	flag.IntVar(&o.fileMiB, "file-mib", 50, "MiB of the file put and got (phase \"streaming and files\")")
	flag.IntVar(&o.fileRounds, "file-rounds", 5, "rounds of the file's put and get per path")
	flag.BoolVar(&o.streamingOnly, "streaming-only", false, "run only the phase \"streaming and files\" (one conversation, one AG2 container)")
	flag.BoolVar(&quick, "quick", false, "a short run for development: few iterations of everything")
	flag.Parse()
	if quick { // fewer of everything, but what the command line says
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for name, v := range map[string]string{"rounds": "2", "fleet-runs": "10", "peer-runs": "4", "window": "1s", "load-rounds": "1", "first-runs": "3", "mem-sandboxes": "3", "stream-runs": "4", "file-rounds": "1"} {
			if !set[name] {
				flag.Set(name, v)
			}
		}
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

var began = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %5.1fs: %s\n", time.Since(began).Seconds(), fmt.Sprintf(format, args...))
}

// phase logs the start of a phase and notes the load average then (the other work on the
// machine shows in it).
func (r *results) phase(name, format string, args ...any) {
	logf(format, args...)
	r.machine.phaseLoads = append(r.machine.phaseLoads, name+" "+strings.Fields(loadAverage())[0])
}

// results is everything the report shows.
type results struct {
	machine  machine
	o        options
	pool     bool                         // the worker has --warm-pool
	one      map[string][][]time.Duration // path|mode|lang -> latencies per round
	load     map[string]*loadResult       // path|lang
	first    map[string][]time.Duration   // variant
	mem      memResult
	stream   map[string][]streamRun // path -> its streamed runs
	files    map[string][]fileRound // path -> its rounds of put and get
	duration time.Duration
}

type loadResult struct {
	lat     []time.Duration
	elapsed time.Duration
}

type memResult struct {
	n                           int
	bashOnly, afterPython, ag2  sandboxMem
	pool                        *sandboxMem // the free pool sandboxes; nil without
	worker, dockerd, containerd int64       // growth per sandbox
}

func run(o options) (err error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	signal.Ignore(syscall.SIGPIPE) // output piped to a reader that went away: still clean up
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	r := &results{o: o, one: map[string][][]time.Duration{}, load: map[string]*loadResult{}, first: map[string][]time.Duration{},
		stream: map[string][]streamRun{}, files: map[string][]fileRound{}}
	if r.machine, err = describeMachine(ctx, cli, root); err != nil {
		return err
	}
	if _, _, err := cli.ImageInspectWithRaw(ctx, o.image); err != nil {
		return fmt.Errorf("image %s: %w (make image builds it)", o.image, err)
	}

	dir, err := os.MkdirTemp("", "codefleet-bench-")
	if err != nil {
		return err
	}
	defer func() {
		if err == nil {
			os.RemoveAll(dir)
		} else {
			logf("the daemons' logs are kept in %s", dir)
		}
	}()
	logf("building the fleet's binaries into %s", dir)
	if err := build(root, dir); err != nil {
		return err
	}
	r.pool = hasFlag(filepath.Join(dir, "worker"), "--warm-pool")
	if err := removeLeftovers(ctx, cli); err != nil {
		return err
	}
	ns, url, err := startNATS(dir)
	if err != nil {
		return err
	}
	defer ns.stop(10 * time.Second)

	// The main fleet has the pool when the worker has one; a second fleet (its own prefix, on
	// the same NATS server) has none, for the first runs without it.
	var poolArgs []string
	if r.pool {
		poolArgs = []string{"--warm-pool", strconv.Itoa(o.pool)}
	}
	logf("starting the fleet (worker with warm pool: %v)", r.pool)
	primary, err := startFleet(ctx, dir, url, o.image, "bench", poolArgs...)
	if err != nil {
		return err
	}
	defer primary.stop()
	nopool := primary
	if r.pool && !o.streamingOnly {
		if nopool, err = startFleet(ctx, dir, url, o.image, "benchnopool", "--warm-pool", "0"); err != nil {
			return err
		}
		defer nopool.stop()
	}
	peer, err := startPeer(o.python, filepath.Join(root, "bench", "dockerpy_peer.py"), o.image)
	if err != nil {
		return err
	}
	defer peer.close()

	if o.streamingOnly {
		if _, err := peer.start(1); err != nil {
			return err
		}
		convs, _, err := warmConversations(ctx, primary.client, "conv", 1)
		if err != nil {
			return err
		}
		if err := streamingPhase(ctx, r, convs[0], peer); err != nil {
			return err
		}
		return finish(r, root)
	}

	// Memory first, on a worker that has done nothing yet (its growth per session is clearest).
	r.phase("memory", "memory of %d idle sandboxes", o.memSandboxes)
	if err := measureMemory(ctx, r, cli, primary); err != nil {
		return err
	}
	logf("warming %d conversations on each path", o.convs)
	ag2, err := peer.start(o.convs)
	if err != nil {
		return err
	}
	convs, _, err := warmConversations(ctx, primary.client, "conv", o.convs)
	if err != nil {
		return err
	}

	r.phase("one conversation", "one conversation: %d rounds", o.rounds)
	if err := oneConversation(ctx, r, convs[0], peer, ag2[0]); err != nil {
		return err
	}
	r.phase("throughput", "%d conversations back to back: %d windows of %s per variant", o.convs, o.loadRounds, o.window)
	if err := throughput(ctx, r, convs, peer); err != nil {
		return err
	}
	if err := measureMemoryAG2(ctx, r, cli, ag2); err != nil {
		return err
	}
	r.phase("first runs", "first runs of new conversations: %d per variant", o.firstRuns)
	if err := firstRuns(ctx, r, primary, nopool, peer); err != nil {
		return err
	}
	// Last: the files it leaves in the workspaces would weigh on the memory measured above.
	if err := streamingPhase(ctx, r, convs[0], peer); err != nil {
		return err
	}
	return finish(r, root)
}

func streamingPhase(ctx context.Context, r *results, conv *client.Conversation, peer *peer) error {
	r.phase("streaming and files", "streaming and files: %d streamed runs per path, %d rounds of a %d MiB file", r.o.streamRuns, r.o.fileRounds, r.o.fileMiB)
	return streamingAndFiles(ctx, r, conv, peer)
}

// finish writes the run's section, or prints it.
func finish(r *results, root string) error {
	o := r.o
	r.machine.loadEnd = loadAverage()
	r.duration = time.Since(began)

	section := report(r)
	if o.out == "-" {
		fmt.Print(section)
		return nil
	}
	path := o.out
	if !filepath.IsAbs(path) {
		path = filepath.Join(root, path)
	}
	if err := insertSection(path, section); err != nil {
		return err
	}
	logf("wrote the run's section into %s", path)
	return nil
}

// warmConversations makes n conversations on the fleet at once, their sandboxes created by a
// first run, and returns them with their sandboxes' ids.
func warmConversations(ctx context.Context, c *client.Client, prefix string, n int) ([]*client.Conversation, []string, error) {
	convs := make([]*client.Conversation, n)
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range convs {
		convs[i] = c.Conversation(fmt.Sprintf("%s-%02d", prefix, i))
		wg.Go(func() {
			_, res, err := timedRun(ctx, convs[i], "bash", "true")
			if errs[i] = err; err == nil {
				ids[i] = res.Sandbox.ID
			}
		})
	}
	wg.Wait()
	return convs, ids, errors.Join(errs...)
}

// oneConversation: every path, paced and back to back, bash and python, one conversation each
// (codefleet's conversation, AG2's container 0, docker exec into that container).
func oneConversation(ctx context.Context, r *results, conv *client.Conversation, peer *peer, ag2 string) error {
	type variant struct {
		key string
		run func() ([]time.Duration, error)
	}
	var vs []variant
	for _, mode := range []string{"paced", "back to back"} {
		pace := r.o.pace
		if mode != "paced" {
			pace = 0
		}
		for _, sn := range snippets {
			vs = append(vs,
				variant{key(pathFleet, mode, sn.label), func() ([]time.Duration, error) {
					lat := make([]time.Duration, 0, r.o.fleetRuns)
					for range r.o.fleetRuns {
						time.Sleep(pace)
						d, _, err := timedRun(ctx, conv, sn.lang, sn.code)
						if err != nil {
							return nil, err
						}
						lat = append(lat, d)
					}
					return lat, nil
				}},
				variant{key(pathDockerPy, mode, sn.label), func() ([]time.Duration, error) { return peer.run(0, sn, r.o.peerRuns, pace) }},
				variant{key(pathCLI, mode, sn.label), func() ([]time.Duration, error) { return dockerCLI(ag2, sn, r.o.peerRuns, pace) }},
			)
		}
	}
	for round := range r.o.rounds {
		for i := range vs {
			v := vs[(i+round)%len(vs)]
			lat, err := v.run()
			if err != nil {
				return fmt.Errorf("%s: %w", v.key, err)
			}
			r.one[v.key] = append(r.one[v.key], lat)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// throughput: every conversation sends its next run as soon as its last one answered, for a
// window; codefleet and docker-py alternate, bash and python.
func throughput(ctx context.Context, r *results, convs []*client.Conversation, peer *peer) error {
	add := func(k string, lat []time.Duration, elapsed time.Duration) {
		if r.load[k] == nil {
			r.load[k] = &loadResult{}
		}
		r.load[k].lat = append(r.load[k].lat, lat...)
		r.load[k].elapsed += elapsed
	}
	for round := range r.o.loadRounds {
		for _, sn := range snippets {
			for i := range 2 {
				if (i+round)%2 == 0 {
					lat, elapsed, err := fleetLoad(ctx, convs, sn, r.o.window)
					if err != nil {
						return fmt.Errorf("codefleet load: %w", err)
					}
					add(key(pathFleet, sn.label), lat, elapsed)
				} else {
					lat, elapsed, err := peer.load(len(convs), sn, r.o.window)
					if err != nil {
						return err
					}
					add(key(pathDockerPy, sn.label), lat, elapsed)
				}
			}
		}
	}
	return nil
}

func fleetLoad(ctx context.Context, convs []*client.Conversation, sn snippet, window time.Duration) ([]time.Duration, time.Duration, error) {
	var (
		mu    sync.Mutex
		all   []time.Duration
		first error
		wg    sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(window)
	for _, conv := range convs {
		wg.Go(func() {
			var lat []time.Duration
			var err error
			for err == nil && time.Now().Before(deadline) {
				var d time.Duration
				if d, _, err = timedRun(ctx, conv, sn.lang, sn.code); err == nil {
					lat = append(lat, d)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			all = append(all, lat...)
			if first == nil {
				first = err
			}
		})
	}
	wg.Wait()
	return all, time.Since(start), first
}

// firstRuns: the first run (bash) of a new conversation, which creates or claims its sandbox,
// with the pool, without it and AG2's (container start, then exec_run); closed off the clock,
// then a pause so that the pool refills.
func firstRuns(ctx context.Context, r *results, pooled, nopool *fleet, peer *peer) error {
	type variant struct {
		name string
		run  func(i int) (time.Duration, error)
	}
	onFleet := func(f *fleet, name string) variant {
		return variant{name, func(i int) (time.Duration, error) {
			conv := f.client.Conversation(fmt.Sprintf("first-%d", i))
			d, _, err := timedRun(ctx, conv, "bash", "true")
			if err == nil {
				_, err = conv.Close(ctx)
			}
			return d, err
		}}
	}
	vs := []variant{onFleet(nopool, "codefleet, no pool"), {pathDockerPy, func(int) (time.Duration, error) { return peer.first(snippets[0]) }}}
	if r.pool {
		vs = append(vs, onFleet(pooled, fmt.Sprintf("codefleet, pool of %d", r.o.pool)))
	}
	for i := range r.o.firstRuns {
		for j := range vs {
			v := vs[(i+j)%len(vs)]
			d, err := v.run(i)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			r.first[v.name] = append(r.first[v.name], d)
			time.Sleep(r.o.firstGap)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// measureMemory creates memSandboxes conversations that run bash only, measures them idle, has
// them run python once, and measures them again; and the growth of the worker and the
// daemons' memory.
func measureMemory(ctx context.Context, r *results, cli *dockerclient.Client, f *fleet) error {
	const settle = 3 * time.Second // the agent's spare interpreters start, the pool refills
	time.Sleep(settle)
	worker0, dockerd0, containerd0 := rss(f.worker.pid()), daemonRSS("dockerd"), daemonRSS("containerd")
	n := r.o.memSandboxes
	convs, ids, err := warmConversations(ctx, f.client, "idle", n)
	if err != nil {
		return err
	}
	logf("%d sandboxes made, measuring", n)
	measure := func() (sandboxMem, error) {
		time.Sleep(settle)
		return measureSandboxes(ctx, cli, ids)
	}
	if r.mem.bashOnly, err = measure(); err != nil {
		return err
	}
	if r.mem.pool, err = measurePool(ctx, cli, f.workerID, ids); err != nil {
		return err
	}
	per := func(after, before int64) int64 { return (after - before) / int64(n) }
	r.mem.n = n
	r.mem.worker = per(rss(f.worker.pid()), worker0)
	r.mem.dockerd = per(daemonRSS("dockerd"), dockerd0)
	r.mem.containerd = per(daemonRSS("containerd"), containerd0)
	for _, conv := range convs {
		if _, _, err := timedRun(ctx, conv, "python", "print(1)"); err != nil {
			return err
		}
	}
	r.mem.afterPython, err = measure()
	return err
}

// measureMemoryAG2 measures AG2's containers (sh and sleep, after the runs of the throughput
// phase) the same way.
func measureMemoryAG2(ctx context.Context, r *results, cli *dockerclient.Client, ids []string) (err error) {
	r.mem.ag2, err = measureSandboxes(ctx, cli, ids)
	return err
}

// measurePool measures the worker's free pool sandboxes: its containers that no conversation
// of ours holds. None without a pool.
func measurePool(ctx context.Context, cli *dockerclient.Client, workerID string, held []string) (*sandboxMem, error) {
	list, err := cli.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("label", envs.LabelWorker+"="+workerID))})
	if err != nil {
		return nil, err
	}
	var free []string
	for _, c := range list {
		if !slices.Contains(held, c.ID) {
			free = append(free, c.ID)
		}
	}
	if len(free) == 0 {
		return nil, nil
	}
	m, err := measureSandboxes(ctx, cli, free)
	return &m, err
}

func key(parts ...string) string {
	k := parts[0]
	for _, p := range parts[1:] {
		k += "|" + p
	}
	return k
}
