package docker_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	dockerclient "github.com/docker/docker/client"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/envs/envtest"
)

func TestMain(m *testing.M) { testutil.MainWithLeftoverCheck(m) }

func testLabels() map[string]string { return testutil.TestLabels() }

func newEnv(t *testing.T, mut func(*docker.Config)) *docker.Env { return newEnvTB(t, mut) }

func newEnvTB(t testing.TB, mut func(*docker.Config)) *docker.Env {
	t.Helper()
	testutil.RequireDocker(t)
	cfg := docker.Config{Image: testutil.SandboxImage(), AgentPath: testutil.AgentBinary(t), Labels: testutil.TestLabels()}
	if mut != nil {
		mut(&cfg)
	}
	env, err := docker.New(cfg, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	return env
}

func TestConformance(t *testing.T) {
	env := newEnv(t, nil)
	envtest.Run(t, envtest.Config{Env: env, Labels: testutil.TestLabels(), MaxOutput: docker.DefaultMaxOutput})
}

// create makes a sandbox that the test destroys.
func create(t *testing.T, env *docker.Env, spec envs.Spec) envs.Sandbox {
	t.Helper()
	spec.Tenant, spec.Conversation = "dockertest", strings.ReplaceAll(t.Name(), "/", "_")
	spec.Labels = testutil.TestLabels()
	sb, err := env.Create(context.Background(), spec)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() {
		sb.Close()
		env.Destroy(context.Background(), sb.Info().ID)
	})
	return sb
}

func runOK(t *testing.T, sb envs.Sandbox, lang, code string) envs.Result {
	t.Helper()
	res, err := sb.Run(context.Background(), envs.Exec{Language: lang, Code: code})
	if err != nil {
		t.Fatalf("run %q: %v", code, err)
	}
	return res
}

// TestLockedDown checks the defaults a user relies on for containment, from inside the sandbox.
func TestLockedDown(t *testing.T) {
	env := newEnv(t, nil)
	sb := create(t, env, envs.Spec{})
	checks := []struct {
		name, code, want string
	}{
		{"unprivileged user", "id -u", "1000\n"},
		{"workdir", "pwd", "/workspace\n"},
		{"no capabilities", "grep CapEff /proc/self/status | tr -d '\\t'", "CapEff:0000000000000000\n"},
		{"no new privileges", "grep NoNewPrivs /proc/self/status | tr -d '\\t'", "NoNewPrivs:1\n"},
		{"no network but loopback", "ls /sys/class/net", "lo\n"},
		{"memory limit 512 MiB", "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912\n"},
		{"agent unreachable through /proc", "cat /proc/1/fd/1 2>&1 >/dev/null | grep -c 'Permission denied'", "1\n"},
	}
	for _, c := range checks {
		if res := runOK(t, sb, "bash", c.code); res.Output != c.want {
			t.Errorf("%s: %q printed %q (exit %d), want %q", c.name, c.code, res.Output, res.ExitCode, c.want)
		}
	}
}

// TestHostileSnippets: a fork bomb and a memory hog are contained, and the sandbox still answers.
func TestHostileSnippets(t *testing.T) {
	env := newEnv(t, nil)
	sb := create(t, env, envs.Spec{})
	ctx := context.Background()
	res, err := sb.Run(ctx, envs.Exec{Language: "bash", Code: "bomb() { bomb | bomb & }; bomb", Timeout: 3e9})
	if err != nil {
		t.Fatalf("fork bomb: %v", err)
	}
	t.Logf("fork bomb: exit %d timed_out %v", res.ExitCode, res.TimedOut)
	res, err = sb.Run(ctx, envs.Exec{Language: "python", Code: "x = bytearray(2 << 30)", Timeout: 20e9})
	if err != nil {
		t.Fatalf("memory hog: %v", err)
	}
	if res.ExitCode == 0 {
		t.Errorf("allocating 2 GiB in a 512 MiB sandbox succeeded: %q", res.Output)
	}
	if got := runOK(t, sb, "bash", "echo alive"); got.Output != "alive\n" {
		t.Fatalf("after hostile snippets: got %q", got.Output)
	}
	// Nothing of the bomb is left: the agent and this bash are all that run, besides the idle
	// warm interpreters, which hold their fd 3 waiting for a run (the agent's fds cannot be
	// read; this bash has no fd 3: a cold one never had it, a warm one closed it). An
	// interpreter the agent is starting (forked, not yet exec'd: the agent's fds) may show up
	// for a moment after a run, so a count of 2 is waited for.
	testutil.Eventually(t, 10*time.Second, func() error {
		if got := runOK(t, sb, "bash", "n=0; for p in /proc/[0-9]*; do [ -e $p/fd/3 ] || n=$((n+1)); done; echo $n"); got.Output != "2\n" {
			return fmt.Errorf("processes left after the fork bomb: %q", got.Output)
		}
		return nil
	})
}

// TestWarmInterpreters: inside a container (the agent as PID 1), runs go to the pre-started
// interpreters and behave as cold ones.
func TestWarmInterpreters(t *testing.T) {
	env := newEnv(t, nil)
	sb := create(t, env, envs.Spec{})
	// A warm interpreter's command line is its bootstrap; a run after another of its language
	// finds one started.
	for _, c := range []struct{ lang, code, want string }{
		{"bash", `grep -c BASH_EXECUTION_STRING /proc/$$/cmdline; echo "$0" $#`, "1\n/usr/bin/bash 0\n"},
		{"python", "import sys; print(len(sys.orig_argv[2]) > 100, sys.argv)", "True ['-c']\n"},
	} {
		testutil.Eventually(t, 30*time.Second, func() error {
			if res := runOK(t, sb, c.lang, c.code); res.Output != c.want {
				return fmt.Errorf("%s printed %q (exit %d), want %q", c.lang, res.Output, res.ExitCode, c.want)
			}
			return nil
		})
	}
	checks := []struct{ lang, code, want string }{
		{"python", "import sys\ndef f():\n    1/0\nf()", "Traceback (most recent call last):\n  File \"<string>\", line 4, in <module>\n  File \"<string>\", line 3, in f\nZeroDivisionError: division by zero\n"},
		{"bash", "pip_dir=$(python3 -c 'import site; print(site.getusersitepackages())'); mkdir -p $pip_dir && echo 'X = 42' > $pip_dir/cfmod.py", ""},
		{"python", "import cfmod; print(cfmod.X)", "42\n"},
	}
	for _, c := range checks {
		if res := runOK(t, sb, c.lang, c.code); res.Output != c.want {
			t.Errorf("%s %q printed %q (exit %d), want %q", c.lang, c.code, res.Output, res.ExitCode, c.want)
		}
	}
}

func TestMissingImage(t *testing.T) {
	env := newEnv(t, nil)
	_, err := env.Create(context.Background(), envs.Spec{Tenant: "t", Conversation: "c", Image: "codefleet-no-such-image:nope", Labels: testutil.TestLabels()})
	if !errors.Is(err, envs.ErrSandboxFailed) || !strings.Contains(err.Error(), "codefleet-no-such-image:nope") {
		t.Fatalf("got %v, want ErrSandboxFailed naming the image", err)
	}
}

func TestDockerNotRunning(t *testing.T) {
	env, err := docker.New(docker.Config{Host: "unix:///nonexistent/docker.sock", AgentPath: testutil.AgentBinary(t)}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.Create(context.Background(), envs.Spec{Tenant: "t", Conversation: "c"})
	if !errors.Is(err, envs.ErrBackendUnavailable) || !strings.Contains(err.Error(), "not reachable") {
		t.Fatalf("got %v, want ErrBackendUnavailable saying the daemon is not reachable", err)
	}
}

func TestLanguages(t *testing.T) {
	env := newEnv(t, nil)
	sb := create(t, env, envs.Spec{})
	got := strings.Join(sb.Languages(), ",")
	if got != "python,bash,javascript,typescript" {
		t.Fatalf("languages = %s", got)
	}
	if res := runOK(t, sb, "javascript", "const fs = require('fs'); fs.writeFileSync('js.txt', 'js'); console.log(1 + 1)"); res.Output != "2\n" || res.ExitCode != 0 {
		t.Fatalf("javascript: %+v", res)
	}
	if res := runOK(t, sb, "typescript", "const n: number = 40;\nconsole.log(n + 2)"); res.Output != "42\n" || res.ExitCode != 0 {
		t.Fatalf("typescript: %+v", res)
	}
	if res := runOK(t, sb, "bash", "ls -A"); res.Output != "js.txt\n" {
		t.Fatalf("the workdir should hold only the snippet's file, got %q", res.Output)
	}
}

// TestConformanceAttach runs the conformance suite on the attached stream alone, the transport
// of a worker that does not share a filesystem with the daemon.
func TestConformanceAttach(t *testing.T) {
	env := newEnv(t, func(c *docker.Config) { c.SocketDir = docker.NoSocketDir })
	envtest.Run(t, envtest.Config{Env: env, Labels: testutil.TestLabels(), MaxOutput: docker.DefaultMaxOutput})
}

// TestSocketTransport: with the worker beside the daemon, frames go over the socket; a snippet
// can neither reach nor replace it; the socket comes back when the worker re-attaches, and the
// directory goes with the container.
func TestSocketTransport(t *testing.T) {
	sockets := t.TempDir()
	env := newEnv(t, func(c *docker.Config) { c.SocketDir = sockets })
	sb := create(t, env, envs.Spec{})
	if got := docker.Transport(sb); got != "socket" {
		t.Fatalf("transport = %s, want socket", got)
	}
	dirs, _ := filepath.Glob(filepath.Join(sockets, "*"))
	if len(dirs) != 1 {
		t.Fatalf("socket directories: %v, want one", dirs)
	}
	for _, c := range []struct{ name, code, want string }{
		{"run", "echo hi; exit 5", "hi\n"},
		// The listener is closed once the agent connected: nothing to connect to.
		{"socket gone after the connection", "ls -A /.codefleet/run | wc -l", "0\n"},
		{"socket directory read-only", "touch /.codefleet/run/worker.sock 2>&1 | grep -c 'Read-only file system'", "1\n"},
	} {
		if res := runOK(t, sb, "bash", c.code); res.Output != c.want {
			t.Errorf("%s: %q printed %q, want %q", c.name, c.code, res.Output, c.want)
		}
	}
	// A run the worker gives up on (its context ends) is killed in the sandbox too.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := sb.Run(ctx, envs.Exec{Language: "bash", Code: "touch started; sleep 60"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("abandoned run: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if res := runOK(t, sb, "bash", "ls started; cat /proc/[0-9]*/comm | grep -c '^sleep$'"); res.Output != "started\n0\n" {
			return fmt.Errorf("after the abandoned run: %q, want its file and no sleep left", res.Output)
		}
		return nil
	})

	// Re-attach (a restarted worker): the socket again, with the files.
	id := sb.Info().ID
	sb.Close()
	again, err := env.Open(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got := docker.Transport(again); got != "socket" {
		t.Fatalf("transport after re-attaching = %s, want socket", got)
	}
	if res := runOK(t, again, "bash", "cat started && echo files kept"); res.Output != "files kept\n" {
		t.Fatalf("after re-attaching: %q", res.Output)
	}
	if err := env.Destroy(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dirs[0]); !os.IsNotExist(err) {
		t.Fatalf("socket directory after destroy: %v, want it gone", err)
	}
}

// TestSocketUnseenByDaemon: a daemon that does not see the worker's socket directory (a remote
// one, or the worker in a container without the directory) is detected by the first creation;
// that sandbox and the next use the attached stream, and no directory is left.
func TestSocketUnseenByDaemon(t *testing.T) {
	sockets := t.TempDir()
	env := newEnv(t, func(c *docker.Config) { c.SocketDir = sockets })
	env.MoveBindSources("/nonexistent-codefleet")
	for i := range 2 {
		sb := create(t, env, envs.Spec{})
		if got := docker.Transport(sb); got != "attach" {
			t.Fatalf("sandbox %d: transport = %s, want attach", i, got)
		}
		if res := runOK(t, sb, "bash", "echo ok"); res.Output != "ok\n" {
			t.Fatalf("sandbox %d: run printed %q", i, res.Output)
		}
	}
	if env.SocketsOn() {
		t.Fatal("the socket transport is still on")
	}
	if dirs, _ := filepath.Glob(filepath.Join(sockets, "*")); len(dirs) != 0 {
		t.Fatalf("socket directories left: %v", dirs)
	}
}

// TestSocketDirGoneWhileStopped: a stopped sandbox whose socket directory is gone (it lives in
// /run, which a reboot empties) starts again on re-attach, with its files and the socket.
func TestSocketDirGoneWhileStopped(t *testing.T) {
	sockets := t.TempDir()
	env := newEnv(t, func(c *docker.Config) { c.SocketDir = sockets })
	sb := create(t, env, envs.Spec{})
	runOK(t, sb, "bash", "echo kept > f")
	id := sb.Info().ID
	sb.Close()
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if err := cli.ContainerStop(context.Background(), id, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	dirs, _ := filepath.Glob(filepath.Join(sockets, "*"))
	for _, d := range dirs {
		os.RemoveAll(d)
	}
	again, err := env.Open(context.Background(), id)
	if err != nil {
		t.Fatalf("re-attach to the stopped sandbox: %v", err)
	}
	defer again.Close()
	if res := runOK(t, again, "bash", "cat f"); res.Output != "kept\n" || docker.Transport(again) != "socket" {
		t.Fatalf("after the restart: %q over %s, want the file over the socket", res.Output, docker.Transport(again))
	}
}
