package docker_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/codefleet/codefleet/pkg/envs"
)

// BenchmarkSandboxRun measures a warm run straight on the backend (no NATS, no worker), and
// reports the share of it spent inside the sandbox (the agent's own measure).
func BenchmarkSandboxRun(b *testing.B) {
	env := newEnvB(b)
	sb, err := env.Create(context.Background(), envs.Spec{Tenant: "bench", Conversation: "bench", Labels: testLabels()})
	if err != nil {
		b.Fatal(err)
	}
	defer env.Destroy(context.Background(), sb.Info().ID)
	for _, lang := range []struct{ name, code string }{{"bash", "true"}, {"python", "print(1)"}} {
		b.Run(lang.name, func(b *testing.B) {
			var total, inside []time.Duration
			for b.Loop() {
				start := time.Now()
				res, err := sb.Run(context.Background(), envs.Exec{Language: lang.name, Code: lang.code})
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
