// Package testutil holds the helpers codefleet's tests share: the sandbox agent built for the
// test run, the Docker preconditions, the leftover-container check, an embedded NATS server and
// condition polling.
package testutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/pkg/envs"
)

// LabelTestRun marks every container a test process creates, so its TestMain can check that
// none is left behind.
const LabelTestRun = "io.codefleet.test-run"

// RunID identifies this test process; it is the value of LabelTestRun.
var RunID = strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)

// TestLabels returns the labels tests put on their sandboxes.
func TestLabels() map[string]string { return map[string]string{LabelTestRun: RunID} }

// SandboxImage is the image tests run sandboxes from (built by scripts/sandbox-image.sh).
func SandboxImage() string {
	if img := os.Getenv("CODEFLEET_IMAGE"); img != "" {
		return img
	}
	return "codefleet-sandbox:bookworm"
}

var (
	agentOnce sync.Once
	agentPath string
	agentErr  error
)

// AgentBinary builds cmd/sandbox-agent (static, linux) once per test process and returns its path.
func AgentBinary(t testing.TB) string {
	t.Helper()
	agentOnce.Do(func() {
		if p := os.Getenv("CODEFLEET_AGENT"); p != "" {
			agentPath = p
			return
		}
		dir, err := os.MkdirTemp("", "codefleet-agent-")
		if err != nil {
			agentErr = err
			return
		}
		agentPath = filepath.Join(dir, "sandbox-agent")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", agentPath, "github.com/codefleet/codefleet/cmd/sandbox-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = fmt.Errorf("build sandbox-agent: %v\n%s", err, out)
		}
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return agentPath
}

// RequireDocker fails the test when the Docker daemon or the sandbox image is missing. It does
// not skip: Docker tests are part of `make test` and must run in CI.
func RequireDocker(t testing.TB) {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatalf("docker client: %v", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		t.Fatalf("these tests need a running Docker daemon: %v", err)
	}
	if _, err := cli.ImageInspect(ctx, SandboxImage()); err != nil {
		t.Fatalf("these tests need the sandbox image %s (run scripts/sandbox-image.sh): %v", SandboxImage(), err)
	}
}

// CheckLeftovers lists the containers this test process left behind, removes them and returns
// an error naming them. Call it from TestMain after m.Run.
func CheckLeftovers() error {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", envs.LabelManagedBy+"="+envs.ManagedByValue),
		filters.Arg("label", LabelTestRun+"="+RunID),
	)})
	if err != nil {
		return fmt.Errorf("list leftover containers: %w", err)
	}
	if len(list) == 0 {
		return nil
	}
	var names []string
	for _, c := range list {
		names = append(names, fmt.Sprintf("%s %v (%s)", c.ID[:12], c.Names, c.State))
		cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
	}
	return fmt.Errorf("%d managed container(s) left behind: %v", len(list), names)
}

// MainWithLeftoverCheck runs the tests and then fails the package if any managed container of
// this test process is left.
func MainWithLeftoverCheck(m *testing.M) {
	code := m.Run()
	if agentPath != "" && os.Getenv("CODEFLEET_AGENT") == "" {
		os.RemoveAll(filepath.Dir(agentPath)) // the agent built for this process
	}
	// fake.Root, the fake backend's sandboxes (fake cannot be imported here: it imports the
	// agent, whose tests use this package).
	os.RemoveAll(filepath.Join(os.TempDir(), "codefleet-fake-"+strconv.Itoa(os.Getpid())))
	if err := CheckLeftovers(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// Logger returns a logger that writes to the test's log (debug level with CODEFLEET_TEST_LOG=1,
// warnings otherwise).
func Logger(t testing.TB) zerolog.Logger {
	level := zerolog.WarnLevel
	if os.Getenv("CODEFLEET_TEST_LOG") != "" {
		level = zerolog.DebugLevel
	}
	return zerolog.New(zerolog.NewTestWriter(t)).Level(level).With().Timestamp().Logger()
}

// Pace pauses a benchmark for d, off the clock, as a client does between runs (0: no pause).
func Pace(b *testing.B, d time.Duration) {
	if d > 0 {
		b.StopTimer()
		time.Sleep(d)
		b.StartTimer()
	}
}

// Eventually polls cond every 10 ms until it returns nil or timeout passes, then fails with
// cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CountContainers returns how many managed containers carry label=value.
func CountContainers(label, value string) (int, error) {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", envs.LabelManagedBy+"="+envs.ManagedByValue), filters.Arg("label", label+"="+value))})
	return len(list), err
}

// Check closes errs, which the test's goroutines have finished sending on, reports every error
// in it and stops the test if there was any.
func Check(t testing.TB, errs chan error) {
	t.Helper()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}
