package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/quota"
)

func TestParseFlagsDefaults(t *testing.T) {
	testutil.ClearEnv(t)
	o, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	d := o.dispatcher
	if o.daemon.NATSURL != "nats://127.0.0.1:4222" || d.Prefix != "codefleet" || d.Name != host {
		t.Errorf("nats %q prefix %q name %q", o.daemon.NATSURL, d.Prefix, d.Name)
	}
	if d.HeartbeatTTL != dispatcher.DefaultHeartbeatTTL || d.MaxTimeout != dispatcher.DefaultMaxTimeout ||
		d.RelayOverhead != dispatcher.DefaultRelayOverhead || d.CloseTimeout != dispatcher.DefaultCloseTimeout || d.KVReplicas != 1 {
		t.Errorf("config %+v", d)
	}
	if d.Version != config.SemVer(version) {
		t.Errorf("version %q", d.Version)
	}
	if o.daemon.LogLevel != "info" || o.daemon.LogFormat != "json" {
		t.Errorf("daemon options %+v", o.daemon)
	}
}

func TestParseFlagsEnvAndFlags(t *testing.T) {
	testutil.ClearEnv(t)
	t.Setenv("NATS_URL", "nats://alias:4222")
	t.Setenv("CODEFLEET_NAME", "d-env")
	t.Setenv("CODEFLEET_MAX_TIMEOUT", "90s")
	o, err := parseFlags([]string{"--name", "d-flag", "--log-level=debug"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.daemon.NATSURL != "nats://alias:4222" || o.dispatcher.Name != "d-flag" || o.dispatcher.MaxTimeout != 90*time.Second || o.daemon.LogLevel != "debug" {
		t.Errorf("options %+v", o)
	}
}

// TestParseFlagsQuotas: the quota flags and their variables reach the dispatcher's config; by
// default they limit nothing.
func TestParseFlagsQuotas(t *testing.T) {
	testutil.ClearEnv(t)
	o, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil || o.dispatcher.Quotas.Enabled() {
		t.Fatalf("default quotas %+v (%v): want none", o.dispatcher.Quotas, err)
	}
	t.Setenv("CODEFLEET_TENANT_MAX_RUNS", "4")
	o, err = parseFlags([]string{"--tenant-max-sandboxes", "10", "--tenant-quotas", `{"acme":{"max_sandboxes":2}}`}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	q := o.dispatcher.Quotas
	if q.For("other") != (quota.Limit{MaxSandboxes: 10, MaxRuns: 4}) || q.For("acme") != (quota.Limit{MaxSandboxes: 2, MaxRuns: 4}) {
		t.Fatalf("quotas %+v", q)
	}
}

func TestStartupErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"stray argument", []string{"serve"}, "unexpected arguments"},
		{"empty NATS URL", []string{"--nats-url="}, "--nats-url is empty"},
		{"bad replicas", []string{"--kv-replicas", "9"}, "--kv-replicas 9"},
		{"bad quota", []string{"--tenant-max-runs", "-1"}, "--tenant-max-runs -1"},
		{"bad tenant quotas", []string{"--tenant-quotas", `{"acme":{"max_run":1}}`}, `--tenant-quotas: want a JSON object`},
		{"bad log format", []string{"--log-format", "xml"}, "log format"},
		{"single dash", []string{"-name", "x"}, "flags take two dashes: --name"},
		{"help", []string{"--help"}, "help requested"},
		{"no NATS", []string{"--nats-url", "nats://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t))}, "connect to NATS at nats://127.0.0.1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ClearEnv(t)
			err := run(context.Background(), tc.args, &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run(%q) = %v, want an error with %q", tc.args, err, tc.want)
			}
		})
	}
}

// TestRunStartsAndStops starts the dispatcher on an embedded NATS server, sees it answer
// service discovery, then cancels its context as SIGTERM does and sees run return nil.
func TestRunStartsAndStops(t *testing.T) {
	testutil.ClearEnv(t)
	srv := testutil.StartNATS(t)
	nc := testutil.Connect(t, srv)
	logs := testutil.RunDaemon(t, 40*time.Second, func(ctx context.Context, stderr io.Writer) error {
		return run(ctx, []string{"--nats-url", srv.ClientURL(), "--name", "d-test"}, stderr)
	}, func() error {
		_, err := nc.Request("$SRV.PING."+dispatcher.ServiceName, nil, 200*time.Millisecond)
		return err
	})
	for _, w := range []string{"NATS connected", "dispatcher ready", `"name":"d-test"`, "signal received: stopping", "bye"} {
		if !strings.Contains(logs, w) {
			t.Errorf("logs lack %q:\n%s", w, logs)
		}
	}
}

// TestREADMEDocumentsFlags keeps the README's dispatcher table in step with the flags.
func TestREADMEDocumentsFlags(t *testing.T) {
	testutil.ClearEnv(t)
	var stderr bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &stderr); !errors.Is(err, config.ErrHelp) {
		t.Fatal(err)
	}
	testutil.READMEDocumentsFlags(t, "../../README.md", stderr.String(), 10)
}
