// Command worker is the codefleet worker daemon: it holds the sandboxes of many conversations on
// one backend (Docker or Daytona) and runs their code for the dispatchers, over NATS. Every flag
// can also be set by an environment variable CODEFLEET_<FLAG> (see --help); the library in
// pkg/worker does the work, this command only wires configuration, NATS and signals.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// shutdownSlack is added to the drain timeout to bound the whole shutdown (deregistering,
// stopping sandboxes' sessions, draining the NATS connection).
const shutdownSlack = 30 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	context.AfterFunc(ctx, stop) // after the first signal, a second one kills at once
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "codefleet worker: %v\n", err)
		os.Exit(1)
	}
}

// options is the parsed command line.
type options struct {
	natsURL   string
	natsCreds string
	backend   string
	worker    worker.Config
	docker    docker.Config
	daytona   daytona.Config
	cpus      float64 // --cpus, turned into docker.NanoCPUs
	maxOutput int64   // --max-output, turned into docker.MaxOutput and daytona.MaxOutput
	tenants   string  // --daytona-tenants, turned into daytona.Tenants
	logLevel  string
	logFormat string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := config.New("worker", stderr)
	fs.Summary = "codefleet worker " + version + ": runs conversations' code in sandboxes for the codefleet dispatchers, over NATS."
	o := &options{}

	fs.StringVar(&o.natsURL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	fs.Alias("nats-url", "NATS_URL")
	fs.StringVar(&o.natsCreds, "nats-creds", "", "NATS credentials file (.creds) to connect with")
	fs.StringVar(&o.worker.ID, "id", "", "worker id, [A-Za-z0-9_-]{1,128}; a worker restarted with the same id re-adopts its sandboxes (default: the host name, other characters turned into -)")
	fs.StringVar(&o.worker.Prefix, "prefix", protocol.DefaultPrefix, "first token of every codefleet subject")
	fs.StringVar(&o.backend, "backend", docker.Name, "sandbox backend: docker or daytona")

	w := &o.worker
	fs.IntVar(&w.Capacity, "capacity", worker.DefaultCapacity, "most sandboxes held at once; a new conversation past it gets the error capacity")
	fs.IntVar(&w.MaxConcurrentRuns, "max-concurrent-runs", 0, "most runs executing at once across conversations (0: the capacity)")
	fs.IntVar(&w.MaxConcurrentCreates, "max-concurrent-creates", worker.DefaultMaxConcurrentCreates, "most sandboxes being created at once; more new conversations wait their turn")
	fs.DurationVar(&w.CreateTimeout, "create-timeout", worker.DefaultCreateTimeout, "bound on getting one sandbox created, the wait for a turn included")
	fs.IntVar(&w.QueueDepth, "queue-depth", worker.DefaultQueueDepth, "most runs waiting per conversation; past it a run gets the error busy")
	fs.DurationVar(&w.MaxTimeout, "max-timeout", worker.DefaultMaxTimeout, "cap on a run's timeout_ms")
	fs.DurationVar(&w.IdleTTL, "idle-ttl", worker.DefaultIdleTTL, "destroy a sandbox unused for this long")
	fs.DurationVar(&w.MaxLife, "max-life", worker.DefaultMaxLife, "destroy a sandbox this long after its creation (after its current run)")
	fs.DurationVar(&w.ReapInterval, "reap-interval", worker.DefaultReapInterval, "how often idle, expired and orphaned sandboxes are looked for")
	fs.DurationVar(&w.HeartbeatInterval, "heartbeat-interval", worker.DefaultHeartbeatInterval, "how often the worker refreshes its registration")
	fs.DurationVar(&w.HeartbeatTTL, "heartbeat-ttl", worker.DefaultHeartbeatTTL, "age after which a silent worker counts as dead (the registry bucket's TTL)")
	fs.IntVar(&w.KVReplicas, "kv-replicas", 1, "replicas of the KV buckets the worker creates (1 on a single NATS server, 3 on a cluster)")
	fs.DurationVar(&w.DrainTimeout, "drain-timeout", worker.DefaultDrainTimeout, "on SIGTERM, how long in-flight runs may finish")
	fs.BoolVar(&w.DestroyOnShutdown, "destroy-on-shutdown", false, "destroy the sandboxes at shutdown instead of keeping them for the next worker with this id")
	fs.StringVar(&w.Image, "image", "", "default sandbox image (default: "+docker.DefaultImage+" with docker; with daytona the service's default snapshot, or snapshot:NAME, or an image to build)")
	fs.StringListVar(&w.AllowedImages, "allowed-images", nil, "images a request's sandbox.image may name besides --image, comma-separated; * allows any")

	d := &o.docker
	fs.StringVar(&d.Host, "docker-host", "", "Docker daemon address (default: $DOCKER_HOST or the local socket)")
	fs.StringVar(&d.AgentPath, "agent", "", "sandbox-agent binary copied into every Docker sandbox (default: sandbox-agent next to this executable, else in $PATH)")
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

	dt := &o.daytona
	fs.StringVar(&dt.APIKey, "daytona-api-key", "", "Daytona API key (prefer the variable to the flag, which shows in ps); may hold ${name} placeholders filled from a request's sandbox.variables")
	fs.Alias("daytona-api-key", "DAYTONA_API_KEY")
	fs.StringVar(&dt.APIURL, "daytona-api-url", daytona.DefaultAPIURL, "Daytona API URL")
	fs.Alias("daytona-api-url", "DAYTONA_API_URL")
	fs.StringVar(&dt.Target, "daytona-target", "", "Daytona target region for new sandboxes (default: the organisation's)")
	fs.Alias("daytona-target", "DAYTONA_TARGET")
	fs.StringVar(&o.tenants, "daytona-tenants", "", `per-tenant Daytona accounts, JSON or @file: {"acme":{"api_key":"${acme_key}","api_url":"...","target":"eu"}}; a field left out is the default account's`)
	fs.BoolVar(&dt.NetworkBlockAll, "daytona-network-block-all", false, "cut the Daytona sandboxes' network off")
	fs.IntVar(&dt.AutoStopInterval, "daytona-auto-stop", 0, "stop a Daytona sandbox after this many idle minutes (0: never; the worker's --idle-ttl ends sandboxes)")
	fs.DurationVar(&dt.StartTimeout, "daytona-start-timeout", daytona.DefaultStartTimeout, "how long a new Daytona sandbox may take to start")

	fs.StringVar(&o.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.StringVar(&o.logFormat, "log-format", config.LogFormatJSON, "log format: json or console")

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if len(fs.Args()) > 0 {
		return nil, fmt.Errorf("unexpected arguments %q (the worker takes flags only; see --help)", fs.Args())
	}
	w.Version = config.SemVer(version) // NATS service discovery wants SemVer
	return o, o.check()
}

// check fills the defaults that depend on the host and validates what can be checked without
// NATS or the backend, so that a bad configuration fails before anything connects.
func (o *options) check() error {
	if o.worker.ID == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no --id given and the host name is unknown: %w", err)
		}
		o.worker.ID = sanitizeID(host)
	}
	if o.cpus <= 0 || o.cpus > 1e6 {
		return fmt.Errorf("--cpus %g: want a positive number of CPUs", o.cpus)
	}
	o.docker.NanoCPUs = int64(o.cpus * 1e9)
	if o.docker.Memory < 6<<20 {
		return fmt.Errorf("--memory %s: want at least 6MiB (Docker's minimum)", config.FormatSize(o.docker.Memory))
	}
	if o.docker.PidsLimit <= 0 {
		return fmt.Errorf("--pids-limit %d: want a positive number", o.docker.PidsLimit)
	}
	if o.maxOutput <= 0 || o.maxOutput > 1<<30 {
		return fmt.Errorf("--max-output %s: want a positive size up to 1GiB", config.FormatSize(o.maxOutput))
	}
	o.docker.MaxOutput = int(o.maxOutput)
	o.daytona.MaxOutput = int(o.maxOutput)
	switch o.backend {
	case docker.Name:
		if o.worker.Image == "" {
			o.worker.Image = docker.DefaultImage
		}
		o.docker.Image = o.worker.Image
	case daytona.Name:
		o.daytona.Image = o.worker.Image
		if err := o.parseTenants(); err != nil {
			return err
		}
		if o.daytona.APIKey == "" && len(o.daytona.Tenants) == 0 {
			return fmt.Errorf("the daytona backend needs an API key: set DAYTONA_API_KEY (or --daytona-api-key, %s), or accounts per tenant with --daytona-tenants",
				config.EnvName("daytona-api-key"))
		}
		if o.daytona.AutoStopInterval < 0 || o.daytona.StartTimeout <= 0 {
			return errors.New("--daytona-auto-stop must not be negative and --daytona-start-timeout must be positive")
		}
	}
	if o.natsURL == "" {
		return errors.New("--nats-url is empty")
	}
	if o.worker.DrainTimeout <= 0 || o.worker.IdleTTL <= 0 || o.worker.MaxLife <= 0 || o.worker.ReapInterval <= 0 || o.worker.HeartbeatInterval <= 0 {
		return errors.New("--drain-timeout, --idle-ttl, --max-life, --reap-interval and --heartbeat-interval must be positive")
	}
	if err := o.worker.Validate(); err != nil {
		return err
	}
	if _, err := config.NewLogger(io.Discard, o.logLevel, o.logFormat); err != nil {
		return err
	}
	return nil
}

// parseTenants reads --daytona-tenants: a JSON object, or @file holding one.
func (o *options) parseTenants() error {
	src := strings.TrimSpace(o.tenants)
	if src == "" {
		return nil
	}
	what := "--daytona-tenants"
	if name, ok := strings.CutPrefix(src, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		src, what = string(b), what+" file "+name
	}
	dec := json.NewDecoder(strings.NewReader(src))
	dec.DisallowUnknownFields()
	var tenants map[string]daytona.Account
	if err := dec.Decode(&tenants); err != nil {
		return fmt.Errorf(`%s: want a JSON object {"<tenant>": {"api_key": ..., "api_url": ..., "target": ...}}: %w`, what, err)
	}
	for t := range tenants {
		if !protocol.ValidID(t) {
			return fmt.Errorf("%s: tenant %q must match [A-Za-z0-9_-]{1,128}", what, t)
		}
	}
	o.daytona.Tenants = tenants
	return nil
}

// sanitizeID turns a host name into a worker id: every character outside [A-Za-z0-9_-]
// becomes "-", and the result is cut to 128 characters ("worker" when nothing is left).
func sanitizeID(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
		if b.Len() >= 128 {
			break
		}
	}
	id := b.String()
	if strings.Trim(id, "-") == "" {
		return "worker"
	}
	return id
}

// newBackend returns the sandbox backend named by --backend.
func newBackend(o *options, log zerolog.Logger) (envs.Env, error) {
	switch o.backend {
	case docker.Name:
		agent, err := config.FindAgent(o.docker.AgentPath)
		if err != nil {
			return nil, err
		}
		o.docker.AgentPath = agent
		return docker.New(o.docker, log)
	case daytona.Name:
		return daytona.New(o.daytona, log)
	default:
		return nil, fmt.Errorf("unknown backend %q (--backend, %s): this worker supports %s and %s",
			o.backend, config.EnvName("backend"), docker.Name, daytona.Name)
	}
}

// connect opens the service's NATS connection.
func connect(o *options, log zerolog.Logger) (*nats.Conn, <-chan struct{}, error) {
	return config.ConnectNATS(o.natsURL, o.natsCreds, "codefleet-worker "+o.worker.ID, log)
}

// run is the whole command: it returns when ctx is cancelled (SIGTERM, SIGINT) and the worker
// has drained, or at once when it cannot start.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log, err := config.NewLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	log = log.With().Str("service", "worker").Logger()

	env, err := newBackend(o, log)
	if err != nil {
		return err
	}
	defer env.Close()

	nc, closed, err := connect(o, log)
	if err != nil {
		return err
	}
	defer nc.Close()

	w, err := worker.New(o.worker, nc, env, log)
	if err != nil {
		return err
	}
	if err := w.Start(ctx); err != nil {
		// Undo what Start did (registration, service) before giving up.
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = w.Shutdown(sctx)
		if ctx.Err() != nil {
			// A signal while starting (Start gave up on it): a stop like any other.
			log.Info().Err(err).Msg("signal received while starting: stopped")
			return nil
		}
		return err
	}
	log.Info().Str("version", version).Str("backend", env.Name()).Str("image", o.worker.Image).
		Msg("worker ready")

	<-ctx.Done()
	log.Info().Str("drain_timeout", o.worker.DrainTimeout.String()).Msg("signal received: draining (a second signal exits at once)")
	sctx, cancel := context.WithTimeout(context.Background(), o.worker.DrainTimeout+shutdownSlack)
	defer cancel()
	serr := w.Shutdown(sctx)
	if serr != nil {
		log.Error().Err(serr).Msg("shutdown")
	}
	if err := nc.Drain(); err != nil {
		log.Warn().Err(err).Msg("NATS drain")
	} else {
		select {
		case <-closed:
		case <-sctx.Done():
			log.Warn().Msg("NATS drain did not finish in time")
		}
	}
	if serr != nil {
		return fmt.Errorf("shutdown: %w", serr)
	}
	log.Info().Msg("bye")
	return nil
}
