package docker

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
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
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
)

// testProxy serves an egress proxy with allowlist entries on a unix socket of the test, as the
// worker does in a sandbox's socket directory.
type testProxy struct {
	*egressProxy
	sock string
}

func startProxy(t *testing.T, lim EgressLimits, entries ...string) *testProxy {
	t.Helper()
	allow, err := envs.ParseAllowlist(entries)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "egress.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	lim.setDefaults()
	p := newEgressProxy(ln, allow, lim, newEgressMetrics(), testutil.Logger(t))
	t.Cleanup(func() { p.Close() })
	return &testProxy{egressProxy: p, sock: sock}
}

// client is an HTTP client whose proxy is p: every connection to the proxy is one to its socket,
// as the agent makes them.
func (p *testProxy) client(roots *x509.CertPool) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: "egress.proxy:3128"}),
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				if addr != "egress.proxy:3128" {
					return nil, fmt.Errorf("dial %s: the client went around the proxy", addr)
				}
				var d net.Dialer
				return d.DialContext(ctx, "unix", p.sock)
			},
			TLSClientConfig: &tls.Config{RootCAs: roots},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       10 * time.Second,
	}
}

// raw sends head on a new connection to the proxy and returns the connection and the answer's
// status line.
func (p *testProxy) raw(t *testing.T, head string) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	c, err := net.Dial("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("%q: read the answer: %v", head, err)
	}
	return c, br, strings.TrimRight(line, "\r\n")
}

// connect sends CONNECT target and returns the status line.
func (p *testProxy) connect(t *testing.T, target string) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	return p.raw(t, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
}

func portOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

// TestEgressProxyHTTP: plain HTTP requests to a listed name go through, with the hop-by-hop
// headers dropped, bodies both ways, several on one connection, and redirects passed on.
func TestEgressProxyHTTP(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/redirect":
			http.Redirect(w, r, "http://elsewhere.example/", http.StatusFound)
			return
		case "/until-close/1.0", "/until-close/1.1":
			// A body without a length, ended by closing the connection.
			c, bw, _ := w.(http.Hijacker).Hijack()
			fmt.Fprintf(bw, "HTTP/%s 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", strings.TrimPrefix(r.URL.Path, "/until-close/"))
			bw.Flush()
			c.Close()
			return
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s host=%s proxy-connection=%q proxy-authorization=%q body=%s",
			r.Method, r.RequestURI, r.Host, r.Header.Get("Proxy-Connection"), r.Header.Get("Proxy-Authorization"), body)
	}))
	defer origin.Close()
	port := portOf(t, origin.URL)
	p := startProxy(t, EgressLimits{}, "localhost:"+port)
	c := p.client(nil)
	base := "http://localhost:" + port

	for i := range 3 { // on one proxy connection: the transport keeps it
		res, err := c.Get(base + "/pkg?i=" + strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		want := fmt.Sprintf(`GET /pkg?i=%d host=localhost:%s proxy-connection="" proxy-authorization="" body=`, i, port)
		if res.StatusCode != 200 || string(body) != want {
			t.Fatalf("GET through the proxy: %d %q, want 200 %q", res.StatusCode, body, want)
		}
	}
	req, _ := http.NewRequest("POST", base+"/upload", strings.NewReader(strings.Repeat("x", 1<<20)))
	req.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.HasPrefix(string(body), `POST /upload host=localhost:`+port+` proxy-connection="" proxy-authorization="" body=xxx`) || len(body) < 1<<20 {
		t.Fatalf("POST through the proxy: %.200q", body)
	}
	res, err = c.Get(base + "/redirect")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusFound || res.Header.Get("Location") != "http://elsewhere.example/" {
		t.Fatalf("redirect: %d %q, want the 302 as it came", res.StatusCode, res.Header.Get("Location"))
	}
	for _, path := range []string{"/until-close/1.0", "/until-close/1.1"} {
		res, err := c.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || string(body) != "until close" {
			t.Fatalf("GET %s: %q, %v: want the body, ended by the connection's close", path, body, err)
		}
	}
	if got := promtest.ToFloat64(p.m.proxied); got != 7 {
		t.Errorf("proxied = %v, want 7", got)
	}
}

// TestEgressProxyConnect: HTTPS through CONNECT to a listed name and to a listed address; a
// tunnel carries a half-close.
func TestEgressProxyConnect(t *testing.T) {
	pki := testutil.MakeTLS(t)
	cert, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(pki.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	origin := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "secure %s", r.URL.Path)
	}))
	origin.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	origin.StartTLS()
	defer origin.Close()
	port := portOf(t, origin.URL)

	// A server that answers once its client is done sending.
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				fmt.Fprintf(c, "read %d bytes", len(b))
			}()
		}
	}()
	echoAddr := echo.Addr().String()

	p := startProxy(t, EgressLimits{}, "localhost:"+port, echoAddr, "[::1]:*")
	for _, u := range []string{"https://localhost:" + port + "/a", "https://127.0.0.1:" + port + "/b"} {
		res, err := p.client(roots).Get(u)
		if strings.Contains(u, "127.0.0.1") {
			// Not listed: the proxy refuses the CONNECT, and the client says so.
			if err == nil || !strings.Contains(err.Error(), "Forbidden") {
				t.Fatalf("GET %s: %v, want the CONNECT refused", u, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(body) != "secure /a" {
			t.Fatalf("GET %s: %q", u, body)
		}
	}

	c, br, status := p.connect(t, echoAddr)
	if status != "HTTP/1.1 200 Connection established" {
		t.Fatalf("CONNECT %s: %q", echoAddr, status)
	}
	if line, _ := br.ReadString('\n'); line != "\r\n" {
		t.Fatalf("after the status line: %q", line)
	}
	io.WriteString(c, strings.Repeat("y", 300<<10))
	c.(*net.UnixConn).CloseWrite()
	got, err := io.ReadAll(br)
	if err != nil || string(got) != fmt.Sprintf("read %d bytes", 300<<10) {
		t.Fatalf("through the tunnel, after a half-close: %q, %v", got, err)
	}
}

// TestEgressProxyRefuses: what the allowlist does not name, addresses no sandbox may reach,
// and requests that are not a proxy's, each answered with a status that says why, and counted.
func TestEgressProxyRefuses(t *testing.T) {
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer origin.Close()
	port := portOf(t, origin.URL)
	closed := strconv.Itoa(testutil.FreePort(t))
	p := startProxy(t, EgressLimits{DialTimeout: 2 * time.Second}, "localhost:"+port, "localhost:"+closed, "no-such-host.invalid:443", "*.example.org:443", "10.0.0.0/8:*")
	for _, c := range []struct{ target, status, reason string }{
		{"pypi.org:443", "403 Forbidden: codefleet egress: pypi.org:443 is not in the egress allowlist", refusedNotListed},
		{"LOCALHOST.:1", "403 Forbidden: codefleet egress: localhost:1 is not in the egress allowlist", refusedNotListed},
		{"example.org:443", "403 Forbidden: codefleet egress: example.org:443 is not in the egress allowlist", refusedNotListed},
		{"127.0.0.1:" + port, "403 Forbidden: codefleet egress: 127.0.0.1:" + port + " is not in the egress allowlist (an address is allowed only where the allowlist names it)", refusedIPLiteral},
		{"169.254.169.254:80", "403 Forbidden: codefleet egress: 169.254.169.254 is a link-local address (cloud metadata)", refusedForbidden},
		{"[::ffff:169.254.169.254]:80", "403 Forbidden: codefleet egress: 169.254.169.254 is a link-local address (cloud metadata)", refusedForbidden},
		{"[fe80::1]:80", "403 Forbidden: codefleet egress: fe80::1 is a link-local address (cloud metadata)", refusedForbidden},
		{"[fd00:ec2::254]:80", "403 Forbidden: codefleet egress: fd00:ec2::254 is the cloud metadata address", refusedForbidden},
		{"0.0.0.0:" + port, "403 Forbidden: codefleet egress: 0.0.0.0 is an unspecified address", refusedForbidden},
		{"2130706433:" + port, "400 Bad Request: codefleet egress: not a host name", refusedBad},
		{"localhost", "400 Bad Request: codefleet egress: CONNECT wants host:port, a port from 1 to 65535", refusedBad},
		// Listed, but not there: 502, not counted as refusals.
		{"localhost:" + closed, "502 Bad Gateway: codefleet egress: localhost:" + closed + ": dial tcp", ""},
		{"no-such-host.invalid:443", "502 Bad Gateway: codefleet egress: resolve no-such-host.invalid: ", ""},
	} {
		_, br, status := p.connect(t, c.target)
		if !strings.HasPrefix(status, "HTTP/1.1 "+c.status) {
			t.Errorf("CONNECT %s: %q, want %q", c.target, status, c.status)
			continue
		}
		res, err := http.ReadResponse(br, nil)
		if err == nil { // the rest of the answer: headers and a body saying the same
			body, _ := io.ReadAll(res.Body)
			if !strings.HasPrefix(string(body), "codefleet egress: ") || res.Header.Get("Connection") != "close" {
				t.Errorf("CONNECT %s: body %q, headers %v", c.target, body, res.Header)
			}
		}
	}
	for _, c := range []struct{ head, status string }{
		{"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "400 Bad Request: codefleet egress: want CONNECT host:port, or a request for an absolute http:// URI"},
		{"GET https://localhost:" + port + "/ HTTP/1.1\r\nHost: localhost\r\n\r\n", "400 Bad Request: codefleet egress: want CONNECT"},
		{"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n", "403 Forbidden: codefleet egress: 169.254.169.254 is a link-local"},
		{"GET http://evil.example/ HTTP/1.1\r\nHost: localhost:" + port + "\r\n\r\n", "403 Forbidden: codefleet egress: evil.example:80 is not in the egress allowlist"},
		{"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", "400 Bad Request: codefleet egress: not an HTTP proxy request"},
	} {
		if _, _, status := p.raw(t, c.head); !strings.HasPrefix(status, "HTTP/1.1 "+c.status) {
			t.Errorf("%q: %q, want %q", c.head, status, c.status)
		}
	}
	for reason, want := range map[string]float64{refusedNotListed: 4, refusedIPLiteral: 1, refusedForbidden: 6, refusedBad: 5, refusedLimit: 0} {
		if got := promtest.ToFloat64(p.m.refusedVec.WithLabelValues(reason)); got != want {
			t.Errorf("refused{reason=%s} = %v, want %v", reason, got, want)
		}
	}
	if got := promtest.ToFloat64(p.m.upstreamErrors); got != 2 {
		t.Errorf("upstream errors = %v, want 2", got)
	}

	// A claimed pool sandbox gets its tenant's allowlist: what was refused goes through.
	allow, _ := envs.ParseAllowlist([]string{"127.0.0.1:" + port})
	p.setAllow(allow)
	if _, _, status := p.connect(t, "127.0.0.1:"+port); status != "HTTP/1.1 200 Connection established" {
		t.Fatalf("after setAllow: %q", status)
	}
}

// TestEgressProxyBounds: a sandbox's concurrent connections are capped (the next is told 503),
// a connection quiet both ways is closed while one moving one way is not, and Close ends
// every connection.
func TestEgressProxyBounds(t *testing.T) {
	// A server that sends a byte every 20 ms for as long as asked, then nothing.
	trickle, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer trickle.Close()
	go func() {
		for {
			c, err := trickle.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var n int
				fmt.Fscan(c, &n)
				for range n {
					c.Write([]byte("."))
					time.Sleep(20 * time.Millisecond)
				}
				io.Copy(io.Discard, c)
			}()
		}
	}()
	addr := trickle.Addr().String()
	p := startProxy(t, EgressLimits{MaxConns: 2, IdleTimeout: 300 * time.Millisecond}, addr)

	// Moving one way for three times the idle timeout: kept open.
	c1, br1, status := p.connect(t, addr)
	if status != "HTTP/1.1 200 Connection established" {
		t.Fatal(status)
	}
	br1.ReadString('\n')
	start := time.Now()
	io.WriteString(c1, "45\n")
	got := make([]byte, 45)
	if _, err := io.ReadFull(br1, got); err != nil {
		t.Fatalf("a download three times as long as the idle timeout was cut after %s: %v", time.Since(start), err)
	}
	// Then quiet: closed after the idle timeout.
	if _, err := br1.ReadByte(); err == nil {
		t.Fatal("a quiet tunnel read a byte")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a quiet tunnel was closed after %s", d)
	}

	// The quiet tunnel's slot is given back once its goroutine is done, a moment after the close.
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := len(p.slots); n != 0 {
			return fmt.Errorf("%d connections hold a slot", n)
		}
		return nil
	})
	c2, _, status2 := p.connect(t, addr)
	c3, _, status3 := p.connect(t, addr)
	if status2 != "HTTP/1.1 200 Connection established" || status3 != status2 {
		t.Fatalf("two connections: %q, %q", status2, status3)
	}
	_, br4, status := p.connect(t, addr)
	if !strings.HasPrefix(status, "HTTP/1.1 503 Service Unavailable: codefleet egress: this sandbox has 2 connections open") {
		t.Fatalf("third connection: %q", status)
	}
	io.ReadAll(br4)
	if got := promtest.ToFloat64(p.m.refusedVec.WithLabelValues(refusedLimit)); got != 1 {
		t.Errorf("refused{reason=limit} = %v, want 1", got)
	}
	c2.Close()
	testutil.Eventually(t, 5*time.Second, func() error {
		_, _, status := p.connect(t, addr)
		if status != "HTTP/1.1 200 Connection established" {
			return fmt.Errorf("after one closed: %q", status)
		}
		return nil
	})

	// Close ends the connections open.
	c3.SetDeadline(time.Now().Add(5 * time.Second))
	p.Close()
	if _, err := io.ReadAll(c3); err != nil {
		t.Fatalf("a connection open at Close: %v, want it ended", err)
	}
	if got := promtest.ToFloat64(p.m.open); got != 0 {
		t.Errorf("open connections after Close: %v", got)
	}
}
