// Command worker is the codefleet worker daemon: it holds the sandboxes of many conversations on
// one backend (Docker or Daytona) and runs their code for the dispatchers, over NATS. Every flag
// can also be set by an environment variable CODEFLEET_<FLAG> (see --help); the library in
// pkg/worker does the work, internal/backend makes the backend and internal/daemon runs it:
// this command only declares the worker's own flags.
//
// Started under the name sandbox-agent (the Docker backend copies the file it is given as
// /.codefleet/sandbox-agent into each sandbox), it is the sandbox agent instead: with no
// sandbox-agent binary at hand, the worker's own executable serves as the agent.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/codefleet/codefleet/internal/agent"
	"github.com/codefleet/codefleet/internal/backend"
	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/daemon"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// shutdownSlack is added to the drain timeout to bound the whole shutdown (deregistering,
// stopping sandboxes' sessions, draining the NATS connection).
const shutdownSlack = 30 * time.Second

func main() {
	if filepath.Base(os.Args[0]) == agent.ExecutableName {
		agent.Main()
	}
	daemon.Main("worker", run)
}

// options is the parsed command line.
type options struct {
	daemon  daemon.Options
	backend backend.Options
	worker  worker.Config
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := o.daemon.FlagSet("worker", "codefleet worker "+version+": runs conversations' code in sandboxes for the codefleet dispatchers, over NATS.", stderr)
	o.backend.Register(fs)

	w := &o.worker
	fs.StringVar(&w.ID, "id", "", "worker id, [A-Za-z0-9_-]{1,128}; a worker restarted with the same id re-adopts its sandboxes (default: the host name, other characters turned into -)")
	fs.StringVar(&w.Prefix, "prefix", protocol.DefaultPrefix, "the fleet's name, one token of [A-Za-z0-9_-]: the first token of its subjects and of its KV bucket names (<prefix>-workers, <prefix>-affinity), so fleets of different prefixes share NATS without seeing each other")
	fs.IntVar(&w.Capacity, "capacity", worker.DefaultCapacity, "most sandboxes held at once, free warm pool sandboxes included; a new conversation gets the error capacity only when this many conversations are held (a free pool sandbox is claimed, or destroyed to make room)")
	fs.IntVar(&w.WarmPool, "warm-pool", worker.DefaultWarmPool, "sandboxes of the default image kept started ahead of demand for new conversations to claim, refilled in the background within --max-concurrent-creates and --capacity (docker; ignored with daytona; 0: none)")
	fs.IntVar(&w.MaxConcurrentRuns, "max-concurrent-runs", 0, "most runs executing at once across conversations (0: the capacity)")
	fs.IntVar(&w.MaxConcurrentCreates, "max-concurrent-creates", worker.DefaultMaxConcurrentCreates, "most sandboxes being created at once; more new conversations wait their turn")
	fs.DurationVar(&w.CreateTimeout, "create-timeout", worker.DefaultCreateTimeout, "bound on getting one sandbox created, the wait for a turn included")
	fs.IntVar(&w.QueueDepth, "queue-depth", worker.DefaultQueueDepth, "most requests (runs and file requests) waiting per conversation; past it one gets the error busy")
	fs.DurationVar(&w.MaxTimeout, "max-timeout", worker.DefaultMaxTimeout, "cap on a run's timeout_ms")
	fs.DurationVar(&w.IdleTTL, "idle-ttl", worker.DefaultIdleTTL, "destroy a sandbox unused for this long")
	fs.DurationVar(&w.MaxLife, "max-life", worker.DefaultMaxLife, "destroy a sandbox this long after its creation (after its current run)")
	fs.DurationVar(&w.ReapInterval, "reap-interval", worker.DefaultReapInterval, "how often idle, expired and orphaned sandboxes are looked for")
	fs.DurationVar(&w.HeartbeatInterval, "heartbeat-interval", worker.DefaultHeartbeatInterval, "how often the worker refreshes its registration")
	fs.DurationVar(&w.HeartbeatTTL, "heartbeat-ttl", worker.DefaultHeartbeatTTL, "age after which a silent worker counts as dead (the registry bucket's TTL)")
	fs.IntVar(&w.KVReplicas, "kv-replicas", 1, "replicas of the KV buckets the worker creates (1 on a single NATS server, 3 on a cluster)")
	fs.DurationVar(&w.DrainTimeout, "drain-timeout", worker.DefaultDrainTimeout, "on SIGTERM, how long in-flight runs may finish")
	fs.BoolVar(&w.DestroyOnShutdown, "destroy-on-shutdown", false, "destroy the sandboxes at shutdown instead of keeping them for the next worker with this id")
	fs.SizeVar(&w.MaxFileSize, "max-file-size", protocol.DefaultMaxFileBytes, "largest file a file request may put into a sandbox or get out of it (at most 4GiB); bigger ones get the error file_too_large")
	fs.StringListVar(&w.AllowedImages, "allowed-images", nil, "images a request's sandbox.image may name besides --image, comma-separated; * allows any")
	if err := daemon.Parse(fs, args); err != nil {
		return nil, err
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
	if err := o.backend.Check(); err != nil {
		return err
	}
	o.worker.Image = o.backend.Image
	if err := o.daemon.Check(); err != nil {
		return err
	}
	if o.worker.DrainTimeout <= 0 || o.worker.IdleTTL <= 0 || o.worker.MaxLife <= 0 || o.worker.ReapInterval <= 0 || o.worker.HeartbeatInterval <= 0 {
		return errors.New("--drain-timeout, --idle-ttl, --max-life, --reap-interval and --heartbeat-interval must be positive")
	}
	return o.worker.Validate()
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

// run is the whole command: it returns when ctx is cancelled (SIGTERM, SIGINT) and the worker
// has drained, or at once when it cannot start (config.ErrHelp after --help).
func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err // config.ErrHelp after --help: daemon.Main exits 0
	}
	log, err := o.daemon.Logger(stderr, "worker")
	if err != nil {
		return err
	}
	env, err := o.backend.New(log)
	if err != nil {
		return err
	}
	defer env.Close()

	spec := daemon.Spec{
		Name:           "worker",
		Instance:       o.worker.ID,
		Version:        version,
		ReadyFields:    map[string]any{"backend": env.Name(), "image": o.worker.Image},
		Stopping:       "draining",
		StoppingFields: map[string]any{"drain_timeout": o.worker.DrainTimeout.String()},
		StopName:       "shutdown",
		StopTimeout:    o.worker.DrainTimeout + shutdownSlack,
	}
	return daemon.Run(ctx, o.daemon, log, spec, func(nc *nats.Conn, reg prometheus.Registerer) (daemon.Service, error) {
		cfg := o.worker
		cfg.Metrics = reg
		w, err := worker.New(cfg, nc, env, log)
		if err != nil {
			return nil, err
		}
		return daemon.Funcs{StartFunc: w.Start, StopFunc: w.Shutdown, ReadyFunc: w.Ready}, nil
	})
}
