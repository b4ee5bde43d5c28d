// Package ops serves what operators and orchestrators ask a codefleet daemon over HTTP, on its
// --http-addr: /metrics (Prometheus text format), /healthz (the process serves: a liveness
// probe) and /readyz (the daemon can do its job: NATS connected, its KV buckets answer, its
// backend answers: a readiness probe).
//
// One Server may carry several daemons, as `codefleet dev` does with its worker and dispatcher:
// each registers its metrics on the Server's Registry and its readiness checks with Check.
package ops

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// CheckTimeout bounds each readiness check of one /readyz request. Kubernetes' default probe
// timeout is one second; a check that cannot answer in this time is not ready.
const CheckTimeout = 900 * time.Millisecond

// Paths the Server answers.
const (
	PathMetrics = "/metrics"
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
)

// Server is a daemon's HTTP endpoint for metrics and probes.
type Server struct {
	// Registry holds the daemon's metrics (and the Go runtime's and the process's).
	Registry *prometheus.Registry

	ln  net.Listener
	srv *http.Server
	log zerolog.Logger

	mu     sync.Mutex
	checks []check
}

type check struct {
	name string
	f    func(ctx context.Context) error
}

// Listen binds addr (host:port; ":0" picks a free port) and returns a Server that answers once
// Serve is called. Binding first means a taken port fails the daemon before it connects to
// anything.
func Listen(addr string, log zerolog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--http-addr %s: %w", addr, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Server{Registry: reg, ln: ln, log: log}
	mux := http.NewServeMux()
	mux.Handle("GET "+PathMetrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: promLogger{log}}))
	mux.HandleFunc("GET "+PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET "+PathReadyz, s.readyz)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s, nil
}

// Addr returns the address the Server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Check adds a readiness check: /readyz answers 200 only when every check returns nil within
// CheckTimeout.
func (s *Server) Check(name string, f func(ctx context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, check{name, f})
}

// Serve answers requests until Shutdown. It returns at once; a Server that stops serving for
// another reason logs it.
func (s *Server) Serve() {
	go func() {
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("http server")
		}
	}()
}

// Shutdown stops the Server, waiting for requests in progress until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	s.ln.Close() // when Serve was never called
	return err
}

// readyz runs every check at once and answers 200 when all pass, 503 otherwise, with one line
// per check: "ok <name>" or "fail <name>: <why>".
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	checks := slices.Clone(s.checks)
	s.mu.Unlock()
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), CheckTimeout)
			defer cancel()
			errs[i] = c.f(ctx)
		})
	}
	wg.Wait()
	var b strings.Builder
	ready := true
	for i, c := range checks {
		if errs[i] != nil {
			ready = false
			fmt.Fprintf(&b, "fail %s: %v\n", c.name, errs[i])
		} else {
			fmt.Fprintf(&b, "ok %s\n", c.name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprint(w, b.String())
}

// ErrNATSDisconnected is the NATS check's error while the connection is not up.
var ErrNATSDisconnected = errors.New("NATS not connected")

// NATSCheck returns a readiness check of nc: connected, not reconnecting or closed.
func NATSCheck(nc *nats.Conn) func(context.Context) error {
	return func(context.Context) error {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("%w (%s)", ErrNATSDisconnected, strings.ToLower(st.String()))
		}
		return nil
	}
}

// RegisterNATS registers the metrics of a daemon's NATS connection on reg, labelled
// connection=name: codefleet_nats_connected (1 while connected), and the totals of
// reconnects, and of messages and bytes in and out, read from one nc.Stats() per scrape.
func RegisterNATS(reg prometheus.Registerer, nc *nats.Conn, name string) error {
	if err := reg.Register(&natsCollector{nc: nc, labels: prometheus.Labels{"connection": name}}); err != nil {
		return fmt.Errorf("register NATS metrics of %s: %w", name, err)
	}
	return nil
}

// natsCounters are the counters of a connection's statistics.
var natsCounters = []struct {
	name, help string
	value      func(nats.Statistics) uint64
}{
	{"codefleet_nats_reconnects_total", "Reconnections of the NATS connection.", func(s nats.Statistics) uint64 { return s.Reconnects }},
	{"codefleet_nats_in_messages_total", "Messages received on the NATS connection.", func(s nats.Statistics) uint64 { return s.InMsgs }},
	{"codefleet_nats_out_messages_total", "Messages sent on the NATS connection.", func(s nats.Statistics) uint64 { return s.OutMsgs }},
	{"codefleet_nats_in_bytes_total", "Payload bytes received on the NATS connection.", func(s nats.Statistics) uint64 { return s.InBytes }},
	{"codefleet_nats_out_bytes_total", "Payload bytes sent on the NATS connection.", func(s nats.Statistics) uint64 { return s.OutBytes }},
}

// natsCollector exports a NATS connection's state and statistics.
type natsCollector struct {
	nc     *nats.Conn
	labels prometheus.Labels
}

func (c *natsCollector) connected() *prometheus.Desc {
	return prometheus.NewDesc("codefleet_nats_connected", "1 while the NATS connection is up, 0 while it is reconnecting or closed.", nil, c.labels)
}

func (c *natsCollector) desc(i int) *prometheus.Desc {
	return prometheus.NewDesc(natsCounters[i].name, natsCounters[i].help, nil, c.labels)
}

// Describe sends the descriptions of the connection's metrics.
func (c *natsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.connected()
	for i := range natsCounters {
		ch <- c.desc(i)
	}
}

// Collect sends the connection's metrics.
func (c *natsCollector) Collect(ch chan<- prometheus.Metric) {
	up := 0.0
	if c.nc.IsConnected() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(c.connected(), prometheus.GaugeValue, up)
	stats := c.nc.Stats()
	for i, m := range natsCounters {
		ch <- prometheus.MustNewConstMetric(c.desc(i), prometheus.CounterValue, float64(m.value(stats)))
	}
}

// promLogger is promhttp's error log on zerolog.
type promLogger struct{ log zerolog.Logger }

func (l promLogger) Println(v ...any) { l.log.Error().Msg(strings.TrimSpace(fmt.Sprintln(v...))) }
