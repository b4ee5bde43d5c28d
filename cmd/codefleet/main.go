// Command codefleet is the codefleet CLI:
//
//	codefleet run [flags] [code]   run code in a conversation's sandbox (code from stdin when absent)
//	codefleet close [flags]        destroy a conversation's sandbox
//	codefleet status [flags]       the live workers, their load and sandboxes
//	codefleet dev [flags]          a local fleet in one process: embedded NATS with JetStream,
//	                               one dispatcher and one worker (Docker, or Daytona with
//	                               --backend daytona and DAYTONA_API_KEY in the environment)
//
// `run` prints the snippet's output and exits with its exit code; when the fleet cannot run the
// code it prints "codefleet: <error code>: <message>" to stderr and exits 125.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

// exitFleetError is the exit status of `run` when the fleet could not run the code.
const exitFleetError = 125

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: codefleet <command> [flags]

commands:
  run [code]   run code in a conversation's sandbox (code from stdin when not given)
  close        destroy a conversation's sandbox
  status       show the live workers
  dev          run a local fleet: embedded NATS + a dispatcher + a worker (Docker, or Daytona)

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
	case errors.Is(err, flag.ErrHelp):
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
}

func (c *common) register(fs *config.FlagSet, conversation bool) {
	fs.StringVar(&c.natsURL, "nats-url", nats.DefaultURL, "NATS server URL(s)")
	fs.Alias("nats-url", "NATS_URL")
	fs.StringVar(&c.prefix, "prefix", protocol.DefaultPrefix, "first token of every codefleet subject")
	if conversation {
		fs.StringVar(&c.tenant, "tenant", protocol.DefaultTenant, "tenant")
		fs.StringVar(&c.conversation, "conversation", "default", "conversation id: runs of one conversation share a sandbox")
	}
}

func (c *common) connect() (*nats.Conn, error) {
	nc, err := nats.Connect(c.natsURL, nats.Name("codefleet-cli"))
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (is a fleet running? try `codefleet dev`)", c.natsURL, err)
	}
	return nc, nil
}

func (c *common) conv(nc *nats.Conn) (*client.Conversation, error) {
	cl, err := client.New(nc, client.WithTenant(c.tenant), client.WithPrefix(c.prefix))
	if err != nil {
		return nil, err
	}
	return cl.Conversation(c.conversation), nil
}

func cmdRun(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	fs := config.New("codefleet run", stderr)
	var c common
	c.register(fs, true)
	lang := fs.String("language", protocol.LangPython, "python, bash, javascript or typescript")
	timeout := fs.Duration("timeout", 0, "run timeout (0: the server's default, 60s)")
	requestID := fs.String("request-id", "", "request id; reuse it to retry a run without running it twice")
	if err := fs.Parse(args); err != nil {
		return 0, err
	}
	code := strings.Join(fs.Args(), " ")
	if len(fs.Args()) == 0 {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return 0, fmt.Errorf("read code from stdin: %w", err)
		}
		code = string(b)
	}
	nc, err := c.connect()
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	conv, err := c.conv(nc)
	if err != nil {
		return 0, err
	}
	res, err := conv.Run(ctx, code, *lang, &client.RunOptions{RequestID: *requestID, Timeout: *timeout})
	if err != nil {
		return 0, err
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

func cmdClose(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := config.New("codefleet close", stderr)
	var c common
	c.register(fs, true)
	if err := fs.Parse(args); err != nil {
		return err
	}
	nc, err := c.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	conv, err := c.conv(nc)
	if err != nil {
		return err
	}
	res, err := conv.Close(ctx)
	if err != nil {
		return err
	}
	if res.Closed {
		fmt.Fprintf(stdout, "closed %s (sandbox %s on %s)\n", c.conversation, res.Sandbox.ID, res.Sandbox.Worker)
	} else {
		fmt.Fprintf(stdout, "%s had no sandbox\n", c.conversation)
	}
	return nil
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := config.New("codefleet status", stderr)
	var c common
	c.register(fs, false)
	if err := fs.Parse(args); err != nil {
		return err
	}
	nc, err := c.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	kv, err := js.KeyValue(ctx, protocol.WorkersBucket)
	if err != nil {
		return fmt.Errorf("workers registry: %w (no worker has started yet?)", err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tBACKENDS\tSANDBOXES\tCAPACITY\tRUNNING\tDRAINING\tLANGUAGES\tUPDATED")
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return err
	}
	n := 0
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		info, err := decodeWorker(e.Value())
		if err != nil {
			continue
		}
		n++
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%v\t%s\t%s ago\n", info.ID, strings.Join(info.Backends, ","), info.Load, info.Capacity,
			info.Running, info.Draining, strings.Join(info.Languages, ","), time.Since(info.Updated).Round(time.Millisecond))
	}
	tw.Flush()
	if n == 0 {
		fmt.Fprintln(stdout, "no live workers")
	}
	return nil
}

func decodeWorker(b []byte) (protocol.WorkerInfo, error) {
	var info protocol.WorkerInfo
	err := json.Unmarshal(b, &info)
	return info, err
}

// cmdDev runs a whole fleet in this process until ctx ends.
func cmdDev(ctx context.Context, args []string, stderr io.Writer) error {
	fs := config.New("codefleet dev", stderr)
	host := fs.String("host", "127.0.0.1", "address the embedded NATS server listens on")
	port := fs.Int("port", 4222, "port of the embedded NATS server")
	storeDir := fs.String("store-dir", "", "JetStream storage directory (default: a temporary one, removed at exit)")
	workerID := fs.String("worker-id", "dev", "id of the worker")
	backend := fs.String("backend", docker.Name, "sandbox backend: docker, or daytona (configured by DAYTONA_API_KEY, DAYTONA_API_URL and DAYTONA_TARGET)")
	image := fs.String("image", "", "sandbox image (default: "+docker.DefaultImage+" with docker, the service's default snapshot with daytona; snapshot:NAME for a Daytona snapshot)")
	agentPath := fs.String("agent", "", "sandbox-agent binary (default: next to this executable, else in $PATH)")
	capacity := fs.Int("capacity", worker.DefaultCapacity, "most sandboxes at once")
	logLevel := fs.String("log-level", "info", "log level")
	logFormat := fs.String("log-format", config.LogFormatConsole, "log format: json or console")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := config.NewLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	var env envs.Env
	switch *backend {
	case docker.Name:
		agent, err := config.FindAgent(*agentPath)
		if err != nil {
			return err
		}
		if *image == "" {
			*image = docker.DefaultImage
		}
		if env, err = docker.New(docker.Config{Image: *image, AgentPath: agent}, log); err != nil {
			return err
		}
	case daytona.Name:
		if os.Getenv("DAYTONA_API_KEY") == "" {
			return errors.New("codefleet dev --backend daytona needs DAYTONA_API_KEY in the environment (DAYTONA_API_URL and DAYTONA_TARGET are optional)")
		}
		acct := daytona.Account{APIKey: os.Getenv("DAYTONA_API_KEY"), APIURL: os.Getenv("DAYTONA_API_URL"), Target: os.Getenv("DAYTONA_TARGET")}
		if env, err = daytona.New(daytona.Config{Account: acct, Image: *image}, log); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown backend %q: want %s or %s", *backend, docker.Name, daytona.Name)
	}
	defer env.Close()
	dir := *storeDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "codefleet-dev-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	ns, err := server.NewServer(&server.Options{Host: *host, Port: *port, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true})
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

	wnc, err := nats.Connect(url, nats.Name("codefleet-dev worker"))
	if err != nil {
		return err
	}
	defer wnc.Close()
	w, err := worker.New(worker.Config{ID: *workerID, Image: *image, Capacity: *capacity, DestroyOnShutdown: true, Version: config.SemVer(version)}, wnc, env, log)
	if err != nil {
		return err
	}
	if err := w.Start(ctx); err != nil {
		return err
	}
	defer w.Shutdown(context.Background())
	dnc, err := nats.Connect(url, nats.Name("codefleet-dev dispatcher"))
	if err != nil {
		return err
	}
	defer dnc.Close()
	d, err := dispatcher.New(dispatcher.Config{Name: "dev", Version: config.SemVer(version)}, dnc, log)
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	defer d.Stop(context.Background())
	log.Info().Str("nats_url", url).Str("backend", env.Name()).Str("image", *image).Msg("codefleet dev ready: try  codefleet run --conversation demo 'print(40+2)'")
	<-ctx.Done()
	log.Info().Msg("stopping")
	return nil
}
