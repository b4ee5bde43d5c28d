package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
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
