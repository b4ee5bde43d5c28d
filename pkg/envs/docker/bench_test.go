package docker_test

import (
	"context"
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
