package daytona

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/testutil"
)

func TestRetryAfterHeader(t *testing.T) {
	for _, tc := range []struct {
		h    http.Header
		want time.Duration
		ok   bool
	}{
		{http.Header{"Retry-After-Sandbox-Create": {"3"}}, 3 * time.Second, true},
		{http.Header{"Retry-After": {"1"}, "Retry-After-Authenticated": {"5"}}, 5 * time.Second, true},
		{http.Header{"Retry-After-Sandbox-Lifecycle": {"0.5"}}, 500 * time.Millisecond, true},
		{http.Header{"X-Ratelimit-Reset-Sandbox-Create": {"9"}}, 0, false},
		{http.Header{"Retry-After": {"soon"}}, 0, false},
	} {
		got, ok := retryAfterHeader(tc.h)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%v: got %s %v, want %s %v", tc.h, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseTrailer(t *testing.T) {
	const n = "cfabc"
	for _, tc := range []struct {
		in, out string
		tr      trailer
		ok      bool
	}{
		{"hi\n\ncfabc 0 0 0\n", "hi\n", trailer{}, true},
		{"no newline\ncfabc 3 0 1 1500\n", "no newline", trailer{exit: 3, truncated: true, duration: 1500 * time.Microsecond}, true},
		{"before\ncfabc 124 1 0\n", "before", trailer{exit: 124, timedOut: true}, true},
		// Output that imitates a trailer with another nonce is output.
		{"\ncfxyz 0 0 0\n\ncfabc 1 0 0\n", "\ncfxyz 0 0 0\n", trailer{exit: 1}, true},
		{"no trailer", "no trailer", trailer{}, false},
		{"\ncfabc x y z\n", "\ncfabc x y z\n", trailer{}, false},
	} {
		out, tr, ok := parseTrailer(tc.in, n)
		if out != tc.out || tr != tc.tr || ok != tc.ok {
			t.Errorf("%q: got %q %+v %v, want %q %+v %v", tc.in, out, tr, ok, tc.out, tc.tr, tc.ok)
		}
	}
}

func TestLanguagesFrom(t *testing.T) {
	for _, tc := range []struct {
		probe string
		want  []string
	}{
		{"python3\nbash\nnode\nts-node\nsetsid\nbase64\n", []string{"python", "bash", "javascript", "typescript"}},
		{"python3\nbash\nnode\ntsc\nsetsid\nbase64\n", []string{"python", "bash", "javascript", "typescript"}},
		{"python3\nbash\n", []string{"python"}}, // no setsid/base64: only the Python supervisor works
		{"bash\nsetsid\nbase64\n", []string{"bash"}},
		{"", nil},
	} {
		if got := languagesFrom(tc.probe); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: got %v, want %v", tc.probe, got, tc.want)
		}
	}
}

func TestVersionLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"0.150.0", "0.167.0", true}, {"0.167.0", "0.167.0", false}, {"v0.190.1", "0.167.0", false},
		{"0.99", "0.167.0", true}, {"1.0.0-rc1", "0.167.0", false},
	} {
		if got := versionLess(tc.a, tc.b); got != tc.want {
			t.Errorf("versionLess(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

// TestStates: the states the service has (v0.190 to v0.205) are known, those a start takes are
// startable, and the waiter's failures are error and build_failed.
func TestStates(t *testing.T) {
	for _, s := range []SandboxState{"archiving", "resizing", "snapshotting", "forking", "pausing", "paused", "resuming",
		"stopping", "stopped", "archived", "restoring", "pending_build", "building_snapshot", "pulling_snapshot"} {
		if !s.Known() || s.Failed() {
			t.Errorf("state %s: known %v, failed %v", s, s.Known(), s.Failed())
		}
	}
	if SandboxState("hibernating").Known() {
		t.Error("an invented state is known")
	}
	for s, want := range map[SandboxState]bool{"stopped": true, "archived": true, "paused": true, "stopping": false, "pausing": false, "archiving": false, "started": false} {
		if s.Startable() != want {
			t.Errorf("%s startable %v, want %v", s, s.Startable(), want)
		}
	}
	if got := stripLogMarkers("\x01\x01\x01out\n\x02\x02\x02err\n"); got != "out\nerr\n" {
		t.Errorf("stripLogMarkers: %q", got)
	}
}

func TestTimeouts(t *testing.T) {
	if got := apiTimeout(time.Second); got != 6 {
		t.Errorf("apiTimeout(1s) = %d, want 6", got)
	}
	if got := apiTimeout(1500 * time.Millisecond); got != 7 {
		t.Errorf("apiTimeout(1.5s) = %d, want 7", got)
	}
	if seconds(2*time.Second) != "2" || seconds(1500*time.Millisecond) != "1.500" {
		t.Errorf("seconds: %s %s", seconds(2*time.Second), seconds(1500*time.Millisecond))
	}
}

// TestSupervisorsParse checks the generated scripts with the shells and Python of the host,
// without running them: sh -n for the shell one (dash where /bin/sh is dash), compile() for
// the Python one, for awkward code and env.
func TestSupervisorsParse(t *testing.T) {
	p := runPlan{nonce: "cf0", language: "bash", code: "echo 'it''s' \"$HOME\" `x`\n\\", timeout: 1500 * time.Millisecond, max: 1000,
		workdir: "/tmp/it's", exports: map[string]string{"A": "it's $x \"y\"", "B_2": "\n"}}
	for _, sh := range []string{"sh", "bash", "dash", "zsh"} {
		if _, err := exec.LookPath(sh); err != nil {
			continue
		}
		if out, err := exec.Command(sh, "-n", "-c", shellSupervisor(p)).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", sh, err, out)
		}
		// The command line the daemon's shell gets.
		if out, err := exec.Command(sh, "-n", "-c", viaSh("true")).CombinedOutput(); err != nil {
			t.Errorf("%s -n viaSh: %v\n%s", sh, err, out)
		}
	}
	if _, err := exec.LookPath("python3"); err == nil {
		p.language, p.code = "python", "print('\"\\x00')"
		src := pythonSupervisor(p)
		cmd := exec.Command("python3", "-c", "import sys; compile(sys.stdin.read(), 'supervisor', 'exec')")
		cmd.Stdin = strings.NewReader(src)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("python supervisor does not compile: %v\n%s\n%s", err, out, src)
		}
	}
}

// TestKillBeforeStart: a kill that reaches the sandbox before the run's supervisor (the cancel
// overtook the run's own request) keeps the run from starting, with either supervisor; a kill
// after the run ended leaves nothing behind. (Before, such a kill found no pid and the run went
// on for nobody.)
func TestKillBeforeStart(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is needed (the python supervisor)")
	}
	supervisor := func(ctx context.Context, p runPlan) *exec.Cmd {
		if p.language == "python" {
			cmd := exec.CommandContext(ctx, "python3", "-u", "-")
			cmd.Stdin = strings.NewReader(pythonSupervisor(p))
			return cmd
		}
		return exec.CommandContext(ctx, "sh", "-c", shellSupervisor(p))
	}
	for _, lang := range []string{"bash", "python"} {
		t.Run(lang, func(t *testing.T) {
			p := runPlan{nonce: fmt.Sprintf("cfkill%d%s", os.Getpid(), lang), language: lang, code: "import time; time.sleep(60)", max: 1000}
			if lang == "bash" {
				p.code = "sleep 60"
			}
			d := runDir(p.nonce)
			t.Cleanup(func() { os.RemoveAll(d) })
			kill := exec.Command("sh", "-c", killScript(p.nonce))
			if err := kill.Start(); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 10*time.Second, func() error {
				_, err := os.Stat(filepath.Join(d, "cancel"))
				return err
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := supervisor(ctx, p).CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 125 || ctx.Err() != nil {
				t.Fatalf("supervisor after the kill: %v (want exit 125, the run not started)\n%s", err, out)
			}
			if err := kill.Wait(); err != nil {
				t.Fatalf("kill: %v", err)
			}
			if _, err := os.Stat(d); !os.IsNotExist(err) {
				t.Fatalf("run directory left after a kill that came first: %v", err)
			}

			// A kill after the run ended: nothing to kill, nothing left.
			p.code = "pass"
			if lang == "bash" {
				p.code = "true"
			}
			if out, err := supervisor(ctx, p).CombinedOutput(); err != nil {
				t.Fatalf("run: %v\n%s", err, out)
			}
			if out, err := exec.Command("sh", "-c", killScript(p.nonce)).CombinedOutput(); err != nil {
				t.Fatalf("kill: %v\n%s", err, out)
			}
			if _, err := os.Stat(d); !os.IsNotExist(err) {
				t.Fatalf("run directory left after a late kill: %v", err)
			}
		})
	}
}

// TestMain removes, at exit, the marks of kills whose grace the fake service cut short: a kill
// still waiting out killGrace when its sandbox is deleted at the end of a test is killed with
// it. (A real sandbox goes with its /tmp.) A directory holding only the mark is a kill's; runs'
// directories are left alone.
//
// It also lets more tests run in parallel than the CPUs when -test.parallel is not given: the
// parallel tests of issue 13 wait minutes in real time (a 3-minute run, a 2-minute build, a
// service holding a start, a Retry-After) and use little CPU, so they overlap.
func TestMain(m *testing.M) {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given {
		flag.Set("test.parallel", "8")
	}
	code := m.Run()
	dirs, _ := filepath.Glob(runDir("*"))
	for _, d := range dirs {
		if entries, err := os.ReadDir(d); err == nil && len(entries) == 1 && entries[0].Name() == "cancel" {
			os.RemoveAll(d)
		}
	}
	os.Exit(code)
}
