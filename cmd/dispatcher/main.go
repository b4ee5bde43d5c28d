// Command dispatcher is the codefleet dispatcher daemon: a stateless relay that answers the
// clients' run and close requests and routes each conversation to the worker that holds its
// sandbox, over NATS. Every flag can also be set by an environment variable CODEFLEET_<FLAG>
// (see --help); the library in pkg/dispatcher does the work, this command only wires
// configuration, NATS and signals.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// shutdownTimeout bounds the whole shutdown (answering in-flight relays, draining NATS).
const shutdownTimeout = 30 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	context.AfterFunc(ctx, stop) // after the first signal, a second one kills at once
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "codefleet dispatcher: %v\n", err)
		os.Exit(1)
	}
}

// options is the parsed command line.
type options struct {
	natsURL    string
	natsCreds  string
	dispatcher dispatcher.Config
	logLevel   string
	logFormat  string
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := config.New("dispatcher", stderr)
	fs.Summary = "codefleet dispatcher " + version + ": routes conversations to the codefleet workers that hold their sandboxes, over NATS."
	o := &options{}
	d := &o.dispatcher

	fs.StringVar(&o.natsURL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	fs.Alias("nats-url", "NATS_URL")
	fs.StringVar(&o.natsCreds, "nats-creds", "", "NATS credentials file (.creds) to connect with")
	fs.StringVar(&d.Name, "name", "", "dispatcher name in logs and service discovery (default: the host name)")
	fs.StringVar(&d.Prefix, "prefix", protocol.DefaultPrefix, "first token of every codefleet subject")
	fs.DurationVar(&d.HeartbeatTTL, "heartbeat-ttl", dispatcher.DefaultHeartbeatTTL, "age after which a silent worker counts as dead (the registry bucket's TTL; match the workers')")
	fs.IntVar(&d.KVReplicas, "kv-replicas", 1, "replicas of the KV buckets the dispatcher creates (1 on a single NATS server, 3 on a cluster)")
	fs.DurationVar(&d.MaxTimeout, "max-timeout", dispatcher.DefaultMaxTimeout, "cap on the run timeout the dispatcher waits for")
	fs.DurationVar(&d.RelayOverhead, "relay-overhead", dispatcher.DefaultRelayOverhead, "added to a run's timeout to bound the wait for its worker's answer (room for creating a sandbox)")
	fs.DurationVar(&d.CloseTimeout, "close-timeout", dispatcher.DefaultCloseTimeout, "bound on a close relayed to a worker")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.StringVar(&o.logFormat, "log-format", config.LogFormatJSON, "log format: json or console")

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if len(fs.Args()) > 0 {
		return nil, fmt.Errorf("unexpected arguments %q (the dispatcher takes flags only; see --help)", fs.Args())
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
	if o.natsURL == "" {
		return errors.New("--nats-url is empty")
	}
	if d.Prefix == "" {
		return errors.New("--prefix is empty")
	}
	if d.HeartbeatTTL <= 0 || d.MaxTimeout <= 0 || d.RelayOverhead <= 0 || d.CloseTimeout <= 0 {
		return errors.New("--heartbeat-ttl, --max-timeout, --relay-overhead and --close-timeout must be positive")
	}
	if d.KVReplicas < 1 || d.KVReplicas > 5 {
		return fmt.Errorf("--kv-replicas %d: want 1 to 5", d.KVReplicas)
	}
	if _, err := config.NewLogger(io.Discard, o.logLevel, o.logFormat); err != nil {
		return err
	}
	return nil
}

// connect opens the service's NATS connection.
func connect(o *options, log zerolog.Logger) (*nats.Conn, <-chan struct{}, error) {
	return config.ConnectNATS(o.natsURL, o.natsCreds, "codefleet-dispatcher "+o.dispatcher.Name, log)
}

// run is the whole command: it returns when ctx is cancelled (SIGTERM, SIGINT) and the
// dispatcher has stopped, or at once when it cannot start.
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
	log = log.With().Str("service", "dispatcher").Logger()

	nc, closed, err := connect(o, log)
	if err != nil {
		return err
	}
	defer nc.Close()

	d, err := dispatcher.New(o.dispatcher, nc, log)
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		// Undo what Start did (watches, service) before giving up.
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = d.Stop(sctx)
		return err
	}
	log.Info().Str("version", version).Str("name", o.dispatcher.Name).Str("prefix", o.dispatcher.Prefix).
		Msg("dispatcher ready")

	<-ctx.Done()
	log.Info().Msg("signal received: stopping (a second signal exits at once)")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	serr := d.Stop(sctx)
	if serr != nil {
		log.Error().Err(serr).Msg("stop")
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
		return fmt.Errorf("stop: %w", serr)
	}
	log.Info().Msg("bye")
	return nil
}
