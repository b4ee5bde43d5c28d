package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/internal/testutil"
)

// TestStartFailureIsAResult: a run whose process cannot be started is answered with a result
// (exit 126, a "codefleet:" line saying what is wrong and how to recover), not an error frame,
// which the worker would take for a dead sandbox; the same with warm interpreters and cold.
func TestStartFailureIsAResult(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "workspace")
	if err := os.WriteFile(notDir, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An interpreter that cannot be executed: a script whose #! interpreter is missing.
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "bash"), []byte("#!/nonexistent/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	goodDir := t.TempDir()
	for _, tc := range []struct {
		name, dir, lang, code string
		environ               []string
		want                  string
	}{
		{"workdir is a file", notDir, "bash", "echo hi", nil,
			"codefleet: cannot start bash in " + notDir + ": not a directory (the working directory " + notDir + " is not a directory: move it away)\n"},
		{"workdir is a file, python", notDir, "python", "print(1)", nil,
			"codefleet: cannot start python3 in " + notDir + ": not a directory ("},
		{"code file cannot be written", notDir, "javascript", "console.log(1)", nil,
			"codefleet: cannot write the code to " + notDir + "/.codefleet-"},
		{"interpreter cannot run", goodDir, "bash", "echo hi", []string{"PATH=" + bin, "HOME=" + goodDir},
			"codefleet: cannot start bash in " + goodDir + ": no such file or directory (the interpreter cannot be run: check its file and its permissions)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			environ := tc.environ
			if environ == nil {
				environ = os.Environ()
			}
			if tc.lang == "javascript" {
				if _, err := lookPath("node", environ); err != nil {
					t.Skip("no node")
				}
			}
			check := func(how string, r wire.Response) {
				t.Helper()
				if r.Op != wire.OpResult || r.ExitCode != 126 || !strings.HasPrefix(r.Output, tc.want) || strings.Count(r.Output, "\n") != 1 {
					t.Fatalf("%s: got %+v, want a result with exit 126 and output starting %q (one line)", how, r, tc.want)
				}
			}
			s := serve(t, New(tc.dir, environ, testReaper))
			check("served", s.call(wire.Request{Op: wire.OpRun, ID: "r1", Language: tc.lang, Code: tc.code}))
			check("served again", s.call(wire.Request{Op: wire.OpRun, ID: "r2", Language: tc.lang, Code: tc.code}))
			check("cold", *New(tc.dir, environ, testReaper).Run(context.Background(), &wire.Request{Op: wire.OpRun, ID: "c", Language: tc.lang, Code: tc.code}))
		})
	}
}

// TestStoppedWarmNotHanded: an idle interpreter a snippet stopped (kill -STOP) is not handed
// the next run, which would then never start: it is discarded, and the run succeeds at once.
func TestStoppedWarmNotHanded(t *testing.T) {
	s, _ := startWarmAgent(t)
	for _, lang := range []string{"bash", "python"} {
		t.Run(lang, func(t *testing.T) {
			var stopped []int
			testutil.Eventually(t, 10*time.Second, func() error {
				stopped = idlePids(s.a, lang)
				if want := s.a.warm.Load().want(lang); len(stopped) < want {
					return fmt.Errorf("%d idle %s, want %d", len(stopped), lang, want)
				}
				return nil
			})
			for _, pid := range stopped {
				if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, 10*time.Second, func() error {
				for _, pid := range stopped {
					if info, ok := readProc(pid); !ok || info.state != 'T' {
						return fmt.Errorf("%d not stopped yet (%c)", pid, info.state)
					}
				}
				return nil
			})
			code := map[string]string{"bash": "echo $$", "python": "import os; print(os.getpid())"}[lang]
			start := time.Now()
			r := s.call(wire.Request{Op: wire.OpRun, ID: "after-stop", Language: lang, Code: code, TimeoutMS: 20000})
			if r.Op != wire.OpResult || r.ExitCode != 0 || r.TimedOut || slices.Contains(stopped, atoiLine(r.Output)) {
				t.Fatalf("run after the idle %s interpreters %v were stopped: %+v (after %s)", lang, stopped, r, time.Since(start))
			}
			if r.Output == "" || strings.Contains(r.Output, "codefleet:") {
				t.Fatalf("output %q, want the pid only", r.Output)
			}
			// The stopped ones are gone, not kept.
			testutil.Eventually(t, 10*time.Second, func() error {
				for _, pid := range stopped {
					if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) && !isZombie(pid) {
						return fmt.Errorf("stopped interpreter %d still there (%v)", pid, err)
					}
					if slices.Contains(idlePids(s.a, lang), pid) {
						return fmt.Errorf("stopped interpreter %d still idle in the pool", pid)
					}
				}
				return nil
			})
		})
	}
	// The pool is whole again: the next runs are warm.
	for _, lang := range []string{"bash", "python"} {
		if r := runWarm(t, s, wire.Request{Op: wire.OpRun, ID: "warm-again", Language: lang, Code: map[string]string{"bash": "echo ok", "python": "print('ok')"}[lang]}); r.Output != "ok\n" {
			t.Fatalf("%s after the discard: %+v", lang, r)
		}
	}
}

func isZombie(pid int) bool {
	info, ok := readProc(pid)
	return ok && info.state == 'Z'
}

// TestWorkdirRestored: the working directory a snippet made unusable (mode 000) or removed is
// made usable again before the next run, whose output says so first.
func TestWorkdirRestored(t *testing.T) {
	s, _ := startWarmAgent(t)
	dir := s.a.Dir
	for _, lang := range []string{"bash", "python", "bash"} {
		if err := os.Chmod(dir, 0o000); err != nil {
			t.Fatal(err)
		}
		code := map[string]string{"bash": "echo hi > f; cat f", "python": "open('f', 'w').write('hi\\n'); print(open('f').read(), end='')"}[lang]
		r := s.call(wire.Request{Op: wire.OpRun, ID: "after-chmod", Language: lang, Code: code})
		want := "codefleet: the working directory " + dir + " had mode 000: restored it to 700 (u+rwx)\nhi\n"
		if r.Op != wire.OpResult || r.ExitCode != 0 || r.Output != want {
			t.Fatalf("%s after chmod 000: got %+v, want output %q", lang, r, want)
		}
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("mode after the run: %v %v", fi.Mode(), err)
		}
	}
	// Other bits are kept.
	os.Chmod(dir, 0o055)
	if r := s.call(wire.Request{Op: wire.OpRun, ID: "keep-bits", Language: "bash", Code: "true"}); !strings.HasPrefix(r.Output, "codefleet: the working directory "+dir+" had mode 055: restored it to 755 (u+rwx)\n") {
		t.Fatalf("got %+v", r)
	}
	// A usable directory: nothing said.
	if r := s.call(wire.Request{Op: wire.OpRun, ID: "fine", Language: "bash", Code: "echo fine"}); r.Output != "fine\n" {
		t.Fatalf("got %+v", r)
	}

	// Removed: made again, and the idle interpreters (still in the removed one) are not used.
	waitWarm(t, s.a, "bash")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	r := s.call(wire.Request{Op: wire.OpRun, ID: "after-rm", Language: "bash", Code: "touch made && ls"})
	if want := "codefleet: the working directory " + dir + " was gone: made it again (empty)\nmade\n"; r.ExitCode != 0 || r.Output != want {
		t.Fatalf("after rm -rf of the working directory: got %+v, want output %q", r, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "made")); err != nil {
		t.Fatalf("the run did not work in the new directory: %v", err)
	}
	// Replaced by another directory (the old one moved away, so the new one has another
	// inode, which only root can do to /workspace): a cold start finds it by its path, and the
	// idle interpreters, still in the old one, are discarded.
	waitWarm(t, s.a, "bash")
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(dir, 0o755)
	cold := map[string]string{"PATH": "/usr/local/bin:/usr/bin:/bin"} // not warmable
	if r := s.call(wire.Request{Op: wire.OpRun, ID: "after-replace", Language: "bash", Code: "touch again && ls", Env: cold}); r.ExitCode != 0 || r.Output != "again\n" {
		t.Fatalf("after the working directory was replaced: got %+v", r)
	}
	if r := runWarm(t, s, wire.Request{Op: wire.OpRun, ID: "warm-after-replace", Language: "bash", Code: "touch warm && ls"}); r.ExitCode != 0 || r.Output != "again\nwarm\n" {
		t.Fatalf("warm run after the working directory was replaced: got %+v", r)
	}
}

// BenchmarkPrepare measures the checks before a warm run (as while Serve runs: the working
// directory kept open), and the state read of the interpreter handed the run.
func BenchmarkPrepare(b *testing.B) {
	serving := func(a *Agent) *Agent {
		a.warm.Store(newPool(a)) // no interpreter is started
		b.Cleanup(a.closeDir)
		return a
	}
	a := serving(New(b.TempDir(), os.Environ(), testReaper))
	b.Run("dir", func(b *testing.B) {
		for b.Loop() {
			a.prepare()
		}
	})
	pids := b.TempDir()
	os.WriteFile(filepath.Join(pids, "pids.max"), []byte("256\n"), 0o644)
	os.WriteFile(filepath.Join(pids, "pids.current"), []byte("20\n"), 0o644)
	a = serving(New(b.TempDir(), os.Environ(), testReaper))
	a.EndLeftovers, a.pidsDirs = true, []string{pids}
	b.Run("dir+pids", func(b *testing.B) {
		for b.Loop() {
			a.prepare()
		}
	})
	// In a container: the sandbox's own pids cgroup.
	a = serving(New(b.TempDir(), os.Environ(), testReaper))
	a.EndLeftovers = true
	if _, _, ok := a.pidsUse(); ok {
		b.Run("dir+cgroup", func(b *testing.B) {
			for b.Loop() {
				a.prepare()
			}
		})
	}
	b.Run("warm state", func(b *testing.B) {
		fd, err := syscall.Open("/proc/self/stat", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer syscall.Close(fd)
		w := &warmProc{process: process{pid: os.Getpid(), exited: make(chan syscall.WaitStatus)}, stat: fd}
		for b.Loop() {
			if w.unfit() {
				b.Fatal("this process is unfit")
			}
		}
	})
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		line string
		want procInfo
		ok   bool
	}{
		{"1 (sandbox-agent) S 0 1 1 0 -1 4194560", procInfo{'S', 0, 1}, true},
		{"42 (a) b) c) T 7 42 42 0", procInfo{'T', 7, 42}, true},
		{"43 (x y z) Z 1 40 40", procInfo{'Z', 1, 40}, true},
		{"44 (cut", procInfo{}, false},
		{"45 (x) R", procInfo{}, false},
	} {
		got, ok := parseStat([]byte(tc.line))
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("parseStat(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

// TestLeftovers: what the agent ends are the processes below it that none of the processes it
// keeps (runs going on, idle interpreters) leads to.
func TestLeftovers(t *testing.T) {
	const self = 1
	procs := map[int]procInfo{
		1:  {'S', 0, 1},   // the agent
		10: {'S', 1, 10},  // an idle interpreter (kept)
		20: {'S', 1, 20},  // a run going on (kept)
		21: {'S', 20, 20}, // its child
		22: {'S', 21, 22}, // its grandchild, setsid: still below the run
		30: {'S', 1, 30},  // setsid by a run that ended: re-parented to the agent
		31: {'T', 30, 30}, // its child, stopped
		32: {'Z', 1, 32},  // a zombie: dead already
		40: {'S', 0, 40},  // started by docker exec: not below the agent
		41: {'S', 40, 41},
		50: {'S', 1, 20}, // orphan in a kept run's process group
	}
	got := leftovers(procs, self, map[int]bool{10: true, 20: true})
	slices.Sort(got)
	if want := []int{30, 31}; !slices.Equal(got, want) {
		t.Fatalf("leftovers = %v, want %v", got, want)
	}
}

// The leftovers are ended only by an agent that is PID 1 of its sandbox, or, here, a test
// agent in a process of its own that inherits its orphans (a child subreaper): the helper below
// runs it, on fds 3 (requests) and 4 (responses), with a fake pids cgroup.
const leftoverHelperEnv = "CODEFLEET_AGENT_LEFTOVER_HELPER"

func TestLeftoverHelper(t *testing.T) {
	pidsDir := os.Getenv(leftoverHelperEnv)
	if pidsDir == "" {
		t.Skip("helper process of TestEndLeftovers")
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		t.Fatal(e)
	}
	// The first start with each value of the variable FAIL_FORK fails for want of pids.
	var mu sync.Mutex
	failed := map[string]bool{}
	forkExec = func(argv0 string, argv []string, attr *syscall.ProcAttr) (int, error) {
		for _, kv := range attr.Env {
			if strings.HasPrefix(kv, "FAIL_FORK=") {
				mu.Lock()
				first := !failed[kv] || kv == "FAIL_FORK=always"
				failed[kv] = true
				mu.Unlock()
				if first {
					return 0, syscall.EAGAIN
				}
			}
		}
		return syscall.ForkExec(argv0, argv, attr)
	}
	a := New(os.Getenv("CODEFLEET_AGENT_DIR"), os.Environ(), NewReaper())
	a.EndLeftovers, a.pidsDirs = true, []string{pidsDir}
	a.Serve(context.Background(), os.NewFile(3, "in"), os.NewFile(4, "out"))
}

// TestEndLeftovers: processes that escaped their run live on between runs; they are ended when
// the sandbox is nearly out of pids before a run, or when a run's process cannot be created for
// want of pids (and the start is tried again); what a run going on started is never ended; the
// run's output says how many were ended and why.
func TestEndLeftovers(t *testing.T) {
	pidsDir, dir := t.TempDir(), t.TempDir()
	setPids := func(cur int) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(pidsDir, "pids.current"), []byte(strconv.Itoa(cur)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(pidsDir, "pids.max"), []byte("100\n"), 0o644)
	setPids(10)

	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeftoverHelper$")
	cmd.Env = append(os.Environ(), leftoverHelperEnv+"="+pidsDir, "CODEFLEET_AGENT_DIR="+dir)
	cmd.ExtraFiles = []*os.File{inR, outW}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	var sleeps []int // every leftover made, ended by the end of the test
	t.Cleanup(func() {
		inW.Close()
		cmd.Wait()
		for _, pid := range sleeps {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	out := bufio.NewReader(outR)
	send := func(req wire.Request) {
		t.Helper()
		req.Op = wire.OpRun
		if req.TimeoutMS == 0 {
			req.TimeoutMS = 20000
		}
		b, _ := json.Marshal(req)
		if _, err := inW.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
	}
	answers := map[string]wire.Response{}
	wait := func(id string) wire.Response {
		t.Helper()
		for {
			if r, ok := answers[id]; ok {
				delete(answers, id)
				return r
			}
			line, err := out.ReadBytes('\n')
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			var r wire.Response
			json.Unmarshal(line, &r)
			answers[r.ID] = r
		}
	}
	call := func(req wire.Request) wire.Response {
		t.Helper()
		send(req)
		return wait(req.ID)
	}
	// Leftovers: n processes that left their run (setsid) and outlive it; their pids.
	leave := func(n int) []int {
		t.Helper()
		r := call(wire.Request{ID: "leave", Language: "bash", Code: fmt.Sprintf(`for ((i = 0; i < %d; i++)); do setsid bash -c 'echo $$ > up.$BASHPID; exec sleep 1000' >/dev/null 2>&1 </dev/null & done
			while [ $(ls up.* 2>/dev/null | wc -l) -lt %d ]; do sleep 0.01; done; cat up.*; rm up.*`, n, n)})
		var pids []int
		for _, f := range strings.Fields(r.Output) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("leave: %+v", r)
			}
			pids = append(pids, pid)
		}
		sleeps = append(sleeps, pids...)
		return pids
	}
	alive := func(pids []int) (n int) {
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil && !isZombie(pid) {
				n++
			}
		}
		return n
	}

	// Pids to spare: leftovers live on (a snippet may start a server for later runs).
	left := leave(5)
	if r := call(wire.Request{ID: "fine", Language: "bash", Code: "echo fine"}); r.Output != "fine\n" || alive(left) != 5 {
		t.Fatalf("with pids to spare: %+v, %d of 5 leftovers alive", r, alive(left))
	}

	// Nearly out of pids (fewer than 8 free of 100) before a run: they are ended, and said so.
	setPids(93)
	r := call(wire.Request{ID: "low", Language: "bash", Code: "echo low"})
	if want := "codefleet: the sandbox was nearly out of processes (93 of its 100 in use): ended 5 processes that earlier runs left running\nlow\n"; r.Output != want || r.ExitCode != 0 {
		t.Fatalf("nearly out of pids: got %+v, want output %q", r, want)
	}
	if n := alive(left); n != 0 {
		t.Fatalf("%d leftovers alive after they were ended", n)
	}
	setPids(10)

	// A run going on keeps what it started, though it left its process group, and the run
	// itself goes on; only the leftovers of runs that ended go.
	left = leave(2)
	send(wire.Request{ID: "long", Language: "bash",
		Code: `setsid sleep 1000 >/dev/null 2>&1 </dev/null & echo $! > mine; while [ -e mine ]; do sleep 0.01; done; echo long done`})
	var mine int
	testutil.Eventually(t, 10*time.Second, func() error {
		b, err := os.ReadFile(filepath.Join(dir, "mine"))
		if mine, _ = strconv.Atoi(strings.TrimSpace(string(b))); err != nil || mine == 0 {
			return fmt.Errorf("the long run has not started its process yet (%v)", err)
		}
		return nil
	})
	sleeps = append(sleeps, mine)
	setPids(99)
	r = call(wire.Request{ID: "beside", Language: "bash", Code: "echo beside"})
	if !strings.Contains(r.Output, "ended 2 processes") || !strings.HasSuffix(r.Output, "beside\n") {
		t.Fatalf("run beside a run going on: %+v", r)
	}
	if alive(left) != 0 || alive([]int{mine}) != 1 {
		t.Fatalf("after the leftovers were ended beside a run going on: %d leftovers alive, the run's own process alive: %v", alive(left), alive([]int{mine}) == 1)
	}
	os.Remove(filepath.Join(dir, "mine"))
	if r := wait("long"); r.Output != "long done\n" || r.ExitCode != 0 {
		t.Fatalf("the run going on: %+v", r)
	}
	setPids(10)

	// The run's process cannot be created for want of pids: the leftovers are ended and it
	// starts all the same. The process the long run started is one now: that run has ended.
	left = append(leave(3), mine)
	r = call(wire.Request{ID: "eagain", Language: "bash", Code: "echo started", Env: map[string]string{"FAIL_FORK": "1", "PATH": os.Getenv("PATH")}})
	if want := "codefleet: could not start bash (resource temporarily unavailable): ended 4 processes that earlier runs left running, and tried again\nstarted\n"; r.Output != want || r.ExitCode != 0 {
		t.Fatalf("start failing for want of pids: got %+v, want output %q", r, want)
	}
	if n := alive(left); n != 0 {
		t.Fatalf("%d leftovers alive after they were ended", n)
	}
	// With no leftover, the idle interpreters make room (they are started again afterwards).
	r = call(wire.Request{ID: "eagain2", Language: "bash", Code: "echo started", Env: map[string]string{"FAIL_FORK": "2", "PATH": os.Getenv("PATH")}})
	if !regexp.MustCompile(`^codefleet: could not start bash \(resource temporarily unavailable\): ended [1-9][0-9]* process(es)? \(idle interpreters kept for the next runs\), and tried again\nstarted\n$`).MatchString(r.Output) || r.ExitCode != 0 {
		t.Fatalf("start failing for want of pids, no leftovers: got %+v", r)
	}
	// Failing again: the run's result says why, and how to recover.
	r = call(wire.Request{ID: "eagain3", Language: "bash", Code: "echo started", Env: map[string]string{"FAIL_FORK": "always", "PATH": os.Getenv("PATH")}})
	if want := "codefleet: cannot start bash in " + dir + ": resource temporarily unavailable (the sandbox is out of processes: 10 of its 100 in use; end some of those still running, or close the conversation to start afresh)\n"; r.Op != wire.OpResult || r.ExitCode != 126 || !strings.HasPrefix(r.Output, "codefleet: could not start bash") || !strings.HasSuffix(r.Output, want) {
		t.Fatalf("start failing twice: got %+v, want exit 126 and output ending %q", r, want)
	}
}

// prSetChildSubreaper is PR_SET_CHILD_SUBREAPER (linux/prctl.h), which package syscall lacks.
const prSetChildSubreaper = 36

// TestForkStoppedBeforeExec: a child stopped between fork and exec (a snippet's `kill -STOP -1`
// landing on an interpreter the agent is starting) would hold the fork, a vfork, and with it
// the reaper's lock and every run, for ever: it is continued. (Unless a garbage collection
// begins meanwhile: the runtime then waits for the forking thread to stop, and nothing runs,
// which is why the warm pool forks nothing while a run's code runs. The collector is off here.)
func TestForkStoppedBeforeExec(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	// The stopper: stops every child of this process still running this program (not exec'd),
	// once, as `kill -STOP -1` would.
	stop := make(chan struct{})
	var hits atomic.Int64
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		seen := map[string]bool{}
		for {
			select {
			case <-stop:
				return
			default:
			}
			tasks, _ := os.ReadDir("/proc/self/task")
			for _, task := range tasks {
				b, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
				for _, f := range strings.Fields(string(b)) {
					if seen[f] {
						continue
					}
					if c, err := os.ReadFile("/proc/" + f + "/comm"); err == nil && string(c) == string(comm) {
						seen[f] = true
						pid, _ := strconv.Atoi(f)
						if syscall.Kill(pid, syscall.SIGSTOP) == nil {
							hits.Add(1)
						}
					}
				}
			}
		}
	}()
	defer func() {
		close(stop)
		<-stopped
	}()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	r := NewChildWaiter()
	var children []<-chan syscall.WaitStatus
	stalls := 0
	defer func() {
		// Some were stopped after their exec: they go now.
		for pid := range r.running() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		for _, exited := range children {
			<-exited
		}
	}()
	for i := 0; i < 300 && stalls < 3; i++ {
		started := make(chan error, 1)
		begun := time.Now()
		go func() {
			_, exited, err := r.Start("/bin/true", []string{"true"}, &syscall.ProcAttr{Files: []uintptr{devnull.Fd(), devnull.Fd(), devnull.Fd()}})
			if err == nil {
				children = append(children, exited)
			}
			started <- err
		}()
		select {
		case err := <-started:
			if err != nil {
				t.Fatal(err)
			}
			if time.Since(begun) >= forkStall {
				stalls++ // its child was stopped before its exec, and continued
			}
		case <-time.After(10 * time.Second):
			self := os.Getpid()
			for pid, info := range scanProcs() {
				if info.ppid == self {
					c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
					t.Logf("child %d: %c %q", pid, info.state, c)
				}
			}
			t.Fatalf("start %d stalled with its child stopped before exec (%d stopped so far)", i, hits.Load())
		}
	}
	t.Logf("%d children stopped, %d starts held up by a child stopped before its exec (and continued)", hits.Load(), stalls)
	if stalls == 0 {
		t.Log("the stopper never caught a child before its exec: nothing was shown")
	}
}
