package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/dispatcher"
)

// clearEnv unsets, for the test, every variable that configures the dispatcher, so that the
// environment `go test` runs in cannot change what the test sees.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, config.DefaultEnvPrefix) || k == "NATS_URL" {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

func TestParseFlagsDefaults(t *testing.T) {
	clearEnv(t)
	o, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	d := o.dispatcher
	if o.natsURL != "nats://127.0.0.1:4222" || d.Prefix != "codefleet" || d.Name != host {
		t.Errorf("nats %q prefix %q name %q", o.natsURL, d.Prefix, d.Name)
	}
	if d.HeartbeatTTL != dispatcher.DefaultHeartbeatTTL || d.MaxTimeout != dispatcher.DefaultMaxTimeout ||
		d.RelayOverhead != dispatcher.DefaultRelayOverhead || d.CloseTimeout != dispatcher.DefaultCloseTimeout || d.KVReplicas != 1 {
		t.Errorf("config %+v", d)
	}
	if d.Version != config.SemVer(version) {
		t.Errorf("version %q", d.Version)
	}
}

// syncBuffer is a bytes.Buffer safe for the dispatcher's goroutines to log into.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunStartsAndStops starts the dispatcher on an embedded NATS server, sees it answer
// service discovery, then cancels its context as SIGTERM does and sees run return nil.
func TestRunStartsAndStops(t *testing.T) {
	clearEnv(t)
	srv := testutil.StartNATS(t)
	nc := testutil.Connect(t, srv)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--nats-url", srv.ClientURL(), "--name", "d-test"}, &logs)
	}()

	testutil.Eventually(t, 10*time.Second, func() error {
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v\n%s", err, logs.String())
		default:
		}
		_, err := nc.Request("$SRV.PING."+dispatcher.ServiceName, nil, 200*time.Millisecond)
		return err
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v\n%s", err, logs.String())
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("run did not return after cancel\n%s", logs.String())
	}
}
