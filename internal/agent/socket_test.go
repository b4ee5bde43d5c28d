package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/internal/testutil"
)

const testToken = "0123456789abcdef0123456789abcdef"

// connectAgent has the agent of s connect to a new listener at its SocketPath and returns the
// socket session's connection, after checking the hello that opens it.
func connectAgent(t *testing.T, s *testSession, id string) (net.Conn, *bufio.Reader) {
	t.Helper()
	ln, err := net.Listen("unix", s.a.SocketPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if r := s.call(wire.Request{Op: wire.OpConnect, ID: id, Token: testToken}); r.Op != wire.OpConnect {
		t.Fatalf("connect: got %+v", r)
	}
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	br := bufio.NewReader(conn)
	var hello wire.Response
	if err := readResponse(br, &hello); err != nil {
		t.Fatal(err)
	}
	if hello.Op != wire.OpHello || hello.ID != id || hello.Token != testToken || hello.Version != wire.ProtocolVersion || len(hello.Languages) == 0 {
		t.Fatalf("first frame on the socket: %+v", hello)
	}
	return conn, br
}

func readResponse(r *bufio.Reader, resp *wire.Response) error {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return err
	}
	return json.Unmarshal(line, resp)
}

func socketCall(t *testing.T, conn net.Conn, br *bufio.Reader, req wire.Request) wire.Response {
	t.Helper()
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
	for {
		var r wire.Response
		if err := readResponse(br, &r); err != nil {
			t.Fatalf("read from socket: %v", err)
		}
		if r.ID == req.ID {
			return r
		}
	}
}

func socketAgent(t *testing.T) *testSession {
	a := New(t.TempDir(), os.Environ(), testReaper)
	a.SocketPath = filepath.Join(t.TempDir(), "worker.sock")
	return serve(t, a)
}

// TestSocketSession: after connect, the same protocol runs on the socket, and the attached
// stream keeps working beside it.
func TestSocketSession(t *testing.T) {
	s := socketAgent(t)
	conn, br := connectAgent(t, s, "c1")
	if r := socketCall(t, conn, br, wire.Request{Op: wire.OpRun, ID: "r1", Language: "bash", Code: "echo over the socket; exit 4"}); r.Op != wire.OpResult || r.Output != "over the socket\n" || r.ExitCode != 4 {
		t.Fatalf("run on the socket: %+v", r)
	}
	// Run ids are per session: the same id on the attached stream is another run.
	if r := s.call(wire.Request{Op: wire.OpRun, ID: "r1", Language: "bash", Code: "echo on the stream"}); r.Output != "on the stream\n" {
		t.Fatalf("run on the attached stream: %+v", r)
	}
	// A socket session cannot open another one.
	if r := socketCall(t, conn, br, wire.Request{Op: wire.OpConnect, ID: "c2", Token: testToken}); r.Code != wire.ErrCodeBadFrame {
		t.Fatalf("connect over the socket: %+v", r)
	}
}

func TestSocketConnectErrors(t *testing.T) {
	s := socketAgent(t)
	if r := s.call(wire.Request{Op: wire.OpConnect, ID: "nobody", Token: testToken}); r.Op != wire.OpError || r.Code != wire.ErrCodeConnectFailed || !strings.Contains(r.Error, "worker.sock") {
		t.Fatalf("connect with no listener: %+v", r)
	}
	ln, err := net.Listen("unix", s.a.SocketPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if r := s.call(wire.Request{Op: wire.OpConnect, ID: "short", Token: "abc"}); r.Code != wire.ErrCodeConnectFailed {
		t.Fatalf("connect with a short token: %+v", r)
	}
	// The agent still serves the attached stream.
	if r := s.call(wire.Request{Op: wire.OpRun, ID: "r", Language: "bash", Code: "echo ok"}); r.Output != "ok\n" {
		t.Fatalf("run after failed connects: %+v", r)
	}
}

// TestSocketEndKillsRuns: a worker that dies closes its socket; the runs it started are
// killed rather than left running for nobody. A worker that connects again replaces the old
// session.
func TestSocketEndKillsRuns(t *testing.T) {
	s := socketAgent(t)
	conn, _ := connectAgent(t, s, "c1")
	b, _ := json.Marshal(wire.Request{Op: wire.OpRun, ID: "long", Language: "bash", Code: "echo $$ > pid; exec sleep 60", TimeoutMS: 120000})
	conn.Write(append(b, '\n'))
	pidFile := filepath.Join(s.a.Dir, "pid")
	var pid int
	poll(t, "the run to start", func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil || !strings.HasSuffix(string(b), "\n") {
			return false
		}
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return true
	})
	conn.Close()
	poll(t, "the run to be killed", func() bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) })

	conn2, br2 := connectAgent(t, s, "c2")
	conn3, br3 := connectAgent(t, s, "c3")
	if _, err := io.ReadAll(br2); err != nil {
		t.Fatalf("the replaced session: %v", err) // ends with EOF
	}
	conn2.Close()
	if r := socketCall(t, conn3, br3, wire.Request{Op: wire.OpRun, ID: "r", Language: "bash", Code: "echo new"}); r.Output != "new\n" {
		t.Fatalf("run on the new session: %+v", r)
	}
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestSocketMadeInsideRefused: with WorkerOutside (the agent in its container), a socket made by
// a process the agent can see (here the test itself, in the same pid namespace) is not the
// worker's, and gets neither the token nor the session.
func TestSocketMadeInsideRefused(t *testing.T) {
	s := socketAgent(t)
	s.a.WorkerOutside = true
	ln, err := net.Listen("unix", s.a.SocketPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	r := s.call(wire.Request{Op: wire.OpConnect, ID: "c", Token: testToken})
	if r.Code != wire.ErrCodeConnectFailed || !strings.Contains(r.Error, "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("connect to a socket made inside: %+v", r)
	}
	if b := <-got; strings.Contains(b, testToken) {
		t.Fatalf("the impostor got the token: %q", b)
	}
}

// TestSocketClosedAtServeEnd: when Serve ends (its ctx is done), the socket session's
// connection is closed.
func TestSocketClosedAtServeEnd(t *testing.T) {
	s := socketAgent(t)
	conn, br := connectAgent(t, s, "c1")
	s.stop()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(br); err != nil {
		t.Fatalf("the session after Serve ended: %v", err) // ends with EOF
	}
}

// TestDialUnix: the agent's dialer (package syscall, no net) waits for a listener whose
// backlog is full, for at most its timeout, and gives a connection with deadlines and a Close
// that ends a Read.
func TestDialUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "worker.sock")
	if _, err := dialUnix(path, time.Second); err == nil || err.Error() != "dial unix "+path+": connect: no such file or directory" {
		t.Fatalf("dial with no socket: %v", err)
	}
	// A listener with a backlog of 0 takes one connection that is not accepted; the next one
	// finds the backlog full.
	lfd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(lfd)
	if err := syscall.Bind(lfd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(lfd, 0); err != nil {
		t.Fatal(err)
	}
	first, err := dialUnix(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	start := time.Now()
	if _, err := dialUnix(path, 100*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("dial with the backlog full: %v", err)
	} else if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Fatalf("dial with the backlog full gave up after %s", d)
	}
	// Once the first connection is accepted, a waiting dial gets through.
	accepted := make(chan int, 2)
	go func() {
		time.Sleep(50 * time.Millisecond)
		for range 2 {
			fd, _, err := syscall.Accept(lfd)
			if err != nil {
				return
			}
			accepted <- fd
		}
	}()
	second, err := dialUnix(path, 10*time.Second)
	if err != nil {
		t.Fatalf("dial once the backlog has room: %v", err)
	}
	defer second.Close()
	for range 2 {
		defer syscall.Close(<-accepted)
	}
	// A read deadline, and a Close that ends a Read in progress.
	second.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := second.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	second.SetReadDeadline(time.Time{})
	// No data comes on first: its Read blocks in the poller until the Close. The Close waits
	// until the goroutine's stack shows it there, so the test proves a blocked Read released
	// rather than one that starts after the Close.
	read := make(chan error, 1)
	go func() {
		_, err := first.Read(make([]byte, 1))
		read <- err
	}()
	testutil.Eventually(t, 10*time.Second, func() error {
		if !blockedInRead("agent.TestDialUnix.func") {
			return errors.New("the Read is not blocked yet")
		}
		return nil
	})
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-read:
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("read ended by Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the Read")
	}
	if _, err := first.Read(make([]byte, 1)); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

// blockedInRead reports whether a goroutine whose stack holds fn waits in the poller ("IO
// wait") in an os.File's Read.
func blockedInRead(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "[IO wait") && strings.Contains(g, "os.(*File).Read(") && strings.Contains(g, fn) {
			return true
		}
	}
	return false
}
