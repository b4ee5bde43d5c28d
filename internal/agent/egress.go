package agent

// Egress (the protocol side is in package wire): the agent listens on 127.0.0.1 inside the
// sandbox, the sandbox's HTTP_PROXY, and carries each connection it accepts to the worker's
// egress socket, where the worker applies the sandbox's policy. The sandbox itself stays on
// network none: this is its only way out, and the agent decides nothing on it.
//
// As the worker's socket (socket.go), the sockets are package syscall's, made nonblocking so
// that os.NewFile registers them with the runtime's poller: an accept or a read waiting on one
// parks a goroutine, not an OS thread (the agent has few, see ReserveThreads).

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// egress is the agent's egress listener and the connections it carries.
type egress struct {
	mu    sync.Mutex
	ln    *os.File // nil until the worker asks for it, and again once stopped
	port  int
	conns map[*os.File]struct{} // both ends of every connection carried, closed with ln; nil when ln is
	wg    sync.WaitGroup        // the accept loop and the carriers
}

// egressGatewayDown answers a connection the worker's egress socket did not take (no worker is
// listening: it is restarting, or it closed the sandbox's proxy). A client of the port speaks
// HTTP to a proxy, so it reads an HTTP answer.
var egressGatewayDown = func() string {
	const body = "codefleet egress: the worker's egress proxy is not there\n"
	return "HTTP/1.1 502 Bad Gateway: " + strings.TrimSpace(body) + "\r\nContent-Type: text/plain\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body
}()

// startEgress listens on 127.0.0.1:port and carries what it accepts to a.EgressPath. Asked again
// for the same port (a worker re-attaching) it does nothing; the listener lasts until Serve
// returns.
func (a *Agent) startEgress(port int) error {
	if port <= 0 || port > 65535 {
		return fmt.Errorf("egress: port %d: want 1 to 65535", port)
	}
	e := &a.egress
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ln != nil {
		if e.port != port {
			return fmt.Errorf("egress: already listening on port %d, not %d", e.port, port)
		}
		return nil
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("egress: %w", os.NewSyscallError("socket", err))
	}
	// SO_REUSEADDR, as net.Listen sets it: a listener made again (Serve started anew) is not
	// refused for the last one's connections still in TIME_WAIT.
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		syscall.Close(fd)
		return fmt.Errorf("egress: %w", os.NewSyscallError("setsockopt", err))
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return fmt.Errorf("egress: listen on 127.0.0.1:%d: %w", port, os.NewSyscallError("bind", err))
	}
	if err := syscall.Listen(fd, 128); err != nil {
		syscall.Close(fd)
		return fmt.Errorf("egress: %w", os.NewSyscallError("listen", err))
	}
	ln := os.NewFile(uintptr(fd), "egress-listener")
	e.ln, e.port, e.conns = ln, port, map[*os.File]struct{}{}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		a.acceptEgress(ln)
	}()
	return nil
}

// stopEgress closes the listener and every connection carried, and waits for their goroutines.
func (a *Agent) stopEgress() {
	e := &a.egress
	e.mu.Lock()
	ln, conns := e.ln, e.conns
	e.ln, e.conns = nil, nil
	e.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	for c := range conns {
		c.Close()
	}
	e.wg.Wait()
}

// acceptEgress accepts connections on ln until it is closed, and carries each.
func (a *Agent) acceptEgress(ln *os.File) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return
	}
	for {
		var nfd int
		var aerr error
		err := rc.Read(func(fd uintptr) bool {
			nfd, _, aerr = syscall.Accept4(int(fd), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
			return aerr != syscall.EAGAIN
		})
		if err != nil {
			return // closed
		}
		switch {
		case aerr == nil:
		case aerr == syscall.EMFILE || aerr == syscall.ENFILE || aerr == syscall.ENOBUFS || aerr == syscall.ENOMEM:
			// Out of descriptors or memory: the pending connection waits in the backlog, so
			// pause rather than spin on it.
			time.Sleep(10 * time.Millisecond)
			continue
		default:
			continue // ECONNABORTED and the like: that one connection is gone
		}
		c := os.NewFile(uintptr(nfd), "egress")
		if !a.egressTrack(c) {
			c.Close()
			return
		}
		a.egress.wg.Add(1)
		go func() {
			defer a.egress.wg.Done()
			a.carryEgress(c)
		}()
	}
}

// egressTrack records c to be closed with the listener; false when that already happened.
func (a *Agent) egressTrack(c *os.File) bool {
	e := &a.egress
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.conns == nil {
		return false
	}
	e.conns[c] = struct{}{}
	return true
}

func (a *Agent) egressUntrack(c *os.File) {
	e := &a.egress
	e.mu.Lock()
	delete(e.conns, c)
	e.mu.Unlock()
	c.Close()
}

// carryEgress connects c, accepted on the egress port, to the worker's egress socket and copies
// bytes both ways until both are done.
func (a *Agent) carryEgress(c *os.File) {
	defer a.egressUntrack(c)
	w, err := dialUnix(a.EgressPath, connectTimeout)
	if err != nil {
		c.SetWriteDeadline(time.Now().Add(connectTimeout))
		io.WriteString(c, egressGatewayDown)
		return
	}
	if !a.egressTrack(w) {
		w.Close()
		return
	}
	defer a.egressUntrack(w)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pipe(w, c)
	}()
	pipe(c, w)
	wg.Wait()
}

// pipe copies src to dst until src ends, then shuts dst's writing half, so that the far end
// reads the end too and may still answer (a half-closed connection, as HTTP clients make). A
// failure either way ends both connections.
func pipe(dst, src *os.File) {
	_, err := io.Copy(onlyWriter{dst}, src)
	if err == nil {
		err = shutdownWrite(dst)
	}
	if err != nil && !errors.Is(err, os.ErrClosed) {
		dst.Close()
		src.Close()
	}
}

// onlyWriter hides *os.File's ReadFrom from io.Copy: between two sockets it would first try
// copy_file_range, which the kernel refuses for them, on every copy.
type onlyWriter struct{ io.Writer }

// shutdownWrite shuts the writing half of the socket f.
func shutdownWrite(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Shutdown(int(fd), syscall.SHUT_WR) }); err != nil {
		return err
	}
	if serr != nil && serr != syscall.ENOTCONN {
		return os.NewSyscallError("shutdown", serr)
	}
	return nil
}
