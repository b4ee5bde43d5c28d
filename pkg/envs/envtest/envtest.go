// Package envtest is the conformance suite every envs backend passes: the sandbox semantics
// AG2 users rely on (files persist, each snippet is a fresh process, output interleaved and
// capped, exit codes, timeouts that keep the sandbox) checked the way a user would check them.
//
//	func TestConformance(t *testing.T) {
//		envtest.Run(t, envtest.Config{Env: myEnv, Labels: map[string]string{...}})
//	}
package envtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codefleet/codefleet/pkg/envs"
)

// Config says what to test.
type Config struct {
	// Env is the backend under test.
	Env envs.Env
	// Labels go on every sandbox the suite creates (so a leftover check can find them).
	Labels map[string]string
	// MaxOutput is the backend's output cap; the 10 MB case checks the output stays within it.
	MaxOutput int
	// Concurrency is how many sandboxes the concurrency case runs at once (default 4).
	Concurrency int
	// SkipReopen skips the detach/re-open case (for backends without it).
	SkipReopen bool
}

// Run runs the suite. Every sandbox it creates is destroyed in t.Cleanup.
func Run(t *testing.T, cfg Config) {
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 4
	}
	s := &suite{cfg: cfg}
	t.Run("FilesPersistAcrossRuns", s.filesPersist)
	t.Run("EachRunIsAFreshProcess", s.freshProcess)
	t.Run("OutputInterleavedInOrder", s.interleaved)
	t.Run("ExitCodes", s.exitCodes)
	t.Run("RunEnv", s.runEnv)
	t.Run("TimeoutKeepsOutputAndSandbox", s.timeout)
	t.Run("OutputCapped", s.outputCap)
	t.Run("UnsupportedLanguage", s.unsupported)
	t.Run("SandboxesAreIsolated", s.isolated)
	t.Run("ConcurrentSandboxes", s.concurrent)
	if !cfg.SkipReopen {
		t.Run("ReopenKeepsFiles", s.reopen)
	}
	t.Run("ListAndDestroy", s.listDestroy)
	s.fileCases(t)
}

type suite struct {
	cfg Config
	mu  sync.Mutex
	n   int
}

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// create makes a sandbox that is destroyed when the test ends.
func (s *suite) create(t *testing.T) envs.Sandbox {
	t.Helper()
	s.mu.Lock()
	s.n++
	conv := fmt.Sprintf("envtest-%d-%d", time.Now().UnixNano()%1e6, s.n)
	s.mu.Unlock()
	sb, err := s.cfg.Env.Create(s.ctx(t), envs.Spec{Tenant: "envtest", Conversation: conv, Labels: s.cfg.Labels})
	if err != nil {
		t.Fatalf("create sandbox: %v", err)
	}
	t.Cleanup(func() {
		sb.Close()
		if err := s.cfg.Env.Destroy(context.Background(), sb.Info().ID); err != nil {
			t.Errorf("destroy sandbox %s: %v", sb.Info().ID, err)
		}
	})
	return sb
}

func run(t *testing.T, sb envs.Sandbox, lang, code string, timeout time.Duration) envs.Result {
	t.Helper()
	res, err := sb.Run(context.Background(), envs.Exec{Code: code, Language: lang, Timeout: timeout})
	if err != nil {
		t.Fatalf("run %s %q: %v", lang, code, err)
	}
	return res
}

func expect(t *testing.T, res envs.Result, output string, exit int) {
	t.Helper()
	if res.Output != output || res.ExitCode != exit {
		t.Fatalf("got output %q exit %d, want output %q exit %d", res.Output, res.ExitCode, output, exit)
	}
}

func (s *suite) filesPersist(t *testing.T) {
	sb := s.create(t)
	expect(t, run(t, sb, "bash", "echo hello > notes.txt && mkdir -p data && echo 42 > data/n", 0), "", 0)
	expect(t, run(t, sb, "python", "print(open('notes.txt').read().strip(), open('data/n').read().strip())", 0), "hello 42\n", 0)
}

func (s *suite) freshProcess(t *testing.T) {
	sb := s.create(t)
	expect(t, run(t, sb, "python", "x = 41\nprint(x + 1)", 0), "42\n", 0)
	res := run(t, sb, "python", "print(x)", 0)
	if res.ExitCode != 1 || !strings.Contains(res.Output, "NameError") {
		t.Fatalf("a variable survived between runs: got output %q exit %d, want a NameError and exit 1", res.Output, res.ExitCode)
	}
	expect(t, run(t, sb, "bash", "echo ${GREETING:-unset}; GREETING=hi", 0), "unset\n", 0)
	expect(t, run(t, sb, "bash", "echo ${GREETING:-unset}", 0), "unset\n", 0)
}

func (s *suite) interleaved(t *testing.T) {
	sb := s.create(t)
	code := "import sys\nfor i in range(3):\n    print('out', i, flush=True)\n    print('err', i, file=sys.stderr, flush=True)\n"
	expect(t, run(t, sb, "python", code, 0), "out 0\nerr 0\nout 1\nerr 1\nout 2\nerr 2\n", 0)
	expect(t, run(t, sb, "bash", "echo a; echo b >&2; echo c; echo d >&2", 0), "a\nb\nc\nd\n", 0)
}

func (s *suite) exitCodes(t *testing.T) {
	sb := s.create(t)
	for _, tc := range []struct {
		lang, code string
		want       int
	}{
		{"bash", "true", 0},
		{"python", "print('ok')", 0},
		{"bash", "exit 1", 1},
		{"python", "raise SystemExit(3)", 3},
		{"bash", "exit 3", 3},
		{"python", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 137},
		{"bash", "kill -9 $$", 137},
		{"bash", "kill -TERM $$", 143},
	} {
		if res := run(t, sb, tc.lang, tc.code, 0); res.ExitCode != tc.want || res.TimedOut {
			t.Errorf("%s %q: got exit %d timed_out %v, want exit %d", tc.lang, tc.code, res.ExitCode, res.TimedOut, tc.want)
		}
	}
	res := run(t, sb, "python", "raise ValueError('boom')", 0)
	if res.ExitCode != 1 || !strings.Contains(res.Output, "ValueError: boom") {
		t.Errorf("python exception: got output %q exit %d, want a traceback and exit 1", res.Output, res.ExitCode)
	}
}

func (s *suite) runEnv(t *testing.T) {
	sb := s.create(t)
	res, err := sb.Run(context.Background(), envs.Exec{Language: "python", Code: "import os; print(os.environ['TOKEN'])", Env: map[string]string{"TOKEN": "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	expect(t, res, "s3cret\n", 0)
	expect(t, run(t, sb, "bash", "echo ${TOKEN:-none}", 0), "none\n", 0)
}

func (s *suite) timeout(t *testing.T) {
	sb := s.create(t)
	run(t, sb, "bash", "echo kept > before.txt", 0)
	start := time.Now()
	res := run(t, sb, "python", "print('before the loop', flush=True)\nwhile True: pass", time.Second)
	took := time.Since(start)
	if !res.TimedOut || res.ExitCode != 124 || !strings.Contains(res.Output, "before the loop") {
		t.Fatalf("got output %q exit %d timed_out %v, want the output before the loop, exit 124, timed_out", res.Output, res.ExitCode, res.TimedOut)
	}
	if took > 3*time.Second {
		t.Errorf("a 1 s timeout took %s to come back", took)
	}
	// The whole process group is killed, not only the leader.
	res = run(t, sb, "bash", "(while true; do sleep 0.05; done) & sleep 60", time.Second)
	if !res.TimedOut || res.ExitCode != 124 {
		t.Fatalf("background loop: got exit %d timed_out %v, want 124", res.ExitCode, res.TimedOut)
	}
	expect(t, run(t, sb, "bash", "cat before.txt", 0), "kept\n", 0)
}

func (s *suite) outputCap(t *testing.T) {
	sb := s.create(t)
	res := run(t, sb, "python", "import sys\nprint('HEAD')\nsys.stdout.write('x' * (10 * 1024 * 1024))\nprint()\nprint('TAIL')", 0)
	if res.ExitCode != 0 || !res.Truncated {
		t.Fatalf("got exit %d truncated %v, want 0 and truncated", res.ExitCode, res.Truncated)
	}
	if !strings.HasPrefix(res.Output, "HEAD\n") || !strings.HasSuffix(res.Output, "\nTAIL\n") || !strings.Contains(res.Output, "bytes truncated") {
		t.Fatalf("capped output lost its head, tail or marker: starts %q, ends %q", res.Output[:min(20, len(res.Output))], res.Output[max(0, len(res.Output)-20):])
	}
	if limit := s.cfg.MaxOutput; limit > 0 && len(res.Output) > limit+100 {
		t.Fatalf("output is %d bytes, over the cap %d", len(res.Output), limit)
	}
}

func (s *suite) unsupported(t *testing.T) {
	sb := s.create(t)
	_, err := sb.Run(context.Background(), envs.Exec{Language: "cobol", Code: "DISPLAY 'HI'."})
	if !errors.Is(err, envs.ErrUnsupportedLanguage) {
		t.Fatalf("got %v, want ErrUnsupportedLanguage", err)
	}
	expect(t, run(t, sb, "bash", "echo still here", 0), "still here\n", 0)
}

func (s *suite) isolated(t *testing.T) {
	a, b := s.create(t), s.create(t)
	run(t, a, "bash", "echo mine > secret.txt", 0)
	res := run(t, b, "bash", "cat secret.txt", 0)
	if res.ExitCode == 0 || strings.Contains(res.Output, "mine") {
		t.Fatalf("sandbox b sees sandbox a's file: output %q exit %d", res.Output, res.ExitCode)
	}
}

func (s *suite) concurrent(t *testing.T) {
	var wg sync.WaitGroup
	sbs := make([]envs.Sandbox, s.cfg.Concurrency)
	for i := range sbs {
		sbs[i] = s.create(t)
	}
	errs := make(chan error, len(sbs))
	for i, sb := range sbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := fmt.Sprintf("sandbox %d\n", i)
			if _, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: fmt.Sprintf("echo 'sandbox %d' > who; sleep 0.2", i)}); err != nil {
				errs <- err
				return
			}
			res, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: "cat who"})
			if err != nil {
				errs <- err
			} else if res.Output != want {
				errs <- fmt.Errorf("sandbox %d: got %q, want %q", i, res.Output, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func (s *suite) reopen(t *testing.T) {
	sb := s.create(t)
	run(t, sb, "bash", "echo survived > state.txt", 0)
	id := sb.Info().ID
	if err := sb.Close(); err != nil {
		t.Fatalf("close (detach): %v", err)
	}
	again, err := s.cfg.Env.Open(s.ctx(t), id)
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	t.Cleanup(func() { again.Close() })
	if again.Info().Conversation != sb.Info().Conversation || again.Info().Tenant != "envtest" {
		t.Fatalf("reopened info %+v, want the conversation %q", again.Info(), sb.Info().Conversation)
	}
	expect(t, run(t, again, "bash", "cat state.txt", 0), "survived\n", 0)
}

func (s *suite) listDestroy(t *testing.T) {
	ctx := s.ctx(t)
	sb := s.create(t)
	id := sb.Info().ID
	match := map[string]string{envs.LabelConversation: sb.Info().Conversation}
	for k, v := range s.cfg.Labels {
		match[k] = v
	}
	list, err := s.cfg.Env.List(ctx, match)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != id || list[0].Conversation != sb.Info().Conversation || list[0].Tenant != "envtest" {
		t.Fatalf("list = %+v, want just %s", list, id)
	}
	if err := s.cfg.Env.Destroy(ctx, id); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if err := s.cfg.Env.Destroy(ctx, id); err != nil {
		t.Fatalf("destroy twice: %v", err)
	}
	if _, err := s.cfg.Env.Open(ctx, id); !errors.Is(err, envs.ErrNotFound) {
		t.Fatalf("open after destroy: got %v, want ErrNotFound", err)
	}
	if list, _ := s.cfg.Env.List(ctx, match); len(list) != 0 {
		t.Fatalf("list after destroy = %+v, want none", list)
	}
}
