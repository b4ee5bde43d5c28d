package daytona_test

import (
	"context"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
)

// BenchmarkRun measures one run's wall time against the fake, through one blocking call (a
// timeout up to Config.LongRun), through a session (longer) and streamed (a session whose
// output is followed), for a snippet that does nothing and for one that takes 100 ms: what a
// session costs on top (its calls, the polling), and a stream on top of that.
//
//	go test -run '^$' -bench BenchmarkRun -benchtime 200x ./pkg/envs/daytona/
func BenchmarkRun(b *testing.B) {
	fake := startFake(b, daytonafake.Options{Warm: true})
	env := newEnv(b, fake, nil)
	sb, err := env.Create(context.Background(), spec("bench"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { env.Destroy(context.Background(), sb.Info().ID) })
	for _, path := range []struct {
		name    string
		timeout time.Duration
		stream  func(envs.Chunk)
	}{
		{"blocking", daytona.DefaultLongRun, nil},
		{"session", daytona.DefaultLongRun + time.Second, nil},
		{"streamed", daytona.DefaultLongRun, func(envs.Chunk) {}}, // a session, its output followed
	} {
		for _, code := range []struct{ name, lang, code string }{
			{"bash-true", "bash", "true"},
			{"python-pass", "python", "pass"},
			{"bash-sleep-100ms", "bash", "sleep 0.1"},
		} {
			b.Run(path.name+"/"+code.name, func(b *testing.B) {
				for b.Loop() {
					res, err := sb.Run(context.Background(), envs.Exec{Language: code.lang, Code: code.code, Timeout: path.timeout, Stream: path.stream})
					if err != nil || res.ExitCode != 0 {
						b.Fatalf("%+v %v", res, err)
					}
				}
			})
		}
	}
}
