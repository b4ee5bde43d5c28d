// Package daemon is the scaffolding codefleet's daemons (cmd/worker, cmd/dispatcher) share:
// the flags of the NATS connection and of the logs, the signal handling of main, and the run
// sequence around a service (connect to NATS, make the service, start it, wait for a signal,
// stop it within a deadline, drain the connection).
//
//	func main() { daemon.Main("dispatcher", run) }
//
//	func run(ctx context.Context, args []string, stderr io.Writer) error {
//		var o daemon.Options
//		fs := o.FlagSet("dispatcher", "codefleet dispatcher: ...", stderr) // --nats-url, --nats-creds, ..., --log-*
//		... // the service's own flags
//		if err := daemon.Parse(fs, args); err != nil {
//			return err // config.ErrHelp after --help: Main exits 0
//		}
//		... // o.Check() and the service's own checks
//		log, err := o.Logger(stderr, "dispatcher")
//		if err != nil {
//			return err
//		}
//		return daemon.Run(ctx, o, log, daemon.Spec{Name: "dispatcher", ...}, func(nc *nats.Conn) (daemon.Service, error) {
//			return dispatcher.New(cfg, nc, log)
//		})
//	}
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/ops"
)

// StartUndoTimeout bounds the Stop that undoes a failed Start.
const StartUndoTimeout = 10 * time.Second

// Options are the flags every daemon has: its NATS connection and its logs.
type Options struct {
	NATSURL   string          // --nats-url (or $NATS_URL)
	NATSAuth  config.NATSAuth // --nats-creds, --nats-nkey, --nats-user, --nats-tls-ca, ...: the connection's security
	LogLevel  string          // --log-level
	LogFormat string          // --log-format
	// HTTPAddr is where /metrics, /healthz and /readyz are served (--http-addr); empty: nowhere.
	HTTPAddr string
}

// FlagSet returns the flag set of the daemon name (the usage starts with summary), with the
// NATS and log flags declared into o.
func (o *Options) FlagSet(name, summary string, stderr io.Writer) *config.FlagSet {
	fs := config.New(name, stderr)
	fs.Summary = summary
	o.Register(fs)
	return fs
}

// Parse parses a daemon's command line, which has flags only.
func Parse(fs *config.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	return fs.NoArgs(fs.Name())
}

// Register declares the flags on fs: --nats-url (also read from NATS_URL), the security flags
// of the connection (config.NATSAuth: --nats-creds, --nats-user, --nats-tls-ca, ...),
// --log-level and --log-format (json by default).
func (o *Options) Register(fs *config.FlagSet) {
	fs.StringVar(&o.NATSURL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	fs.Alias("nats-url", "NATS_URL")
	o.NATSAuth.Register(fs)
	fs.StringVar(&o.LogLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.StringVar(&o.LogFormat, "log-format", config.LogFormatJSON, "log format: json or console")
	fs.StringVar(&o.HTTPAddr, "http-addr", "", "address (host:port) to serve /metrics (Prometheus), /healthz and /readyz on, e.g. :9464 (default: none)")
}

// Check validates what can be checked without connecting: a NATS URL is given, the security
// options hold together (config.NATSAuth.Check), and the log level and format are known.
func (o *Options) Check() error {
	if o.NATSURL == "" {
		return errors.New("--nats-url is empty")
	}
	if err := o.NATSAuth.Check(); err != nil {
		return err
	}
	_, err := config.NewLogger(io.Discard, o.LogLevel, o.LogFormat)
	return err
}

// Logger returns the daemon's logger on w, every event carrying service=service.
func (o *Options) Logger(w io.Writer, service string) (zerolog.Logger, error) {
	log, err := config.NewLogger(w, o.LogLevel, o.LogFormat)
	if err != nil {
		return log, err
	}
	return log.With().Str("service", service).Logger(), nil
}

// Service is what a daemon runs: started once NATS is connected, stopped on the first signal.
type Service interface {
	// Start returns once the service serves, or with an error; ctx ends on a signal.
	Start(ctx context.Context) error
	// Stop stops the service within ctx's deadline. It also undoes a Start that failed.
	Stop(ctx context.Context) error
	// Ready returns nil when the service can do its job now (/readyz), else why not.
	Ready(ctx context.Context) error
}

// Funcs makes a Service of functions.
type Funcs struct {
	StartFunc, StopFunc, ReadyFunc func(ctx context.Context) error
}

// Start calls StartFunc.
func (f Funcs) Start(ctx context.Context) error { return f.StartFunc(ctx) }

// Stop calls StopFunc.
func (f Funcs) Stop(ctx context.Context) error { return f.StopFunc(ctx) }

// Ready calls ReadyFunc.
func (f Funcs) Ready(ctx context.Context) error { return f.ReadyFunc(ctx) }

// Serve starts the HTTP endpoint of o.HTTPAddr (ops.Server: metrics and probes) when one is
// given, else returns nil, and a nil Server's methods are not called: callers check. The
// caller shuts it down.
func Serve(o Options, log zerolog.Logger) (*ops.Server, error) {
	if o.HTTPAddr == "" {
		return nil, nil
	}
	srv, err := ops.Listen(o.HTTPAddr, log)
	if err != nil {
		return nil, err
	}
	srv.Serve()
	log.Info().Str("addr", srv.Addr()).Msg("serving " + ops.PathMetrics + ", " + ops.PathHealthz + " and " + ops.PathReadyz)
	return srv, nil
}

// Metrics returns the registerer of srv's metrics, nil without a server (metrics are then
// counted but not registered).
func Metrics(srv *ops.Server) prometheus.Registerer {
	if srv == nil {
		return nil
	}
	return srv.Registry
}

// Spec describes a daemon to Run.
type Spec struct {
	// Name is the daemon's name: "worker", "dispatcher". The NATS connection is named
	// "codefleet-<Name> <Instance>"; the ready line says "<Name> ready".
	Name string
	// Instance names this daemon among its kind: the worker's id, the dispatcher's name.
	Instance string
	// Version is logged on the ready line.
	Version string
	// ReadyFields are more fields of the ready line.
	ReadyFields map[string]any
	// Stopping is the log's word for what the first signal starts: "draining" (the worker);
	// "stopping" when empty. StoppingFields are more fields of that line.
	Stopping       string
	StoppingFields map[string]any
	// StopName is the word of a failed Stop in the log and the returned error: "shutdown" (the
	// worker); "stop" when empty.
	StopName string
	// StopTimeout bounds the whole stop: Service.Stop and the NATS drain.
	StopTimeout time.Duration
}

// Run is a daemon's life after its flags: it serves its HTTP endpoint (o.HTTPAddr: /healthz
// from now on, /readyz once the service says it is ready), connects to NATS, makes the service
// on the connection with newService (its metrics go to reg: nil without an HTTP endpoint),
// starts it (see Start: a failed start is undone, and one a signal cut short is a clean stop,
// nil) and waits for ctx to end (SIGTERM, SIGINT). Then it stops the service and drains the
// connection, both within spec.StopTimeout, and returns nil, or the Stop's error.
func Run(ctx context.Context, o Options, log zerolog.Logger, spec Spec, newService func(nc *nats.Conn, reg prometheus.Registerer) (Service, error)) error {
	srv, err := Serve(o, log)
	if err != nil {
		return err
	}
	// Until the service exists, /readyz says what the daemon is doing.
	var ready atomic.Pointer[Service]
	if srv != nil {
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		}()
		srv.Check(spec.Name, func(ctx context.Context) error {
			if svc := ready.Load(); svc != nil {
				return (*svc).Ready(ctx)
			}
			return errors.New("connecting to NATS")
		})
	}

	nc, closed, err := config.ConnectNATS(o.NATSURL, o.NATSAuth, "codefleet-"+spec.Name+" "+spec.Instance, log)
	if err != nil {
		return err
	}
	defer nc.Close()

	svc, err := newService(nc, Metrics(srv))
	if err != nil {
		return err
	}
	if srv != nil {
		if err := ops.RegisterNATS(srv.Registry, nc, spec.Name); err != nil {
			return err
		}
	}
	ready.Store(&svc)
	if started, err := Start(ctx, svc, log); !started {
		return err
	}
	log.Info().Str("version", spec.Version).Fields(spec.ReadyFields).Msg(spec.Name + " ready")

	<-ctx.Done()
	stopping, stopName := spec.Stopping, spec.StopName
	if stopping == "" {
		stopping = "stopping"
	}
	if stopName == "" {
		stopName = "stop"
	}
	log.Info().Fields(spec.StoppingFields).Msg("signal received: " + stopping + " (a second signal exits at once)")
	sctx, cancel := context.WithTimeout(context.Background(), spec.StopTimeout)
	defer cancel()
	serr := svc.Stop(sctx)
	if serr != nil {
		log.Error().Err(serr).Msg(stopName)
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
		return fmt.Errorf("%s: %w", stopName, serr)
	}
	log.Info().Msg("bye")
	return nil
}

// Start starts svc. A Start that fails is undone (Stop, within StartUndoTimeout, for what it
// did: registration, watches, service) and started is false; when ctx ended meanwhile (a
// signal while starting, which Start gave up on) that is a clean stop and err is nil,
// otherwise err is Start's error.
func Start(ctx context.Context, svc Service, log zerolog.Logger) (started bool, err error) {
	err = svc.Start(ctx)
	if err == nil {
		return true, nil
	}
	uctx, cancel := context.WithTimeout(context.Background(), StartUndoTimeout)
	defer cancel()
	_ = svc.Stop(uctx)
	if ctx.Err() != nil {
		log.Info().Err(err).Msg("signal received while starting: stopped")
		return false, nil
	}
	return false, err
}

// SignalContext returns a context that ends on the first SIGTERM or SIGINT. By the time it
// ends, the signals are no longer caught, so a second one kills the process at once. Call stop
// when done; once it returns the signals are no longer caught either.
//
// (signal.NotifyContext with a context.AfterFunc(ctx, stop) would leave a window after the
// context ended, until the AfterFunc's goroutine ran, where a second signal was swallowed.)
func SignalContext() (ctx context.Context, stop context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	c := make(chan os.Signal, 2) // room for a second signal that comes before signal.Stop
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-c:
			signal.Stop(c)
			// A second signal caught before Stop: raise it again, uncaught now, so it kills.
			select {
			case s := <-c:
				if sig, ok := s.(syscall.Signal); ok {
					_ = syscall.Kill(syscall.Getpid(), sig)
				}
			default:
			}
		case <-ctx.Done():
			signal.Stop(c)
		}
		cancel()
	}()
	return ctx, func() { cancel(); <-done }
}

// Main is a daemon's main: it runs run with the command line and a SignalContext, and on an
// error prints "codefleet <name>: <error>" to stderr and exits 1. A run that returns
// config.ErrHelp (the usage was printed) exits 0.
func Main(name string, run func(ctx context.Context, args []string, stderr io.Writer) error) {
	ctx, stop := SignalContext()
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil && !errors.Is(err, config.ErrHelp) {
		fmt.Fprintf(os.Stderr, "codefleet %s: %v\n", name, err)
		os.Exit(1)
	}
}
