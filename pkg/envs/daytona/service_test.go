package daytona_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
	"github.com/codefleet/codefleet/pkg/envs/envtest"
)

// These tests hold the backend to the service's behaviour around its calls (issue 13), on a
// fake that reproduces it: the idle cut of blocking toolbox calls (1), the proxy's 401 for a
// sandbox that is gone (2), the service's own waits and rate limits (3) and the pause, archive
// and transition states (4). The ones that wait in real time (minutes) run in parallel.

// TestConformanceSessions and TestConformanceBlocking run the suite with every run through a
// session, and with every run in one blocking call but the streamed one (TestConformance mixes
// them: the suite's runs without a timeout get the default of 60 s, longer than LongRun).
func TestConformanceSessions(t *testing.T) {
	t.Parallel()
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, func(c *daytona.Config) { c.LongRun = -1 })
	envtest.Run(t, envtest.Config{Env: env, Labels: testutil.TestLabels(), MaxOutput: daytona.DefaultMaxOutput})
	if fake.Count("session-exec") == 0 || fake.Count("code-run") != 0 {
		t.Errorf("%d session commands, %d code runs: want every run through a session", fake.Count("session-exec"), fake.Count("code-run"))
	}
}

func TestConformanceBlocking(t *testing.T) {
	t.Parallel()
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, func(c *daytona.Config) { c.LongRun = 10 * time.Minute })
	envtest.Run(t, envtest.Config{Env: env, Labels: testutil.TestLabels(), MaxOutput: daytona.DefaultMaxOutput})
	if n := fake.Count("session-exec"); n != 1 {
		t.Errorf("%d session commands: want every run in one call, but the streamed one (a run followed as it goes needs a session)", n)
	}
}

// TestLongRun (1): a run of 3 minutes, past the 60 s idle cut in front of the toolbox, completes
// with its output and exit code; it went through a session and nothing was cut.
func TestLongRun(t *testing.T) {
	t.Parallel()
	fake := startFake(t, daytonafake.Options{}) // the service's idle cut: 60 s
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("long-run"))
	start := time.Now()
	res, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Timeout: 4 * time.Minute,
		Code: "echo started; sleep 180; echo 'three minutes later' >&2; exit 7"})
	if err != nil || res.Output != "started\nthree minutes later\n" || res.ExitCode != 7 || res.TimedOut {
		t.Fatalf("3-minute run: %+v %v, want its output and exit 7", res, err)
	}
	if took := time.Since(start); took < 3*time.Minute || res.Duration < 3*time.Minute {
		t.Errorf("the run took %s (reported %s), want 3 minutes", took, res.Duration)
	}
	if fake.Count("idle-cut") != 0 || fake.Count("session-exec") != 1 {
		t.Errorf("%d idle cuts, %d session commands: want the run in a session, not cut", fake.Count("idle-cut"), fake.Count("session-exec"))
	}
	t.Logf("3-minute run: %d polls of its command", fake.Count("session-command"))
}

// TestIdleCut (1): the idle cut answers a blocking run with a bare 502, which is
// backend_unavailable and kills the run in the sandbox (which is kept); the same run through a
// session completes.
func TestIdleCut(t *testing.T) {
	t.Parallel()
	fake := startFake(t, daytonafake.Options{IdleTimeout: time.Second})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("idle-cut"))
	_, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "sleep 3; echo late > late.txt", Timeout: short})
	wantErr(t, err, envs.ErrBackendUnavailable, "502", "empty body")
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := fake.Running(); n != 0 {
			return fmt.Errorf("%d toolbox commands running: the cut run was not killed", n)
		}
		return nil
	})
	if res := runBash(t, sb, "cat late.txt 2>/dev/null || echo killed"); res.Output != "killed\n" {
		t.Errorf("the cut run went on: %+v", res)
	}
	long := newEnv(t, fake, func(c *daytona.Config) { c.LongRun = -1 })
	again, err := long.Open(context.Background(), sb.Info().ID)
	if err != nil {
		t.Fatal(err)
	}
	res, err := again.Run(context.Background(), envs.Exec{Language: "python", Code: "import time; time.sleep(3); print('through a session')", Timeout: short})
	if err != nil || res.Output != "through a session\n" || res.ExitCode != 0 {
		t.Fatalf("the same run through a session: %+v %v", res, err)
	}
}

// TestSessionRunSemantics (1): through a session a run keeps today's semantics at the edges:
// exit 124 with the output so far at its timeout, 128+N for signal N, a cancelled run killed,
// the run's env exported (sessions take none), the sandbox kept.
func TestSessionRunSemantics(t *testing.T) {
	t.Parallel()
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, func(c *daytona.Config) { c.LongRun = -1 })
	sb := mustCreate(t, env, spec("session-semantics"))
	run := func(ex envs.Exec) envs.Result {
		t.Helper()
		res, err := sb.Run(context.Background(), ex)
		if err != nil {
			t.Fatalf("run %q: %v", ex.Code, err)
		}
		return res
	}
	if res := run(envs.Exec{Language: "bash", Code: "echo before; sleep 30", Timeout: time.Second}); res.ExitCode != 124 || !res.TimedOut || res.Output != "before\n" {
		t.Errorf("timeout: %+v", res)
	}
	if res := run(envs.Exec{Language: "python", Code: "import os, signal; print('x', flush=True); os.kill(os.getpid(), signal.SIGTERM)"}); res.ExitCode != 143 || res.Output != "x\n" {
		t.Errorf("signal: %+v", res)
	}
	if res := run(envs.Exec{Language: "bash", Code: `printf '%s' "$TOKEN"`, Env: map[string]string{"TOKEN": "it's $x"}}); res.Output != "it's $x" {
		t.Errorf("env: %+v", res)
	}
	cancelKills(t, fake, sb, envs.Exec{Language: "bash", Code: "sleep 60"})

	if res := run(envs.Exec{Language: "bash", Code: "echo kept"}); res.Output != "kept\n" {
		t.Errorf("after: %+v", res)
	}
}

// TestGoneSandbox (2): a sandbox deleted behind the backend's back is envs.ErrSandboxGone on
// the next run, whatever the proxy answers (401, or 400 or 404 with the token in its cache) and
// whichever way the run goes; a toolbox refusal is confirmed with the management API first.
func TestGoneSandbox(t *testing.T) {
	for _, gone := range []int{http.StatusUnauthorized, http.StatusBadRequest, http.StatusNotFound} {
		for _, timeout := range []time.Duration{short, time.Minute} {
			t.Run(fmt.Sprintf("%d/%s", gone, timeout), func(t *testing.T) {
				fake := startFake(t, daytonafake.Options{})
				fake.AnswerGone(gone)
				env := newEnv(t, fake, nil)
				sb, err := env.Create(context.Background(), spec("gone"))
				if err != nil {
					t.Fatal(err)
				}
				if err := newEnv(t, fake, nil).Destroy(context.Background(), sb.Info().ID); err != nil {
					t.Fatal(err)
				}
				testutil.Eventually(t, 10*time.Second, func() error {
					if s, _ := fake.Get(sb.Info().ID); s.State != "destroyed" {
						return fmt.Errorf("state %s", s.State)
					}
					return nil
				})
				gets := fake.Count("get")
				_, err = sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "true", Timeout: timeout})
				wantErr(t, err, envs.ErrSandboxGone, "deleted", fmt.Sprint(gone))
				if fake.Count("get") != gets+1 {
					t.Errorf("%d gets: the refusal was not confirmed with the API", fake.Count("get")-gets)
				}
				if _, err := env.Open(context.Background(), sb.Info().ID); !errors.Is(err, envs.ErrNotFound) {
					t.Fatalf("open a deleted sandbox: %v, want ErrNotFound", err)
				}
			})
		}
	}
}

// TestWrongKey (2): a key the service no longer takes is backend_unavailable (the API refuses it
// too), not a sandbox gone; the sandbox is kept and works again with the key.
func TestWrongKey(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("wrong-key"))
	runBash(t, sb, "echo mine > f")
	fake.SetAPIKey("dtn_rotated")
	for _, timeout := range []time.Duration{short, time.Minute} {
		_, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "true", Timeout: timeout})
		wantErr(t, err, envs.ErrBackendUnavailable, "refused the credentials", "Invalid credentials", "Bearer token is invalid")
		if errors.Is(err, envs.ErrSandboxFailed) {
			t.Fatalf("a refused key counted as a failed (or gone) sandbox: %v", err)
		}
	}
	fake.SetAPIKey("dtn_fake")
	if res := runBash(t, sb, "cat f"); res.Output != "mine\n" {
		t.Fatalf("with the key back: %+v", res)
	}
}

// TestStartHeldByService (3): a create that the service holds for 30 s while the sandbox starts,
// and a start of a stopped sandbox that it holds for 30 s, both succeed (the start call's
// deadline is above the service's wait); the start is polled for sparingly.
func TestStartHeldByService(t *testing.T) {
	t.Parallel()
	fake := startFake(t, daytonafake.Options{CreateWait: 30 * time.Second, StartWait: 30 * time.Second})
	env := newEnv(t, fake, nil)
	fake.SlowNextStart(30 * time.Second)
	start := time.Now()
	sb := mustCreate(t, env, spec("held-create"))
	if took := time.Since(start); took < 30*time.Second {
		t.Errorf("create returned after %s, before the 30 s start", took)
	}
	if n := fake.Count("get"); n > 3 {
		t.Errorf("%d gets after a create the service held until started", n)
	}
	runBash(t, sb, "echo kept > f")
	if err := fake.Stop(sb.Info().ID); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if s, _ := fake.Get(sb.Info().ID); s.State != "stopped" {
			return fmt.Errorf("state %s", s.State)
		}
		return nil
	})
	fake.SlowNextStart(30 * time.Second)
	start, gets := time.Now(), fake.Count("get")
	again, err := env.Open(context.Background(), sb.Info().ID)
	if err != nil {
		t.Fatalf("open a sandbox whose start the service holds for 30 s: %v", err)
	}
	if took := time.Since(start); took < 30*time.Second {
		t.Errorf("open returned after %s, before the 30 s start", took)
	}
	if n := fake.Count("get") - gets; n > 3 {
		t.Errorf("%d gets during a start the service held", n)
	}
	if res := runBash(t, again, "cat f"); res.Output != "kept\n" {
		t.Fatalf("after the start: %+v", res)
	}
}

// TestSlowImageBuild (3): an image build of 2 minutes succeeds, though it is much longer than
// the start budget (the build has its own), with the documented polling: 13 GETs in the first
// 30 s, then 12 a minute. A second sandbox of the image reuses the build.
func TestSlowImageBuild(t *testing.T) {
	t.Parallel()
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, func(c *daytona.Config) { c.StartTimeout = 5 * time.Second })
	fake.SlowNextBuild(2 * time.Minute)
	s := spec("slow-build")
	s.Image = "python:3.12-slim"
	start := time.Now()
	sb := mustCreate(t, env, s)
	took := time.Since(start)
	if took < 2*time.Minute {
		t.Errorf("create returned after %s, before the 2-minute build", took)
	}
	if res := runBash(t, sb, "echo built"); res.Output != "built\n" {
		t.Fatalf("run: %+v", res)
	}
	gets := fake.Count("get")
	if most := 14 + int((took-30*time.Second)/(5*time.Second)); gets > most {
		t.Errorf("%d gets in %s of build, more than the documented %d", gets, took, most)
	}
	t.Logf("a 2-minute build: %d gets in %s", gets, took.Round(time.Second))
	s = spec("slow-build-again")
	s.Image = "python:3.12-slim"
	start = time.Now()
	mustCreate(t, env, s)
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a second sandbox of the image took %s", took)
	}
}

// TestRetryAfterWaitedOut (3): a Retry-After of 45 s, more than a short call's timeout and
// under the cap of 90 s, is waited out within the caller's own deadline: on a create (the create
// throttler's window is 45 s: a second create in it is answered 429 with
// Retry-After-sandbox-create 45), and on the poll of a run's session.
func TestRetryAfterWaitedOut(t *testing.T) {
	t.Parallel()
	fake := startFake(t, daytonafake.Options{RateLimits: map[string]int{"sandbox-create": 1}, RateWindow: 45 * time.Second})
	env := newEnv(t, fake, nil)
	mustCreate(t, env, spec("first"))
	start := time.Now()
	sb := mustCreate(t, env, spec("throttled"))
	if took := time.Since(start); took < 44*time.Second {
		t.Errorf("the throttled create took %s, less than its Retry-After of 45 s", took)
	}
	if n := fake.Count("create"); n != 3 {
		t.Errorf("%d create calls, want 3 (one refused)", n)
	}

	fake.Inject(daytonafake.Fault{Op: "session-command", Status: http.StatusTooManyRequests, RetryAfter: 45})
	start = time.Now()
	res, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "echo polled", Timeout: time.Minute})
	if err != nil || res.Output != "polled\n" || time.Since(start) < 45*time.Second {
		t.Fatalf("a run whose poll was throttled: %+v %v after %s", res, err, time.Since(start))
	}
}

// TestRetryAfterOnStartPoll (3): a GET of a starting sandbox answered 429 with a Retry-After of
// 45 s is waited out within the start budget, and the create goes through.
func TestRetryAfterOnStartPoll(t *testing.T) {
	t.Parallel()
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	fake.Inject(daytonafake.Fault{Op: "get", Status: http.StatusTooManyRequests, RetryAfter: 45})
	start := time.Now()
	mustCreate(t, env, spec("throttled-get"))
	if took := time.Since(start); took < 45*time.Second {
		t.Errorf("a create whose start poll was throttled took %s", took)
	}
}

// TestPausedSandboxResumed (4): a paused sandbox (a VM class, auto-paused) is resumed for the
// next run, through either way a run goes, and by Open; its files are kept.
func TestPausedSandboxResumed(t *testing.T) {
	fake := startFake(t, daytonafake.Options{SandboxClass: "linux-vm"})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("paused"))
	runBash(t, sb, "echo kept > f")
	pause := func() {
		t.Helper()
		if err := fake.Pause(sb.Info().ID); err != nil {
			t.Fatal(err)
		}
		testutil.Eventually(t, 10*time.Second, func() error {
			if s, _ := fake.Get(sb.Info().ID); s.State != "paused" {
				return fmt.Errorf("state %s", s.State)
			}
			return nil
		})
	}
	for _, timeout := range []time.Duration{short, time.Minute} {
		pause()
		res, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "cat f", Timeout: timeout})
		if err != nil || res.Output != "kept\n" {
			t.Fatalf("run on a paused sandbox (timeout %s): %+v %v", timeout, res, err)
		}
	}
	pause()
	again, err := env.Open(context.Background(), sb.Info().ID)
	if err != nil {
		t.Fatalf("open a paused sandbox: %v", err)
	}
	if res := runBash(t, again, "cat f"); res.Output != "kept\n" {
		t.Fatalf("after open: %+v", res)
	}
	if n := fake.Count("start"); n != 3 {
		t.Errorf("%d starts, want 3 resumes", n)
	}
}

// TestStatesWaitedOrStarted (4): a sandbox stopping, stopped, archiving, archived, resizing,
// snapshotting or forking when a run comes is waited for and started as the API allows; the run
// then goes, with the files.
func TestStatesWaitedOrStarted(t *testing.T) {
	t.Parallel()
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("states"))
	id := sb.Info().ID
	runBash(t, sb, "echo kept > f")
	waitState := func(state string) {
		t.Helper()
		testutil.Eventually(t, 10*time.Second, func() error {
			if s, _ := fake.Get(id); s.State != state {
				return fmt.Errorf("state %s, want %s", s.State, state)
			}
			return nil
		})
	}
	for _, tc := range []struct {
		name  string
		setup func() error
	}{
		{"stopping", func() error { return fake.Transition(id, "stopping", 500*time.Millisecond) }},
		{"stopped", func() error {
			if err := fake.Stop(id); err != nil {
				return err
			}
			waitState("stopped")
			return nil
		}},
		{"archiving", func() error {
			if err := fake.Stop(id); err != nil {
				return err
			}
			waitState("stopped")
			return fake.Transition(id, "archiving", 500*time.Millisecond)
		}},
		{"archived", func() error {
			if err := fake.Stop(id); err != nil {
				return err
			}
			waitState("stopped")
			if err := fake.Archive(id); err != nil {
				return err
			}
			waitState("archived")
			return nil
		}},
		{"resizing", func() error { return fake.Transition(id, "resizing", 500*time.Millisecond) }},
		{"snapshotting", func() error { return fake.Transition(id, "snapshotting", 500*time.Millisecond) }},
		{"forking", func() error { return fake.Transition(id, "forking", 500*time.Millisecond) }},
	} {
		for _, timeout := range []time.Duration{short, time.Minute} {
			if err := tc.setup(); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			res, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "cat f", Timeout: timeout})
			if err != nil || res.Output != "kept\n" {
				t.Fatalf("run on a sandbox %s (timeout %s): %+v %v", tc.name, timeout, res, err)
			}
		}
	}
}

// TestStoppedDuringRun (4): a sandbox stopped while a run goes on: the run is lost, which is
// envs.ErrSandboxGone (the worker opens the sandbox again, which starts it, files and all).
func TestStoppedDuringRun(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("stopped-during-run"))
	runBash(t, sb, "echo kept > f")
	done := make(chan error, 1)
	go func() {
		_, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "sleep 60", Timeout: time.Minute})
		done <- err
	}()
	testutil.Eventually(t, 10*time.Second, func() error {
		if fake.Running() == 0 {
			return errors.New("not running yet")
		}
		return nil
	})
	if err := fake.Stop(sb.Info().ID); err != nil {
		t.Fatal(err)
	}
	err := <-done
	wantErr(t, err, envs.ErrSandboxGone, "during the run")
	again, err := env.Open(context.Background(), sb.Info().ID)
	if err != nil {
		t.Fatal(err)
	}
	if res := runBash(t, again, "cat f"); res.Output != "kept\n" || fake.Count("start") != 1 {
		t.Fatalf("after the stop: %+v, %d starts, want the files after one start", res, fake.Count("start"))
	}
}
