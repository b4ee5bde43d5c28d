package docker

// The socket transport.
//
// A frame over the container's attached stream goes through the Docker daemon and the
// container's shim, which costs 0.5-1.5 ms per run. When the worker and the daemon share a
// filesystem (the worker on the Docker host, or beside a DinD sidecar with a shared volume), each
// container gets a directory of its own under Config.SocketDir, bind-mounted read-only at
// wire.SocketDir. After the hello on the attached stream, the worker listens on a unix socket
// there and sends the agent a fresh random token (package wire, internal/agent/wire, documents
// the exchange); the connection that presents it becomes the sandbox's channel, and the
// listener is closed. The attached stream stays open beside it: it carries the agent's stderr
// and tells when the container is gone.
//
// Anything that stops the upgrade leaves the sandbox on the attached stream: a daemon that
// refuses the mount (it does not see the worker's directory: the creation is tried again without
// it, and once that works no other sandbox gets a directory), a directory the worker cannot
// create, an agent that cannot connect or an old one that does not know the request.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"

	"github.com/codefleet/codefleet/internal/agent/wire"
)

const (
	// DefaultSocketDir is where the per-container socket directories are made.
	DefaultSocketDir = "/run/codefleet/sandboxes"
	// NoSocketDir turns the socket transport off: every sandbox uses the attached stream.
	NoSocketDir = "none"
	// socketName is the worker's socket in a container's directory.
	socketName = "worker.sock"
	// upgradeTimeout bounds the agent's connection to the worker's socket.
	upgradeTimeout = 3 * time.Second
	// maxSocketPath is the longest unix socket path Linux takes (sun_path holds 108 bytes).
	maxSocketPath = 107
)

// socketsOn reports whether new sandboxes get a socket directory.
func (e *Env) socketsOn() bool { return e.cfg.SocketDir != NoSocketDir && !e.noSockets.Load() }

// socketsOff turns the socket transport off for the rest of the Env's life, saying why once.
func (e *Env) socketsOff(why string, err error) {
	if e.noSockets.CompareAndSwap(false, true) {
		e.log.Warn().Err(err).Str("socket_dir", e.cfg.SocketDir).Msg("sandboxes use the attached stream (slower): " + why)
	}
}

// socketMount makes a new directory for one container's socket and returns its mount, or nil
// when sandboxes go without (the transport is off or the directory cannot be made).
func (e *Env) socketMount() []mount.Mount {
	if !e.socketsOn() {
		return nil
	}
	var b [8]byte
	rand.Read(b[:])
	dir := filepath.Join(e.cfg.SocketDir, hex.EncodeToString(b[:]))
	if len(filepath.Join(dir, socketName)) > maxSocketPath {
		e.socketsOff("the socket directory's path is too long for a unix socket", fmt.Errorf("%d bytes", len(dir)))
		return nil
	}
	if err := os.MkdirAll(e.cfg.SocketDir, 0o755); err != nil {
		e.socketsOff("cannot make the socket directory", err)
		return nil
	}
	// 0755: the sandbox user reaches the socket (0666) but cannot add or remove files; the
	// mount is read-only besides.
	if err := os.Mkdir(dir, 0o755); err != nil {
		e.log.Warn().Err(err).Msg("sandbox uses the attached stream (slower): cannot make its socket directory")
		return nil
	}
	return []mount.Mount{{Type: mount.TypeBind, Source: dir, Target: wire.SocketDir, ReadOnly: true}}
}

// remakeSocketDir makes the socket directory of a stopped container again if it is gone.
func (e *Env) remakeSocketDir(c container.InspectResponse) {
	if src := socketMountOf(c); src != "" {
		if err := os.MkdirAll(src, 0o755); err != nil {
			e.log.Debug().Err(err).Str("dir", src).Msg("cannot make a stopped sandbox's socket directory again")
		}
	}
}

// socketMountOf returns the source of an inspected container's socket mount ("" if none).
func socketMountOf(c container.InspectResponse) string {
	for _, m := range c.Mounts {
		if m.Destination == wire.SocketDir && m.Type == mount.TypeBind {
			return m.Source
		}
	}
	return ""
}

// socketDirOf returns the socket directory of an inspected container ("" if it has none, or
// it is not under SocketDir: the directory is only ever removed from there).
func (e *Env) socketDirOf(c container.InspectResponse) string {
	src := socketMountOf(c)
	if rel, err := filepath.Rel(e.cfg.SocketDir, src); src != "" && err == nil && rel != "." && !strings.HasPrefix(rel, "..") && !strings.Contains(rel, "/") {
		return src
	}
	return ""
}

// removeSocketDir removes a container's socket directory, once the container is gone.
func (e *Env) removeSocketDir(dir string) {
	if dir == "" {
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		e.log.Warn().Err(err).Str("dir", dir).Msg("could not remove a sandbox's socket directory")
	}
}

// upgrade moves the sandbox's frames from the attached stream to a socket in dir, the
// container's socket directory. When that fails the sandbox stays on the attached stream, which
// works as before; the reason is logged.
func (s *sandbox) upgrade(ctx context.Context, dir string) {
	if dir == "" {
		return
	}
	path := filepath.Join(dir, socketName)
	os.Remove(path) // an earlier worker's, or this one's before a restart
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		// The directory is not there: the worker runs elsewhere than when it made it.
		s.log.Debug().Err(err).Msg("sandbox stays on the attached stream")
		return
	}
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		s.log.Debug().Err(err).Msg("sandbox stays on the attached stream")
		return
	}
	var b [16]byte
	rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	id := "connect-" + strconv.FormatUint(s.nextID.Add(1), 10)
	deadline := time.Now().Add(upgradeTimeout)
	accepted := make(chan *agentConn, 1)
	go acceptAgent(ln, id, token, deadline, accepted)
	// Closing the listener removes the socket file, so nothing else can connect.
	defer ln.Close()

	resp, err := s.call(ctx, wire.Request{Op: wire.OpConnect, ID: id, Token: token}, upgradeTimeout)
	if err == nil && resp.Op != wire.OpConnect {
		err = fmt.Errorf("%s: %s", resp.Code, resp.Error) // an old agent says bad_frame
	}
	if err != nil {
		ln.Close() // ends the acceptor
		if c := <-accepted; c != nil {
			c.Close()
		}
		s.log.Debug().Err(err).Msg("sandbox stays on the attached stream: the agent did not connect")
		return
	}
	// The agent connected and wrote its hello before it answered: the acceptor has the
	// connection or is about to (it gives up at the deadline).
	c := <-accepted
	if c == nil {
		s.log.Warn().Msg("sandbox stays on the attached stream: the agent's connection did not arrive")
		return
	}
	s.useSocket(c)
}

// agentConn is an accepted connection whose hello was read.
type agentConn struct {
	net.Conn
	r *bufio.Reader
}

// maxGreets bounds the connections whose first frame is awaited at once.
const maxGreets = 8

// acceptAgent accepts connections on ln until one opens with the agent's hello for id carrying
// token, and sends that one on accepted; others are closed. It stops at deadline or when ln is
// closed, and then sends nil if it found none. Connections are greeted side by side, so that one
// that says nothing does not hold up the agent's.
func acceptAgent(ln *net.UnixListener, id, token string, deadline time.Time, accepted chan<- *agentConn) {
	ln.SetDeadline(deadline)
	var once sync.Once
	deliver := func(c *agentConn) (done bool) {
		once.Do(func() { accepted <- c; done = true })
		return done
	}
	greets := make(chan struct{}, maxGreets)
	for {
		c, err := ln.Accept()
		if err != nil {
			deliver(nil)
			return
		}
		select {
		case greets <- struct{}{}:
		default:
			c.Close()
			continue
		}
		go func() {
			defer func() { <-greets }()
			ac, err := greet(c, id, token, deadline)
			switch {
			case err != nil:
				c.Close()
			case deliver(ac):
				ln.Close() // nothing else is taken
			default:
				ac.Close() // too late
			}
		}()
	}
}

// greet reads the first frame of c and checks it is the agent's hello for id with token.
func greet(c net.Conn, id, token string, deadline time.Time) (*agentConn, error) {
	c.SetReadDeadline(deadline)
	r := bufio.NewReaderSize(c, 64<<10)
	line, err := r.ReadSlice('\n') // at most the buffer: a hello is small
	if err != nil {
		return nil, err
	}
	var hello wire.Response
	if err := json.Unmarshal(line, &hello); err != nil {
		return nil, err
	}
	if hello.Op != wire.OpHello || hello.ID != id || subtle.ConstantTimeCompare([]byte(hello.Token), []byte(token)) != 1 {
		return nil, errors.New("not the agent's hello")
	}
	c.SetReadDeadline(time.Time{})
	return &agentConn{Conn: c, r: r}, nil
}
