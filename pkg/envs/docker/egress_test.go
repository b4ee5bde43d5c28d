package docker_test

// Egress on real Docker: the servers the sandboxes reach run in the test process, which is the
// worker here, on its loopback: the worker's proxy dials them, and nothing in a sandbox (whose
// 127.0.0.1 is its own) could otherwise.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/docker"
)

// egressServers are what the test's sandboxes try to reach.
type egressServers struct {
	http, tls string // listed: localhost:<port> of an HTTP and an HTTPS server
	ca        string // the PEM of the HTTPS server's CA
	raw       string // port of a TCP listener on every interface of the host (not listed)
	nats      string // port of a NATS server (not listed)
	hostIP    string // an address of the host other than loopback
	// held counts the connections the raw listener has open now.
	held atomic.Int64
}

func startEgressServers(t *testing.T) *egressServers {
	t.Helper()
	s := &egressServers{}
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s from %s", r.URL.Path, r.Host)
	}))
	t.Cleanup(web.Close)
	s.http = "localhost:" + portOf(t, web.URL)

	pki := testutil.MakeTLS(t)
	cert, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	s.ca = string(ca)
	secure := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "secure %s", r.URL.Path)
	}))
	secure.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	secure.StartTLS()
	t.Cleanup(secure.Close)
	s.tls = "localhost:" + portOf(t, secure.URL)

	// On every interface: were there a route out of a sandbox, a connection to the host's
	// address would be taken.
	raw, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	go func() {
		for {
			c, err := raw.Accept()
			if err != nil {
				return
			}
			go func() {
				s.held.Add(1)
				defer s.held.Add(-1)
				defer c.Close()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	s.raw = strconv.Itoa(raw.Addr().(*net.TCPAddr).Port)

	ns := testutil.StartNATS(t)
	s.nats = strconv.Itoa(ns.Addr().(*net.TCPAddr).Port)

	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() {
			s.hostIP = ip.IP.String()
			break
		}
	}
	if s.hostIP == "" {
		t.Fatal("the host has no IPv4 address but loopback: nothing to aim the raw sockets at")
	}
	return s
}

func portOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

// egressEnv is a Docker backend with a socket directory of the test's and policy.
func egressEnv(t *testing.T, policy envs.Egress) *docker.Env {
	t.Helper()
	sockets := t.TempDir()
	return newEnv(t, func(c *docker.Config) { c.SocketDir, c.Egress = sockets, policy })
}

func allowlist(t *testing.T, entries ...string) envs.Allowlist {
	t.Helper()
	a, err := envs.ParseAllowlist(entries)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// pyConnect is a python snippet's function that sends CONNECT target to the proxy at addr
// (host, port) or a unix socket path, and prints the target and the answer's status line.
const pyConnect = `
import socket
def connect(target, addr=('127.0.0.1', 3128)):
    s = socket.socket(socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET)
    s.settimeout(20)
    s.connect(addr)
    s.sendall(('CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n' % (target, target)).encode())
    print(target, s.makefile('rb').readline().decode().strip())
    s.close()
`

// pyDirect drops NO_PROXY: the test's servers are at localhost (the worker's), a name that
// NO_PROXY sends straight to the sandbox's own loopback.
const pyDirect = `
import os
for k in ('NO_PROXY', 'no_proxy'):
    os.environ.pop(k, None)
`

// TestEgressAllowlist: with an allowlist naming the test's HTTP and HTTPS servers, python and
// node fetch from them through the proxy; everything else is refused by the proxy with a 403
// that says why (another host, an address, the metadata address, the NATS port, also through
// the egress socket itself), and a snippet that ignores the proxy finds no network.
func TestEgressAllowlist(t *testing.T) {
	srv := startEgressServers(t)
	env := egressEnv(t, envs.Egress{Allow: allowlist(t, srv.http, srv.tls)})
	reg := prometheus.NewRegistry()
	reg.MustRegister(env)
	sb := create(t, env, envs.Spec{})

	if res := runOK(t, sb, "bash", `echo "$HTTP_PROXY $HTTPS_PROXY $http_proxy $https_proxy $NO_PROXY $no_proxy"; ls /sys/class/net`); res.Output != strings.Repeat("http://127.0.0.1:3128 ", 4)+"localhost,127.0.0.1 localhost,127.0.0.1\nlo\n" {
		t.Fatalf("proxy variables and interfaces: %q", res.Output)
	}
	for _, c := range []struct{ name, lang, code, want string }{
		{"python urllib, plain HTTP", "python", pyDirect + `
import urllib.request
print(urllib.request.urlopen('http://` + srv.http + `/simple/', timeout=20).read().decode())`,
			"hello /simple/ from " + srv.http + "\n"},
		{"python urllib, HTTPS through CONNECT", "python", pyDirect + `
import ssl, urllib.request
ctx = ssl.create_default_context(cadata='''` + srv.ca + `''')
print(urllib.request.urlopen('https://` + srv.tls + `/files/pkg.whl', context=ctx, timeout=20).read().decode())`,
			"secure /files/pkg.whl\n"},
		{"node http to the proxy", "javascript", `
const http = require('http');
http.get({host: '127.0.0.1', port: 3128, path: 'http://` + srv.http + `/node', headers: {host: '` + srv.http + `'}}, res => {
  let b = ''; res.on('data', d => b += d); res.on('end', () => console.log(res.statusCode, b));
}).on('error', e => { console.log('error', e.message); process.exit(1); });`,
			"200 hello /node from " + srv.http + "\n"},
		{"refused: python urllib sees the reasons", "python", pyDirect + `
import ssl, urllib.request, urllib.error
for u in ('http://pypi.org/simple/', 'https://pypi.org/simple/'):
    try:
        urllib.request.urlopen(u, timeout=20)
    except urllib.error.HTTPError as e:
        print(e.code, e.read().decode().strip())
    except urllib.error.URLError as e:
        print(e.reason)`,
			"403 codefleet egress: pypi.org:80 is not in the egress allowlist\n" +
				"Tunnel connection failed: 403 Forbidden: codefleet egress: pypi.org:443 is not in the egress allowlist\n"},
		{"refused: CONNECT to what is not listed", "python", pyConnect + `
for t in ('pypi.org:443', '127.0.0.1:` + portOfAddr(srv.http) + `', '169.254.169.254:80', 'localhost:` + srv.nats + `', '127.0.0.1:` + srv.nats + `'):
    connect(t)
connect('169.254.169.254:80', '/.codefleet/run/egress.sock')`,
			"pypi.org:443 HTTP/1.1 403 Forbidden: codefleet egress: pypi.org:443 is not in the egress allowlist\n" +
				"127.0.0.1:" + portOfAddr(srv.http) + " HTTP/1.1 403 Forbidden: codefleet egress: 127.0.0.1:" + portOfAddr(srv.http) + " is not in the egress allowlist (an address is allowed only where the allowlist names it)\n" +
				"169.254.169.254:80 HTTP/1.1 403 Forbidden: codefleet egress: 169.254.169.254 is a link-local address (cloud metadata)\n" +
				"localhost:" + srv.nats + " HTTP/1.1 403 Forbidden: codefleet egress: localhost:" + srv.nats + " is not in the egress allowlist\n" +
				"127.0.0.1:" + srv.nats + " HTTP/1.1 403 Forbidden: codefleet egress: 127.0.0.1:" + srv.nats + " is not in the egress allowlist (an address is allowed only where the allowlist names it)\n" +
				"169.254.169.254:80 HTTP/1.1 403 Forbidden: codefleet egress: 169.254.169.254 is a link-local address (cloud metadata)\n"},
		{"no network without the proxy", "python", `
import errno, os, socket
for k in list(os.environ):
    if k.lower().endswith('_proxy'):
        del os.environ[k]
for host, port in (('` + srv.hostIP + `', ` + srv.raw + `), ('` + srv.hostIP + `', ` + srv.nats + `), ('169.254.169.254', 80), ('1.1.1.1', 443), ('127.0.0.1', ` + portOfAddr(srv.http) + `)):
    try:
        socket.create_connection((host, port), timeout=10)
        print(host, 'connected')
    except OSError as e:
        print(host, errno.errorcode.get(e.errno), e.strerror)`,
			srv.hostIP + " ENETUNREACH Network is unreachable\n" + srv.hostIP + " ENETUNREACH Network is unreachable\n" +
				"169.254.169.254 ENETUNREACH Network is unreachable\n1.1.1.1 ENETUNREACH Network is unreachable\n" +
				"127.0.0.1 ECONNREFUSED Connection refused\n"},
	} {
		res, err := sb.Run(context.Background(), envs.Exec{Language: c.lang, Code: c.code, Timeout: time.Minute})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if res.Output != c.want || res.ExitCode != 0 {
			t.Errorf("%s: exit %d, output\n%s\nwant\n%s", c.name, res.ExitCode, res.Output, c.want)
		}
	}
	if n := srv.held.Load(); n != 0 {
		t.Errorf("the raw listener took %d connections from the sandbox", n)
	}
	for metric, want := range map[string]float64{
		`codefleet_worker_egress_refused_total{reason="not_listed"}`:        4,
		`codefleet_worker_egress_refused_total{reason="ip_literal"}`:        2,
		`codefleet_worker_egress_refused_total{reason="forbidden_address"}`: 2,
		`codefleet_worker_egress_proxied_total`:                             3,
	} {
		if got := gathered(t, reg, metric); got != want {
			t.Errorf("%s = %v, want %v", metric, got, want)
		}
	}
}

// portOfAddr returns the port of host:port.
func portOfAddr(hostport string) string { return hostport[strings.LastIndex(hostport, ":")+1:] }

// gathered returns the value of one metric (name{label="value"}) from reg.
func gathered(t *testing.T, reg *prometheus.Registry, metric string) float64 {
	t.Helper()
	name, labels, _ := strings.Cut(strings.TrimSuffix(metric, "}"), "{")
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var got []string
			for _, l := range m.GetLabel() {
				got = append(got, l.GetName()+`="`+l.GetValue()+`"`)
			}
			if strings.Join(got, ",") != labels {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", metric)
	return 0
}

// TestEgressPerTenant: a tenant's allowlist replaces the worker's; a tenant with none gets no
// proxy variables and no egress socket; a warm pool sandbox takes its claimer's allowlist; a
// re-attached sandbox has its proxy again.
func TestEgressPerTenant(t *testing.T) {
	srv := startEgressServers(t)
	env := egressEnv(t, envs.Egress{Tenants: map[string]envs.Allowlist{"acme": allowlist(t, srv.http)}})
	fetch := pyDirect + `
import urllib.request, urllib.error
try:
    print(urllib.request.urlopen('http://` + srv.http + `/t', timeout=20).read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().strip())`
	newSandbox := func(tenant string, pool bool) envs.Sandbox {
		t.Helper()
		spec := envs.Spec{Tenant: tenant, Conversation: strings.ReplaceAll(t.Name(), "/", "_"), Labels: testutil.TestLabels()}
		var sb envs.Sandbox
		var err error
		if pool {
			if sb, err = env.CreateFree(context.Background(), spec); err == nil {
				err = env.Claim(context.Background(), sb, spec)
			}
		} else {
			sb, err = env.Create(context.Background(), spec)
		}
		if sb != nil {
			t.Cleanup(func() {
				sb.Close()
				env.Destroy(context.Background(), sb.Info().ID)
			})
		}
		if err != nil {
			t.Fatalf("sandbox of %s (pool %v): %v", tenant, pool, err)
		}
		return sb
	}
	for _, pool := range []bool{false, true} {
		acme := newSandbox("acme", pool)
		if res := runOK(t, acme, "python", fetch); res.Output != "hello /t from "+srv.http+"\n" {
			t.Errorf("acme (pool %v): %q", pool, res.Output)
		}
		other := newSandbox("other", pool)
		want := "unset 0\n" // no proxy variables; a sandbox made for it has no egress socket either
		if pool {
			want = "unset 1\n" // a pool sandbox was made with one, and its allowlist is empty
		}
		if res := runOK(t, other, "bash", `echo ${HTTP_PROXY-unset} $(ls /.codefleet/run | grep -c egress.sock)`); res.Output != want {
			t.Errorf("other (pool %v): %q, want %q", pool, res.Output, want)
		}
		if pool {
			if res := runOK(t, other, "python", pyConnect+"connect('"+srv.http+"')"); res.Output != srv.http+" HTTP/1.1 403 Forbidden: codefleet egress: "+srv.http+" is not in the egress allowlist\n" {
				t.Errorf("other's pool sandbox: %q", res.Output)
			}
		}
		if !pool {
			// A restarted worker: the sandbox is opened again, and its proxy with it.
			id := acme.Info().ID
			acme.Close()
			again, err := env.Open(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			defer again.Close()
			if res := runOK(t, again, "python", fetch); res.Output != "hello /t from "+srv.http+"\n" {
				t.Errorf("acme re-attached: %q", res.Output)
			}
		}
	}
}

// TestEgressEndsWithSandbox: a connection open through the proxy ends when its sandbox is
// destroyed.
func TestEgressEndsWithSandbox(t *testing.T) {
	srv := startEgressServers(t)
	raw := net.JoinHostPort("127.0.0.1", srv.raw)
	env := egressEnv(t, envs.Egress{Allow: allowlist(t, raw)})
	sb, err := env.Create(context.Background(), envs.Spec{Tenant: "dockertest", Conversation: "ends", Labels: testutil.TestLabels()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		sb.Close()
		env.Destroy(context.Background(), sb.Info().ID)
	}()
	ran := make(chan error, 1)
	go func() {
		_, err := sb.Run(context.Background(), envs.Exec{Language: "python", Timeout: time.Minute, Code: pyConnect + `
s = socket.create_connection(('127.0.0.1', 3128))
s.sendall(b'CONNECT ` + raw + ` HTTP/1.1\r\n\r\n')
s.recv(100)
import time; time.sleep(60)`})
		ran <- err
	}()
	testutil.Eventually(t, 30*time.Second, func() error {
		if n := srv.held.Load(); n != 1 {
			return fmt.Errorf("%d connections at the server, want the sandbox's", n)
		}
		return nil
	})
	if err := env.Destroy(context.Background(), sb.Info().ID); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := srv.held.Load(); n != 0 {
			return fmt.Errorf("%d connections at the server after the destroy", n)
		}
		return nil
	})
	if err := <-ran; !errors.Is(err, envs.ErrSandboxGone) {
		t.Errorf("the run in the destroyed sandbox: %v", err)
	}
}

// TestEgressNeedsSockets: egress is never silently dropped: without a socket directory, or on
// another network than none, the backend refuses to start; a daemon that does not see the
// directory fails the creation of a sandbox with egress (and leaves nothing), while a sandbox
// without egress still gets made.
func TestEgressNeedsSockets(t *testing.T) {
	policy := envs.Egress{Tenants: map[string]envs.Allowlist{"acme": allowlist(t, "pypi.org:443")}}
	for _, c := range []struct {
		mut  func(*docker.Config)
		want string
	}{
		{func(c *docker.Config) { c.SocketDir = docker.NoSocketDir }, "needs the socket directory (SocketDir), which is none"},
		{func(c *docker.Config) { c.Network = "bridge" }, `needs Network "none", not "bridge"`},
	} {
		cfg := docker.Config{AgentPath: testutil.AgentBinary(t), Egress: policy}
		c.mut(&cfg)
		if _, err := docker.New(cfg, testutil.Logger(t)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New: %v, want an error saying %q", err, c.want)
		}
	}

	sockets := t.TempDir()
	env := newEnv(t, func(c *docker.Config) { c.SocketDir, c.Egress = sockets, policy })
	env.MoveBindSources("/nonexistent-codefleet")
	_, err := env.Create(context.Background(), envs.Spec{Tenant: "acme", Conversation: "no-sockets", Labels: testutil.TestLabels()})
	if !errors.Is(err, envs.ErrSandboxFailed) || !strings.Contains(err.Error(), `tenant "acme" has an egress allowlist (--egress-allow, --egress-tenants), which needs the socket directory shared with the Docker daemon (--socket-dir)`) {
		t.Fatalf("create with egress, the daemon not seeing the socket directory: %v", err)
	}
	if dirs, _ := filepath.Glob(filepath.Join(sockets, "*")); len(dirs) != 0 {
		t.Fatalf("socket directories left: %v", dirs)
	}
	sb := create(t, env, envs.Spec{}) // tenant dockertest: no egress
	if res := runOK(t, sb, "bash", "echo ${HTTP_PROXY-unset}"); res.Output != "unset\n" || docker.Transport(sb) != "attach" {
		t.Fatalf("a sandbox without egress: %q over %s", res.Output, docker.Transport(sb))
	}
	if _, err := env.Create(context.Background(), envs.Spec{Tenant: "acme", Conversation: "no-sockets-2", Labels: testutil.TestLabels()}); !errors.Is(err, envs.ErrSandboxFailed) || !strings.Contains(err.Error(), "--socket-dir") {
		t.Fatalf("the next create with egress: %v", err)
	}
}
