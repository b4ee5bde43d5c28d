// Package backend declares the sandbox backend's flags (Docker and Daytona), checks them and
// makes the backend: the one switch between pkg/envs/docker and pkg/envs/daytona that
// cmd/worker and `codefleet dev` share.
//
//	var b backend.Options
//	b.Register(fs)          // --backend, --image, the Docker flags, --egress-*, the --daytona-* flags
//	fs.Parse(args)
//	err := b.Check()        // before anything connects
//	env, err := b.New(log)  // finds the sandbox agent (Docker), makes the envs.Env
package backend

import (
	"errors"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// Options are the backend's flags. Register declares them, Check validates them and fills what
// depends on others, New makes the backend.
type Options struct {
	// Backend is docker.Name or daytona.Name (--backend).
	Backend string
	// Image is the default sandbox image (--image). Check sets docker.DefaultImage when it is
	// empty with docker; with daytona empty means the service's default snapshot.
	Image string
	// Docker and Daytona are the two backends' configurations; Check copies Image and the
	// output cap into them.
	Docker  docker.Config
	Daytona daytona.Config

	cpus          float64  // --cpus, turned into Docker.NanoCPUs
	maxOutput     int64    // --max-output, turned into Docker.MaxOutput and Daytona.MaxOutput
	tenants       string   // --daytona-tenants, turned into Daytona.Tenants
	disk          int64    // --disk, turned into Docker.Disk and Daytona.DiskGiB
	egressAllow   []string // --egress-allow and --egress-tenants, turned into Docker.Egress
	egressTenants string   // and Daytona.Egress
}

// DefaultDisk is --disk's default: what a sandbox's snippets may write.
const DefaultDisk = 2 << 30

// Register declares the backend's flags on fs, with their defaults.
func (o *Options) Register(fs *config.FlagSet) {
	fs.StringVar(&o.Backend, "backend", docker.Name, "sandbox backend: docker or daytona")
	fs.StringVar(&o.Image, "image", "", "default sandbox image (default: "+docker.DefaultImage+" with docker; with daytona the service's default snapshot, or snapshot:NAME, or an image to build)")

	d := &o.Docker
	fs.StringVar(&d.Host, "docker-host", "", "Docker daemon address (default: $DOCKER_HOST or the local socket)")
	fs.StringVar(&d.AgentPath, "agent", "", "sandbox-agent binary copied into every Docker sandbox (default: sandbox-agent next to this executable, else in $PATH, else this executable itself)")
	fs.SizeVar(&d.Memory, "memory", docker.DefaultMemory, "memory limit of a sandbox, no swap (512MiB, 1g, ...)")
	fs.Int64Var(&d.PidsLimit, "pids-limit", docker.DefaultPidsLimit, "most processes in a sandbox")
	fs.Float64Var(&o.cpus, "cpus", float64(docker.DefaultNanoCPUs)/1e9, "CPUs a sandbox may use (0.5, 2, ...)")
	fs.StringVar(&d.User, "user", docker.DefaultUser, "user:group that runs the snippets; root to run as root (capabilities stay dropped)")
	fs.StringVar(&d.Workdir, "workdir", docker.DefaultWorkdir, "working directory of every run, where files persist")
	fs.StringVar(&d.Network, "network", docker.DefaultNetwork, "network mode of the sandboxes")
	fs.StringListVar(&d.CapAdd, "cap-add", nil, "capabilities re-added after all are dropped, comma-separated (e.g. CHOWN)")
	fs.BoolVar(&d.ReadonlyRootfs, "readonly-rootfs", false, "make everything but the workdir and /tmp read-only")
	fs.StringVar(&d.Runtime, "runtime", "", "OCI runtime for stronger isolation, e.g. runsc (gVisor) (default: the daemon's)")
	fs.StringVar(&d.SocketDir, "socket-dir", docker.DefaultSocketDir, "directory the worker shares with the Docker daemon (same path for both) for the fast channel to the sandboxes; none: the attached stream only")
	fs.SizeVar(&o.maxOutput, "max-output", docker.DefaultMaxOutput, "cap on one run's output; head and tail are kept")
	fs.SizeVar(&o.disk, "disk", DefaultDisk, "most a sandbox's snippets may write (workspace, /tmp, everything); 0: no limit. Docker: the storage driver's size option where it has one, else the agent's watchdog; Daytona: the disk of sandboxes built from an image, in whole GiB")
	fs.StringListVar(&o.egressAllow, "egress-allow", nil, "what the sandboxes may reach through the worker's egress proxy, comma-separated host:port (pypi.org:443, *.example.org:443, 10.0.0.5:5432, 10.0.0.0/8:*); the sandboxes stay on network none and get HTTP_PROXY (default: nothing)")
	fs.StringVar(&o.egressTenants, "egress-tenants", "", `per-tenant egress allowlists, JSON or @file: {"acme":["pypi.org:443","files.pythonhosted.org:443"]}; a tenant's list replaces --egress-allow ([] for nothing)`)

	dt := &o.Daytona
	fs.StringVar(&dt.APIKey, "daytona-api-key", "", "Daytona API key (prefer the variable to the flag, which shows in ps); may hold ${name} placeholders filled from a request's sandbox.variables")
	fs.Alias("daytona-api-key", "DAYTONA_API_KEY")
	fs.StringVar(&dt.APIURL, "daytona-api-url", daytona.DefaultAPIURL, "Daytona API URL")
	fs.Alias("daytona-api-url", "DAYTONA_API_URL")
	fs.StringVar(&dt.Target, "daytona-target", "", "Daytona target region for new sandboxes (default: the organisation's)")
	fs.Alias("daytona-target", "DAYTONA_TARGET")
	fs.StringVar(&o.tenants, "daytona-tenants", "", `per-tenant Daytona accounts, JSON or @file: {"acme":{"api_key":"${acme_key}","api_url":"...","target":"eu"}}; a field left out is the default account's`)
	fs.BoolVar(&dt.NetworkBlockAll, "daytona-network-block-all", false, "cut the Daytona sandboxes' network off")
	fs.IntVar(&dt.AutoStopInterval, "daytona-auto-stop", 0, "stop a Daytona sandbox after this many idle minutes (0: never; the worker's --idle-ttl ends sandboxes)")
	fs.DurationVar(&dt.StartTimeout, "daytona-start-timeout", daytona.DefaultStartTimeout, "how long a Daytona sandbox may take to start (a new one once Daytona took its creation, which it holds up to 30s first; a stopped or paused one from its start)")
	fs.DurationVar(&dt.BuildTimeout, "daytona-build-timeout", daytona.DefaultBuildTimeout, "how long a new Daytona sandbox made from an image may take to be built and start (a later sandbox of the image reuses the build)")
	fs.DurationVar(&dt.MaxRetryWait, "daytona-max-retry-wait", daytona.DefaultMaxRetryWait, "longest Retry-After of Daytona's rate limits to wait out (within the call's own deadline); a longer one fails the call at once")
}

// Check validates the flags and fills the fields that depend on others (the default image, the
// CPUs and output cap in the backends' units, the Daytona tenants), so that a bad configuration
// fails before anything connects. The Docker limits are checked whatever the backend.
func (o *Options) Check() error {
	if o.cpus <= 0 || o.cpus > 1e6 {
		return fmt.Errorf("--cpus %g: want a positive number of CPUs", o.cpus)
	}
	o.Docker.NanoCPUs = int64(o.cpus * 1e9)
	if o.Docker.Memory < 6<<20 {
		return fmt.Errorf("--memory %s: want at least 6MiB (Docker's minimum)", config.FormatSize(o.Docker.Memory))
	}
	if o.Docker.PidsLimit <= 0 {
		return fmt.Errorf("--pids-limit %d: want a positive number", o.Docker.PidsLimit)
	}
	if o.maxOutput <= 0 || o.maxOutput > 1<<30 {
		return fmt.Errorf("--max-output %s: want a positive size up to 1GiB", config.FormatSize(o.maxOutput))
	}
	o.Docker.MaxOutput = int(o.maxOutput)
	if o.disk < 0 || o.disk > 0 && o.disk < 1<<20 {
		return fmt.Errorf("--disk %s: want 0 (no limit) or at least 1MiB", config.FormatSize(o.disk))
	}
	o.Docker.Disk = o.disk
	o.Daytona.DiskGiB = int((o.disk + 1<<30 - 1) >> 30)
	o.Daytona.MaxOutput = int(o.maxOutput)
	egress, err := o.parseEgress()
	if err != nil {
		return err
	}
	o.Docker.Egress, o.Daytona.Egress = egress, egress
	switch o.Backend {
	case docker.Name:
		if o.Image == "" {
			o.Image = docker.DefaultImage
		}
		o.Docker.Image = o.Image
		if err := o.checkDockerEgress(); err != nil {
			return err
		}
	case daytona.Name:
		o.Daytona.Image = o.Image
		if err := o.parseTenants(); err != nil {
			return err
		}
		if err := o.Daytona.CheckEgress(); err != nil {
			return err
		}
		if o.Daytona.APIKey == "" && len(o.Daytona.Tenants) == 0 {
			return fmt.Errorf("the daytona backend needs an API key: set DAYTONA_API_KEY (or --daytona-api-key, %s), or accounts per tenant with --daytona-tenants",
				config.EnvName("daytona-api-key"))
		}
		if o.Daytona.AutoStopInterval < 0 || o.Daytona.StartTimeout <= 0 || o.Daytona.BuildTimeout <= 0 || o.Daytona.MaxRetryWait <= 0 {
			return errors.New("--daytona-auto-stop must not be negative and --daytona-start-timeout, --daytona-build-timeout and --daytona-max-retry-wait must be positive")
		}
	default:
		return fmt.Errorf("unknown backend %q (--backend, %s): the backends are %s and %s",
			o.Backend, config.EnvName("backend"), docker.Name, daytona.Name)
	}
	return nil
}

// parseTenants reads --daytona-tenants: a JSON object, or @file holding one.
func (o *Options) parseTenants() error {
	var tenants map[string]daytona.Account
	what, err := config.DecodeJSONFlag("daytona-tenants", o.tenants, `a JSON object {"<tenant>": {"api_key": ..., "api_url": ..., "target": ...}}`, &tenants)
	if err != nil || what == "" {
		return err
	}
	for t := range tenants {
		if !protocol.ValidID(t) {
			return fmt.Errorf("%s: tenant %q must match [A-Za-z0-9_-]{1,128}", what, t)
		}
	}
	o.Daytona.Tenants = tenants
	return nil
}

// parseEgress reads --egress-allow and --egress-tenants.
func (o *Options) parseEgress() (envs.Egress, error) {
	var e envs.Egress
	var err error
	if e.Allow, err = envs.ParseAllowlist(o.egressAllow); err != nil {
		return e, fmt.Errorf("--egress-allow: %w", err)
	}
	var tenants map[string][]string
	what, err := config.DecodeJSONFlag("egress-tenants", o.egressTenants, `a JSON object {"<tenant>": ["host:port", ...]}`, &tenants)
	if err != nil {
		return e, err
	}
	for t, entries := range tenants {
		if !protocol.ValidID(t) {
			return e, fmt.Errorf("%s: tenant %q must match [A-Za-z0-9_-]{1,128}", what, t)
		}
		a, err := envs.ParseAllowlist(entries)
		if err != nil {
			return e, fmt.Errorf("%s: tenant %s: %w", what, t, err)
		}
		if e.Tenants == nil {
			e.Tenants = map[string]envs.Allowlist{}
		}
		e.Tenants[t] = a
	}
	return e, nil
}

// checkDockerEgress refuses an allowlist the Docker sandboxes could not keep to: on a network
// other than none they would have a route besides the proxy, and without the socket directory
// no proxy.
func (o *Options) checkDockerEgress() error {
	if !o.Docker.Egress.Enabled() {
		return nil
	}
	flag := "--egress-allow"
	if len(o.Docker.Egress.Allow) == 0 {
		flag = "--egress-tenants"
	}
	if o.Docker.Network != docker.DefaultNetwork {
		return fmt.Errorf("%s and --network %s: a sandbox with an egress allowlist stays on network %s, the proxy its only way out; drop one of them",
			flag, o.Docker.Network, docker.DefaultNetwork)
	}
	if o.Docker.SocketDir == docker.NoSocketDir {
		return fmt.Errorf("%s and --socket-dir %s: the egress proxy needs the socket directory shared with the Docker daemon", flag, docker.NoSocketDir)
	}
	return nil
}

// New makes the backend Check accepted. For Docker it first finds the sandbox agent
// (FindAgent) and logs at info which one it uses. Neither backend does I/O here: the Docker
// daemon or the Daytona API is first reached when a sandbox is made or listed.
func (o *Options) New(log zerolog.Logger) (envs.Env, error) {
	switch o.Backend {
	case docker.Name:
		a, err := FindAgent(o.Docker.AgentPath)
		if err != nil {
			return nil, err
		}
		a.log(log)
		cfg := o.Docker
		cfg.AgentPath = a.Path
		return docker.New(cfg, log)
	case daytona.Name:
		return daytona.New(o.Daytona, log)
	default:
		return nil, fmt.Errorf("unknown backend %q (--backend, %s): the backends are %s and %s",
			o.Backend, config.EnvName("backend"), docker.Name, daytona.Name)
	}
}
