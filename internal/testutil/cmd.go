package testutil

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/internal/config"
)

// This file holds the helpers of the commands' tests (cmd/...).

// ClearEnv unsets, for the test, every variable that configures a codefleet command
// (CODEFLEET_*, DAYTONA_*, NATS_*: NATS_URL and the nats CLI's NATS_USER, NATS_CA, ...), so
// that the environment `go test` runs in cannot change what the test sees; t.Setenv restores
// them afterwards. CODEFLEET_TEST_LOG stays. Call
// SandboxImage and AgentBinary before it: they read CODEFLEET_IMAGE and CODEFLEET_AGENT.
func ClearEnv(t testing.TB) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "CODEFLEET_TEST_LOG" {
			continue
		}
		if strings.HasPrefix(k, config.DefaultEnvPrefix) || strings.HasPrefix(k, "DAYTONA_") || strings.HasPrefix(k, "NATS_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

// SyncBuffer is a bytes.Buffer safe for a command's goroutines to log into.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// FreePort returns a loopback TCP port nobody listens on (now).
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitDispatcher waits until a dispatcher answers service discovery on the NATS server at url.
func WaitDispatcher(t testing.TB, url string, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, func() error {
		nc, err := nats.Connect(url)
		if err != nil {
			return err
		}
		defer nc.Close()
		_, err = nc.Request("$SRV.PING.codefleet-dispatcher", nil, time.Second)
		return err
	})
}

// RunDaemon runs a daemon command's run in a goroutine, with a context and its log output,
// until ready returns nil; then it cancels the context as SIGTERM does and waits up to stopWait
// for run to return nil. It returns the logs.
func RunDaemon(t testing.TB, stopWait time.Duration, run func(ctx context.Context, stderr io.Writer) error, ready func() error) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs SyncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, &logs) }()
	Eventually(t, 30*time.Second, func() error {
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v\n%s", err, logs.String())
		default:
		}
		return ready()
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\n%s", err, logs.String())
		}
	case <-time.After(stopWait):
		t.Fatalf("run did not return after cancel\n%s", logs.String())
	}
	return logs.String()
}

// READMEDocumentsFlags fails the test for every flag in help (a command's --help, as
// config.FlagSet prints it) that has no table row "| `--name` | `CODEFLEET_NAME`" in the
// README at readme, and when help lists fewer than min flags.
func READMEDocumentsFlags(t testing.TB, readme, help string, min int) {
	t.Helper()
	text, err := os.ReadFile(readme)
	if err != nil {
		t.Skipf("no README: %v", err)
	}
	flags := regexp.MustCompile(`(?m)^  --([a-z-]+)`).FindAllStringSubmatch(help, -1)
	if len(flags) < min {
		t.Fatalf("only %d flags in the help:\n%s", len(flags), help)
	}
	for _, f := range flags {
		row := "| `--" + f[1] + "` | `" + config.EnvName(f[1]) + "`"
		if !bytes.Contains(text, []byte(row)) {
			t.Errorf("%s has no table row starting %q", readme, row)
		}
	}
}
