package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/agent/wire"
)

// testSession runs an Agent on pipes and returns a function that sends one frame and reads
// responses until the one with the wanted id.
type testSession struct {
	t   testing.TB
	a   *Agent
	in  *io.PipeWriter
	out *bufio.Reader
	// stop ends Serve and waits for it; it is also run at cleanup.
	stop func()
}

var testReaper = NewChildWaiter()

func startAgent(t testing.TB) *testSession {
	t.Helper()
	return serve(t, New(t.TempDir(), os.Environ(), testReaper))
}

// serve runs a.Serve on pipes until the test ends.
func serve(t testing.TB, a *Agent) *testSession {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Serve(ctx, inR, outW)
		outW.Close()
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			inW.Close()
			go io.Copy(io.Discard, outR) // let Serve finish writing
			<-done
		})
	}
	t.Cleanup(stop)
	return &testSession{t: t, a: a, in: inW, out: bufio.NewReader(outR), stop: stop}
}

func (s *testSession) send(raw string) {
	s.t.Helper()
	if _, err := io.WriteString(s.in, raw+"\n"); err != nil {
		s.t.Fatal(err)
	}
}

func (s *testSession) call(req wire.Request) wire.Response {
	s.t.Helper()
	b, _ := json.Marshal(req)
	s.send(string(b))
	return s.wait(req.ID)
}

func (s *testSession) wait(id string) wire.Response {
	s.t.Helper()
	for {
		line, err := s.out.ReadBytes('\n')
		if err != nil {
			s.t.Fatalf("read response: %v", err)
		}
		var r wire.Response
		if err := json.Unmarshal(line, &r); err != nil {
			s.t.Fatalf("bad response %q: %v", line, err)
		}
		if r.ID == id {
			return r
		}
	}
}

func TestAgentRuns(t *testing.T) {
	s := startAgent(t)
	hello := s.call(wire.Request{Op: wire.OpHello, ID: "h"})
	if hello.Version != wire.ProtocolVersion || !strings.Contains(strings.Join(hello.Languages, ","), "bash") {
		t.Fatalf("hello = %+v", hello)
	}
	tests := []struct {
		name, code   string
		wantOutput   string
		wantExit     int
		wantTimedOut bool
		timeout      time.Duration
	}{
		{"exit 0", "echo hi", "hi\n", 0, false, 0},
		{"exit 3", "exit 3", "", 3, false, 0},
		{"interleaved", "echo a; echo b >&2; echo c", "a\nb\nc\n", 0, false, 0},
		{"signal", "kill -9 $$", "", 137, false, 0},
		{"env", "echo $FOO", "bar\n", 0, false, 0},
		{"timeout keeps output", "echo before; sleep 30", "before\n", 124, true, 300 * time.Millisecond},
		{"background children do not hold the run", "sleep 30 & echo started", "started\n", 0, false, 0},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := wire.Request{Op: wire.OpRun, ID: "r" + string(rune('a'+i)), Language: "bash", Code: tc.code, Env: map[string]string{"FOO": "bar"}}
			if tc.timeout > 0 {
				req.TimeoutMS = tc.timeout.Milliseconds()
			}
			r := s.call(req)
			if r.Op != wire.OpResult || r.Output != tc.wantOutput || r.ExitCode != tc.wantExit || r.TimedOut != tc.wantTimedOut {
				t.Fatalf("got %+v, want output %q exit %d timed_out %v", r, tc.wantOutput, tc.wantExit, tc.wantTimedOut)
			}
		})
	}
}

func TestAgentErrors(t *testing.T) {
	s := startAgent(t)
	s.send("{not json")
	if r := s.wait(""); r.Op != wire.OpError || r.Code != wire.ErrCodeBadFrame {
		t.Fatalf("bad frame: got %+v", r)
	}
	if r := s.call(wire.Request{Op: wire.OpRun, ID: "x", Language: "cobol", Code: "x"}); r.Code != wire.ErrCodeUnsupportedLanguage {
		t.Fatalf("cobol: got %+v", r)
	}
	// A partial line followed by a newline, then a hello: the agent is still in sync.
	s.send(`{"op":"run","id":"cut`)
	if r := s.wait(""); r.Code != wire.ErrCodeBadFrame {
		t.Fatalf("partial frame: got %+v", r)
	}
	if r := s.call(wire.Request{Op: wire.OpHello, ID: "h2"}); r.Op != wire.OpHello {
		t.Fatalf("hello after partial frame: got %+v", r)
	}
}

func TestAgentCancel(t *testing.T) {
	s := startAgent(t)
	b, _ := json.Marshal(wire.Request{Op: wire.OpRun, ID: "long", Language: "bash", Code: "echo x; sleep 30"})
	s.send(string(b))
	s.send(`{"op":"cancel","id":"long"}`)
	if r := s.wait("long"); r.ExitCode != 137 {
		t.Fatalf("cancelled run: got %+v", r)
	}
}

func TestAgentOutputCap(t *testing.T) {
	s := startAgent(t)
	r := s.call(wire.Request{Op: wire.OpRun, ID: "big", Language: "bash", MaxOutput: 1000,
		Code: "echo START; head -c 10000000 /dev/zero | tr '\\0' x; echo; echo END"})
	if !r.Truncated || !strings.HasPrefix(r.Output, "START\n") || !strings.HasSuffix(r.Output, "\nEND\n") ||
		!strings.Contains(r.Output, "bytes truncated") || len(r.Output) > 1100 {
		t.Fatalf("got truncated=%v len=%d head=%q tail=%q", r.Truncated, len(r.Output), r.Output[:20], r.Output[len(r.Output)-20:])
	}
}

// TestDrainNowTakesWhatThePipeHolds: output a snippet wrote before it exited is in the pipe;
// when the copier was stopped before reading it (a loaded machine), drainNow still gets it, and
// it returns even while an escaped writer keeps writing.
func TestDrainNowTakesWhatThePipeHolds(t *testing.T) {
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	pw.Write([]byte("written before the exit\n"))
	var got bytes.Buffer
	drainNow(pr, &got)
	if got.String() != "written before the exit\n" {
		t.Fatalf("drained %q", got.String())
	}

	// A writer that never stops: drainNow takes a bounded amount and returns.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		chunk := bytes.Repeat([]byte("y"), 4096)
		for {
			select {
			case <-stop:
				pw.Close()
				return
			default:
				pw.Write(chunk)
			}
		}
	}()
	got.Reset()
	drainNow(pr, &got)
	close(stop)
	go io.Copy(io.Discard, pr) // let the writer finish its last write
	<-done
	if got.Len() > 1<<20 {
		t.Fatalf("drained %d bytes from an endless writer, want at most 1 MiB", got.Len())
	}
}

// TestServeEndKillsRuns: when the worker's stream ends, runs still going are killed and
// answered, and Serve returns at once instead of waiting for them.
func TestServeEndKillsRuns(t *testing.T) {
	a := New(t.TempDir(), os.Environ(), testReaper)
	s := serve(t, a)
	b, _ := json.Marshal(wire.Request{Op: wire.OpRun, ID: "long", Language: "bash", Code: "touch started; sleep 60", TimeoutMS: 120000})
	s.send(string(b))
	marker := filepath.Join(a.Dir, "started")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the run did not start")
		}
	}
	start := time.Now()
	s.in.Close() // the stream ends
	resp := s.wait("long")
	if resp.ExitCode != 137 || time.Since(start) > 5*time.Second {
		t.Fatalf("run when the stream ended: exit %d after %s, want it killed (137) at once", resp.ExitCode, time.Since(start))
	}
}
