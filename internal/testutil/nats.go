package testutil

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StartNATS runs an in-process NATS server with JetStream on a random loopback port, stopped
// when the test ends.
func StartNATS(t testing.TB) *server.Server {
	t.Helper()
	return StartNATSWith(t, &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir()})
}

// StartNATSWith runs an in-process NATS server with opts (from a configuration file, say),
// quiet and without signal handlers, stopped when the test ends.
func StartNATSWith(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s := runNATS(t, opts)
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// runNATS starts a server with opts and waits until it takes connections.
func runNATS(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	return s
}

// Connect opens a client connection to s, closed when the test ends.
func Connect(t testing.TB, s *server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatalf("nats connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream opens a client connection to s (closed when the test ends) and its JetStream
// context.
func JetStream(t testing.TB, s *server.Server) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(Connect(t, s))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// Context returns a context that ends after 30 s or when the test ends.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// NATSServer is a NATS server with JetStream on a fixed loopback port and store directory that
// a test stops and starts again, as an operator restarts one: clients reconnect to the same URL
// and find their streams.
type NATSServer struct {
	t    testing.TB
	port int
	dir  string
	s    *server.Server
}

// StartRestartableNATS starts a NATSServer, stopped when the test ends.
func StartRestartableNATS(t testing.TB) *NATSServer {
	t.Helper()
	n := &NATSServer{t: t, port: FreePort(t), dir: t.TempDir()}
	n.Start()
	t.Cleanup(n.Stop)
	return n
}

// URL is the server's client URL, the same across restarts.
func (n *NATSServer) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// Start starts the server (again).
func (n *NATSServer) Start() {
	n.t.Helper()
	n.s = runNATS(n.t, &server.Options{Host: "127.0.0.1", Port: n.port, JetStream: true, StoreDir: n.dir})
}

// Stop stops the server; its clients see their connection drop.
func (n *NATSServer) Stop() {
	if n.s != nil {
		n.s.Shutdown()
		n.s.WaitForShutdown()
		n.s = nil
	}
}
