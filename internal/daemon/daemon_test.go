package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/testutil"
)

// TestMain doubles as the daemon of TestMainExits: with DAEMON_TEST_MAIN set, the test binary
// runs Main with a run that does what the variable says.
func TestMain(m *testing.M) {
	if mode := os.Getenv("DAEMON_TEST_MAIN"); mode != "" {
		Main("test", func(ctx context.Context, args []string, stderr io.Writer) error {
			switch mode {
			case "error":
				return errors.New("boom")
			case "help":
				return config.ErrHelp
			case "wait": // stops only after the context ends and a further 30 s
				fmt.Fprintln(stderr, "waiting")
				<-ctx.Done()
				fmt.Fprintln(stderr, "stopping")
				time.Sleep(30 * time.Second)
			case "raise": // on the context's end, sends itself a second SIGTERM at once
				fmt.Fprintln(stderr, "waiting")
				<-ctx.Done()
				_ = syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
				time.Sleep(30 * time.Second)
			}
			return nil
		})
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestOptions(t *testing.T) {
	testutil.ClearEnv(t)
	t.Setenv("NATS_URL", "nats://alias:4222")
	var o Options
	fs := o.FlagSet("test", "test does things.", io.Discard)
	if err := Parse(fs, []string{"--log-level", "debug"}); err != nil {
		t.Fatal(err)
	}
	if o.NATSURL != "nats://alias:4222" || o.NATSAuth != (config.NATSAuth{}) || o.LogLevel != "debug" || o.LogFormat != "json" {
		t.Errorf("options %+v", o)
	}
	if err := o.Check(); err != nil {
		t.Errorf("Check: %v", err)
	}
	var buf bytes.Buffer
	log, err := o.Logger(&buf, "test")
	if err != nil {
		t.Fatal(err)
	}
	log.Debug().Msg("hello")
	if !strings.Contains(buf.String(), `"service":"test"`) || !strings.Contains(buf.String(), `"level":"debug"`) {
		t.Errorf("log %q", buf.String())
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nats-url="}, "--nats-url is empty"},
		{[]string{"--log-level", "loud"}, "log level"},
		{[]string{"--log-format", "xml"}, "log format"},
	} {
		var o Options
		if err := Parse(o.FlagSet("test", "", io.Discard), tc.args); err != nil {
			t.Fatal(err)
		}
		if err := o.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Check after %q = %v, want %q", tc.args, err, tc.want)
		}
	}
	if err := Parse(o.FlagSet("test", "", io.Discard), []string{"serve"}); err == nil || !strings.Contains(err.Error(), "the test takes flags only") {
		t.Errorf("Parse(serve) = %v", err)
	}
	var usage bytes.Buffer
	if err := Parse(o.FlagSet("test", "test does things.", &usage), []string{"--help"}); !errors.Is(err, config.ErrHelp) ||
		!strings.Contains(usage.String(), "test does things.") || !strings.Contains(usage.String(), "$CODEFLEET_NATS_URL, $NATS_URL") {
		t.Errorf("Parse(--help) = %v, usage %q", err, usage.String())
	}
}

// service is a Service that records its calls.
type service struct {
	mu               sync.Mutex
	calls            []string
	startErr         error
	stopErr          error
	blockStart       bool          // Start waits for its context
	stopDeadlineLeft time.Duration // time left to Stop's deadline
	nc               *nats.Conn
}

func (s *service) record(c string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, c)
}

func (s *service) Start(ctx context.Context) error {
	s.record("start")
	if s.blockStart {
		<-ctx.Done()
		return ctx.Err()
	}
	return s.startErr
}

func (s *service) Stop(ctx context.Context) error {
	s.record("stop")
	if d, ok := ctx.Deadline(); ok {
		s.mu.Lock()
		s.stopDeadlineLeft = time.Until(d)
		s.mu.Unlock()
	}
	return s.stopErr
}

func (s *service) Ready(context.Context) error { return nil }

func (s *service) history() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.calls, ",")
}

func spec() Spec {
	return Spec{Name: "test", Instance: "t-1", Version: "v9", ReadyFields: map[string]any{"backend": "fake"},
		Stopping: "draining", StoppingFields: map[string]any{"drain_timeout": "2s"}, StopTimeout: 5 * time.Second}
}

// runService runs Run with svc on the NATS server at url, cancelling its context (as SIGTERM
// does) once svc has started when cancelAfterStart is set: once Run logged "<name> ready", or,
// for a svc whose Start blocks, once Start was called. It returns the logs and Run's error.
func runService(t *testing.T, sp Spec, svc *service, url string, cancelAfterStart bool) (string, error) {
	t.Helper()
	var logs testutil.SyncBuffer
	log := zerolog.New(&logs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{NATSURL: url}, log, sp, func(nc *nats.Conn, _ prometheus.Registerer) (Service, error) {
			svc.nc = nc
			return svc, nil
		})
	}()
	if cancelAfterStart {
		ready := `"message":"` + sp.Name + ` ready"`
		testutil.Eventually(t, 10*time.Second, func() error {
			if svc.blockStart && strings.HasPrefix(svc.history(), "start") {
				return nil // Start waits for the context: cancelling now is a signal while starting
			}
			if strings.Contains(logs.String(), ready) {
				return nil
			}
			return fmt.Errorf("not ready: calls %q, logs %s", svc.history(), logs.String())
		})
		cancel()
	}
	select {
	case err := <-done:
		return logs.String(), err
	case <-time.After(30 * time.Second):
		t.Fatalf("Run did not return\n%s", logs.String())
	}
	return "", nil
}

func TestRun(t *testing.T) {
	srv := testutil.StartNATS(t)
	svc := &service{}
	logs, err := runService(t, spec(), svc, srv.ClientURL(), true)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, logs)
	}
	if h := svc.history(); h != "start,stop" {
		t.Errorf("calls %s, want start,stop", h)
	}
	if left := svc.stopDeadlineLeft; left <= 4*time.Second || left > 5*time.Second {
		t.Errorf("Stop's deadline %s away, want the StopTimeout 5s", left)
	}
	if name := svc.nc.Opts.Name; name != "codefleet-test t-1" {
		t.Errorf("NATS connection name %q", name)
	}
	if !svc.nc.IsClosed() {
		t.Errorf("NATS connection not closed (drained) after Run")
	}
	for _, w := range []string{`"message":"NATS connected"`, `"version":"v9"`, `"backend":"fake"`, `"message":"test ready"`,
		`"drain_timeout":"2s"`, `"message":"signal received: draining (a second signal exits at once)"`, `"message":"bye"`} {
		if !strings.Contains(logs, w) {
			t.Errorf("logs lack %s:\n%s", w, logs)
		}
	}
}

func TestRunStopFails(t *testing.T) {
	srv := testutil.StartNATS(t)
	sp := spec()
	sp.StopName = "shutdown"
	logs, err := runService(t, sp, &service{stopErr: errors.New("stuck")}, srv.ClientURL(), true)
	if err == nil || err.Error() != "shutdown: stuck" {
		t.Fatalf("Run = %v, want shutdown: stuck", err)
	}
	if !strings.Contains(logs, `"message":"shutdown"`) || strings.Contains(logs, "bye") {
		t.Errorf("logs %s", logs)
	}
	sp = spec()
	sp.Stopping = ""
	logs, err = runService(t, sp, &service{stopErr: errors.New("stuck")}, srv.ClientURL(), true)
	if err == nil || err.Error() != "stop: stuck" || !strings.Contains(logs, "signal received: stopping") {
		t.Fatalf("Run = %v, want stop: stuck; logs %s", err, logs)
	}
}

// TestRunStartFails: a failed Start is undone and its error returned; a Start that a signal
// cut short is a clean stop.
func TestRunStartFails(t *testing.T) {
	srv := testutil.StartNATS(t)
	svc := &service{startErr: errors.New("id taken")}
	logs, err := runService(t, spec(), svc, srv.ClientURL(), false)
	if err == nil || err.Error() != "id taken" || svc.history() != "start,stop" {
		t.Fatalf("Run = %v, calls %s; want the start error after start,stop\n%s", err, svc.history(), logs)
	}
	if strings.Contains(logs, "ready") {
		t.Errorf("ready after a failed start:\n%s", logs)
	}

	svc = &service{blockStart: true}
	logs, err = runService(t, spec(), svc, srv.ClientURL(), true)
	if err != nil || svc.history() != "start,stop" || !strings.Contains(logs, "signal received while starting: stopped") {
		t.Fatalf("Run = %v, calls %s; want a clean stop\n%s", err, svc.history(), logs)
	}
}

func TestRunErrors(t *testing.T) {
	url := "nats://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	err := Run(context.Background(), Options{NATSURL: url}, zerolog.Nop(), spec(), func(*nats.Conn, prometheus.Registerer) (Service, error) {
		t.Fatal("newService without a connection")
		return nil, nil
	})
	if err == nil || !strings.Contains(err.Error(), "connect to NATS at "+url) {
		t.Errorf("Run without NATS = %v", err)
	}
	srv := testutil.StartNATS(t)
	err = Run(context.Background(), Options{NATSURL: srv.ClientURL()}, zerolog.Nop(), spec(), func(*nats.Conn, prometheus.Registerer) (Service, error) {
		return nil, errors.New("bad config")
	})
	if err == nil || err.Error() != "bad config" {
		t.Errorf("Run = %v, want newService's error", err)
	}
}

// startMain starts the test binary as the daemon of TestMain in mode, with its stderr in the
// returned buffer; it is killed at the end of the test if still running.
func startMain(t *testing.T, mode string) (*exec.Cmd, *testutil.SyncBuffer) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "DAEMON_TEST_MAIN="+mode)
	out := &testutil.SyncBuffer{}
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // ErrProcessDone once waited for
	return cmd, out
}

// waitKilled waits for cmd to end and reports unless a SIGTERM killed it.
func waitKilled(t *testing.T, cmd *exec.Cmd, out *testutil.SyncBuffer) {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
			t.Errorf("after a second SIGTERM: %v, want killed by it; stderr %q", cmd.ProcessState, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("a second SIGTERM did not kill the daemon; stderr %q", out.String())
	}
}

// TestMainExits runs Main in a process of its own: an error exits 1 with "codefleet <name>:",
// help exits 0, the first SIGTERM ends the context (a clean stop), and a second one kills.
func TestMainExits(t *testing.T) {
	start := func(mode string) (*exec.Cmd, *testutil.SyncBuffer) { return startMain(t, mode) }
	cmd, out := start("error")
	if err := cmd.Wait(); cmd.ProcessState.ExitCode() != 1 || out.String() != "codefleet test: boom\n" {
		t.Errorf("error: %v, exit %d, stderr %q", err, cmd.ProcessState.ExitCode(), out.String())
	}
	cmd, out = start("help")
	if err := cmd.Wait(); err != nil || out.String() != "" {
		t.Errorf("help: %v, stderr %q", err, out.String())
	}

	cmd, out = start("wait")
	wait := func(s string) {
		testutil.Eventually(t, 10*time.Second, func() error {
			if !strings.Contains(out.String(), s) {
				return fmt.Errorf("stderr %q lacks %q", out.String(), s)
			}
			return nil
		})
	}
	wait("waiting")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// "stopping" is printed once the context ended, which SignalContext does only after it
	// stopped catching the signals: the second SIGTERM cannot be swallowed.
	wait("stopping")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitKilled(t, cmd, out)
}

// TestSecondSignalRightAfterContext: a second signal sent the moment the context has ended
// kills. The daemon sends it to itself as soon as it sees the context end: with a context that
// ended before the signals stopped being caught (signal.NotifyContext with an AfterFunc(stop)),
// that signal was swallowed and the daemon slept on.
func TestSecondSignalRightAfterContext(t *testing.T) {
	for i := 0; i < 5; i++ {
		cmd, out := startMain(t, "raise")
		testutil.Eventually(t, 10*time.Second, func() error {
			if !strings.Contains(out.String(), "waiting") {
				return fmt.Errorf("stderr %q lacks waiting", out.String())
			}
			return nil
		})
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		waitKilled(t, cmd, out)
	}
}
