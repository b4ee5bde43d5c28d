package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// cliEnv, set in the environment of this test binary, makes it the codefleet command itself
// (TestMain): the terminal tests run the command as a process of its own, its stdout a
// terminal, as a user's shell does.
const cliEnv = "CODEFLEET_TEST_RUN_AS_CLI"

// ticks prints a line every 200 ms, five of them, and exits 3.
const ticks = "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done; exit 3"

const ticksOutput = "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n"

// terminalRun is what a command run on a terminal showed there, and when.
type terminalRun struct {
	code   int
	stderr string
	reads  []timedRead
}

type timedRead struct {
	at   time.Duration // since the command started
	data string
}

// output returns what the terminal showed, its line ends as written (the terminal's
// output processing turns "\n" into "\r\n").
func (r terminalRun) output() string {
	var b strings.Builder
	for _, rd := range r.reads {
		b.WriteString(rd.data)
	}
	return strings.ReplaceAll(b.String(), "\r\n", "\n")
}

// shown returns when s had been shown on the terminal, -1 if never.
func (r terminalRun) shown(s string) time.Duration {
	var b strings.Builder
	for _, rd := range r.reads {
		b.WriteString(rd.data)
		if strings.Contains(strings.ReplaceAll(b.String(), "\r\n", "\n"), s) {
			return rd.at
		}
	}
	return -1
}

// runOnTerminal runs `codefleet args...` as a process (this test binary, see cliEnv) whose
// stdout is a terminal (a pty) and returns what the terminal showed.
func runOnTerminal(t *testing.T, args ...string) terminalRun {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pty: %v", err)
	}
	defer ptmx.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	cmd.Stdout = tty
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		tty.Close()
		t.Fatal(err)
	}
	tty.Close() // the command has its own: the terminal ends (EIO) when the command does
	reads := make(chan []timedRead, 1)
	go func() {
		var rs []timedRead
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			if n > 0 {
				rs = append(rs, timedRead{time.Since(start), string(buf[:n])})
			}
			if err != nil {
				reads <- rs
				return
			}
		}
	}()
	err = cmd.Wait()
	run := terminalRun{stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		run.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("codefleet %q: %v", args, err)
	}
	select {
	case run.reads = <-reads:
	case <-time.After(30 * time.Second):
		t.Fatal("the terminal did not end with the command")
	}
	return run
}

// TestRunStreamsOnATerminal: on a terminal, `codefleet run` prints the output as the snippet
// produces it (the first line long before the last), each line once, and exits with the
// snippet's exit code.
func TestRunStreamsOnATerminal(t *testing.T) {
	testutil.ClearEnv(t)
	url := startFakeFleet(t)
	run := runOnTerminal(t, "run", "--nats-url", url, "--conversation", "tty", "--language", "bash", ticks)
	if run.code != 3 || run.output() != ticksOutput || run.stderr != "" {
		t.Fatalf("exit %d, terminal %q, stderr %q; want 3, %q once, no stderr", run.code, run.output(), run.stderr, ticksOutput)
	}
	// Four sleeps of 200 ms lie between the first line and the last: printed as produced, the
	// first shows at least two of them earlier (a lower bound: sleeps are never shorter).
	first, last := run.shown("tick 1\n"), run.shown("tick 5\n")
	if last-first < 400*time.Millisecond {
		t.Fatalf("tick 1 shown at %s, tick 5 at %s: not streamed (reads %+v)", first, last, run.reads)
	}
	t.Logf("tick 1 shown at %s, tick 5 at %s", first, last)
}

// TestRunNoStreamOnATerminal: with --no-stream, even on a terminal, the output is printed once,
// when the run is over.
func TestRunNoStreamOnATerminal(t *testing.T) {
	testutil.ClearEnv(t)
	url := startFakeFleet(t)
	run := runOnTerminal(t, "run", "--no-stream", "--nats-url", url, "--conversation", "tty", "--language", "bash", ticks)
	if run.code != 3 || run.output() != ticksOutput || run.stderr != "" {
		t.Fatalf("exit %d, terminal %q, stderr %q; want 3, %q once, no stderr", run.code, run.output(), run.stderr, ticksOutput)
	}
	// The run lasts five sleeps of 200 ms: nothing may show before most of them are over.
	if first := run.reads[0].at; first < 800*time.Millisecond {
		t.Fatalf("output shown %s after the start, before the run was over (reads %+v)", first, run.reads)
	}
}

// TestRunStreamInAPipe: --stream streams into a pipe too; the output is printed once, as it is
// without streaming, and the exit code is the snippet's.
func TestRunStreamInAPipe(t *testing.T) {
	testutil.ClearEnv(t)
	url := startFakeFleet(t)
	for _, flags := range [][]string{{"--stream"}, {"--no-stream"}, nil} {
		args := append([]string{"run", "--nats-url", url, "--conversation", "pipe", "--language", "bash"}, flags...)
		code, out, errOut := cli("", append(args, "echo one; echo two >&2; exit 4")...)
		if code != 4 || out != "one\ntwo\n" || errOut != "" {
			t.Errorf("run %v: exit %d, stdout %q, stderr %q; want 4, the output once", flags, code, out, errOut)
		}
	}
}

// TestRunStreamReportsGaps: output the stream did not carry (a chunk lost on the way, bytes
// dropped for the stream's rate) is reported on stderr, with how to see the whole output;
// what was printed is not printed again.
func TestRunStreamReportsGaps(t *testing.T) {
	testutil.ClearEnv(t)
	ns := testutil.StartNATS(t)
	nc := testutil.Connect(t, ns)
	// A fake dispatcher and worker: chunk 2 of 3 never comes, 10 bytes were left out before 3.
	sub, err := nc.Subscribe("codefleet.run.default.lossy", func(m *nats.Msg) {
		req, _ := protocol.DecodeRunRequest(m.Data)
		subject := protocol.Subjects{}.Stream(protocol.DefaultTenant, "lossy", req.ID)
		nc.Publish(subject, protocol.Encode(&protocol.OutputChunk{ID: req.ID, Seq: 1, Data: "one\n"}))
		nc.Publish(subject, protocol.Encode(&protocol.OutputChunk{ID: req.ID, Seq: 3, Data: "three\n", Dropped: 10}))
		m.Respond(protocol.Encode(&protocol.RunResult{ID: req.ID, Output: "one\ntwo\n0123456789three\n", ExitCode: 5,
			Stream: &protocol.StreamInfo{Subject: subject, Chunks: 3, DroppedBytes: 10}}))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	code, out, errOut := cli("", "run", "--stream", "--nats-url", ns.ClientURL(), "--conversation", "lossy", "--request-id", "r-1", "x")
	if code != 5 || out != "one\nthree\n" {
		t.Fatalf("exit %d, stdout %q; want 5, the chunks that came", code, out)
	}
	for _, want := range []string{"[... 10 bytes of output not streamed ...]", "1 of 3 output chunks, lost on the way", "10 bytes of output produced faster", "--no-stream --request-id r-1"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr %q lacks %q", errOut, want)
		}
	}
}
