package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// connectTimeout bounds dialing the worker's socket and writing the hello.
const connectTimeout = 2 * time.Second

// connect dials the worker's socket and introduces itself with token; the connection then
// replaces any earlier socket session.
func (a *Agent) connect(id, token string) (net.Conn, error) {
	if len(token) < 16 {
		return nil, errors.New("connect: the token must be at least 16 characters")
	}
	conn, err := net.DialTimeout("unix", a.SocketPath, connectTimeout)
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
	conn.SetWriteDeadline(time.Now().Add(connectTimeout))
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

// peerPid returns the pid of the process that made the socket conn is connected to, as this
// process's pid namespace sees it (0 when it is outside).
func peerPid(conn net.Conn) (int32, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return -1, errors.New("not a unix socket")
	}
	raw, err := uc.SyscallConn()
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
		return -1, credErr
	}
	return cred.Pid, nil
}

// serveSocket serves a socket session until its connection ends (its runs are then killed) or
// ctx is done.
func (a *Agent) serveSocket(ctx context.Context, conn net.Conn) {
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
