// Command codefleet is the codefleet CLI:
//
//	codefleet run [flags] [code]   run code in a conversation's sandbox (code from stdin when absent)
//	codefleet cp [flags] SRC DST   copy files in or out of a conversation's workspace
//	                               (one side CONVERSATION:PATH, the other a local path or -)
//	codefleet close [flags]        destroy a conversation's sandbox
//	codefleet status [flags]       the live workers, their load and sandboxes
//	codefleet dev [flags]          a local fleet in one process: embedded NATS with JetStream,
//	                               one dispatcher and one worker (Docker, or Daytona with
//	                               --backend daytona and DAYTONA_API_KEY in the environment)
//
// Flags may stand before or after the code; "--" ends them (codefleet run -- 'print("--x")').
// `run` prints the snippet's output and exits with its exit code; when the fleet cannot run the
// code it prints "codefleet: <error code>: <message>" to stderr and exits 125. On a terminal it
// streams: the output is printed as it is produced (--no-stream waits for the end, --stream
// streams into a pipe too). `cp` exits 0, or 125 with the reason on stderr.
//
// Started under the name sandbox-agent, the binary is the sandbox agent instead: `codefleet dev`
// with no sandbox-agent binary at hand copies its own executable into the Docker sandboxes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"golang.org/x/term"

	"github.com/codefleet/codefleet/internal/agent"
	"github.com/codefleet/codefleet/internal/backend"
	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/daemon"
	"github.com/codefleet/codefleet/internal/ops"
	"github.com/codefleet/codefleet/internal/quotaflags"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// DevHTTPAddr is where `codefleet dev` serves its metrics and probes by default.
const DevHTTPAddr = "127.0.0.1:9464"

// exitFleetError is the exit status of `run` when the fleet could not run the code.
const exitFleetError = 125

func main() {
	if filepath.Base(os.Args[0]) == agent.ExecutableName {
		agent.Main()
	}
	ctx, stop := daemon.SignalContext() // a second signal kills at once
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: codefleet <command> [flags]

commands:
  run [code]   run code in a conversation's sandbox (code from stdin when not given);
               on a terminal the output is printed as it is produced (--no-stream: at the end)
  cp SRC DST   copy files in or out of a conversation's workspace: one side CONVERSATION:PATH,
               the other a local path or - (stdin, stdout); directories with their tree
  close        destroy a conversation's sandbox
  status       show the live workers
  dev          run a local fleet: embedded NATS + a dispatcher + a worker (Docker, or Daytona)

Flags may come before or after the code; -- ends them.
"codefleet <command> --help" lists a command's flags (each also read from CODEFLEET_<FLAG>).
`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	code := 0
	switch args[0] {
	case "run":
		code, err = cmdRun(ctx, args[1:], stdin, stdout, stderr)
	case "cp":
		err = cmdCp(ctx, args[1:], stdin, stdout, stderr)
	case "close":
		err = cmdClose(ctx, args[1:], stdout, stderr)
	case "status":
		err = cmdStatus(ctx, args[1:], stdout, stderr)
	case "dev":
		err = cmdDev(ctx, args[1:], stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "codefleet: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case errors.Is(err, config.ErrHelp):
		return 0
	case err != nil:
		var perr *protocol.Error
		if errors.As(err, &perr) {
			fmt.Fprintf(stderr, "codefleet: %s: %s\n", perr.Code, perr.Message)
			return exitFleetError
		}
		fmt.Fprintf(stderr, "codefleet: %v\n", err)
		return exitFleetError
	}
	return code
}

// common are the flags every client command has.
type common struct {
	natsURL, tenant, conversation, prefix string
	auth                                  config.NATSAuth // --nats-creds, --nats-user, --nats-tls-ca, ...

	mu      sync.Mutex
	refusal error // the server's first permissions violation on the connection
}

func (c *common) register(fs *config.FlagSet, conversation bool) {
	fs.StringVar(&c.natsURL, "nats-url", nats.DefaultURL, "NATS server URL(s)")
	fs.Alias("nats-url", "NATS_URL")
	c.auth.Register(fs)
	fs.StringVar(&c.prefix, "prefix", protocol.DefaultPrefix, "the fleet to talk to: its subject prefix (the --prefix of its workers and dispatchers)")
	if conversation {
		fs.StringVar(&c.tenant, "tenant", protocol.DefaultTenant, "tenant")
		fs.StringVar(&c.conversation, "conversation", "default", "conversation id: runs of one conversation share a sandbox")
	}
}

// dial parses the command line of a client command (with the conversation's flags or not) and
// connects. The caller closes nc.
func (c *common) dial(fs *config.FlagSet, args []string, conversation bool) (*nats.Conn, error) {
	if err := c.parse(fs, args, conversation); err != nil {
		return nil, err
	}
	return c.connect()
}

// parse declares the common flags (with the conversation's or not) in fs and parses args.
func (c *common) parse(fs *config.FlagSet, args []string, conversation bool) error {
	c.register(fs, conversation)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := protocol.CheckPrefix(c.prefix); err != nil {
		return fmt.Errorf("--prefix: %w", err)
	}
	return nil
}

func (c *common) connect() (*nats.Conn, error) {
	opts, err := c.auth.Options()
	if err != nil {
		return nil, err
	}
	// A request the server refuses to pass on (a locked-down server: docs/security.md) gets no
	// answer: instead of waiting out its timeouts, the connection is closed, which ends it, and
	// refused tells why.
	opts = append(opts, nats.Name("codefleet-cli"), nats.ErrorHandler(func(nc *nats.Conn, _ *nats.Subscription, err error) {
		if !errors.Is(err, nats.ErrPermissionViolation) {
			return
		}
		c.mu.Lock()
		if c.refusal == nil {
			c.refusal = err
		}
		c.mu.Unlock()
		nc.Close()
	}))
	nc, err := nats.Connect(c.natsURL, opts...)
	if errors.Is(err, nats.ErrNoServers) {
		return nil, fmt.Errorf("connect to NATS at %s: %w (is a fleet running? try `codefleet dev`)", c.natsURL, err)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", c.natsURL, err)
	}
	return nc, nil
}

// refused returns the permissions violation that ended the connection instead of err, the
// failure it caused; otherwise err.
func (c *common) refused(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil || c.refusal == nil {
		return err
	}
	return fmt.Errorf("%w (check --tenant, --prefix and the NATS user's permissions)", c.refusal)
}

// open parses the command line of a conversation's command (run, close), connects and returns
// the conversation. The caller closes nc.
func (c *common) open(fs *config.FlagSet, args []string) (conv *client.Conversation, nc *nats.Conn, err error) {
	if err := c.parse(fs, args, true); err != nil {
		return nil, nil, err
	}
	return c.openParsed()
}

// openParsed is open once the command line is parsed.
func (c *common) openParsed() (conv *client.Conversation, nc *nats.Conn, err error) {
	if nc, err = c.connect(); err != nil {
		return nil, nil, err
	}
	cl, err := client.New(nc, client.WithTenant(c.tenant), client.WithPrefix(c.prefix))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return cl.Conversation(c.conversation), nc, nil
}

func cmdRun(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	fs := config.New("codefleet run", stderr)
	fs.Summary = "Runs code in a conversation's sandbox: the code is the arguments joined by blanks, or stdin when there are none.\nFlags may stand before or after the code; -- ends them (codefleet run -- 'print(\"--x\")').\n" +
		"On a terminal the output is printed as it is produced; elsewhere (a pipe, a file) once the run is over."
	fs.ArgsUsage = "[code]"
	lang := fs.String("language", protocol.LangPython, "python, bash, javascript or typescript")
	timeout := fs.Duration("timeout", 0, "run timeout (0: the server's default, 60s)")
	requestID := fs.String("request-id", "", "request id; reuse it to retry a run without running it twice")
	var stream, noStream bool
	fs.BoolVar(&stream, "stream", false, "print the output as it is produced even when stdout is not a terminal")
	fs.BoolVar(&noStream, "no-stream", false, "print the output once the run is over even on a terminal")
	var c common
	if err := c.parse(fs, args, true); err != nil {
		return 0, err
	}
	if stream && noStream {
		return 0, errors.New("--stream and --no-stream contradict each other: give one")
	}
	conv, nc, err := c.openParsed()
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	code := strings.Join(fs.Args(), " ")
	if len(fs.Args()) == 0 {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return 0, fmt.Errorf("read code from stdin: %w", err)
		}
		code = string(b)
	}
	opts := &client.RunOptions{RequestID: *requestID, Timeout: *timeout}
	if stream || (!noStream && isTerminal(stdout)) {
		return runStreamed(ctx, &c, conv, code, *lang, opts, stdout, stderr)
	}
	res, err := conv.Run(ctx, code, *lang, opts)
	if err != nil {
		return 0, c.refused(err)
	}
	io.WriteString(stdout, res.Output)
	if res.TimedOut {
		fmt.Fprintf(stderr, "codefleet: timed out\n")
	}
	if res.Truncated {
		fmt.Fprintf(stderr, "codefleet: output truncated\n")
	}
	return res.ExitCode, nil
}

// runStreamed runs code with its output printed as it comes, and nothing printed again at the
// end. What the stream did not carry (chunks lost on the way, output produced faster than the
// stream's rate) is said on stderr: where output was left out, and at the end how to see the
// whole of it (the result's output, capped as any).
func runStreamed(ctx context.Context, c *common, conv *client.Conversation, code, lang string, opts *client.RunOptions, stdout, stderr io.Writer) (int, error) {
	res, err := conv.RunStream(ctx, code, lang, opts, func(ch protocol.OutputChunk) {
		if ch.Dropped > 0 {
			fmt.Fprintf(stderr, "codefleet: [... %d bytes of output not streamed ...]\n", ch.Dropped)
		}
		io.WriteString(stdout, ch.Data)
	})
	if err != nil {
		return 0, c.refused(err)
	}
	var missing []string
	if res.Lost > 0 {
		missing = append(missing, fmt.Sprintf("%d of %d output chunks, lost on the way", res.Lost, res.Delivered+res.Lost))
	}
	if res.Stream != nil && res.Stream.DroppedBytes > 0 {
		missing = append(missing, fmt.Sprintf("%d bytes of output produced faster than the stream carries", res.Stream.DroppedBytes))
	}
	if len(missing) > 0 {
		// A run's id answers again with its result, without running the code (the worker
		// remembers the last ids of each conversation).
		fmt.Fprintf(stderr, "codefleet: not shown above: %s; the same command with --no-stream --request-id %s prints the whole output (within its cap) without running the code again\n",
			strings.Join(missing, "; "), res.ID)
	}
	if res.TimedOut {
		fmt.Fprintf(stderr, "codefleet: timed out\n")
	}
	return res.ExitCode, nil
}

// isTerminal reports whether w is a terminal, where run streams by default. It asks with
// golang.org/x/term, which the module already depends on (through the Docker client) and which
// asks each OS its own way, where a hand-written TCGETS ioctl would be Linux's alone.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func cmdClose(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	conv, nc, err := c.open(config.New("codefleet close", stderr), args)
	if err != nil {
		return err
	}
	defer nc.Close()
	res, err := conv.Close(ctx)
	if err != nil {
		return c.refused(err)
	}
	if res.Closed {
		fmt.Fprintf(stdout, "closed %s (sandbox %s on %s)\n", c.conversation, res.Sandbox.ID, res.Sandbox.Worker)
	} else {
		fmt.Fprintf(stdout, "%s had no sandbox\n", c.conversation)
	}
	return nil
}

// cmdDev runs a whole fleet in this process until ctx ends.
func cmdDev(ctx context.Context, args []string, stderr io.Writer) error {
	fs := config.New("codefleet dev", stderr)
	fs.Summary = "codefleet dev " + version + ": a local fleet in one process: an embedded NATS server with JetStream, a dispatcher and a worker.\n" +
		"The backend flags are the worker's (see `worker --help`); the sandboxes are destroyed when it stops."
	host := fs.String("host", "127.0.0.1", "address the embedded NATS server listens on")
	port := fs.Int("port", 4222, "port of the embedded NATS server")
	storeDir := fs.String("store-dir", "", "JetStream storage directory (default: a temporary one, removed at exit)")
	natsConfig := fs.String("nats-config", "", "nats-server configuration file of the embedded server (accounts, users, TLS, ...); --host, --port and --store-dir win over the file's, and JetStream is always on")
	var auth config.NATSAuth // how dev's own worker and dispatcher connect to the embedded server
	auth.Register(fs)
	workerID := fs.String("worker-id", "dev", "id of the worker")
	capacity := fs.Int("capacity", worker.DefaultCapacity, "most sandboxes at once, free warm pool sandboxes included (one is given up for a new conversation)")
	warmPool := fs.Int("warm-pool", worker.DefaultWarmPool, "sandboxes of the default image kept started for new conversations to claim (docker; 0: none)")
	var maxFileSize int64
	fs.SizeVar(&maxFileSize, "max-file-size", protocol.DefaultMaxFileBytes, "largest file a file request may put into a sandbox or get out of it (at most 4GiB)")
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	logFormat := fs.String("log-format", config.LogFormatConsole, "log format: json or console")
	httpAddr := fs.String("http-addr", DevHTTPAddr, "address to serve the worker's and the dispatcher's /metrics, /healthz and /readyz on (empty: none)")
	var b backend.Options
	b.Register(fs)
	var q quotaflags.Options // the dispatcher's
	q.Register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := fs.NoArgs("codefleet dev"); err != nil {
		return err
	}
	if err := b.Check(); err != nil {
		return err
	}
	quotas, err := q.Limits()
	if err != nil {
		return err
	}
	authOpts, err := auth.Options()
	if err != nil {
		return err
	}
	log, err := config.NewLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	// Bound first: a taken port fails before anything starts.
	srv, err := daemon.Serve(daemon.Options{HTTPAddr: *httpAddr}, log)
	if err != nil {
		return err
	}
	if srv != nil {
		defer srv.Shutdown(context.Background())
	}
	env, err := b.New(log)
	if err != nil {
		return err
	}
	defer env.Close()
	dir := *storeDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "codefleet-dev-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	sopts, err := devServerOptions(*natsConfig, *host, *port, dir)
	if err != nil {
		return err
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return fmt.Errorf("nats server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		return fmt.Errorf("nats server did not start on %s", net.JoinHostPort(*host, strconv.Itoa(*port)))
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	url := ns.ClientURL()

	wnc, err := nats.Connect(url, append([]nats.Option{nats.Name("codefleet-dev worker")}, authOpts...)...)
	if err != nil {
		return devConnectError("worker", url, err)
	}
	defer wnc.Close()
	w, err := worker.New(worker.Config{ID: *workerID, Image: b.Image, Capacity: *capacity, WarmPool: *warmPool, MaxFileSize: maxFileSize, DestroyOnShutdown: true, Version: config.SemVer(version), Metrics: daemon.Metrics(srv)}, wnc, env, log)
	if err != nil {
		return err
	}
	dnc, err := nats.Connect(url, append([]nats.Option{nats.Name("codefleet-dev dispatcher")}, authOpts...)...)
	if err != nil {
		return devConnectError("dispatcher", url, err)
	}
	defer dnc.Close()
	d, err := dispatcher.New(dispatcher.Config{Name: "dev", Version: config.SemVer(version), Metrics: daemon.Metrics(srv), Quotas: quotas}, dnc, log)
	if err != nil {
		return err
	}
	// Both checks from the start: /readyz is 200 only once both serve.
	if srv != nil {
		if err := errors.Join(ops.RegisterNATS(srv.Registry, wnc, "worker"), ops.RegisterNATS(srv.Registry, dnc, "dispatcher")); err != nil {
			return err
		}
		srv.Check("worker", w.Ready)
		srv.Check("dispatcher", d.Ready)
	}
	// A failed start is undone; one that a signal cut short is a clean stop.
	if started, err := daemon.Start(ctx, daemon.Funcs{StartFunc: w.Start, StopFunc: w.Shutdown}, log); !started {
		return err
	}
	defer w.Shutdown(context.Background())
	if started, err := daemon.Start(ctx, d, log); !started {
		return err
	}
	defer d.Stop(context.Background())
	log.Info().Str("nats_url", url).Str("backend", env.Name()).Str("image", b.Image).Msg("codefleet dev ready: try  codefleet run --conversation demo 'print(40+2)'")
	<-ctx.Done()
	log.Info().Msg("stopping")
	return nil
}
