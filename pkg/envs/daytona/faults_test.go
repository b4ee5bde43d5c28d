package daytona_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
)

func spec(conv string) envs.Spec {
	return envs.Spec{Tenant: "faults", Conversation: conv, Labels: testutil.TestLabels()}
}

// mustCreate makes a sandbox destroyed at the end of the test.
func mustCreate(t *testing.T, env *daytona.Env, s envs.Spec) envs.Sandbox {
	t.Helper()
	sb, err := env.Create(context.Background(), s)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Destroy(context.Background(), sb.Info().ID); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	return sb
}

func runBash(t *testing.T, sb envs.Sandbox, code string) envs.Result {
	t.Helper()
	res, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: code})
	if err != nil {
		t.Fatalf("run %q: %v", code, err)
	}
	return res
}

// wantErr checks err wraps sentinel and mentions every one of parts.
func wantErr(t *testing.T, err, sentinel error, parts ...string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("got error %v, want %v", err, sentinel)
	}
	t.Logf("error: %v", err)
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not say %q", err, p)
		}
	}
}

// TestUnauthorized: a wrong API key is a clear backend_unavailable, and nothing is made.
func TestUnauthorized(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, func(c *daytona.Config) { c.APIKey = "dtn_wrong" })
	_, err := env.Create(context.Background(), spec("unauthorized"))
	wantErr(t, err, envs.ErrBackendUnavailable, "refused the credentials", "401", "Invalid credentials")
	if n := fake.Count("create"); n != 1 {
		t.Errorf("%d create calls, want 1 (a 401 is not retried)", n)
	}
	if n := len(fake.Sandboxes()); n != 0 {
		t.Errorf("%d sandboxes made", n)
	}
}

// TestRateLimitRetried: a 429 is retried after the Retry-After-<bucket> the service sends.
func TestRateLimitRetried(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	fake.Inject(daytonafake.Fault{Op: "create", Status: http.StatusTooManyRequests, RetryAfter: 1})
	start := time.Now()
	sb := mustCreate(t, env, spec("rate-limited"))
	if took := time.Since(start); took < time.Second {
		t.Errorf("create took %s: the Retry-After-sandbox-create of 1s was not honoured", took)
	}
	if n := fake.Count("create"); n != 2 {
		t.Errorf("%d create calls, want 2", n)
	}
	// The toolbox proxy may throttle too: the run was not processed, so it is retried.
	fake.Inject(daytonafake.Fault{Op: "execute", Status: http.StatusTooManyRequests})
	if res := runBash(t, sb, "echo ok"); res.Output != "ok\n" {
		t.Errorf("run after a 429: %+v", res)
	}
}

// TestRateLimitPastDeadline: a Retry-After longer than the caller can wait, or than the client
// ever waits, fails at once with a clear backend_unavailable, and nothing is made.
func TestRateLimitPastDeadline(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	for _, tc := range []struct {
		retryAfter int
		deadline   time.Duration
		why        string
	}{
		{3, time.Second, "would outlast the deadline"},
		{120, 3 * time.Minute, "the service asks to wait 2m0s, more than 1m30s"},
	} {
		fake.Inject(daytonafake.Fault{Op: "create", Status: http.StatusTooManyRequests, RetryAfter: tc.retryAfter})
		ctx, cancel := context.WithTimeout(context.Background(), tc.deadline)
		_, err := env.Create(ctx, spec("rate-limited-long"))
		cancel()
		// The message shows it gave up at once: a wait would have ended with the deadline.
		wantErr(t, err, envs.ErrBackendUnavailable, "rate limited", "429", tc.why)
	}
	if n := len(fake.Sandboxes()); n != 0 {
		t.Errorf("%d sandboxes made", n)
	}
}

// short is the timeout of runs meant to go through one blocking call (up to LongRun).
const short = 10 * time.Second

// TestBadGatewayEmptyBody: the toolbox proxy's bare 502 (empty body) on a run is a clear
// backend_unavailable that keeps the sandbox; on idempotent management calls it is retried; on a
// create whose answer it swallowed, the sandbox the service made is deleted.
func TestBadGatewayEmptyBody(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)

	for _, tc := range []struct {
		name, op string
		timeout  time.Duration
	}{
		{"run", "execute", short},
		{"session run", "session-exec", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sb := mustCreate(t, env, spec("bad-gateway-run"))
			runBash(t, sb, "echo kept > f")
			fake.Inject(daytonafake.Fault{Op: tc.op, Status: http.StatusBadGateway})
			_, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "echo lost", Timeout: tc.timeout})
			wantErr(t, err, envs.ErrBackendUnavailable, "502", "empty body")
			if errors.Is(err, envs.ErrSandboxFailed) {
				t.Errorf("a proxy's 502 counted as a failed sandbox: %v", err)
			}
			if res := runBash(t, sb, "cat f"); res.Output != "kept\n" {
				t.Errorf("the sandbox after a 502: %+v", res)
			}
		})
	}
	for _, tc := range []struct {
		name, op string
		timeout  time.Duration
	}{
		{"answer lost after the run", "code-run", short},
		{"answer lost after the session exec", "session-exec", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sb := mustCreate(t, env, spec("bad-gateway-after"))
			fake.Inject(daytonafake.Fault{Op: tc.op, Status: http.StatusBadGateway, After: true})
			_, err := sb.Run(context.Background(), envs.Exec{Language: "python", Code: "open('ran', 'w').write('once')", Timeout: tc.timeout})
			wantErr(t, err, envs.ErrBackendUnavailable, "502")
			// Not retried: the code ran exactly once (or was killed: then not at all).
			if res := runBash(t, sb, "cat ran 2>/dev/null || echo none"); res.Output != "once" && res.Output != "none\n" {
				t.Errorf("after a lost answer: %+v", res)
			}
		})
	}
	t.Run("get retried", func(t *testing.T) {
		fake.Inject(daytonafake.Fault{Op: "get", Status: http.StatusBadGateway, Times: 2})
		mustCreate(t, env, spec("bad-gateway-get"))
	})
	t.Run("create answer lost", func(t *testing.T) {
		fake.Inject(daytonafake.Fault{Op: "create", Status: http.StatusBadGateway, After: true})
		_, err := env.Create(context.Background(), spec("bad-gateway-create"))
		wantErr(t, err, envs.ErrBackendUnavailable, "502")
		if n := fake.Count("create"); n != 6 { // five creates above, one here, none repeated
			t.Errorf("%d create calls, want 6: a create must not be repeated after a 502", n)
		}
		// The sandbox the service made is deleted by name (checked by startFake's cleanup too).
		if n := fake.Live(); n != 0 {
			t.Errorf("%d sandboxes live", n)
		}
	})
}

// TestSandboxEndsInError: a sandbox that ends in error (or build_failed) while starting gives a
// clear sandbox_failed with the service's reason, and is deleted.
func TestSandboxEndsInError(t *testing.T) {
	for _, tc := range []struct {
		name, image, state string
	}{
		{"snapshot", "", "error"},
		{"image build", "python:3.12-slim", "build_failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := startFake(t, daytonafake.Options{})
			env := newEnv(t, fake, nil)
			fake.FailNextCreate("no runner available in region us")
			s := spec("ends-in-error")
			s.Image = tc.image
			_, err := env.Create(context.Background(), s)
			wantErr(t, err, envs.ErrSandboxFailed, "no runner available in region us")
			if tc.state == "build_failed" && !strings.Contains(err.Error(), "build_failed") {
				t.Errorf("error %q does not name the state build_failed", err)
			}
			all := fake.Sandboxes()
			if len(all) != 1 || !all[0].Deleted() {
				t.Fatalf("sandboxes %+v, want the failed one, deleted", all)
			}
			if tc.image != "" && (all[0].BuildInfo == nil || all[0].BuildInfo.DockerfileContent != "FROM "+tc.image) {
				t.Errorf("build info %+v, want FROM %s", all[0].BuildInfo, tc.image)
			}
		})
	}
}

// TestStuckCreating: a sandbox stuck in creating past the start deadline gives a clear
// sandbox_failed; it cannot be deleted while stuck (409), so the backend waits until the service
// lets it go, and deletes it.
func TestStuckCreating(t *testing.T) {
	fake := startFake(t, daytonafake.Options{CreateWait: 100 * time.Millisecond})
	env := newEnv(t, fake, func(c *daytona.Config) { c.StartTimeout = 500 * time.Millisecond })
	fake.StickNextCreate(1500 * time.Millisecond)
	start := time.Now()
	_, err := env.Create(context.Background(), spec("stuck"))
	wantErr(t, err, envs.ErrSandboxFailed, "still creating after")
	if took := time.Since(start); took < 1500*time.Millisecond {
		t.Errorf("create returned after %s, before the stuck sandbox could be deleted", took)
	}
	if n := fake.Count("delete"); n < 2 {
		t.Errorf("%d delete calls: the 409s of the stuck sandbox were not retried", n)
	}
	if n := fake.Live(); n != 0 {
		t.Fatalf("%d sandboxes live: the stuck one leaked", n)
	}
}

// TestCancelKillsRun: a run whose caller gives up is killed inside the sandbox.
func TestCancelKillsRun(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("cancel"))
	cancelKills(t, fake, sb, envs.Exec{Language: "bash", Code: "sleep 60"})
}

// cancelKills starts ex on sb, cancels it once the fake runs it, and wants the run to return
// context.Canceled and its command to be killed in the sandbox.
func cancelKills(t *testing.T, fake *daytonafake.Server, sb envs.Sandbox, ex envs.Exec) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := sb.Run(ctx, ex)
		done <- err
	}()
	testutil.Eventually(t, 10*time.Second, func() error {
		if fake.Running() == 0 {
			return errors.New("not running yet")
		}
		return nil
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := fake.Running(); n != 0 {
			return fmt.Errorf("%d toolbox commands running: the run was not killed", n)
		}
		return nil
	})
}

// timeoutAPI answers every execute with Daytona's 408, as when its own timeout fires.
type timeoutAPI struct{ daytona.API }

func (timeoutAPI) Execute(ctx context.Context, tb daytona.Toolbox, req daytona.ExecuteRequest) (daytona.ExecuteResponse, error) {
	if strings.Contains(req.Command, "command -v") { // the probe
		return daytona.ExecuteResponse{Result: "bash\nsetsid\nbase64\n"}, nil
	}
	return daytona.ExecuteResponse{}, &daytona.APIError{Op: "execute", StatusCode: http.StatusRequestTimeout, Code: "REQUEST_TIMEOUT", Message: "request timeout: command execution timeout"}
}

// TestDaytonaTimeoutIsExit124: should Daytona's own timeout fire (408), the run is a timeout,
// exit 124, not an error.
func TestDaytonaTimeoutIsExit124(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, func(c *daytona.Config) {
		c.NewAPI = func(a daytona.Account) (daytona.API, error) {
			cl, err := daytona.NewClient(daytona.ClientConfig{APIURL: a.APIURL, APIKey: a.APIKey})
			return timeoutAPI{cl}, err
		}
	})
	sb := mustCreate(t, env, spec("timeout-408"))
	res, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "sleep 100", Timeout: time.Second})
	if err != nil || res.ExitCode != 124 || !res.TimedOut || !strings.Contains(res.Output, "discards the output") {
		t.Fatalf("got %+v %v, want exit 124, timed out, and a note that the output is lost", res, err)
	}
}

// TestSandboxGone: a sandbox deleted behind the backend's back is a sandbox_failed on the next
// run (so that the worker makes a new one), and Open says not found.
func TestSandboxGone(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	sb, err := env.Create(context.Background(), spec("gone"))
	if err != nil {
		t.Fatal(err)
	}
	other := newEnv(t, fake, nil) // another process deletes it
	if err := other.Destroy(context.Background(), sb.Info().ID); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if s, _ := fake.Get(sb.Info().ID); s.State != "destroyed" {
			return fmt.Errorf("state %s", s.State)
		}
		return nil
	})
	_, err = sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "true"})
	wantErr(t, err, envs.ErrSandboxFailed, "gone")
	_, err = env.Open(context.Background(), sb.Info().ID)
	wantErr(t, err, envs.ErrNotFound)
}

// TestSandboxStateIsTheRunsResult: what a sandbox's own state makes the toolbox fail is the
// run's result or an error that keeps the sandbox; only a sandbox the toolbox does not know is
// gone (the worker then gives it up).
func TestSandboxStateIsTheRunsResult(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("own-state"))
	// A snippet removes its working directory: the toolbox cannot start a shell there.
	runBash(t, sb, `rm -rf "$PWD"`)
	res := runBash(t, sb, "echo hi")
	if res.ExitCode != 126 || !strings.HasPrefix(res.Output, "codefleet: the sandbox could not start a shell") {
		t.Fatalf("run without a working directory: %+v, want exit 126 saying why", res)
	}
	// The toolbox refuses one run (400, 404 while the API says the sandbox is started) or the
	// sandbox is changing state (409): kept.
	for _, op := range []string{"execute", "session-exec", "session-create", "session-command"} {
		for _, status := range []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict} {
			fake.Inject(daytonafake.Fault{Op: op, Status: status})
			timeout := short
			if op != "execute" {
				timeout = 0 // through a session
			}
			_, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "true", Timeout: timeout})
			if !errors.Is(err, envs.ErrSandboxFailed) || errors.Is(err, envs.ErrSandboxGone) {
				t.Fatalf("%s %d: %v, want ErrSandboxFailed, not ErrSandboxGone", op, status, err)
			}
		}
	}
}
