package docker

// Egress: a sandbox whose tenant has a non-empty allowlist (Config.Egress) reaches the listed
// destinations, and nothing else, through a proxy in the worker.
//
// The sandbox stays on network none: it has a loopback interface and no route, so a snippet
// that ignores the proxy, dials an address, or aims at the cloud metadata service or the NATS
// server gets "network unreachable". Its way out is the agent: asked by the worker
// (wire.OpEgress), it listens on 127.0.0.1:egressPort inside the sandbox and carries each
// connection to a unix socket the worker listens on in the sandbox's socket directory
// (wire.EgressSocketPath, the directory socket.go mounts), one unix connection per TCP
// connection. There the worker's proxy (egressproxy.go) reads the proxy request, applies the
// allowlist, resolves and dials. Every run gets HTTP_PROXY, HTTPS_PROXY and NO_PROXY (and their
// lower-case forms) pointing at the agent's port, so pip, npm, curl and Python's urllib use it.
// A snippet that connects to the egress socket itself meets the same proxy: the worker decides.
//
// Egress therefore needs the socket directory: a sandbox that should have egress and cannot
// (the daemon does not see the directory, or its mount was refused) fails its creation, rather
// than running without. A free warm pool sandbox (pool.go) gets the plumbing whenever any tenant
// has egress, with an empty allowlist until a conversation claims it; the claim sets its
// tenant's. A sandbox re-attached after a worker restart (Open) gets a proxy again; when that
// fails it runs on without egress (on network none: nothing is let out), and the log says why.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/pkg/envs"
)

// Defaults of EgressLimits.
const (
	// DefaultEgressMaxConns bounds the connections one sandbox has open through the proxy
	// (pip and npm open up to about 16 at once).
	DefaultEgressMaxConns = 64
	// DefaultEgressDialTimeout bounds resolving a destination's name, and dialling it.
	DefaultEgressDialTimeout = 10 * time.Second
	// DefaultEgressIdleTimeout closes a proxied connection on which neither end sent anything
	// for this long.
	DefaultEgressIdleTimeout = 5 * time.Minute
)

const (
	// egressPort is the agent's egress port on the sandbox's loopback: the HTTP proxy port
	// Squid made usual.
	egressPort = 3128
	// egressSocketName is the worker's egress socket in a sandbox's socket directory.
	egressSocketName = "egress.sock"
)

// EgressLimits bound the egress proxy of each sandbox. The zero value of each field means its
// default.
type EgressLimits struct {
	// MaxConns is the most connections a sandbox has open through the proxy; more are answered
	// 503. DefaultEgressMaxConns by default.
	MaxConns int
	// DialTimeout bounds resolving a destination, and dialling it. DefaultEgressDialTimeout by
	// default.
	DialTimeout time.Duration
	// IdleTimeout closes a connection quiet both ways for this long. DefaultEgressIdleTimeout by
	// default.
	IdleTimeout time.Duration
}

func (l *EgressLimits) setDefaults() {
	l.MaxConns = cmp.Or(l.MaxConns, DefaultEgressMaxConns)
	l.DialTimeout = cmp.Or(l.DialTimeout, DefaultEgressDialTimeout)
	l.IdleTimeout = cmp.Or(l.IdleTimeout, DefaultEgressIdleTimeout)
}

// checkEgress refuses a configuration that cannot give egress: a network other than none (the
// sandbox would have a route besides the proxy), or no socket directory.
func (c *Config) checkEgress() error {
	if !c.Egress.Enabled() {
		return nil
	}
	if c.Network != DefaultNetwork {
		return fmt.Errorf("docker: config: an egress allowlist (Egress) needs Network %q, not %q: the proxy is the sandboxes' only way out", DefaultNetwork, c.Network)
	}
	if c.SocketDir == NoSocketDir {
		return errors.New("docker: config: an egress allowlist (Egress) needs the socket directory (SocketDir), which is " + NoSocketDir)
	}
	if c.EgressLimits.MaxConns < 0 || c.EgressLimits.DialTimeout < 0 || c.EgressLimits.IdleTimeout < 0 {
		return errors.New("docker: config: EgressLimits must not be negative")
	}
	return nil
}

// egressOf returns the allowlist of a sandbox for tenant, or for the warm pool (free), and
// whether it needs the egress plumbing at all.
func (e *Env) egressOf(tenant string, free bool) (envs.Allowlist, bool) {
	if free {
		return nil, e.cfg.Egress.Enabled()
	}
	allow := e.cfg.Egress.For(tenant)
	return allow, len(allow) > 0
}

// egressState is the Env's part of egress: the metrics every sandbox's proxy counts in, and the
// proxies by container id, so that Destroy closes a sandbox's connections with it.
type egressState struct {
	m       *egressMetrics
	mu      sync.Mutex
	proxies map[string]*egressProxy
}

// egressNeedsSockets is the error of a creation that needs egress without a socket directory.
func egressNeedsSockets(tenant, why string) error {
	return fmt.Errorf("%w: docker: tenant %q has an egress allowlist (--egress-allow, --egress-tenants), which needs the socket directory shared with the Docker daemon (--socket-dir): %s",
		envs.ErrSandboxFailed, tenant, why)
}

// startEgress listens on the egress socket in dir, the sandbox's socket directory, and has the
// agent listen on its egress port; the sandbox's runs get the proxy variables when allow is not
// empty.
func (s *sandbox) startEgress(ctx context.Context, dir string, allow envs.Allowlist) error {
	fail := func(err error) error {
		return fmt.Errorf("%w: docker: sandbox %s: egress: %v", envs.ErrSandboxFailed, short(s.info.ID), err)
	}
	if dir == "" {
		return fail(errors.New("the sandbox has no socket directory"))
	}
	path := filepath.Join(dir, egressSocketName)
	os.Remove(path) // an earlier worker's
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fail(err)
	}
	// Closing must not remove the path, which may be another listener's by then (the sandbox
	// opened again before the one it replaces was closed); a file left with no listener makes
	// the agent answer 502, and goes with the directory.
	ln.SetUnlinkOnClose(false)
	// The sandbox's user connects to it through the agent, or itself: the policy is the same.
	if err := os.Chmod(path, 0o666); err != nil {
		ln.Close()
		return fail(err)
	}
	p := newEgressProxy(ln, allow, s.env.cfg.EgressLimits, s.env.egress.m, s.log)
	resp, err := s.call(ctx, wire.Request{Op: wire.OpEgress, ID: "egress-" + strconv.FormatUint(s.nextID.Add(1), 10), Port: egressPort}, upgradeTimeout)
	if err == nil && resp.Op != wire.OpEgress {
		err = fmt.Errorf("the agent did not listen on its egress port: %s: %s", resp.Code, resp.Error) // an old agent says bad_frame
	}
	if err != nil {
		p.Close()
		return fail(err)
	}
	s.egress = p
	if len(allow) > 0 {
		s.egressEnv = proxyEnv()
	}
	es := &s.env.egress
	es.mu.Lock()
	old := es.proxies[s.info.ID]
	es.proxies[s.info.ID] = p
	es.mu.Unlock()
	if old != nil {
		old.Close() // the sandbox was opened again while still open here: the new one serves it
	}
	return nil
}

// claimEgress gives a claimed pool sandbox its tenant's allowlist.
func (s *sandbox) claimEgress(tenant string) {
	if s.egress == nil {
		return
	}
	allow := s.env.cfg.Egress.For(tenant)
	s.egress.setAllow(allow)
	if len(allow) > 0 {
		s.egressEnv = proxyEnv()
	}
}

// stopEgress closes the egress proxy of container id, if it has one here, and its connections.
func (e *Env) stopEgress(id string) {
	es := &e.egress
	es.mu.Lock()
	p := es.proxies[id]
	delete(es.proxies, id)
	es.mu.Unlock()
	if p != nil {
		p.Close()
	}
}

// dropEgress closes p, the egress proxy of the sandbox of container id that is closing.
func (e *Env) dropEgress(id string, p *egressProxy) {
	es := &e.egress
	es.mu.Lock()
	if es.proxies[id] == p {
		delete(es.proxies, id)
	}
	es.mu.Unlock()
	p.Close()
}

// proxyEnv is what a sandbox with egress gives every run: the agent's egress port as the HTTP
// and HTTPS proxy of the clients that read these variables (curl, pip, npm, Python, Go, ...),
// in both cases, as each tool reads one or the other.
func proxyEnv() map[string]string {
	u := "http://127.0.0.1:" + strconv.Itoa(egressPort)
	const direct = "localhost,127.0.0.1" // the sandbox's own loopback
	return map[string]string{
		"HTTP_PROXY": u, "HTTPS_PROXY": u, "NO_PROXY": direct,
		"http_proxy": u, "https_proxy": u, "no_proxy": direct,
	}
}

// egressMetrics are the egress proxy's Prometheus metrics, shared by the sandboxes of an Env.
// Label values are bounded: the refusal reasons of egressproxy.go.
type egressMetrics struct {
	refusedVec     *prometheus.CounterVec
	proxied        prometheus.Counter
	upstreamErrors prometheus.Counter
	open           prometheus.Gauge
}

func newEgressMetrics() *egressMetrics {
	m := &egressMetrics{
		refusedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "codefleet_worker_egress_refused_total",
			Help: "Connections and requests of sandboxes the egress proxy refused, by reason: not_listed, ip_literal, forbidden_address, bad_request, limit.",
		}, []string{"reason"}),
		proxied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_worker_egress_proxied_total",
			Help: "CONNECT tunnels and plain HTTP requests of sandboxes the egress proxy allowed and connected.",
		}),
		upstreamErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_worker_egress_upstream_errors_total",
			Help: "Allowed egress requests whose destination could not be resolved, reached or read (answered 502).",
		}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "codefleet_worker_egress_connections",
			Help: "Connections of sandboxes open through the egress proxy now.",
		}),
	}
	for _, r := range []string{refusedNotListed, refusedIPLiteral, refusedForbidden, refusedBad, refusedLimit} {
		m.refusedVec.WithLabelValues(r) // every reason shows, 0 until it happens
	}
	return m
}

func (m *egressMetrics) refused(reason string) { m.refusedVec.WithLabelValues(reason).Inc() }

// Describe and Collect make the Env a prometheus.Collector of its egress metrics, which the
// worker registers with its own.
func (e *Env) Describe(ch chan<- *prometheus.Desc) {
	m := e.egress.m
	m.refusedVec.Describe(ch)
	m.proxied.Describe(ch)
	m.upstreamErrors.Describe(ch)
	m.open.Describe(ch)
}

// Collect: see Describe.
func (e *Env) Collect(ch chan<- prometheus.Metric) {
	m := e.egress.m
	m.refusedVec.Collect(ch)
	m.proxied.Collect(ch)
	m.upstreamErrors.Collect(ch)
	m.open.Collect(ch)
}

var _ prometheus.Collector = (*Env)(nil)
