package docker_test

// A conversation's own snippets must never destroy its sandbox: whatever one did to the working
// directory, the sandbox's pids or its idle interpreters, the next runs start, and every
// failure is a run's result (exit code and output), never an error of Run, which the worker
// takes for a dead sandbox and recreates it (its files lost). See internal/agent/startable.go.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	dockerclient "github.com/docker/docker/client"

	"github.com/codefleet/codefleet/pkg/envs"
)

// hostileSandbox makes a sandbox with the default settings (pids limit 256, 512 MiB, network
// none) that the test destroys.
func hostileSandbox(t *testing.T) envs.Sandbox {
	t.Helper()
	return create(t, newEnv(t, nil), envs.Spec{})
}

// hostileRun runs code with a timeout of 30 s; a Go error (the sandbox taken for dead) fails
// the test.
func hostileRun(t *testing.T, sb envs.Sandbox, lang, code string) envs.Result {
	t.Helper()
	res, err := sb.Run(context.Background(), envs.Exec{Language: lang, Code: code, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("%s %q: the run failed instead of giving a result: %v", lang, code, err)
	}
	t.Logf("%s %q: exit %d timed_out %v in %s: %q", lang, code, res.ExitCode, res.TimedOut, res.Duration, res.Output)
	return res
}

// wantRun runs code and wants exit 0 and an output ending in want (after the agent's own lines,
// which start with "codefleet:").
func wantRun(t *testing.T, sb envs.Sandbox, lang, code, want string) envs.Result {
	t.Helper()
	res := hostileRun(t, sb, lang, code)
	if res.ExitCode != 0 || res.TimedOut || !strings.HasSuffix(res.Output, want) {
		t.Fatalf("%s %q: exit %d timed_out %v output %q, want exit 0 and output ending in %q", lang, code, res.ExitCode, res.TimedOut, res.Output, want)
	}
	if rest := strings.TrimSuffix(res.Output, want); rest != "" && !allNotes(rest) {
		t.Fatalf("%s %q: output %q: before %q there is more than the agent's notes", lang, code, res.Output, want)
	}
	return res
}

// allNotes reports whether s is only lines of the agent's own, each starting with "codefleet:".
func allNotes(s string) bool {
	for _, line := range strings.SplitAfter(s, "\n") {
		if line != "" && !strings.HasPrefix(line, "codefleet: ") {
			return false
		}
	}
	return strings.HasSuffix(s, "\n")
}

// afterward checks what every hostile test ends with: bash and python run, and the file written
// before the hostile snippet is intact.
func afterward(t *testing.T, sb envs.Sandbox) {
	t.Helper()
	wantRun(t, sb, "bash", "echo two", "two\n")
	wantRun(t, sb, "bash", "cat f", "kept\n")
	wantRun(t, sb, "python", "print(open('f').read().strip(), 'py')", "kept py\n")
	wantRun(t, sb, "bash", "echo three", "three\n")
}

// awaitUp waits until the process started by setsid has made the file up: it has left the run's
// process group (which is killed when the run ends), and the file is removed again.
const awaitUp = "while [ ! -e up ]; do sleep 0.01; done; rm up; "

// countSleeps counts the sleep processes of the sandbox (with shell builtins only: it must work
// when no process can be forked).
const countSleeps = `n=0; for c in /proc/[0-9]*/comm; do { read -r x < "$c"; } 2>/dev/null && [ "$x" = sleep ] && n=$((n+1)); done; echo "sleeps=$n"`

// fillPids waits (with builtins only) until the sandbox's pids are nearly all used.
const fillPids = `f=/sys/fs/cgroup/pids/pids.current; [ -e "$f" ] || f=/sys/fs/cgroup/pids.current
for ((i = 0; i < 2000000; i++)); do read -r n < "$f"; [ "$n" -ge 250 ] && break; done; echo "pids=$n"`

func TestHostileChmodWorkspace(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "echo kept > f", "")
	wantRun(t, sb, "bash", "chmod 000 /workspace", "")
	res := wantRun(t, sb, "bash", "echo one", "one\n")
	if !strings.HasPrefix(res.Output, "codefleet: the working directory /workspace had mode 000: restored it to 700") {
		t.Fatalf("the first run after chmod 000 does not say the directory was restored: %q", res.Output)
	}
	afterward(t, sb)
	wantRun(t, sb, "bash", "stat -c %a /workspace", "700\n")
	// Again, with a python run first (no warm bash that still has its cwd).
	wantRun(t, sb, "bash", "chmod 000 /workspace", "")
	res = wantRun(t, sb, "python", "import os; print(sorted(os.listdir('.')))", "['f']\n")
	if !strings.HasPrefix(res.Output, "codefleet: the working directory /workspace had mode 000") {
		t.Fatalf("the python run after chmod 000 does not say the directory was restored: %q", res.Output)
	}
	afterward(t, sb)
}

func TestHostileChmodRecursive(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "echo kept > f", "")
	hostileRun(t, sb, "bash", "chmod -R 000 .") // fails inside (the directory cannot be read once 000): its business
	res := wantRun(t, sb, "bash", "echo one", "one\n")
	if !strings.HasPrefix(res.Output, "codefleet: the working directory /workspace had mode 000") {
		t.Fatalf("the first run after chmod -R 000 does not say the directory was restored: %q", res.Output)
	}
	afterward(t, sb)
}

func TestHostileChmodSubdir(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "echo kept > f; mkdir sub; echo g > sub/g; chmod 000 sub", "")
	res := hostileRun(t, sb, "bash", "cd sub && cat g")
	if res.ExitCode == 0 || res.TimedOut || !strings.Contains(res.Output, "sub: Permission denied") || strings.Contains(res.Output, "codefleet:") {
		t.Fatalf("cd into a directory of mode 000: exit %d output %q, want the shell's own error and a non-zero exit", res.ExitCode, res.Output)
	}
	res = hostileRun(t, sb, "python", "import os; os.listdir('sub')")
	if res.ExitCode == 0 || !strings.Contains(res.Output, "PermissionError") {
		t.Fatalf("python listing a directory of mode 000: exit %d output %q, want a PermissionError", res.ExitCode, res.Output)
	}
	afterward(t, sb)
	wantRun(t, sb, "bash", "stat -c %a sub", "0\n") // the snippet's own business: left as it was
}

func TestHostileSetsidLeftovers(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "echo kept > f", "")
	// The spawning run itself runs out of pids (bash retries its forks, then gives up): that
	// is its own doing, and its result says so.
	hostileRun(t, sb, "bash", "for i in $(seq 300); do setsid sleep 1000 & done 2>/dev/null; "+fillPids)
	res := wantRun(t, sb, "bash", "echo one", "one\n")
	if !strings.HasPrefix(res.Output, "codefleet: the sandbox was nearly out of processes") || !strings.Contains(res.Output, "processes that earlier runs left running") {
		t.Fatalf("the run after the leftovers does not say they were ended: %q", res.Output)
	}
	wantRun(t, sb, "bash", countSleeps, "sleeps=0\n")
	afterward(t, sb)
}

// TestHostileSetsidServer: what escaped its run lives on while pids remain (a snippet may start
// a server for the next runs).
func TestHostileSetsidServer(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "setsid bash -c 'touch up; exec sleep 1000' >/dev/null 2>&1 < /dev/null & "+awaitUp+"echo started", "started\n")
	wantRun(t, sb, "bash", countSleeps, "sleeps=1\n")
	wantRun(t, sb, "python", "print('py')", "py\n")
	wantRun(t, sb, "bash", countSleeps, "sleeps=1\n")
}

func TestHostileRespawningLeftover(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "echo kept > f", "")
	hostileRun(t, sb, "bash", "setsid bash -c 'while :; do sleep 1000 & done' >/dev/null 2>&1 < /dev/null & "+fillPids)
	res := wantRun(t, sb, "bash", "echo one", "one\n")
	if !strings.HasPrefix(res.Output, "codefleet: the sandbox was nearly out of processes") {
		t.Fatalf("the run after the respawning leftover does not say it was ended: %q", res.Output)
	}
	wantRun(t, sb, "bash", countSleeps, "sleeps=0\n")
	afterward(t, sb)
}

func TestHostileRespawningLeftoverThenPython(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "echo kept > f", "")
	hostileRun(t, sb, "bash", "setsid bash -c 'while :; do sleep 1000 & done' >/dev/null 2>&1 < /dev/null & "+fillPids)
	res := wantRun(t, sb, "python", "print('py')", "py\n")
	if !strings.HasPrefix(res.Output, "codefleet: ") {
		t.Fatalf("the python run after the respawning leftover does not say it was ended: %q", res.Output)
	}
	afterward(t, sb)
}

func TestHostileStopAll(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "echo kept > f", "")
	wantRun(t, sb, "python", "print(0)", "0\n") // python has run: its interpreter is kept warm too
	hostileRun(t, sb, "bash", "kill -STOP -1")
	wantRun(t, sb, "bash", "echo r1", "r1\n") // not handed a stopped bash: no timeout
	wantRun(t, sb, "python", "print('p1')", "p1\n")
	afterward(t, sb)
}

// stopIdlePython stops the idle python interpreters of the sandbox, found by their command line
// (the bootstrap's), and prints how many it stopped; it waits up to 2 s for one to be there (it
// may still be starting).
const stopIdlePython = `for ((i = 0; i < 20; i++)); do n=0; for p in /proc/[0-9]*; do IFS= read -r -d '' a0 < "$p/cmdline" 2>/dev/null || continue; case "$a0" in */python3*) kill -STOP "${p#/proc/}" && n=$((n+1));; esac; done; [ $n -gt 0 ] && break; sleep 0.1; done; echo "stopped=$n"`

func TestHostileStoppedPython(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "echo kept > f", "")
	wantRun(t, sb, "python", "print(0)", "0\n")
	if res := hostileRun(t, sb, "bash", stopIdlePython); res.ExitCode != 0 || res.Output == "stopped=0\n" {
		t.Fatalf("no idle python was stopped: exit %d output %q", res.ExitCode, res.Output)
	}
	wantRun(t, sb, "python", "print('p1')", "p1\n")

	// A stop that comes after the run has ended, and so hits the interpreter started for the
	// next python run: that one is found stopped when the run comes, and the run starts cold.
	wantRun(t, sb, "bash", "setsid bash -c 'touch up; sleep 1; "+strings.ReplaceAll(stopIdlePython, "'", `'\''`)+" > stopped' >/dev/null 2>&1 < /dev/null & "+awaitUp, "")
	time.Sleep(2 * time.Second)
	wantRun(t, sb, "python", "print('p2')", "p2\n")
	if res := hostileRun(t, sb, "bash", "cat stopped"); res.ExitCode != 0 || !strings.HasPrefix(res.Output, "stopped=") || res.Output == "stopped=0\n" {
		t.Fatalf("the delayed stop found no idle python to stop: exit %d output %q", res.ExitCode, res.Output)
	}
	afterward(t, sb)
}

// TestHostileSignalsToAgent: the agent runs as the snippets' user, and a snippet can send it
// any signal (`kill 1`, `kill -HUP 1`, `kill -SEGV 1`, ...): none ends it, and the snippets'
// own processes still start with every signal at its default (none ignored or blocked).
func TestHostileSignalsToAgent(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "echo kept > f", "")
	wantRun(t, sb, "bash", `grep -E '^Sig(Ign|Blk)' /proc/self/status | tr -d '\t'`, "SigBlk:0000000000000000\nSigIgn:0000000000000000\n")
	wantRun(t, sb, "python", `print([l.split()[1] for l in open('/proc/self/status') if l.startswith('SigBlk')])`, "['0000000000000000']\n")
	for sig := 1; sig <= 64; sig++ {
		code := fmt.Sprintf("kill -%d 1; echo sent %d", sig, sig)
		res := hostileRun(t, sb, "bash", code)
		if res.ExitCode != 0 || res.Output != fmt.Sprintf("sent %d\n", sig) {
			t.Errorf("%q: exit %d output %q", code, res.ExitCode, res.Output)
		}
	}
	wantRun(t, sb, "bash", `grep -E '^Sig(Ign|Blk)' /proc/self/status | tr -d '\t'`, "SigBlk:0000000000000000\nSigIgn:0000000000000000\n")
	wantRun(t, sb, "bash", "yes | head -1", "y\n") // SIGPIPE at its default: no complaint from yes
	afterward(t, sb)
}

// TestHostileSignalFromLeftover: a process that left its run and signals the agent later, when
// no run is going on, does not end it either.
func TestHostileSignalFromLeftover(t *testing.T) {
	sb := hostileSandbox(t)
	wantRun(t, sb, "bash", "echo kept > f", "")
	wantRun(t, sb, "bash", "setsid bash -c 'touch up; sleep 2; kill 1; kill -INT 1; kill -HUP 1' >/dev/null 2>&1 </dev/null & "+awaitUp, "")
	time.Sleep(3 * time.Second)
	afterward(t, sb)
}

// TestHostileStopSandbox: `docker stop` of an idle sandbox ends the agent at once (exit 0);
// with a process of a snippet still there (which could have sent the SIGTERM), the agent stays,
// and the stop ends it with SIGKILL after its grace period.
func TestHostileStopSandbox(t *testing.T) {
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	stopped := func(sb envs.Sandbox) int {
		t.Helper()
		grace := 2
		if err := cli.ContainerStop(context.Background(), sb.Info().ID, container.StopOptions{Timeout: &grace}); err != nil {
			t.Fatal(err)
		}
		insp, err := cli.ContainerInspect(context.Background(), sb.Info().ID)
		if err != nil {
			t.Fatal(err)
		}
		return insp.State.ExitCode
	}
	idle := hostileSandbox(t)
	wantRun(t, idle, "bash", "echo kept > f", "")
	time.Sleep(1500 * time.Millisecond) // quiet: no run for a second
	if code := stopped(idle); code != 0 {
		t.Fatalf("docker stop of an idle sandbox: exit code %d, want 0 (the agent ended on SIGTERM)", code)
	}
	busy := hostileSandbox(t)
	wantRun(t, busy, "bash", "setsid bash -c 'touch up; exec sleep 1000' >/dev/null 2>&1 </dev/null & "+awaitUp+"echo started", "started\n")
	time.Sleep(1500 * time.Millisecond)
	if code := stopped(busy); code != 137 {
		t.Fatalf("docker stop of a sandbox with a snippet's process: exit code %d, want 137 (SIGKILL after the grace period)", code)
	}
}
