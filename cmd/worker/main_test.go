package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// fakeAgent returns an executable file standing in for sandbox-agent: the Docker backend only
// reads it when it creates a sandbox.
func fakeAgent(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sandbox-agent")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// closedPort returns a loopback NATS URL nobody listens on.
func closedPort(t *testing.T) string { return "nats://127.0.0.1:" + strconv.Itoa(testutil.FreePort(t)) }

func TestSanitizeID(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"worker-0", "worker-0"},
		{"codefleet-worker-3", "codefleet-worker-3"},
		{"Host_01", "Host_01"},
		{"host.example.com", "host-example-com"},
		{"my host", "my-host"},
		{"hôte", "h-te"},
		{"", "worker"},
		{"...", "worker"},
		{strings.Repeat("a", 200), strings.Repeat("a", 128)},
		{strings.Repeat("é", 200), "worker"},
	} {
		got := sanitizeID(tc.in)
		if got != tc.want {
			t.Errorf("sanitizeID(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if !protocol.ValidID(got) {
			t.Errorf("sanitizeID(%q) = %q is not a valid id", tc.in, got)
		}
	}
}

func TestDefaultIDIsHostName(t *testing.T) {
	testutil.ClearEnv(t)
	o, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if o.worker.ID != sanitizeID(host) {
		t.Errorf("id = %q, want the sanitized host name %q", o.worker.ID, sanitizeID(host))
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name  string
		env   map[string]string
		args  []string
		check func(t *testing.T, o *options)
	}{
		{
			name: "defaults",
			check: func(t *testing.T, o *options) {
				if o.daemon.NATSURL != "nats://127.0.0.1:4222" || o.backend.Backend != "docker" || o.worker.Prefix != "codefleet" {
					t.Errorf("nats %q backend %q prefix %q", o.daemon.NATSURL, o.backend.Backend, o.worker.Prefix)
				}
				if d := o.backend.Docker; d.Memory != 512<<20 || d.NanoCPUs != 1e9 || d.MaxOutput != 256<<10 {
					t.Errorf("memory %d cpus %d max output %d", d.Memory, d.NanoCPUs, d.MaxOutput)
				}
				if o.worker.Image != "codefleet-sandbox:bookworm" || o.backend.Docker.Image != o.worker.Image {
					t.Errorf("image %q / %q", o.worker.Image, o.backend.Docker.Image)
				}
				if o.daemon.LogLevel != "info" || o.daemon.LogFormat != "json" || o.worker.DestroyOnShutdown {
					t.Errorf("daemon %+v destroy on shutdown %v", o.daemon, o.worker.DestroyOnShutdown)
				}
				if o.worker.Version != config.SemVer(version) {
					t.Errorf("version %q", o.worker.Version)
				}
			},
		},
		{
			name: "env",
			env: map[string]string{
				"CODEFLEET_ID": "w-env", "NATS_URL": "nats://alias:4222", "CODEFLEET_CAPACITY": "5",
				"CODEFLEET_MAX_TIMEOUT": "90s", "CODEFLEET_MEMORY": "1g", "CODEFLEET_CPUS": "0.5",
				"CODEFLEET_CAP_ADD": "CHOWN, SETUID", "CODEFLEET_DESTROY_ON_SHUTDOWN": "true",
				"CODEFLEET_ALLOWED_IMAGES": "python:3.12,*",
			},
			check: func(t *testing.T, o *options) {
				if o.worker.ID != "w-env" || o.daemon.NATSURL != "nats://alias:4222" || o.worker.Capacity != 5 ||
					o.worker.MaxTimeout != 90*time.Second || o.backend.Docker.Memory != 1<<30 || o.backend.Docker.NanoCPUs != 5e8 ||
					!o.worker.DestroyOnShutdown {
					t.Errorf("options %+v", o)
				}
				if !reflect.DeepEqual(o.backend.Docker.CapAdd, []string{"CHOWN", "SETUID"}) ||
					!reflect.DeepEqual(o.worker.AllowedImages, []string{"python:3.12", "*"}) {
					t.Errorf("cap add %q allowed images %q", o.backend.Docker.CapAdd, o.worker.AllowedImages)
				}
			},
		},
		{
			name: "daytona",
			env: map[string]string{
				"CODEFLEET_BACKEND": "daytona", "DAYTONA_API_KEY": "dtn_k", "DAYTONA_TARGET": "eu",
				"CODEFLEET_DAYTONA_TENANTS": `{"acme":{"api_key":"${acme_key}","target":"us"}}`, "CODEFLEET_MAX_OUTPUT": "1m",
			},
			check: func(t *testing.T, o *options) {
				d := o.backend.Daytona
				if o.backend.Backend != "daytona" || d.APIKey != "dtn_k" || d.Target != "eu" || d.APIURL != "https://app.daytona.io/api" || d.MaxOutput != 1<<20 {
					t.Errorf("daytona %+v", d)
				}
				if o.worker.Image != "" || d.Image != "" {
					t.Errorf("image %q / %q, want the service's default snapshot", o.worker.Image, d.Image)
				}
				if a := d.Tenants["acme"]; a.APIKey != "${acme_key}" || a.Target != "us" {
					t.Errorf("tenants %+v", d.Tenants)
				}
			},
		},
		{
			name: "daytona flags win",
			env:  map[string]string{"DAYTONA_API_KEY": "dtn_env", "DAYTONA_API_URL": "http://env/api"},
			args: []string{"--backend", "daytona", "--daytona-api-key", "dtn_flag", "--image", "snapshot:s1", "--daytona-auto-stop", "30"},
			check: func(t *testing.T, o *options) {
				if d := o.backend.Daytona; d.APIKey != "dtn_flag" || d.APIURL != "http://env/api" || d.Image != "snapshot:s1" || d.AutoStopInterval != 30 {
					t.Errorf("daytona %+v", d)
				}
			},
		},
		{
			name: "flags win",
			env:  map[string]string{"CODEFLEET_ID": "w-env", "CODEFLEET_NATS_URL": "nats://env:4222", "CODEFLEET_MEMORY": "1g"},
			args: []string{"--id", "w-flag", "--nats-url=nats://flag:4222", "--memory", "64m", "--image", "img:1"},
			check: func(t *testing.T, o *options) {
				if o.worker.ID != "w-flag" || o.daemon.NATSURL != "nats://flag:4222" || o.backend.Docker.Memory != 64<<20 ||
					o.worker.Image != "img:1" || o.backend.Docker.Image != "img:1" {
					t.Errorf("options %+v", o)
				}
			},
		},
		{
			name: "bool flags alone, anywhere",
			env:  map[string]string{"CODEFLEET_READONLY_ROOTFS": "false"},
			args: []string{"--destroy-on-shutdown", "--id", "w-1", "--readonly-rootfs", "--log-format=console"},
			check: func(t *testing.T, o *options) {
				if !o.worker.DestroyOnShutdown || !o.backend.Docker.ReadonlyRootfs || o.worker.ID != "w-1" || o.daemon.LogFormat != "console" {
					t.Errorf("options %+v", o)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ClearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			o, err := parseFlags(tc.args, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
}

// TestStartupErrors: a bad configuration fails before anything connects, with an error that
// says what to fix (internal/backend's tests have the backend flags' every case).
func TestStartupErrors(t *testing.T) {
	agent := fakeAgent(t)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want []string // substrings of the error
	}{
		{name: "unknown backend", args: []string{"--backend", "podman", "--agent", agent},
			want: []string{`unknown backend "podman"`, "docker and daytona"}},
		{name: "daytona without a key", args: []string{"--backend", "daytona"},
			want: []string{"daytona backend needs an API key", "DAYTONA_API_KEY", "--daytona-tenants"}},
		{name: "unknown backend from env", env: map[string]string{"CODEFLEET_BACKEND": "k8s"},
			want: []string{`unknown backend "k8s"`, "CODEFLEET_BACKEND"}},
		{name: "agent flag names no file", args: []string{"--agent", "/nonexistent/sandbox-agent"},
			want: []string{"--agent /nonexistent/sandbox-agent", "no such file"}},
		{name: "agent not executable", args: []string{"--agent", "main_test.go"},
			want: []string{"not executable"}},
		{name: "bad env value", env: map[string]string{"CODEFLEET_MAX_TIMEOUT": "ten"},
			want: []string{"CODEFLEET_MAX_TIMEOUT", "not a duration"}},
		{name: "bad id", args: []string{"--id", "a.b"}, want: []string{`id "a.b"`}},
		{name: "bad cpus", args: []string{"--cpus", "0"}, want: []string{"--cpus"}},
		{name: "memory too small", args: []string{"--memory", "1m"}, want: []string{"--memory 1MiB", "at least 6MiB"}},
		{name: "bad heartbeat", args: []string{"--heartbeat-ttl", "1s"}, want: []string{"heartbeat TTL 1s"}},
		{name: "bad log level", args: []string{"--log-level", "loud"}, want: []string{"log level"}},
		{name: "stray argument", args: []string{"serve"}, want: []string{"unexpected arguments"}},
		{name: "bool flag value after a blank", args: []string{"--destroy-on-shutdown", "false"},
			want: []string{`unexpected arguments ["false"]`, "--name=false"}},
		{name: "single dash", args: []string{"-id", "w-1"}, want: []string{"flags take two dashes: --id"}},
		{name: "unknown flag", args: []string{"--no-such-flag"}, want: []string{"unknown flag: --no-such-flag"}},
		{name: "no NATS", args: []string{"--agent", agent, "--nats-url", closedPort(t)},
			want: []string{"connect to NATS at nats://127.0.0.1:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ClearEnv(t)
			t.Setenv("PATH", t.TempDir()) // no sandbox-agent in $PATH
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := run(ctx, tc.args, &stderr)
			if err == nil {
				t.Fatal("run succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestHelp(t *testing.T) {
	testutil.ClearEnv(t)
	var stderr bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &stderr); !errors.Is(err, config.ErrHelp) {
		t.Fatalf("--help: %v, want config.ErrHelp (daemon.Main exits 0)", err)
	}
	for _, w := range []string{"--nats-url string", "$CODEFLEET_NATS_URL, $NATS_URL", "--memory size", "$CODEFLEET_MEMORY", "(default 512MiB)"} {
		if !strings.Contains(stderr.String(), w) {
			t.Errorf("help lacks %q", w)
		}
	}
}

// TestREADMEDocumentsFlags keeps the README's configuration table in step with the flags.
func TestREADMEDocumentsFlags(t *testing.T) {
	testutil.ClearEnv(t)
	var stderr bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &stderr); !errors.Is(err, config.ErrHelp) {
		t.Fatal(err)
	}
	testutil.READMEDocumentsFlags(t, "../../README.md", stderr.String(), 30)
}

// runWorker runs the worker command with args on an embedded NATS server until it has
// registered as id, then cancels its context as SIGTERM does and waits for it to return nil. It
// returns the registration it saw, the registry bucket and the worker's logs.
func runWorker(t *testing.T, id string, args ...string) (protocol.WorkerInfo, jetstream.KeyValue, string) {
	t.Helper()
	srv := testutil.StartNATS(t)
	js, err := jetstream.New(testutil.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	var info protocol.WorkerInfo
	var kv jetstream.KeyValue
	logs := testutil.RunDaemon(t, 60*time.Second, func(ctx context.Context, stderr io.Writer) error {
		return run(ctx, append([]string{"--nats-url", srv.ClientURL(), "--id", id, "--drain-timeout", "2s"}, args...), stderr)
	}, func() error {
		ctx := context.Background()
		kv, err = js.KeyValue(ctx, protocol.Subjects{}.WorkersBucket())
		if err != nil {
			return err
		}
		e, err := kv.Get(ctx, id)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(e.Value(), &info); err != nil {
			return err
		}
		if info.Draining {
			return errors.New("registered, still starting (draining until it serves)")
		}
		return nil
	})
	return info, kv, logs
}

// TestRunStartsAndStops starts the worker on an embedded NATS server, sees it register, then
// cancels its context as SIGTERM does and sees it drain, deregister and return nil. The Docker
// daemon is only asked for sandboxes to re-adopt; without it the worker warns and goes on.
func TestRunStartsAndStops(t *testing.T) {
	testutil.ClearEnv(t)
	id := "cmd-test-" + strings.ReplaceAll(testutil.RunID, ".", "-")
	_, kv, logs := runWorker(t, id, "--agent", fakeAgent(t), "--log-level", "debug")
	if _, err := kv.Get(context.Background(), id); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("registration after shutdown: %v, want ErrKeyNotFound", err)
	}
	for _, w := range []string{"NATS connected", `"found":"--agent"`, "worker ready", `"backend":"docker"`, "draining", `"drain_timeout":"2s"`, "bye"} {
		if !strings.Contains(logs, w) {
			t.Errorf("logs lack %q:\n%s", w, logs)
		}
	}
}

// TestAgentFallback: with no --agent and no sandbox-agent next to the executable or in $PATH,
// the worker's own executable is the agent (it runs agent.Main under the name sandbox-agent),
// and the log says so.
func TestAgentFallback(t *testing.T) {
	testutil.ClearEnv(t)
	t.Setenv("PATH", t.TempDir())
	id := "cmd-self-" + strings.ReplaceAll(testutil.RunID, ".", "-")
	_, _, logs := runWorker(t, id)
	exe, _ := os.Executable()
	for _, w := range []string{`"message":"sandbox agent`, `"found":"this executable"`, `"agent":"` + exe + `"`} {
		if !strings.Contains(logs, w) {
			t.Errorf("logs lack %q:\n%s", w, logs)
		}
	}
}

// TestRunDaytona starts the worker with the Daytona backend on a fake Daytona service, as the
// README says (DAYTONA_* variables and --backend daytona), sees it register with that backend,
// and stops it.
func TestRunDaytona(t *testing.T) {
	testutil.ClearEnv(t)
	fake, err := daytonafake.Start(daytonafake.Options{StepDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	t.Setenv("DAYTONA_API_KEY", "dtn_fake")
	t.Setenv("DAYTONA_API_URL", fake.URL)
	id := "cmd-daytona-" + strings.ReplaceAll(testutil.RunID, ".", "-")
	info, _, _ := runWorker(t, id, "--backend", "daytona")
	if len(info.Backends) != 1 || info.Backends[0] != "daytona" {
		t.Fatalf("registered backends %v, want [daytona]", info.Backends)
	}
}
