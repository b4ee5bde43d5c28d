package docker_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/docker"
)

// BenchmarkSandboxRun measures a warm run straight on the backend (no NATS, no worker), and
// reports the share of it spent inside the sandbox (the agent's own measure). The paced
// variants pause between runs (untimed), as a client does, so that the agent has started the
// language's next interpreter before the run comes (see pkg/worker's BenchmarkWarmRun).
func BenchmarkSandboxRun(b *testing.B) {
	for _, transport := range []struct{ name, socketDir string }{{"socket", ""}, {"attach", docker.NoSocketDir}} {
		env := newEnvTB(b, func(c *docker.Config) { c.SocketDir = transport.socketDir })
		sb, err := env.Create(context.Background(), envs.Spec{Tenant: "bench", Conversation: "bench-" + transport.name, Labels: testLabels()})
		if err != nil {
			b.Fatal(err)
		}
		defer env.Destroy(context.Background(), sb.Info().ID)
		if got := docker.Transport(sb); got != transport.name {
			b.Fatalf("transport %s, want %s", got, transport.name)
		}
		benchRuns(b, transport.name, sb)
	}
}

func benchRuns(b *testing.B, prefix string, sb envs.Sandbox) {
	for _, lang := range []struct {
		name, code string
		pace       time.Duration
	}{
		{"bash", "true", 0}, {"python", "print(1)", 0},
		{"bash-paced", "true", 100 * time.Millisecond}, {"python-paced", "print(1)", 100 * time.Millisecond},
	} {
		b.Run(prefix+"/"+lang.name, func(b *testing.B) {
			language, _, _ := strings.Cut(lang.name, "-")
			var total, inside []time.Duration
			for b.Loop() {
				testutil.Pace(b, lang.pace)
				start := time.Now()
				res, err := sb.Run(context.Background(), envs.Exec{Language: language, Code: lang.code})
				total = append(total, time.Since(start))
				inside = append(inside, res.Duration)
				if err != nil || res.ExitCode != 0 {
					b.Fatalf("%v %+v", err, res)
				}
			}
			b.ReportMetric(p50(total), "p50-ms")
			b.ReportMetric(p50(inside), "p50-in-sandbox-ms")
		})
	}
}

func p50(d []time.Duration) float64 {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return float64(d[len(d)/2].Microseconds()) / 1000
}

// BenchmarkEgressFetch measures what the egress path costs a small fetch from a sandbox:
// python's urllib, a new connection per fetch as urllib makes them, through the proxy (the
// agent's port, the egress socket, the worker's proxy) to a server in the worker, against the
// same fetch from a server inside the sandbox on its own loopback (no proxy). Each iteration is
// one run of 200 fetches of each; the medians are reported, and the rate of a 64 MiB download
// through the proxy.
func BenchmarkEgressFetch(b *testing.B) {
	big := bytes.Repeat([]byte("x"), 64<<20)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Write(big)
			return
		}
		io.WriteString(w, "ok")
	}))
	defer origin.Close()
	target := "localhost:" + origin.URL[strings.LastIndex(origin.URL, ":")+1:]
	allow, err := envs.ParseAllowlist([]string{target})
	if err != nil {
		b.Fatal(err)
	}
	sockets := b.TempDir()
	env := newEnvTB(b, func(c *docker.Config) { c.SocketDir, c.Egress = sockets, envs.Egress{Allow: allow} })
	sb, err := env.Create(context.Background(), envs.Spec{Tenant: "bench", Conversation: "egress", Labels: testLabels()})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		sb.Close()
		env.Destroy(context.Background(), sb.Info().ID)
	}()
	// A server of the sandbox's own, for the fetch without the proxy; setsid: it outlives the run.
	if res, err := sb.Run(context.Background(), envs.Exec{Language: "bash", Code: `setsid python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 < /dev/null &
for i in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', 8000))" 2>/dev/null && exit 0; sleep 0.05; done; exit 1`}); err != nil || res.ExitCode != 0 {
		b.Fatalf("the sandbox's server: %v %+v", err, res)
	}
	code := `
import os, time, urllib.request
for k in ('NO_PROXY', 'no_proxy'):
    os.environ.pop(k, None)
proxied = urllib.request.build_opener()  # the proxy variables
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def median(opener, url):
    ts = []
    for _ in range(200):
        t = time.perf_counter()
        opener.open(url, timeout=20).read()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2] * 1000
t = time.perf_counter()
n = len(proxied.open('http://` + target + `/big', timeout=60).read())
mbs = n / (time.perf_counter() - t) / (1 << 20)
print(median(proxied, 'http://` + target + `/'), median(direct, 'http://127.0.0.1:8000/'), mbs)`
	var proxiedMS, directMS, mbs float64
	for b.Loop() {
		res, err := sb.Run(context.Background(), envs.Exec{Language: "python", Code: code, Timeout: 5 * time.Minute})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("%v %+v", err, res)
		}
		if _, err := fmt.Sscan(res.Output, &proxiedMS, &directMS, &mbs); err != nil {
			b.Fatalf("output %q: %v", res.Output, err)
		}
	}
	b.ReportMetric(proxiedMS, "proxied-ms/fetch")
	b.ReportMetric(directMS, "in-sandbox-ms/fetch")
	b.ReportMetric(mbs, "proxied-MiB/s")
}
