package backend

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
	"github.com/codefleet/codefleet/pkg/envs/docker"
)

func TestMain(m *testing.M) { testutil.MainWithLeftoverCheck(m) }

// executableFile writes an executable file at dir/name and returns its path.
func executableFile(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFindAgent(t *testing.T) {
	exeDir, pathDir := t.TempDir(), t.TempDir()
	exe := executableFile(t, exeDir, "codefleet")
	executable := func() (string, error) { return exe, nil }
	notExecutable := filepath.Join(t.TempDir(), "sandbox-agent")
	if err := os.WriteFile(notExecutable, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", pathDir)

	check := func(name, flag string, exe func() (string, error), goos string, want Agent, wantErr ...string) {
		t.Helper()
		got, err := findAgent(flag, exe, goos)
		if len(wantErr) > 0 {
			if err == nil {
				t.Errorf("%s: found %+v, want an error", name, got)
				return
			}
			for _, w := range wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: error %q lacks %q", name, err, w)
				}
			}
			return
		}
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", name, got, err, want)
		}
	}
	// Nothing but the executable: it is the agent.
	check("fallback", "", executable, "linux", Agent{Path: exe, Source: SourceExecutable})
	check("not on linux", "", executable, "darwin", Agent{}, "sandbox-agent binary was not found", "darwin binary", "--agent", "CODEFLEET_AGENT")
	check("no executable", "", func() (string, error) { return "", errors.New("no /proc") }, "linux", Agent{}, "no /proc", "sandbox-agent in $PATH")
	check("flag names no file", "/nonexistent/sandbox-agent", executable, "linux", Agent{}, "--agent /nonexistent/sandbox-agent", "no such file")
	check("flag names a directory", exeDir, executable, "linux", Agent{}, "is a directory")
	check("flag names a file not executable", notExecutable, executable, "linux", Agent{}, "is not executable")

	inPath := executableFile(t, pathDir, "sandbox-agent")
	check("$PATH", "", executable, "linux", Agent{Path: inPath, Source: SourcePath})
	next := executableFile(t, exeDir, "sandbox-agent")
	check("next to the executable wins over $PATH", "", executable, "linux", Agent{Path: next, Source: SourceNextToExe})
	flag := executableFile(t, t.TempDir(), "my-agent")
	check("the flag wins", flag, executable, "linux", Agent{Path: flag, Source: SourceFlag})
}

func TestInterpreter(t *testing.T) {
	if got := Interpreter(executableFile(t, t.TempDir(), "script")); got != "" {
		t.Errorf("a script: %q, want none", got)
	}
	if got := Interpreter("/nonexistent"); got != "" {
		t.Errorf("no file: %q, want none", got)
	}
	// The shell of a glibc system is dynamically linked.
	if got := Interpreter("/bin/sh"); !strings.Contains(got, "ld-") {
		t.Logf("/bin/sh: interpreter %q (not a dynamically linked ELF here?)", got)
	}
	if got := Interpreter(testutil.AgentBinary(t)); got != "" {
		t.Errorf("sandbox-agent built with CGO_ENABLED=0: interpreter %q, want none", got)
	}
}

// parse declares the backend flags on a fresh flag set, parses args and checks the result.
func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	var o Options
	fs := config.New("test", io.Discard)
	o.Register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return &o, o.Check()
}

func TestCheck(t *testing.T) {
	testutil.ClearEnv(t)
	o, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if o.Backend != docker.Name || o.Image != docker.DefaultImage || o.Docker.Image != docker.DefaultImage ||
		o.Docker.NanoCPUs != 1e9 || o.Docker.Memory != 512<<20 || o.Docker.MaxOutput != docker.DefaultMaxOutput ||
		o.Daytona.MaxOutput != docker.DefaultMaxOutput || o.Docker.SocketDir != docker.DefaultSocketDir {
		t.Errorf("defaults %+v", o)
	}
	o, err = parse(t, "--cpus", "0.5", "--memory=1g", "--max-output", "1m", "--image", "img:1", "--readonly-rootfs", "--cap-add", "CHOWN,SETUID")
	if err != nil {
		t.Fatal(err)
	}
	if o.Docker.NanoCPUs != 5e8 || o.Docker.Memory != 1<<30 || o.Docker.MaxOutput != 1<<20 || o.Docker.Image != "img:1" ||
		!o.Docker.ReadonlyRootfs || len(o.Docker.CapAdd) != 2 {
		t.Errorf("docker %+v", o.Docker)
	}

	tenants := filepath.Join(t.TempDir(), "tenants.json")
	if err := os.WriteFile(tenants, []byte(`{"acme":{"api_key":"${k}"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DAYTONA_API_KEY", "dtn_env")
	o, err = parse(t, "--backend", "daytona", "--daytona-tenants", "@"+tenants, "--daytona-auto-stop", "5", "--daytona-build-timeout", "20m")
	if err != nil {
		t.Fatal(err)
	}
	if d := o.Daytona; o.Image != "" || d.Image != "" || d.APIKey != "dtn_env" || d.APIURL != daytona.DefaultAPIURL ||
		d.Tenants["acme"].APIKey != "${k}" || d.AutoStopInterval != 5 || d.StartTimeout != daytona.DefaultStartTimeout ||
		d.BuildTimeout != 20*time.Minute || d.MaxRetryWait != daytona.DefaultMaxRetryWait {
		t.Errorf("daytona %+v", d)
	}
}

// refusal is a configuration Check must refuse, and what its error must say.
type refusal struct {
	name string
	args []string
	want []string
}

// wantRefused checks that each configuration is refused with an error saying what it wants.
func wantRefused(t *testing.T, cases []refusal) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testutil.ClearEnv(t)
			_, err := parse(t, tc.args...)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestCheckErrors(t *testing.T) {
	wantRefused(t, []refusal{
		{"unknown backend", []string{"--backend", "podman"}, []string{`unknown backend "podman"`, "CODEFLEET_BACKEND", "docker and daytona"}},
		{"cpus", []string{"--cpus", "0"}, []string{"--cpus 0"}},
		{"memory", []string{"--memory", "1m"}, []string{"--memory 1MiB", "at least 6MiB"}},
		{"pids", []string{"--pids-limit", "0"}, []string{"--pids-limit 0"}},
		{"max output", []string{"--max-output", "2g"}, []string{"--max-output 2GiB"}},
		{"daytona without a key", []string{"--backend", "daytona"}, []string{"needs an API key", "DAYTONA_API_KEY", "--daytona-tenants"}},
		{"daytona bad tenants", []string{"--backend", "daytona", "--daytona-tenants", `{"acme":{"apikey":"x"}}`}, []string{"--daytona-tenants", "unknown field"}},
		{"daytona bad tenant id", []string{"--backend", "daytona", "--daytona-tenants", `{"a.b":{"api_key":"x"}}`}, []string{`tenant "a.b"`}},
		{"daytona tenants file missing", []string{"--backend", "daytona", "--daytona-tenants", "@/nonexistent.json"}, []string{"--daytona-tenants", "no such file"}},
		{"daytona start timeout", []string{"--backend", "daytona", "--daytona-api-key", "k", "--daytona-start-timeout", "0s"}, []string{"--daytona-start-timeout", "must be positive"}},
		{"daytona build timeout", []string{"--backend", "daytona", "--daytona-api-key", "k", "--daytona-build-timeout", "0s"}, []string{"--daytona-build-timeout", "must be positive"}},
		{"daytona retry wait", []string{"--backend", "daytona", "--daytona-api-key", "k", "--daytona-max-retry-wait", "-1s"}, []string{"--daytona-max-retry-wait", "must be positive"}},
	})
}

func TestNew(t *testing.T) {
	testutil.ClearEnv(t)
	agent := executableFile(t, t.TempDir(), "sandbox-agent")
	o, err := parse(t, "--agent", agent)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	env, err := o.New(zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if d, ok := env.(*docker.Env); !ok || d.Config().AgentPath != agent || d.Config().Image != docker.DefaultImage {
		t.Errorf("env %T %+v", env, env)
	}
	for _, w := range []string{`"message":"sandbox agent"`, `"found":"--agent"`, `"agent":"` + agent + `"`, `"size":10`} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("log %q lacks %s", logs.String(), w)
		}
	}

	o, err = parse(t, "--backend", "daytona", "--daytona-api-key", "k", "--daytona-start-timeout", "1s")
	if err != nil {
		t.Fatal(err)
	}
	env, err = o.New(zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if env.Name() != daytona.Name {
		t.Errorf("backend %s", env.Name())
	}
}

func TestCheckEgress(t *testing.T) {
	testutil.ClearEnv(t)
	tenants := filepath.Join(t.TempDir(), "egress.json")
	if err := os.WriteFile(tenants, []byte(`{"acme": ["pypi.org:443", "files.pythonhosted.org:443"], "locked": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parse(t, "--egress-allow", "registry.npmjs.org:443,*.example.org:443", "--egress-tenants", "@"+tenants)
	if err != nil {
		t.Fatal(err)
	}
	e := o.Docker.Egress
	if len(e.Allow) != 2 || e.Allow[1].String() != "*.example.org:443" || len(e.For("acme")) != 2 || e.For("acme")[1].Name != "files.pythonhosted.org" ||
		len(e.For("locked")) != 0 || len(e.For("other")) != 2 || len(o.Daytona.Egress.Allow) != 2 {
		t.Errorf("egress %+v", e)
	}
	t.Setenv("DAYTONA_API_KEY", "dtn_env")
	o, err = parse(t, "--backend", "daytona", "--egress-tenants", `{"acme": ["10.0.0.0/8:*"]}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := o.Daytona.Egress.For("acme"); len(got) != 1 || got[0].String() != "10.0.0.0/8:*" {
		t.Errorf("daytona egress %+v", o.Daytona.Egress)
	}

	wantRefused(t, []refusal{
		{"no port", []string{"--egress-allow", "pypi.org"}, []string{"--egress-allow", `"pypi.org"`, "a port is required"}},
		{"metadata", []string{"--egress-allow", "169.254.169.254:80"}, []string{"--egress-allow", "link-local", "which no sandbox may reach"}},
		{"bad tenants JSON", []string{"--egress-tenants", `{"acme": "pypi.org:443"}`}, []string{"--egress-tenants", `want a JSON object {"<tenant>": ["host:port", ...]}`}},
		{"bad tenant id", []string{"--egress-tenants", `{"a.b": []}`}, []string{"--egress-tenants", `tenant "a.b"`}},
		{"bad tenant entry", []string{"--egress-tenants", `{"acme": ["pypi.org:https"]}`}, []string{"--egress-tenants: tenant acme", "pypi.org:https"}},
		{"tenants file missing", []string{"--egress-tenants", "@/nonexistent.json"}, []string{"--egress-tenants", "no such file"}},
		{"network", []string{"--egress-allow", "pypi.org:443", "--network", "bridge"}, []string{"--egress-allow and --network bridge", "stays on network none"}},
		{"tenants and network", []string{"--egress-tenants", `{"acme":["pypi.org:443"]}`, "--network", "host"}, []string{"--egress-tenants and --network host"}},
		{"no socket dir", []string{"--egress-allow", "pypi.org:443", "--socket-dir", "none"}, []string{"--egress-allow and --socket-dir none", "needs the socket directory"}},
		{"daytona host name", []string{"--backend", "daytona", "--daytona-api-key", "k", "--egress-allow", "pypi.org:443"}, []string{"--egress-allow: pypi.org:443", "IPv4 addresses and CIDRs for every port"}},
		{"daytona block all", []string{"--backend", "daytona", "--daytona-api-key", "k", "--egress-allow", "10.0.0.0/8:*", "--daytona-network-block-all"}, []string{"--daytona-network-block-all exclude each other"}},
	})
}
