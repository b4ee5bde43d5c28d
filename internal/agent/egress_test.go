package agent

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/internal/testutil"
)

// egressAgent serves an agent whose egress socket is in a temporary directory and has it listen
// on a free port; it returns the session and the port's address.
func egressAgent(t *testing.T) (*testSession, string) {
	t.Helper()
	a := New(t.TempDir(), os.Environ(), testReaper)
	a.EgressPath = filepath.Join(t.TempDir(), "egress.sock")
	s := serve(t, a)
	// A free port may be taken again before the agent binds it (another test's connection
	// given it as its own port): then another.
	for i := 0; ; i++ {
		port := testutil.FreePort(t)
		r := s.call(wire.Request{Op: wire.OpEgress, ID: "e" + strconv.Itoa(i), Port: port})
		if r.Op == wire.OpEgress {
			return s, "127.0.0.1:" + strconv.Itoa(port)
		}
		if !strings.Contains(r.Error, "address already in use") || i == 10 {
			t.Fatalf("egress: %+v", r)
		}
	}
}

// TestEgressCarries: every connection to the egress port becomes a connection to the worker's
// egress socket, bytes both ways, half-closes included; a worker that is not there is an HTTP
// 502 the client can read.
func TestEgressCarries(t *testing.T) {
	s, addr := egressAgent(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 502 ") || !strings.HasSuffix(string(b), "codefleet egress: the worker's egress proxy is not there\n") {
		t.Fatalf("with no worker: %q", b)
	}

	ln, err := net.Listen("unix", s.a.EgressPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The worker's side: read the whole request (the client half-closes), answer, close.
	go func() {
		for {
			w, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer w.Close()
				req, _ := io.ReadAll(w)
				io.WriteString(w, "got "+string(req))
			}()
		}
	}()
	for i := range 3 { // one connection each, side by side
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := "request " + strconv.Itoa(i) + strings.Repeat(".", 100<<10)
		go func() {
			io.WriteString(c, msg)
			c.(*net.TCPConn).CloseWrite()
		}()
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "got "+msg {
			t.Fatalf("connection %d: %d bytes (%.20q), %v; want the worker's answer", i, len(b), b, err)
		}
	}

	// Asked again for the same port (a worker re-attaching), it already listens; another port
	// is refused.
	port, _ := strconv.Atoi(addr[strings.LastIndex(addr, ":")+1:])
	if r := s.call(wire.Request{Op: wire.OpEgress, ID: "again", Port: port}); r.Op != wire.OpEgress {
		t.Fatalf("egress again: %+v", r)
	}
	if r := s.call(wire.Request{Op: wire.OpEgress, ID: "other", Port: port + 1}); r.Op != wire.OpError || r.Code != wire.ErrCodeEgressFailed {
		t.Fatalf("egress on another port: %+v", r)
	}

	// A connection carried when Serve ends is closed, and so is the port.
	open, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	io.WriteString(open, "still open")
	s.stop()
	open.SetDeadline(time.Now().Add(10 * time.Second))
	// Closed: an end of file, or a reset (the agent's side closed with the bytes written above
	// unread, which makes the kernel answer with a reset), not the deadline.
	if _, err := io.ReadAll(open); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection carried at the end: %v, want it closed", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("the egress port still listens after Serve returned")
	}
}

func TestEgressBadPort(t *testing.T) {
	s := startAgent(t)
	for _, port := range []int{0, -1, 70000} {
		if r := s.call(wire.Request{Op: wire.OpEgress, ID: "e", Port: port}); r.Op != wire.OpError || r.Code != wire.ErrCodeEgressFailed {
			t.Errorf("egress on port %d: %+v", port, r)
		}
	}
}
