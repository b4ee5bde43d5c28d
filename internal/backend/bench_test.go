package backend

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/docker"
)

// BenchmarkCreateSandbox measures what FindAgent's last resort costs per sandbox: creating a
// Docker sandbox (container create, copy of the agent, start, hello) with the small
// sandbox-agent, and with the worker's and the CLI's own executables as the agent, built as
// `go install` builds them (cgo on where a C compiler exists, not stripped). Every iteration
// creates and destroys one sandbox per agent, the agents in turn, so that a busy host slows
// them alike. It reports per agent: the binary's size, the agent's resident memory in the
// sandbox (it counts against the sandbox's memory limit), and the creation's min and median.
//
//	go test -run '^$' -bench CreateSandbox -benchtime 20x ./internal/backend/
func BenchmarkCreateSandbox(b *testing.B) {
	testutil.RequireDocker(b)
	type agent struct {
		name, path string
		env        *docker.Env
		rssKiB     int
		creates    []time.Duration
	}
	agents := []*agent{
		{name: "sandbox-agent", path: testutil.AgentBinary(b)},
		{name: "worker", path: goBuild(b, "github.com/codefleet/codefleet/cmd/worker")},
		{name: "codefleet", path: goBuild(b, "github.com/codefleet/codefleet/cmd/codefleet")},
	}
	ctx := context.Background()
	n := 0
	create := func(a *agent) envs.Sandbox {
		n++
		sb, err := a.env.Create(ctx, envs.Spec{Tenant: "bench", Conversation: a.name + "-" + strconv.Itoa(n), Labels: testutil.TestLabels()})
		if err != nil {
			b.Fatal(err)
		}
		return sb
	}
	destroy := func(a *agent, sb envs.Sandbox) {
		sb.Close()
		if err := a.env.Destroy(ctx, sb.Info().ID); err != nil {
			b.Fatal(err)
		}
	}
	for _, a := range agents {
		env, err := docker.New(docker.Config{Image: testutil.SandboxImage(), AgentPath: a.path, Labels: testutil.TestLabels()}, testutil.Logger(b))
		if err != nil {
			b.Fatal(err)
		}
		defer env.Close()
		a.env = env
		// Off the clock: the agent works, its resident memory, and the agent's tar is made.
		sb := create(a)
		res, err := sb.Run(ctx, envs.Exec{Language: "bash", Code: "echo $((40+2)); awk '/^VmRSS/ {print $2}' /proc/1/status"})
		lines := strings.Fields(res.Output)
		if err != nil || len(lines) != 2 || lines[0] != "42" {
			b.Fatalf("run with %s as the agent: %v %+v", a.name, err, res)
		}
		destroy(a, sb)
		a.rssKiB, _ = strconv.Atoi(lines[1])
	}
	i := 0
	for b.Loop() {
		for j := range agents {
			a := agents[(i+j)%len(agents)]
			start := time.Now()
			sb := create(a)
			a.creates = append(a.creates, time.Since(start))
			destroy(a, sb)
		}
		i++
	}
	for _, a := range agents { // after the loop, which clears the metrics reported before it
		st, _ := os.Stat(a.path)
		b.ReportMetric(float64(st.Size())/(1<<20), a.name+"-MiB")
		b.ReportMetric(float64(a.rssKiB)/1024, a.name+"-rss-MiB")
		b.ReportMetric(ms(slices.Min(a.creates)), a.name+"-min-ms")
		b.ReportMetric(ms(median(a.creates)), a.name+"-p50-ms")
	}
}

// goBuild builds pkg as `go install` does by default and returns the binary.
func goBuild(b *testing.B, pkg string) string {
	b.Helper()
	out := filepath.Join(b.TempDir(), filepath.Base(pkg))
	if msg, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
		b.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
