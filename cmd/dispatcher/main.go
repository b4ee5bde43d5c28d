// Command dispatcher is the codefleet dispatcher daemon: a stateless relay that answers the
// clients' run and close requests and routes each conversation to the worker that holds its
// sandbox, over NATS. Every flag can also be set by an environment variable CODEFLEET_<FLAG>
// (see --help); the library in pkg/dispatcher does the work, this command only wires
// configuration, NATS and signals.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/daemon"
	"github.com/codefleet/codefleet/internal/quotaflags"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// shutdownTimeout bounds the whole shutdown (answering in-flight relays, draining NATS).
const shutdownTimeout = 30 * time.Second

func main() { daemon.Main("dispatcher", run) }

// options is the parsed command line.
type options struct {
	daemon     daemon.Options
	dispatcher dispatcher.Config
	quotas     quotaflags.Options
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := o.daemon.FlagSet("dispatcher", "codefleet dispatcher "+version+": routes conversations to the codefleet workers that hold their sandboxes, over NATS.", stderr)
	d := &o.dispatcher
	fs.StringVar(&d.Name, "name", "", "dispatcher name in logs and service discovery (default: the host name)")
	fs.StringVar(&d.Prefix, "prefix", protocol.DefaultPrefix, "the fleet's name, one token of [A-Za-z0-9_-]: the first token of its subjects and of its KV bucket names (<prefix>-workers, <prefix>-affinity, <prefix>-quotas), so fleets of different prefixes share NATS without seeing each other")
	fs.DurationVar(&d.HeartbeatTTL, "heartbeat-ttl", dispatcher.DefaultHeartbeatTTL, "age after which a silent worker counts as dead (the registry bucket's TTL; match the workers')")
	fs.IntVar(&d.KVReplicas, "kv-replicas", 1, "replicas of the KV buckets the dispatcher creates (1 on a single NATS server, 3 on a cluster)")
	fs.DurationVar(&d.MaxTimeout, "max-timeout", dispatcher.DefaultMaxTimeout, "cap on the run timeout the dispatcher waits for")
	fs.DurationVar(&d.RelayOverhead, "relay-overhead", dispatcher.DefaultRelayOverhead, "added to a run's timeout to bound the wait for its worker's answer (room for creating a sandbox)")
	fs.DurationVar(&d.CloseTimeout, "close-timeout", dispatcher.DefaultCloseTimeout, "bound on a close relayed to a worker")
	o.quotas.Register(fs)

	if err := daemon.Parse(fs, args); err != nil {
		return nil, err
	}
	d.Version = config.SemVer(version) // NATS service discovery wants SemVer
	return o, o.check()
}

// check fills the defaults that depend on the host and validates what can be checked without
// NATS, so that a bad configuration fails before anything connects.
func (o *options) check() error {
	d := &o.dispatcher
	if d.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("no --name given and the host name is unknown: %w", err)
		}
		d.Name = host
	}
	if err := o.daemon.Check(); err != nil {
		return err
	}
	if err := protocol.CheckPrefix(d.Prefix); err != nil {
		return fmt.Errorf("--prefix: %w", err)
	}
	if d.HeartbeatTTL <= 0 || d.MaxTimeout <= 0 || d.RelayOverhead <= 0 || d.CloseTimeout <= 0 {
		return errors.New("--heartbeat-ttl, --max-timeout, --relay-overhead and --close-timeout must be positive")
	}
	if d.KVReplicas < 1 || d.KVReplicas > 5 {
		return fmt.Errorf("--kv-replicas %d: want 1 to 5", d.KVReplicas)
	}
	var err error
	d.Quotas, err = o.quotas.Limits()
	return err
}

// run is the whole command: it returns when ctx is cancelled (SIGTERM, SIGINT) and the
// dispatcher has stopped, or at once when it cannot start (config.ErrHelp after --help).
func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err // config.ErrHelp after --help: daemon.Main exits 0
	}
	log, err := o.daemon.Logger(stderr, "dispatcher")
	if err != nil {
		return err
	}
	spec := daemon.Spec{
		Name:        "dispatcher",
		Instance:    o.dispatcher.Name,
		Version:     version,
		ReadyFields: map[string]any{"name": o.dispatcher.Name, "prefix": o.dispatcher.Prefix},
		StopTimeout: shutdownTimeout,
	}
	return daemon.Run(ctx, o.daemon, log, spec, func(nc *nats.Conn, reg prometheus.Registerer) (daemon.Service, error) {
		cfg := o.dispatcher
		cfg.Metrics = reg
		return dispatcher.New(cfg, nc, log)
	})
}
