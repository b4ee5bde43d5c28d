package main

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/testutil"
)

func TestMain(m *testing.M) {
	if os.Getenv(cliEnv) != "" { // started by runOnTerminal as the command itself
		main()
	}
	testutil.MainWithLeftoverCheck(m)
}

// startDev runs `codefleet dev` with args in this process, its NATS server on a free port, and
// waits until its dispatcher answers. When the test ends it stops it as SIGTERM does, checks
// that it exited 0 and calls after. It returns the NATS URL.
func startDev(t *testing.T, after func(), args ...string) string {
	t.Helper()
	port := testutil.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	devDone := make(chan int, 1)
	var devErr testutil.SyncBuffer
	go func() {
		// Metrics and probes on a port of their own (args may name one): tests start fleets side by side.
		devDone <- run(ctx, append([]string{"dev", "--port", strconv.Itoa(port), "--log-level", "warn", "--http-addr", "127.0.0.1:0"}, args...), nil, &bytes.Buffer{}, &devErr)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-devDone; code != 0 {
			t.Errorf("codefleet dev exited %d: %s", code, devErr.String())
		}
		after()
	})
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	testutil.WaitDispatcher(t, url, 30*time.Second)
	return url
}

// cli runs the CLI in this process with args, code read from stdin, and returns its exit code,
// stdout and stderr.
func cli(stdin string, args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestNewcomerPath is what the README promises: `codefleet dev` starts a fleet, `codefleet run`
// prints 42 and exits 0, and `exit 3` in bash exits 3.
func TestNewcomerPath(t *testing.T) {
	testutil.RequireDocker(t)
	id := "dev-" + testutil.RunID
	url := startDev(t, func() {
		if n, err := testutil.CountContainers("io.codefleet.worker", id); err != nil || n != 0 {
			t.Errorf("codefleet dev left %d sandboxes behind (%v)", n, err)
		}
	}, "--worker-id", id, "--agent", testutil.AgentBinary(t), "--image", testutil.SandboxImage())

	// Flags stand before or after the code.
	if code, out, errOut := cli("", "run", "print(40+2)", "--conversation", "demo", "--nats-url", url); code != 0 || out != "42\n" {
		t.Fatalf("run print(40+2): exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, _, errOut := cli("", "run", "--nats-url", url, "--conversation", "demo", "--language", "bash", "exit 3"); code != 3 {
		t.Fatalf("run exit 3: exit %d, stderr %q", code, errOut)
	}
	if code, out, errOut := cli("", "run", "--nats-url", url, "--conversation", "demo", "--", `print("--x")`); code != 0 || out != "--x\n" {
		t.Fatalf(`run -- print("--x"): exit %d, stdout %q, stderr %q`, code, out, errOut)
	}
	if code, out, _ := cli("open('f.txt','w').write('kept')\nprint(open('f.txt').read())", "run", "--conversation", "demo", "--nats-url", url); code != 0 || out != "kept\n" {
		t.Fatalf("code from stdin: exit %d, stdout %q", code, out)
	}
	if code, _, errOut := cli("", "run", "x", "--language", "cobol", "--nats-url", url); code != exitFleetError || !strings.Contains(errOut, "unsupported_language") {
		t.Fatalf("cobol: exit %d, stderr %q", code, errOut)
	}
	if code, out, errOut := cli("", "status", "--nats-url", url); code != 0 || !strings.Contains(out, id) {
		t.Fatalf("status: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, errOut := cli("", "close", "--conversation", "demo", "--nats-url", url); code != 0 || !strings.HasPrefix(out, "closed demo") {
		t.Fatalf("close: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// TestCommandLine: flags are flags wherever they stand, -- ends them, and help exits 0; none of
// it needs a fleet.
func TestCommandLine(t *testing.T) {
	testutil.ClearEnv(t)
	closed := "nats://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // in stdout
		stderr string // in stderr
	}{
		{"flag after the code", []string{"run", "print(1)", "--nats-url", closed}, exitFleetError, "", "connect to NATS at " + closed},
		{"variable", []string{"run", "print(1)"}, exitFleetError, "", "connect to NATS at " + closed},
		{"dash dash", []string{"run", "--", "print(1)", "--nats-url", "x"}, exitFleetError, "", "connect to NATS at " + closed},
		{"unknown flag after the code", []string{"run", "print(1)", "--no-such-flag"}, exitFleetError, "", "unknown flag: --no-such-flag"},
		{"single dash", []string{"run", "-timeout", "1s", "x"}, exitFleetError, "", "flags take two dashes: --timeout"},
		{"run help", []string{"run", "--help"}, 0, "", "Usage: codefleet run [flags] [code]"},
		{"stream and no stream", []string{"run", "x", "--stream", "--no-stream"}, exitFleetError, "", "--stream and --no-stream contradict"},
		{"cp help", []string{"cp", "--help"}, 0, "", "Usage: codefleet cp [flags] SRC DST"},
		{"cp one operand", []string{"cp", "demo:x"}, exitFleetError, "", "cp takes two arguments, SRC and DST, got 1"},
		{"dev help", []string{"dev", "-h"}, 0, "", "--daytona-api-key string"},
		{"dev stray argument", []string{"dev", "now"}, exitFleetError, "", `unexpected arguments ["now"]`},
		{"dev unknown backend", []string{"dev", "--backend", "podman"}, exitFleetError, "", `unknown backend "podman"`},
		{"dev daytona without a key", []string{"dev", "--backend", "daytona"}, exitFleetError, "", "DAYTONA_API_KEY"},
		{"help", []string{"help"}, 0, "usage: codefleet", ""},
		{"no command", nil, 2, "", "usage: codefleet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("NATS_URL", closed)
			code, out, errOut := cli("", tc.args...)
			if code != tc.code || !strings.Contains(out, tc.stdout) || !strings.Contains(errOut, tc.stderr) {
				t.Errorf("codefleet %q: exit %d, stdout %q, stderr %q; want exit %d, %q in stdout, %q in stderr",
					tc.args, code, out, errOut, tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}

// TestREADMEDocumentsFlags: every flag of `codefleet dev` (its own and the backend's) has a row
// in the README's tables.
func TestREADMEDocumentsFlags(t *testing.T) {
	testutil.ClearEnv(t)
	code, _, help := cli("", "dev", "--help")
	if code != 0 {
		t.Fatalf("dev --help: exit %d", code)
	}
	testutil.READMEDocumentsFlags(t, "../../README.md", help, 25)
}
