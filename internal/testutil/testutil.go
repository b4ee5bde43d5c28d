// Package testutil holds the helpers codefleet's tests share: condition polling and the test
// logger (this file); the sandbox agent built for the test run, the Docker preconditions and
// the leftover-container check (docker.go); an embedded NATS server (nats.go); in-process
// fleets (fleet.go); and what the commands' tests need (cmd.go).
package testutil

import (
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// Logger returns a logger that writes to the test's log (debug level with CODEFLEET_TEST_LOG=1,
// warnings otherwise).
func Logger(t testing.TB) zerolog.Logger {
	level := zerolog.WarnLevel
	if os.Getenv("CODEFLEET_TEST_LOG") != "" {
		level = zerolog.DebugLevel
	}
	return zerolog.New(zerolog.NewTestWriter(t)).Level(level).With().Timestamp().Logger()
}

// Pace pauses a benchmark for d, off the clock, as a client does between runs (0: no pause).
func Pace(b *testing.B, d time.Duration) {
	if d > 0 {
		b.StopTimer()
		time.Sleep(d)
		b.StartTimer()
	}
}

// Eventually polls cond every 10 ms until it returns nil or timeout passes, then fails with
// cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Check closes errs, which the test's goroutines have finished sending on, reports every error
// in it and stops the test if there was any.
func Check(t testing.TB, errs chan error) {
	t.Helper()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}
