package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/internal/testutil"
)

// testEnviron is the base environment of the warm tests: a container's, with a HOME of its
// own (python's user site directory lives there) and a `_` (bash's first $_ comes from it).
func testEnviron(home string) []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + home, "LANG=C.UTF-8", "CF_BASE=base", "_=/cf/underscore",
	}
}

// startWarmAgent serves an Agent whose runs use warm interpreters, and returns a cold twin: an
// Agent on the same directory and environment that is not serving, so its Run always starts
// cold.
//
// Both languages have run once, so that their interpreters are started again after every run
// (the agent restarts only the languages a sandbox uses).
func startWarmAgent(t *testing.T) (s *testSession, cold *Agent) {
	t.Helper()
	dir := t.TempDir()
	env := testEnviron(dir)
	s = serve(t, New(dir, env, testReaper))
	for lang, code := range map[string]string{"python": "pass", "bash": "true"} {
		if r := s.call(wire.Request{Op: wire.OpRun, ID: "use-" + lang, Language: lang, Code: code}); r.Op != wire.OpResult || r.ExitCode != 0 {
			t.Fatalf("first %s run: %+v", lang, r)
		}
	}
	return s, New(dir, env, testReaper)
}

// idlePid returns the pid of lang's idle interpreter, or an error when there is none.
func idlePid(a *Agent, lang string) (int, error) {
	p := a.warm.Load()
	if p == nil {
		return 0, errors.New("not serving")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if idle := p.idle[lang]; len(idle) > 0 {
		return idle[0].pid, nil
	}
	return 0, fmt.Errorf("no idle %s interpreter", lang)
}

// waitWarm waits until lang has an idle interpreter and returns its pid.
func waitWarm(t *testing.T, a *Agent, lang string) int {
	t.Helper()
	var pid int
	testutil.Eventually(t, 10*time.Second, func() (err error) {
		pid, err = idlePid(a, lang)
		return err
	})
	return pid
}

// runWarm waits for an idle interpreter of req's language, runs req and checks that it went
// to that interpreter.
func runWarm(t *testing.T, s *testSession, req wire.Request) wire.Response {
	t.Helper()
	waitWarm(t, s.a, req.Language)
	before := s.a.warmRuns.Load()
	r := s.call(req)
	if got := s.a.warmRuns.Load() - before; got != 1 {
		t.Fatalf("run %q did not go to the warm interpreter (warm runs +%d)", req.Code, got)
	}
	return r
}

func TestWarmMatchesCold(t *testing.T) {
	s, cold := startWarmAgent(t)
	env := map[string]string{
		"V":       "a b\n 'single' \"double\" $HOME `date` $(id) \\ * end\n\n",
		"EMPTY":   "",
		"CF_BASE": "run",
		"UNI":     "héllo wörld ✓",
	}
	bigBash := ": '" + strings.Repeat("x", 100<<10) + "'; echo big"
	bigPython := "x = '" + strings.Repeat("é", 50<<10) + "'\nprint(len(x))"
	tests := []struct {
		name, lang, code string
		timeout          time.Duration
		// same normalises the output where warm and cold may differ in words only.
		same func(string) string
	}{
		{name: "exit code", lang: "bash", code: "exit 3"},
		{name: "$0 and args", lang: "bash", code: `echo "$0" $# "$-"`},
		{name: "first $_", lang: "bash", code: `echo "$_"`},
		{name: "line numbers", lang: "bash", code: "echo $LINENO\n\necho $LINENO; nosuchcommand"},
		{name: "syntax error", lang: "bash", code: "echo a\nfoo )\necho b",
			same: func(s string) string { return strings.ReplaceAll(s, "eval: ", "-c: ") }},
		{name: "set -e", lang: "bash", code: "set -e; false; echo no"},
		{name: "traps and functions", lang: "bash", code: "trap 'echo bye $?' EXIT; f() { echo in $FUNCNAME; return 4; }; f; echo $?; exit 5"},
		{name: "return at top level", lang: "bash", code: "return 3; echo after"},
		{name: "per-run env", lang: "bash", code: `printf '[%s]' "$V" "$EMPTY" "$CF_BASE" "$UNI"; bash -c 'printf "<%s>" "$V" "$CF_BASE"'; env | grep -c '^CF_BASE='`},
		{name: "execution string", lang: "bash", code: `printf '%s' "$BASH_EXECUTION_STRING"`},
		// SECONDS is set (to the time since the run began), so declare -p shows its value.
		{name: "no variable of the bootstrap", lang: "bash", code: `declare -p | grep -v -e '^declare -ir PPID=' -e '^declare -a PIPESTATUS=' -e '^declare -. _=' -e '^declare -- SECONDS'`},
		{name: "stdin is empty", lang: "bash", code: `cat; echo "rc=$?"`},
		{name: "open fds", lang: "bash", code: `cd /proc/$$/fd && echo *`},
		{name: "killed by a signal", lang: "bash", code: "echo x; kill -9 $$"},
		{name: "timeout keeps output", lang: "bash", code: "echo before; sleep 30", timeout: 300 * time.Millisecond},
		{name: "code bigger than a pipe", lang: "bash", code: bigBash},
		{name: "unicode", lang: "bash", code: "x=héllo; echo ${#x} $x wörld"},
		{name: "sys.exit(4)", lang: "python", code: "import sys; sys.exit(4)"},
		{name: `sys.exit("msg")`, lang: "python", code: `import sys; sys.exit("msg")`},
		{name: "traceback", lang: "python", code: "import os\ndef f():\n    return 1/0\nprint('before', flush=True)\nf()"},
		{name: "chained traceback", lang: "python", code: "try:\n    {}['k']\nexcept KeyError:\n    raise ValueError('v')"},
		{name: "python syntax error", lang: "python", code: "x = (\n"},
		{name: "KeyboardInterrupt", lang: "python", code: "raise KeyboardInterrupt"},
		{name: "__name__", lang: "python", code: "print(__name__)"},
		{name: "sys.argv", lang: "python", code: "import sys; print(sys.argv)"},
		{name: "globals", lang: "python", code: "print(sorted(globals()), __builtins__)"},
		{name: "python stdin is empty", lang: "python", code: "import sys; print(repr(sys.stdin.read()))"},
		{name: "python env", lang: "python", code: "import os, subprocess\nprint(repr(os.environ['V']), os.environ['CF_BASE'], os.environ['UNI'], repr(os.environ['EMPTY']))\nsubprocess.run(['sh', '-c', 'echo \"$CF_BASE\"'])"},
		{name: "python timeout", lang: "python", code: "print('before', flush=True)\nimport time\ntime.sleep(30)", timeout: 2 * time.Second},
		{name: "python big code", lang: "python", code: bigPython},
		{name: "python atexit", lang: "python", code: "import atexit; atexit.register(print, 'bye'); raise SystemExit(7)"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := wire.Request{Op: wire.OpRun, ID: fmt.Sprintf("w%d", i), Language: tc.lang, Code: tc.code, Env: env, TimeoutMS: tc.timeout.Milliseconds()}
			want := cold.Run(context.Background(), &req)
			got := runWarm(t, s, req)
			norm := tc.same
			if norm == nil {
				norm = func(s string) string { return s }
			}
			if got.Op != want.Op || norm(got.Output) != norm(want.Output) || got.ExitCode != want.ExitCode || got.TimedOut != want.TimedOut {
				t.Fatalf("warm and cold differ:\nwarm: exit %d timed_out %v output %q\ncold: exit %d timed_out %v output %q",
					got.ExitCode, got.TimedOut, got.Output, want.ExitCode, want.TimedOut, want.Output)
			}
			if tc.timeout > 0 && !got.TimedOut {
				t.Fatalf("expected a timeout, got %+v", got)
			}
		})
	}
	// A few outputs checked against what the languages print, not only against each other.
	for _, c := range []struct{ lang, code, want string }{
		{"python", "def f():\n    1/0\nf()", "Traceback (most recent call last):\n  File \"<string>\", line 3, in <module>\n  File \"<string>\", line 2, in f\nZeroDivisionError: division by zero\n"},
		{"python", "print(__name__)", "__main__\n"},
		{"python", "import sys; print(sys.argv)", "['-c']\n"},
		{"bash", `echo "$0"`, "/usr/bin/bash\n"},
	} {
		if r := runWarm(t, s, wire.Request{Op: wire.OpRun, ID: "check", Language: c.lang, Code: c.code}); r.Output != c.want && !(c.lang == "bash" && r.Output == "/bin/bash\n") {
			t.Errorf("%s %q printed %q, want %q", c.lang, c.code, r.Output, c.want)
		}
	}
}

// TestWarmSeesPreviousRuns: an interpreter that was started before a run ended is not used, so
// files, modules and packages made by one run are seen by the next, whatever its language.
func TestWarmSeesPreviousRuns(t *testing.T) {
	s, _ := startWarmAgent(t)
	call := func(lang, code string) string {
		t.Helper()
		r := runWarm(t, s, wire.Request{Op: wire.OpRun, ID: "r", Language: lang, Code: code})
		if r.ExitCode != 0 {
			t.Fatalf("%s %q: exit %d: %s", lang, code, r.ExitCode, r.Output)
		}
		return r.Output
	}
	call("bash", "echo one > made.txt")
	if got := call("bash", "cat made.txt"); got != "one\n" {
		t.Fatalf("file of the previous run: got %q", got)
	}
	call("python", "open('cfmod.py', 'w').write('X = 41\\n')")
	if got := call("python", "import cfmod; print(cfmod.X + 1)"); got != "42\n" {
		t.Fatalf("module of the previous run: got %q", got)
	}
	if got := call("python", "import time\nn = 'm%d' % time.time_ns()\nopen(n + '.py', 'w').write('X = 7')\nprint(__import__(n).X)"); got != "7\n" {
		t.Fatalf("module made and imported by the same run: got %q", got)
	}
	// The user site directory does not exist when the first python starts; a bash run makes
	// it (as `pip install --user` would): the next python has it in sys.path.
	waitWarm(t, s.a, "python")
	call("bash", `d=$(python3 -c 'import site; print(site.getusersitepackages())') && mkdir -p "$d" && echo 'X = "site"' > "$d/cfsite.py"`)
	if got := call("python", "import cfsite; print(cfsite.X)"); got != "site\n" {
		t.Fatalf("package installed by the previous run: got %q", got)
	}
}

func TestWarmFallsBackToCold(t *testing.T) {
	s, cold := startWarmAgent(t)
	coldRun := func(req wire.Request) wire.Response {
		t.Helper()
		waitWarm(t, s.a, req.Language)
		before := s.a.warmRuns.Load()
		r := s.call(req)
		if s.a.warmRuns.Load() != before {
			t.Fatalf("run %q with env %v went to a warm interpreter", req.Code, req.Env)
		}
		return r
	}
	for _, env := range []map[string]string{
		{"PATH": "/usr/bin:/bin"},
		{"PYTHONPATH": "/nowhere"},
		{"LD_PRELOAD": ""},
		{"BASH_ENV": "/dev/null"},
		{"LC_ALL": "C"},
		{"NOT-A-NAME": "x"},
		{"NUL": "a\x00b"},
	} {
		req := wire.Request{Op: wire.OpRun, ID: "env", Language: "bash", Code: `echo "$PATH"`, Env: env}
		want := cold.Run(context.Background(), &req)
		if got := coldRun(req); got.Output != want.Output || got.ExitCode != want.ExitCode || got.Code != want.Code {
			t.Errorf("env %q: got %+v, want %+v", env, got, want)
		}
	}

	// An idle interpreter killed from outside: the run starts cold and succeeds.
	pid := waitWarm(t, s.a, "python")
	syscall.Kill(pid, syscall.SIGKILL)
	testutil.Eventually(t, 10*time.Second, func() error {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("pid %d still there (%v)", pid, err)
		}
		return nil
	})
	before := s.a.warmRuns.Load()
	if r := s.call(wire.Request{Op: wire.OpRun, ID: "killed", Language: "python", Code: "print('cold')"}); r.Output != "cold\n" || r.ExitCode != 0 {
		t.Fatalf("after the warm interpreter was killed: got %+v", r)
	}
	if s.a.warmRuns.Load() != before {
		t.Fatal("the dead interpreter was counted as a warm run")
	}
	// ... and the next one is warm again.
	if r := runWarm(t, s, wire.Request{Op: wire.OpRun, ID: "again", Language: "python", Code: "print('warm')"}); r.Output != "warm\n" {
		t.Fatalf("next run: got %+v", r)
	}
}

func TestWarmKilledWhenServeEnds(t *testing.T) {
	s, _ := startWarmAgent(t)
	pids := []int{waitWarm(t, s.a, "bash"), waitWarm(t, s.a, "python")}
	s.stop()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("warm interpreter %d still there after Serve returned (%v)", pid, err)
		}
	}
}

func TestWarmable(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		code string
		want bool
	}{
		{nil, "echo", true},
		{map[string]string{"API_KEY": "x\ny 'z' $v", "_x1": ""}, "echo", true},
		{nil, "echo \x00", false},
		{map[string]string{"HOME": "/"}, "", false},
		{map[string]string{"PYTHONSAFEPATH": "1"}, "", false},
		{map[string]string{"BASH_FUNC_f%%": "() { :; }"}, "", false},
		{map[string]string{"LC_CTYPE": "C"}, "", false},
		{map[string]string{"1X": ""}, "", false},
		{map[string]string{"A": "\x00"}, "", false},
	} {
		if got := warmable(tc.env, tc.code); got != tc.want {
			t.Errorf("warmable(%q, %q) = %v, want %v", tc.env, tc.code, got, tc.want)
		}
	}
}

// TestLastingBash: a warm bash stays good across runs (its start reads no file a run can
// change), so it is not killed when a run ends, and a spare is kept: two runs sent back to back
// both go to interpreters that were waiting before the first began. With $BASH_ENV in the base
// environment (a file bash reads when it starts) it is fresh-only, like python.
func TestLastingBash(t *testing.T) {
	for _, tc := range []struct {
		name    string
		extra   []string
		lasting bool
	}{{"plain", nil, true}, {"BASH_ENV", []string{"BASH_ENV=/dev/null"}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := serve(t, New(dir, append(testEnviron(dir), tc.extra...), testReaper))
			want := 1
			if tc.lasting {
				want = 2
			}
			var idle []int
			testutil.Eventually(t, 10*time.Second, func() error {
				idle = idlePids(s.a, "bash")
				if len(idle) != want {
					return fmt.Errorf("%d idle bash, want %d", len(idle), want)
				}
				return nil
			})
			r1 := s.call(wire.Request{Op: wire.OpRun, ID: "first", Language: "bash", Code: "echo $$"})
			r2 := s.call(wire.Request{Op: wire.OpRun, ID: "second", Language: "bash", Code: "echo $$"})
			if r1.Output != strconv.Itoa(idle[0])+"\n" {
				t.Fatalf("the first run printed %q, want the oldest idle bash %d", r1.Output, idle[0])
			}
			if tc.lasting && r2.Output != strconv.Itoa(idle[1])+"\n" {
				t.Fatalf("the second run printed %q, want the spare %d, waiting since before the first run", r2.Output, idle[1])
			}
			if !tc.lasting && slices.Contains(idle, atoiLine(r2.Output)) {
				t.Fatalf("the second run went to bash %s, started before the first run ended", r2.Output)
			}
		})
	}
}

// TestWarmSeconds: $SECONDS counts from the run's start, as in a cold bash, not from when the
// interpreter started waiting.
func TestWarmSeconds(t *testing.T) {
	s := startAgent(t)
	pid := waitWarm(t, s.a, "bash")
	time.Sleep(1100 * time.Millisecond) // the interpreter waits a second and more
	if r := s.call(wire.Request{Op: wire.OpRun, ID: "s", Language: "bash", Code: "echo $$ $SECONDS"}); r.Output != strconv.Itoa(pid)+" 0\n" {
		t.Fatalf("got %q, want the warm bash %d and 0 seconds", r.Output, pid)
	}
}

// idlePids returns the pids of lang's idle interpreters, oldest first.
func idlePids(a *Agent, lang string) []int {
	p := a.warm.Load()
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var pids []int
	for _, w := range p.idle[lang] {
		pids = append(pids, w.pid)
	}
	return pids
}

func atoiLine(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}
