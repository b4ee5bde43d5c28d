package agent

// The socket session (the protocol side is in package wire: the upgrade and its token).
//
// The agent dials the worker's unix socket with package syscall rather than package net: a
// binary that imports net (or os/user) is linked against the C library when built with cgo,
// which `go install ./cmd/...` does wherever gcc is found, and the sandbox images need not have
// a compatible one. The socket is made nonblocking, so os.NewFile registers it with the
// runtime's poller: its *os.File has deadlines, and a Close that unblocks a Read, as a
// net.Conn would.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// connectTimeout bounds dialing the worker's socket and writing the hello.
const connectTimeout = 2 * time.Second

// connect dials the worker's socket and introduces itself with token; the connection then
// replaces any earlier socket session.
func (a *Agent) connect(id, token string) (*os.File, error) {
	if len(token) < 16 {
		return nil, errors.New("connect: the token must be at least 16 characters")
	}
	conn, err := dialUnix(a.SocketPath, connectTimeout)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if a.WorkerOutside {
		// The worker is outside the sandbox's pid namespace, so the kernel shows its pid as 0.
		if pid, err := peerPid(conn); err != nil || pid != 0 {
			conn.Close()
			return nil, fmt.Errorf("connect: %s is not the worker's: it was made by pid %d in this sandbox (%v)", a.SocketPath, pid, err)
		}
	}
	b, _ := json.Marshal(a.hello(id, token))
	if err := conn.SetWriteDeadline(time.Now().Add(connectTimeout)); err != nil {
		conn.Close() // not pollable: neither a deadline nor closing at ctx's end would work
		return nil, fmt.Errorf("connect: %w", err)
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect: write hello: %w", err)
	}
	conn.SetWriteDeadline(time.Time{})
	a.sockMu.Lock()
	old := a.sock
	a.sock = conn
	a.sockMu.Unlock()
	if old != nil {
		old.Close() // that worker is gone (a worker connects once per attachment)
	}
	return conn, nil
}

// dialUnix connects a stream socket to the unix socket at path, waiting at most timeout, and
// returns it as a pollable *os.File. Its errors read like net.Dial's.
func dialUnix(path string, timeout time.Duration) (*os.File, error) {
	deadline := time.Now().Add(timeout)
	fail := func(err error) error { return fmt.Errorf("dial unix %s: %w", path, err) }
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fail(os.NewSyscallError("socket", err))
	}
	sa := &syscall.SockaddrUnix{Name: path}
	pause := time.Millisecond
	for inProgress := false; ; {
		err := syscall.Connect(fd, sa)
		switch {
		case err == nil || err == syscall.EISCONN && inProgress:
			return os.NewFile(uintptr(fd), path), nil
		case err == syscall.EINTR:
			inProgress = true // the connection may go on: connect again to learn how it went
		case err == syscall.EAGAIN:
			// The listener's backlog is full (a unix socket does not queue a nonblocking
			// connect): try again until the deadline.
			if !time.Now().Before(deadline) {
				syscall.Close(fd)
				return nil, fail(os.ErrDeadlineExceeded)
			}
			time.Sleep(min(pause, time.Until(deadline)))
			pause = min(2*pause, 50*time.Millisecond)
		case err == syscall.EINPROGRESS || err == syscall.EALREADY:
			// Not what Linux does for unix sockets, but the way of nonblocking sockets: wait
			// until it is writable, then read how the connection went.
			f := os.NewFile(uintptr(fd), path)
			if err := awaitConnect(f, deadline); err != nil {
				f.Close()
				return nil, fail(err)
			}
			return f, nil
		default:
			syscall.Close(fd)
			return nil, fail(os.NewSyscallError("connect", err))
		}
	}
}

// awaitConnect waits until the nonblocking connect in progress on f ends or deadline passes.
func awaitConnect(f *os.File, deadline time.Time) error {
	if err := f.SetWriteDeadline(deadline); err != nil {
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var connErr error
	waited := false
	if err := rc.Write(func(fd uintptr) bool {
		if !waited {
			waited = true
			return false // wait for writability first
		}
		n, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ERROR)
		if err != nil {
			connErr = os.NewSyscallError("getsockopt", err)
			return true
		}
		switch e := syscall.Errno(n); e {
		case 0:
			return true
		case syscall.EINPROGRESS, syscall.EALREADY, syscall.EINTR:
			return false
		default:
			connErr = os.NewSyscallError("connect", e)
			return true
		}
	}); err != nil {
		return err // os.ErrDeadlineExceeded when the deadline passed
	}
	if connErr != nil {
		return connErr
	}
	return f.SetWriteDeadline(time.Time{})
}

// peerPid returns the pid of the process that made the socket conn is connected to, as this
// process's pid namespace sees it (0 when it is outside).
func peerPid(conn *os.File) (int32, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if credErr != nil {
		return -1, os.NewSyscallError("getsockopt", credErr)
	}
	return cred.Pid, nil
}

// serveSocket serves a socket session until its connection ends (its runs are then killed) or
// ctx is done.
func (a *Agent) serveSocket(ctx context.Context, conn *os.File) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	a.serve(ctx, conn, conn, nil)
	conn.Close()
	a.sockMu.Lock()
	if a.sock == conn {
		a.sock = nil
	}
	a.sockMu.Unlock()
}
