package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	dockerclient "github.com/docker/docker/client"
)

// machine is what the section says of where and when it ran.
type machine struct {
	cpu, kernel, docker, driver string
	cores                       int
	loadStart, loadEnd          string
	phaseLoads                  []string // each phase and the 1-minute load average at its start
	start                       time.Time
	commit                      string
}

func describeMachine(ctx context.Context, cli *dockerclient.Client, root string) (machine, error) {
	m := machine{cores: runtime.NumCPU(), start: time.Now().UTC(), loadStart: loadAverage(), cpu: "unknown CPU"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				m.cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	info, err := cli.Info(ctx)
	if err != nil {
		return m, fmt.Errorf("docker: %w", err)
	}
	m.docker, m.driver = info.ServerVersion, info.Driver
	m.commit = "unknown commit"
	if out, err := git(root, "rev-parse", "--short", "HEAD"); err == nil {
		m.commit = out
		if st, err := git(root, "status", "--porcelain", "--untracked-files=no"); err == nil && st != "" {
			m.commit += fmt.Sprintf(" with %d uncommitted changed files in the work tree", len(strings.Split(st, "\n")))
		}
	}
	return m, nil
}

func git(root string, args ...string) (string, error) {
	out, err := exec.Command("git", append([]string{"-C", root}, args...)...).Output()
	return strings.TrimSpace(string(out)), err
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// moduleRoot is the directory of go.mod, from the working directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for ; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		if dir == filepath.Dir(dir) {
			return "", errors.New("run it inside the repository (no go.mod found)")
		}
	}
}

// The part of docs/benchmarks.md that the bench owns: a heading, what it holds, and a marker
// under which every run inserts its section, above the runs before it.
const (
	latestHeading = "## Latest runs (make bench)"
	latestIntro   = "Each `make bench` (`go run ./bench`, bench/main.go) inserts one section here, newest first, and\n" +
		"leaves the earlier ones below it as history: compare figures within one section only (the\n" +
		"machine is shared and noisy, and each run measures every path side by side). The sections after\n" +
		"this one are older measurements made with the Go benchmarks (`make gobench`)."
	newestMarker = "<!-- make bench inserts the newest run below this line -->"
)

// insertSection puts section under the marker of path, adding the heading and the marker
// before the file's first second-level heading if they are not there yet.
func insertSection(path, section string) error {
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	doc := string(b)
	if !strings.Contains(doc, newestMarker) {
		block := latestHeading + "\n\n" + latestIntro + "\n\n" + newestMarker + "\n\n"
		if i := strings.Index(doc, "\n## "); i >= 0 {
			doc = doc[:i+1] + block + doc[i+1:]
		} else if doc = strings.TrimRight(doc, "\n"); doc != "" {
			doc += "\n\n" + block
		} else {
			doc = block
		}
	}
	i := strings.Index(doc, newestMarker) + len(newestMarker) + 1
	doc = doc[:i] + "\n" + strings.TrimRight(section, "\n") + "\n" + doc[i:]
	return os.WriteFile(path, []byte(doc), 0o644)
}

// report renders the run's section.
func report(r *results) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m, o := r.machine, r.o
	p("### %s UTC, commit %s\n\n", m.start.Format("2006-01-02 15:04"), strings.Fields(m.commit)[0])
	p("- Machine: %s, %d cores, kernel %s, Docker %s, storage driver %s.\n", m.cpu, m.cores, m.kernel, m.docker, m.driver)
	p("- Load average (1, 5, 15 min): %s at the start, %s at the end; 1 min at each phase's start: %s (the bench's own load is in these).\n", m.loadStart, m.loadEnd, strings.Join(m.phaseLoads, ", "))
	p("- Started %s UTC, took %s; commit %s; image `%s` for every path.\n\n", m.start.Format("2006-01-02 15:04:05"), r.duration.Round(time.Second), m.commit, o.image)
	if o.streamingOnly {
		p("Only the phase \"streaming and files\" ran (`-streaming-only`).\n\n")
	}
	p("How it was measured:\n\n")
	p("- codefleet: nats-server, a dispatcher and a worker, each its own process built from the work tree, as a deployment runs them; the Go client (pkg/client) over loopback TCP. ")
	if r.pool && o.streamingOnly {
		p("The worker has `--warm-pool %d`.\n", o.pool)
	} else if r.pool {
		p("The worker has `--warm-pool %d`; a second fleet (another prefix, same server) has `--warm-pool 0`, for the first runs without a pool.\n", o.pool)
	} else {
		p("No pool yet: the worker has no `--warm-pool`.\n")
	}
	p("- docker-py: bench/dockerpy_peer.py with Debian's python3-docker calls `exec_run` as AG2's DockerSandbox does (`asyncio.to_thread`, output decoded and stripped), into containers started as it starts them (`sh -c 'mkdir -p /workspace && sleep infinity'`, network none, 512m, auto-remove, the image's user, one docker client each). Python runs as `python3 -c` (the image has no `python`); its executor has a thread per conversation (asyncio's default would allow 6 on 2 CPUs).\n")
	if o.streamingOnly {
		p("- Streaming and files: codefleet's RunStream, PutFile and GetFile (pkg/client, through the dispatcher) in one warm conversation; docker-py as AG2's DockerSandbox.stream, put_file and get_file do them, in one of its containers; an untimed pause of %s before each streamed run. Percentiles: nearest rank.\n\n", o.pace)
		r.streamTable(p)
		r.filesTable(p)
		return b.String()
	}
	p("- docker exec (CLI): the CLI process timed whole, into AG2's first container.\n")
	p("- Paced: an untimed pause of %s before each run, as a client waits while its model thinks; back to back: none.\n", o.pace)
	p("- Variants alternate: %d rounds, in each every variant runs %d (codefleet) or %d (peers) times, the order rotating; throughput windows alternate codefleet and docker-py; first runs rotate. Percentiles: nearest rank over all runs of a variant; \"rounds' p50s\" is the range of the rounds' own medians, the run's noise.\n", o.rounds, o.fleetRuns, o.peerRuns)
	p("- Streaming and files, last (the files would weigh on the memory measured before): codefleet's RunStream, PutFile and GetFile (pkg/client, through the dispatcher) in the conversation of the one-conversation phase; docker-py as AG2's DockerSandbox.stream, put_file and get_file do them, in AG2's first container; an untimed pause of %s before each streamed run.\n\n", o.pace)
	r.targets(p)
	r.oneTable(p)
	r.loadTable(p)
	r.firstTable(p)
	r.memTable(p)
	p("\n")
	r.streamTable(p)
	r.filesTable(p)
	return b.String()
}

type printer func(format string, args ...any)

func (r *results) oneSummary(path, mode string, sn snippet) summary {
	return summarize(flatten(r.one[key(path, mode, sn.label)]))
}

func (r *results) targets(p printer) {
	met := func(ok bool) string {
		if ok {
			return "**met**"
		}
		return "not met"
	}
	bash, py := r.oneSummary(pathFleet, "paced", snippets[0]), r.oneSummary(pathFleet, "paced", snippets[1])
	p("Targets of issue 14:\n\n| target | measured | |\n| --- | --- | --- |\n")
	p("| paced warm bash p50 < 3 ms, whole fleet | %s ms | %s |\n", ms(bash.p50), met(bash.p50 < 3*time.Millisecond))
	p("| paced python p50 < 8 ms, whole fleet | %s ms | %s |\n", ms(py.p50), met(py.p50 < 8*time.Millisecond))
	if l := r.load[key(pathFleet, snippets[0].label)]; l != nil {
		s := summarize(l.lat)
		rate := float64(len(l.lat)) / l.elapsed.Seconds()
		p("| %d conversations back to back, bash: p99 <= 3 × p50 | p50 %s, p99 %s ms (%s) | %s |\n", r.o.convs, ms(s.p50), ms(s.p99), ratio(float64(s.p99), float64(s.p50)), met(s.p99 <= 3*s.p50))
		p("| %d conversations back to back: >= 500 bash runs/s | %.0f runs/s | %s |\n", r.o.convs, rate, met(rate >= 500))
	}
	if first, ok := r.first[fmt.Sprintf("codefleet, pool of %d", r.o.pool)]; ok && r.pool {
		s := summarize(first)
		bound := 2*bash.p50 + 20*time.Millisecond
		p("| first run with a pool sandbox free: p50 <= 2 × paced bash + 20 ms (%s ms) | %s ms | %s |\n", ms(bound), ms(s.p50), met(s.p50 <= bound))
		p("| first run with a pool sandbox free: p99 < 100 ms | %s ms | %s |\n", ms(s.p99), met(s.p99 < 100*time.Millisecond))
	} else {
		p("| first run with a pool sandbox free: p50 <= 2 × paced bash + 20 ms, p99 < 100 ms | no pool yet | not measured |\n")
	}
	mem := r.mem.bashOnly.noCache
	p("| memory per idle sandbox < 8 MiB (its cgroup less inactive file cache, as `docker stats`; bash only) | %s MiB | %s |\n", mib(mem), met(mem < 8<<20))
	p("\nNot measured here: the burst of 50 new conversations with a pool of 16.\n\n")
}

func (r *results) oneTable(p printer) {
	p("One conversation, warm (its sandbox or container already up), in ms:\n\n")
	p("| path | runs | snippet | n | p50 | p90 | p99 | rounds' p50s | docker-py p50 ÷ this p50 |\n")
	p("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, mode := range []string{"paced", "back to back"} {
		for _, sn := range snippets {
			ref := r.oneSummary(pathDockerPy, mode, sn)
			for _, path := range []string{pathFleet, pathDockerPy, pathCLI} {
				s := r.oneSummary(path, mode, sn)
				lo, hi := roundMedians(r.one[key(path, mode, sn.label)])
				name := path
				if path == pathFleet {
					name = "**codefleet**"
				}
				p("| %s | %s | %s | %d | %s | %s | %s | %s–%s | %s |\n", name, mode, sn.label, s.n, ms(s.p50), ms(s.p90), ms(s.p99), ms(lo), ms(hi), ratio(float64(ref.p50), float64(s.p50)))
			}
		}
	}
	p("\n")
}

func (r *results) loadTable(p printer) {
	p("%d conversations back to back (each sends its next run when its last one answered; %d windows of\n", r.o.convs, r.o.loadRounds)
	p("%s per variant; codefleet: one client connection, %d goroutines; docker-py: one process, %d\n", r.o.window, r.o.convs, r.o.convs)
	p("threads, a container each):\n\n")
	p("| path | snippet | runs | runs/s | p50 | p90 | p99 | p99 ÷ p50 | runs/s ÷ docker-py's |\n")
	p("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, sn := range snippets {
		ref := r.load[key(pathDockerPy, sn.label)]
		for _, path := range []string{pathFleet, pathDockerPy} {
			l := r.load[key(path, sn.label)]
			if l == nil || ref == nil {
				continue
			}
			s := summarize(l.lat)
			rate, refRate := float64(len(l.lat))/l.elapsed.Seconds(), float64(len(ref.lat))/ref.elapsed.Seconds()
			p("| %s | %s | %d | %.0f | %s | %s | %s | %s | %s |\n", path, sn.label, s.n, rate, ms(s.p50), ms(s.p90), ms(s.p99), ratio(float64(s.p99), float64(s.p50)), ratio(rate, refRate))
		}
	}
	p("\n")
}

func (r *results) firstTable(p printer) {
	p("First run of a new conversation (bash `true`, the time to a result: sandbox created or\n")
	p("claimed, then the run; AG2's: `containers.run`, then `exec_run`), each followed by a close off the\n")
	p("clock and a pause of %s; the variants alternate:\n\n", r.o.firstGap)
	p("| path | n | p50 | p90 | p99 | docker-py p50 ÷ this p50 |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	ref := summarize(r.first[pathDockerPy])
	names := []string{fmt.Sprintf("codefleet, pool of %d", r.o.pool), "codefleet, no pool", pathDockerPy}
	for _, name := range names {
		lat, ok := r.first[name]
		if !ok {
			p("| codefleet, with a pool | | no pool yet | | | |\n")
			continue
		}
		s := summarize(lat)
		p("| %s | %d | %s | %s | %s | %s |\n", name, s.n, ms(s.p50), ms(s.p90), ms(s.p99), ratio(float64(ref.p50), float64(s.p50)))
	}
	p("\n")
}

func (r *results) memTable(p printer) {
	mm := r.mem
	p("Memory per idle sandbox, MiB, median over %d new sandboxes (measured first, 3 s after their\n", mm.n)
	p("last run), over the worker's free pool sandboxes at the same time, and over AG2's %d containers\n", r.o.convs)
	p("after the throughput runs:\n\n")
	p("| | codefleet, bash only | codefleet, after python ran | codefleet, free pool sandbox | AG2's container |\n")
	p("| --- | ---: | ---: | ---: | ---: |\n")
	row := func(name string, f func(sandboxMem) int64) {
		pool := "no pool"
		if mm.pool != nil {
			pool = mib(f(*mm.pool))
		}
		p("| %s | %s | %s | %s | %s |\n", name, mib(f(mm.bashOnly)), mib(f(mm.afterPython)), pool, mib(f(mm.ag2)))
	}
	row("the container's memory cgroup (usage)", func(s sandboxMem) int64 { return s.usage })
	row("the same less inactive file cache (`docker stats`)", func(s sandboxMem) int64 { return s.noCache })
	row("RSS of PID 1 (the agent; AG2's `sh`)", func(s sandboxMem) int64 { return s.agent })
	row("host: PSS of its containerd shim", func(s sandboxMem) int64 { return s.shim })
	if r.machine.driver == "fuse-overlayfs" {
		row("host: PSS of its fuse-overlayfs", func(s sandboxMem) int64 { return s.fuse })
	}
	p("\nHost side, growth per sandbox while the %d were made (RSS after − before, ÷ %d; noisy, the\n", mm.n, mm.n)
	p("Go runtimes and the daemons grow in steps): worker %s MiB, dockerd %s MiB, containerd %s MiB.\n", mib(mm.worker), mib(mm.dockerd), mib(mm.containerd))
}
