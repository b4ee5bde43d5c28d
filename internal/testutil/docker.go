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
	cli, err := dockerClient()
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
	var names []string
	n, err := removeManaged(LabelTestRun, RunID, func(c container.Summary) {
		names = append(names, fmt.Sprintf("%s %v (%s)", c.ID[:12], c.Names, c.State))
	})
	if err != nil {
		return fmt.Errorf("remove leftover containers: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("%d managed container(s) left behind: %v", n, names)
	}
	return nil
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

// CountContainers returns how many managed containers carry label=value.
func CountContainers(label, value string) (int, error) {
	list, err := listManaged(context.Background(), nil, label, value)
	return len(list), err
}

// RemoveContainers removes the managed containers that carry label=value and returns how many
// there were: the cleanup of a command run as a process, whose sandboxes lack LabelTestRun.
func RemoveContainers(label, value string) (int, error) {
	return removeManaged(label, value, nil)
}

// removeManaged removes the managed containers that carry label=value, telling each to seen
// (when not nil) first, and returns how many there were.
func removeManaged(label, value string, seen func(container.Summary)) (int, error) {
	cli, err := dockerClient()
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := listManaged(ctx, cli, label, value)
	if err != nil {
		return 0, err
	}
	for _, c := range list {
		if seen != nil {
			seen(c)
		}
		if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
			return len(list), err
		}
	}
	return len(list), nil
}

// listManaged lists the containers, running or not, that codefleet manages and that carry
// label=value; with a nil cli it opens its own.
func listManaged(ctx context.Context, cli *client.Client, label, value string) ([]container.Summary, error) {
	if cli == nil {
		c, err := dockerClient()
		if err != nil {
			return nil, err
		}
		defer c.Close()
		cli = c
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", envs.LabelManagedBy+"="+envs.ManagedByValue), filters.Arg("label", label+"="+value))})
}

func dockerClient() (*client.Client, error) {
	return client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
}
