package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/backend"
	"github.com/codefleet/codefleet/internal/testutil"
)

// TestInstalled does what a new user does, with the real binaries: `go install` (into fresh
// GOBIN and GOPATH; the module cache is the existing one, so nothing is downloaded), then
// `codefleet dev` as a process with no CODEFLEET_AGENT, then `codefleet run` against it.
//
//   - all: `go install ./cmd/...` puts sandbox-agent next to codefleet, and dev uses it;
//   - codefleet-only: `go install ./cmd/codefleet` alone (as `go install
//     .../cmd/codefleet@latest` does) leaves no sandbox-agent anywhere, and dev copies its own
//     executable into the sandboxes, where it runs as the agent.
//
// Both are built as `go install` builds by default: with cgo where a C compiler exists, so
// dynamically linked against glibc, which the Debian sandbox image has.
func TestInstalled(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds the commands with go install")
	}
	testutil.RequireDocker(t)
	image := testutil.SandboxImage()
	for _, tc := range []struct {
		name, pkgs, found string
	}{
		{"all", "./cmd/...", backend.SourceNextToExe},
		{"codefleet-only", "./cmd/codefleet", backend.SourceExecutable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gobin := goInstall(t, tc.pkgs)
			id := "dev-" + testutil.RunID + "-" + tc.name
			url, logs := startDevProcess(t, filepath.Join(gobin, "codefleet"), id, image)
			if !strings.Contains(logs.String(), tc.found) {
				t.Errorf("dev's log does not say the agent was found %q:\n%s", tc.found, logs.String())
			}
			codefleet := func(args ...string) (int, string, string, time.Duration) {
				cmd := exec.Command(filepath.Join(gobin, "codefleet"), append(args, "--nats-url", url)...)
				cmd.Env = cleanEnv(nil)
				var out, errOut testutil.SyncBuffer
				cmd.Stdout, cmd.Stderr = &out, &errOut
				start := time.Now()
				err := cmd.Run()
				took := time.Since(start)
				var ee *exec.ExitError
				if err != nil && !errors.As(err, &ee) {
					t.Fatalf("codefleet %q: %v", args, err)
				}
				return cmd.ProcessState.ExitCode(), out.String(), errOut.String(), took
			}
			if code, out, errOut, _ := codefleet("run", "echo $((40+2))", "--language", "bash"); code != 0 || out != "42\n" {
				t.Fatalf("run echo $((40+2)): exit %d, stdout %q, stderr %q\ndev: %s", code, out, errOut, logs.String())
			}
			// Exit 124 and "timed out" prove the flag applied: with the server's default timeout
			// of 60 s the 5 s sleep would finish, exit 0. No bound on the time: 2 shared CPUs.
			code, _, errOut, took := codefleet("run", "import time; time.sleep(5)", "--timeout", "1s", "--language", "python")
			if code != 124 || !strings.Contains(errOut, "timed out") {
				t.Fatalf("run sleep(5) --timeout 1s: exit %d in %s, stderr %q; want 124, timed out", code, took, errOut)
			}
			t.Logf("%s: the 1s timeout answered in %s", tc.name, took.Round(time.Millisecond))
		})
	}
}

// goInstall runs `go install pkgs` from the module's root into a fresh GOBIN, with a fresh
// GOPATH and the existing module cache, and returns GOBIN.
func goInstall(t *testing.T, pkgs string) string {
	t.Helper()
	goenv := func(name string) string {
		out, err := exec.Command("go", "env", name).Output()
		if err != nil {
			t.Fatalf("go env %s: %v", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	gobin := t.TempDir()
	cmd := exec.Command("go", "install", pkgs)
	cmd.Dir = "../.."
	cmd.Env = cleanEnv(nil, "GOBIN="+gobin, "GOPATH="+t.TempDir(), "GOMODCACHE="+goenv("GOMODCACHE"),
		"GOFLAGS="+strings.TrimSpace("-modcacherw "+goenv("GOFLAGS")))
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install %s: %v\n%s", pkgs, err, out)
	}
	entries, _ := os.ReadDir(gobin)
	var got []string
	for _, e := range entries {
		p := filepath.Join(gobin, e.Name())
		st, _ := os.Stat(p)
		linking := "static"
		if interp := backend.Interpreter(p); interp != "" {
			linking = "dynamic, " + interp
		}
		got = append(got, e.Name()+" "+strconv.FormatInt(st.Size()>>20, 10)+"MiB ("+linking+")")
	}
	t.Logf("go install %s: %s in %s", pkgs, strings.Join(got, ", "), time.Since(start).Round(time.Millisecond))
	return gobin
}

// cleanEnv returns this process's environment without the variables that configure codefleet
// (CODEFLEET_*, NATS_URL, DAYTONA_*) or Go's install locations, with PATH cut to the
// directories that hold no sandbox-agent when path is nil, then set.
func cleanEnv(path []string, set ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "CODEFLEET_"), strings.HasPrefix(k, "DAYTONA_"), k == "NATS_URL",
			k == "GOBIN", k == "GOPATH", k == "GOMODCACHE", k == "GOFLAGS":
		case k == "PATH":
			var dirs []string
			for _, d := range filepath.SplitList(v) {
				if _, err := os.Stat(filepath.Join(d, "sandbox-agent")); err != nil {
					dirs = append(dirs, d)
				}
			}
			env = append(env, "PATH="+strings.Join(dirs, string(filepath.ListSeparator)))
		default:
			env = append(env, kv)
		}
	}
	return append(env, set...)
}

// startDevProcess starts `codefleet dev` from the binary exe as a process, waits until its
// dispatcher answers, and returns its NATS URL and its log. When the test ends it sends it
// SIGTERM, checks that it exited 0 and that no sandbox of worker id is left (its sandboxes
// lack the test-run label, so the package's leftover check would not see them: they are
// removed here).
func startDevProcess(t *testing.T, exe, id, image string) (string, *testutil.SyncBuffer) {
	t.Helper()
	port := testutil.FreePort(t)
	cmd := exec.Command(exe, "dev", "--port", strconv.Itoa(port), "--store-dir", t.TempDir(), "--worker-id", id, "--image", image)
	cmd.Env = cleanEnv(nil)
	logs := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("codefleet dev after SIGTERM: %v\n%s", err, logs.String())
			}
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			t.Errorf("codefleet dev did not exit within a minute of SIGTERM\n%s", logs.String())
		}
		if n, err := testutil.RemoveContainers("io.codefleet.worker", id); err != nil || n != 0 {
			t.Errorf("codefleet dev left %d sandboxes behind (%v)", n, err)
		}
	})
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	testutil.WaitDispatcher(t, url, time.Minute)
	return url, logs
}
