package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

func TestMain(m *testing.M) {
	code := m.Run()
	fake.RemoveRoot() // the fake backend's sandbox directories
	os.Exit(code)
}

// responder is a tiny fake dispatcher on one subject: it records every request and answers
// with answer's reply, or not at all when answer returns nil.
type responder struct {
	mu   sync.Mutex
	msgs []*nats.Msg
}

func respond(t *testing.T, nc *nats.Conn, subject string, answer func(n int, m *nats.Msg) []byte) *responder {
	t.Helper()
	r := &responder{}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		r.mu.Lock()
		r.msgs = append(r.msgs, m)
		n := len(r.msgs)
		r.mu.Unlock()
		if reply := answer(n, m); reply != nil {
			m.Respond(reply)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	return r
}

// requests decodes the run requests received so far.
func (r *responder) requests(t *testing.T) []*protocol.RunRequest {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*protocol.RunRequest
	for _, m := range r.msgs {
		req, perr := protocol.DecodeRunRequest(m.Data)
		if perr != nil {
			t.Fatalf("the client sent a request the contract refuses: %v: %s", perr, m.Data)
		}
		out = append(out, req)
	}
	return out
}

func (r *responder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

// echo answers a run request with its code as output and exit code 0.
func echo(_ int, m *nats.Msg) []byte {
	req, _ := protocol.DecodeRunRequest(m.Data)
	return protocol.Encode(&protocol.RunResult{ID: req.ID, Output: req.Code, Sandbox: &protocol.SandboxInfo{ID: "sb-1", Worker: "w-1"}})
}

// setup starts a NATS server and returns a connection for the fake dispatcher and a client on
// another connection.
func setup(t *testing.T, opts ...client.Option) (*server.Server, *nats.Conn, *client.Client) {
	t.Helper()
	srv, nc, c, _ := setupConns(t, opts...)
	return srv, nc, c
}

// setupConns is setup that also returns the client's connection, whose Stats().OutMsgs counts
// the requests the client sent: every attempt, answered or not.
func setupConns(t *testing.T, opts ...client.Option) (*server.Server, *nats.Conn, *client.Client, *nats.Conn) {
	t.Helper()
	srv := testutil.StartNATS(t)
	cnc := testutil.Connect(t, srv)
	c, err := client.New(cnc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return srv, testutil.Connect(t, srv), c, cnc
}

// attempts returns how many requests the client on cnc has sent.
func attempts(cnc *nats.Conn) uint64 { return cnc.Stats().OutMsgs }

func TestRunSendsTheRequest(t *testing.T) {
	_, nc, c := setup(t, client.WithTenant("acme"), client.WithPrefix("fleet2"))
	r := respond(t, nc, "fleet2.run.acme.chat-1", echo)
	res, err := c.Conversation("chat-1").Run(context.Background(), "print(1)", protocol.LangPython, &client.RunOptions{
		RequestID: "req-1", Timeout: 1500 * time.Millisecond, Env: map[string]string{"A": "1"},
		Sandbox: &protocol.SandboxOptions{Image: "img:1"},
	})
	if err != nil || res.Output != "print(1)" || res.ID != "req-1" || res.Sandbox.Worker != "w-1" {
		t.Fatalf("Run = %+v, %v", res, err)
	}
	reqs := r.requests(t)
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	q := reqs[0]
	if q.ID != "req-1" || q.Code != "print(1)" || q.Language != "python" || q.TimeoutMS != 1500 || q.Env["A"] != "1" || q.Sandbox.Image != "img:1" {
		t.Errorf("request %+v", q)
	}
}

// TestRequestIDs: a run without a request id gets a fresh one, and every retry of it carries
// the same one (the worker then runs it once).
func TestRequestIDs(t *testing.T) {
	_, nc, c := setup(t, client.WithOverhead(300*time.Millisecond))
	// The first attempt of every run is lost (no answer); the second is answered.
	r := respond(t, nc, "codefleet.run.default.chat-1", func(n int, m *nats.Msg) []byte {
		if n%2 == 1 {
			return nil
		}
		return echo(n, m)
	})
	conv := c.Conversation("chat-1")
	ctx := context.Background()
	opts := &client.RunOptions{Timeout: time.Millisecond}
	for i := 0; i < 2; i++ {
		if res, err := conv.Run(ctx, "x", protocol.LangBash, opts); err != nil || res.Output != "x" {
			t.Fatalf("Run %d = %+v, %v", i, res, err)
		}
	}
	reqs := r.requests(t)
	if len(reqs) != 4 {
		t.Fatalf("%d requests, want 4 (two attempts of two runs)", len(reqs))
	}
	if reqs[0].ID == "" || reqs[0].ID != reqs[1].ID || reqs[2].ID != reqs[3].ID {
		t.Errorf("ids %q %q %q %q: want each run's attempts to share one", reqs[0].ID, reqs[1].ID, reqs[2].ID, reqs[3].ID)
	}
	if reqs[0].ID == reqs[2].ID {
		t.Errorf("two runs share the id %q", reqs[0].ID)
	}
	if !protocol.ValidID(reqs[0].ID) {
		t.Errorf("generated id %q is not valid on the wire", reqs[0].ID)
	}
	if opts.RequestID != "" {
		t.Errorf("Run wrote its generated id into the caller's options: %q", opts.RequestID)
	}
}

type runResult struct {
	res *protocol.RunResult
	err error
}

// runAsync runs code on conv in a goroutine; the result comes on the channel.
func runAsync(ctx context.Context, conv *client.Conversation, code string) <-chan runResult {
	done := make(chan runResult, 1)
	go func() {
		res, err := conv.Run(ctx, code, protocol.LangBash, nil)
		done <- runResult{res, err}
	}()
	return done
}

// await returns the result of runAsync, failing the test if Run hangs.
func await(t *testing.T, done <-chan runResult) runResult {
	t.Helper()
	select {
	case r := <-done:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
		return runResult{}
	}
}

// TestRetryUntilResponder: with no dispatcher up yet, Run retries "no responders" until one
// appears.
func TestRetryUntilResponder(t *testing.T) {
	_, nc, c, cnc := setupConns(t, client.WithAttempts(10))
	done := runAsync(context.Background(), c.Conversation("chat-1"), "x")
	// A second attempt is sent only once the first has failed: no responder was up then.
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := attempts(cnc); n < 2 {
			return fmt.Errorf("%d attempts", n)
		}
		return nil
	})
	r := respond(t, nc, "codefleet.run.default.chat-1", echo)
	got := await(t, done)
	if got.err != nil || got.res.Output != "x" {
		t.Fatalf("Run = %+v, %v", got.res, got.err)
	}
	if n := r.count(); n != 1 {
		t.Errorf("the responder got %d requests, want 1", n)
	}
}

// TestNoRespondersGivesUp: with no dispatcher, Run makes its attempts, pausing longer after
// each (100 ms, 200 ms, 300 ms), none after the last, then returns no responders.
func TestNoRespondersGivesUp(t *testing.T) {
	_, _, c, cnc := setupConns(t, client.WithAttempts(4))
	start := time.Now()
	res, err := c.Conversation("chat-1").Run(context.Background(), "x", protocol.LangBash, nil)
	took := time.Since(start)
	if res != nil || !errors.Is(err, nats.ErrNoResponders) || !strings.Contains(err.Error(), "after 4 attempts") {
		t.Fatalf("Run = %+v, %v; want no responders after 4 attempts", res, err)
	}
	if n := attempts(cnc); n != 4 {
		t.Errorf("%d requests sent, want 4", n)
	}
	// The backoff grew: the pauses add up to 600 ms (a fixed 100 ms pause would make 300 ms).
	// Only a lower bound, which a slow machine cannot break: timers do not fire early.
	if took < 600*time.Millisecond {
		t.Errorf("took %s, less than the growing pauses' 600ms", took)
	}
	if _, err := c.Conversation("chat-1").Close(context.Background()); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("Close = %v, want no responders", err)
	}
}

// TestProtocolError: a result with an error is returned with the error, a *protocol.Error;
// a snippet that fails is a result, not an error.
func TestProtocolError(t *testing.T) {
	_, nc, c := setup(t)
	respond(t, nc, "codefleet.run.default.*", func(_ int, m *nats.Msg) []byte {
		req, _ := protocol.DecodeRunRequest(m.Data)
		if req.Code == "busy" {
			return protocol.Encode(protocol.ErrorResult(req.ID, protocol.Errorf(protocol.CodeBusy, "queue full")))
		}
		return protocol.Encode(&protocol.RunResult{ID: req.ID, Output: "boom\n", ExitCode: 3})
	})
	res, err := c.Conversation("chat-1").Run(context.Background(), "busy", protocol.LangBash, nil)
	var perr *protocol.Error
	if !errors.As(err, &perr) || perr.Code != protocol.CodeBusy || perr.Message != "queue full" {
		t.Fatalf("err = %v, want a *protocol.Error busy", err)
	}
	if res == nil || res.Error == nil || res.Error.Code != protocol.CodeBusy || res.ID == "" {
		t.Errorf("result %+v, want the error result", res)
	}
	if !errors.Is(err, &protocol.Error{Code: protocol.CodeBusy}) {
		t.Errorf("errors.Is(err, busy) is false")
	}
	res, err = c.Conversation("chat-2").Run(context.Background(), "exit 3", protocol.LangBash, nil)
	if err != nil || res.ExitCode != 3 || client.ForModel(res) != "boom\n[exit code: 3]" {
		t.Errorf("failing snippet: %+v, %v", res, err)
	}
}

func TestBadReply(t *testing.T) {
	_, nc, c := setup(t)
	respond(t, nc, "codefleet.run.default.chat-1", func(int, *nats.Msg) []byte { return []byte("not json") })
	respond(t, nc, "codefleet.close.default.chat-1", func(int, *nats.Msg) []byte { return []byte("[]") })
	if res, err := c.Conversation("chat-1").Run(context.Background(), "x", protocol.LangBash, nil); err == nil || res != nil {
		t.Errorf("Run = %+v, %v; want a decode error", res, err)
	}
	if res, err := c.Conversation("chat-1").Close(context.Background()); err == nil || res != nil {
		t.Errorf("Close = %+v, %v; want a decode error", res, err)
	}
}

func TestClose(t *testing.T) {
	_, nc, c := setup(t, client.WithTenant("acme"))
	r := respond(t, nc, "codefleet.close.acme.*", func(_ int, m *nats.Msg) []byte {
		switch {
		case strings.HasSuffix(m.Subject, ".chat-1"):
			return protocol.Encode(&protocol.CloseResult{Closed: true, Sandbox: &protocol.SandboxInfo{ID: "sb-1", Worker: "w-1"}})
		case strings.HasSuffix(m.Subject, ".gone"):
			return protocol.Encode(&protocol.CloseResult{})
		}
		return protocol.Encode(&protocol.CloseResult{Error: protocol.Errorf(protocol.CodeBackendUnavailable, "docker is down")})
	})
	ctx := context.Background()
	if res, err := c.Conversation("chat-1").Close(ctx); err != nil || !res.Closed || res.Sandbox.ID != "sb-1" {
		t.Errorf("Close chat-1 = %+v, %v", res, err)
	}
	if res, err := c.Conversation("gone").Close(ctx); err != nil || res.Closed {
		t.Errorf("Close of a conversation without a sandbox = %+v, %v; want closed false, no error", res, err)
	}
	res, err := c.Conversation("chat-3").Close(ctx)
	var perr *protocol.Error
	if !errors.As(err, &perr) || perr.Code != protocol.CodeBackendUnavailable || res == nil || res.Error == nil {
		t.Errorf("Close chat-3 = %+v, %v; want the backend_unavailable error and its result", res, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if string(r.msgs[0].Data) != "{}" {
		t.Errorf("close body %q, want {}", r.msgs[0].Data)
	}
}

// TestPerAttemptTimeout: an attempt may take the run's timeout plus the overhead; a dispatcher
// that never answers costs every attempt that long, then Run gives up.
func TestPerAttemptTimeout(t *testing.T) {
	_, nc, c, cnc := setupConns(t, client.WithAttempts(2), client.WithOverhead(200*time.Millisecond))
	r := respond(t, nc, "codefleet.run.default.chat-1", func(int, *nats.Msg) []byte { return nil })
	// The caller's deadline is far beyond the two attempts of 300 ms: an attempt given the
	// default overhead (30 s) would end on it, not "after 2 attempts".
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Conversation("chat-1").Run(ctx, "x", protocol.LangBash, &client.RunOptions{Timeout: 100 * time.Millisecond})
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "after 2 attempts") || ctx.Err() != nil {
		t.Fatalf("err = %v, want the attempts' deadline after 2 attempts", err)
	}
	if n := attempts(cnc); n != 2 {
		t.Errorf("%d requests sent, want 2", n)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := r.count(); n != 2 {
			return fmt.Errorf("%d attempts reached the dispatcher, want 2", n)
		}
		return nil
	})
	// Each attempt waited its 300 ms, with a 100 ms pause between: a lower bound only.
	if took < 700*time.Millisecond {
		t.Errorf("took %s, less than two attempts of 300ms and a pause of 100ms", took)
	}
}

// TestContextCancel: cancelling the context ends Run at once, with the context's error, and no
// further attempt is made.
func TestContextCancel(t *testing.T) {
	_, nc, c, cnc := setupConns(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The dispatcher never answers, and cancels the run once it has the request: without the
	// cancel the attempt would last the default 60 s timeout plus 30 s of overhead.
	r := respond(t, nc, "codefleet.run.default.chat-1", func(int, *nats.Msg) []byte { cancel(); return nil })
	got := await(t, runAsync(ctx, c.Conversation("chat-1"), "x"))
	if !errors.Is(got.err, context.Canceled) || strings.Contains(got.err.Error(), "attempts") {
		t.Fatalf("err = %v, want context.Canceled after one attempt", got.err)
	}
	// Run sends its attempts itself: once it has returned, none is still to come.
	if n := attempts(cnc); n != 1 {
		t.Errorf("%d requests sent, want 1", n)
	}
	if n := r.count(); n != 1 {
		t.Errorf("%d attempts reached the dispatcher, want 1", n)
	}

	// A deadline of the caller's shorter than the attempt's is the caller's.
	dctx, dcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer dcancel()
	if _, err := c.Conversation("chat-1").Run(dctx, "x", protocol.LangBash, nil); !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "attempts") {
		t.Errorf("err = %v, want the caller's deadline after one attempt", err)
	}
}

// TestValidation: what the contract refuses is refused before anything is sent, with the
// error a dispatcher would answer.
func TestValidation(t *testing.T) {
	_, nc, c := setup(t)
	r := respond(t, nc, "codefleet.>", echo)
	ctx := context.Background()
	for _, tc := range []struct {
		name, conv, code, lang, id string
		want                       protocol.Code
		in                         string
	}{
		{"empty code", "chat-1", "", protocol.LangPython, "", protocol.CodeBadRequest, "code is empty"},
		{"no language", "chat-1", "x", "", "", protocol.CodeBadRequest, "language is missing"},
		{"unknown language", "chat-1", "x", "cobol", "", protocol.CodeUnsupportedLanguage, "cobol"},
		{"bad request id", "chat-1", "x", protocol.LangPython, "a b", protocol.CodeBadRequest, "id"},
		{"bad conversation", "a.b", "x", protocol.LangPython, "", protocol.CodeBadRequest, `conversation "a.b"`},
		{"empty conversation", "", "x", protocol.LangPython, "", protocol.CodeBadRequest, "conversation"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := c.Conversation(tc.conv).Run(ctx, tc.code, tc.lang, &client.RunOptions{RequestID: tc.id})
			var perr *protocol.Error
			if !errors.As(err, &perr) || perr.Code != tc.want || !strings.Contains(perr.Message, tc.in) {
				t.Fatalf("err = %v, want %s with %q", err, tc.want, tc.in)
			}
			if res == nil || res.Error != perr {
				t.Errorf("result %+v, want the error result", res)
			}
		})
	}
	if res, err := c.Conversation("a.b").Close(ctx); !errors.Is(err, &protocol.Error{Code: protocol.CodeBadRequest}) || res == nil || res.Error == nil {
		t.Errorf("Close of a bad conversation = %+v, %v", res, err)
	}
	if n := r.count(); n != 0 {
		t.Errorf("%d requests were sent", n)
	}

	for _, opt := range []client.Option{client.WithTenant("a.b"), client.WithTenant(""), client.WithPrefix("a.b"), client.WithPrefix(""), client.WithAttempts(0)} {
		if _, err := client.New(nc, opt); err == nil {
			t.Errorf("New accepted a bad option")
		}
	}
}

func TestForModel(t *testing.T) {
	for _, tc := range []struct {
		res  protocol.RunResult
		want string
	}{
		{protocol.RunResult{Output: "42\n"}, "42\n"},
		{protocol.RunResult{Output: "oops", ExitCode: 1}, "oops\n[exit code: 1]"},
		{protocol.RunResult{Output: "late\n", ExitCode: 124, TimedOut: true}, "late\n[exit code: 124]"},
		{protocol.RunResult{ExitCode: 2}, "[exit code: 2]"},
		{protocol.RunResult{Error: protocol.Errorf(protocol.CodeBusy, "queue full")}, "[error busy: queue full]"},
	} {
		if got := client.ForModel(&tc.res); got != tc.want {
			t.Errorf("ForModel(%+v) = %q, want %q", tc.res, got, tc.want)
		}
	}
}

// TestFleet runs code through a real in-process fleet (a dispatcher and a worker on the fake
// backend, which runs snippets as local processes): output and exit code come back, a retry
// with the same request id returns the first run's result without running it again, files
// persist in the conversation, and Close destroys its sandbox.
func TestFleet(t *testing.T) {
	env := fake.New()
	c := fakeFleet(t, "client", env)
	conv := c.Conversation("chat-fleet")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	res, err := conv.Run(ctx, "echo $((40+2))", protocol.LangBash, nil)
	if err != nil || res.Output != "42\n" || res.ExitCode != 0 || res.Sandbox == nil || res.Sandbox.Worker != "w-client" || !res.Sandbox.Created {
		t.Fatalf("Run = %+v, %v", res, err)
	}
	count := &client.RunOptions{RequestID: "count-1"}
	first, err := conv.Run(ctx, "echo x >> runs; wc -l < runs", protocol.LangBash, count)
	if err != nil || strings.TrimSpace(first.Output) != "1" {
		t.Fatalf("first run = %+v, %v", first, err)
	}
	again, err := conv.Run(ctx, "echo x >> runs; wc -l < runs", protocol.LangBash, count)
	if err != nil || again.Output != first.Output {
		t.Fatalf("retry with the same id = %+v, %v; want the first result %q", again, err, first.Output)
	}
	res, err = conv.Run(ctx, "wc -l < runs; exit 3", protocol.LangBash, nil)
	if err != nil || strings.TrimSpace(res.Output) != "1" || res.ExitCode != 3 {
		t.Fatalf("the retry ran again, or files did not persist: %+v, %v", res, err)
	}
	closed, err := conv.Close(ctx)
	if err != nil || !closed.Closed || closed.Sandbox.Worker != "w-client" {
		t.Fatalf("Close = %+v, %v", closed, err)
	}
	if n := env.Live(); n != 0 {
		t.Errorf("%d sandboxes left after Close", n)
	}
}

// fakeFleet starts a fleet of one worker on env (the fake backend: local processes) and one
// dispatcher, named after name, and returns a client of it.
func fakeFleet(t *testing.T, name string, env *fake.Env) *client.Client {
	t.Helper()
	srv := testutil.StartNATS(t)
	testutil.StartWorker(t, srv, worker.Config{ID: "w-" + name}, env)
	d := testutil.StartDispatcher(t, srv, dispatcher.Config{Name: "d-" + name})
	testutil.WaitWorkers(t, 1, d)
	c, err := client.New(testutil.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
