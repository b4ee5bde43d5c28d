package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// build compiles the worker, the dispatcher, the sandbox agent (found by the worker next to
// itself) and nats-server (from its Go module) into dir, static as `make build` makes them.
func build(root, dir string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", dir+"/",
		"./cmd/worker", "./cmd/dispatcher", "./cmd/sandbox-agent", "github.com/nats-io/nats-server/v2")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}

// hasFlag tells whether a command's --help mentions flag.
func hasFlag(bin, flag string) bool {
	out, _ := exec.Command(bin, "--help").CombinedOutput() // --help may exit non-zero
	return strings.Contains(string(out), flag+" ")
}

// proc is a daemon the bench started, in a process group of its own (a Ctrl-C reaches the
// bench only, which stops the daemons in order; if the bench dies they get a SIGTERM, and what
// sandboxes its worker leaves the next bench removes), its output in dir/name.log.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(dir, name, bin string, args ...string) (*proc, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = daemonAttr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

func daemonAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM, and SIGKILL if the process is still there after grace.
func (p *proc) stop(grace time.Duration) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// freePort is a loopback port free at the time of the call.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startNATS starts nats-server with JetStream on a free loopback port (not 4222: a `codefleet
// dev` of someone else may hold it).
func startNATS(dir string) (*proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	p, err := startProc(dir, "nats-server", filepath.Join(dir, "nats-server"),
		"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", filepath.Join(dir, "jetstream"))
	if err != nil {
		return nil, "", err
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		if nc, err := nats.Connect(url); err == nil {
			nc.Close()
			return p, url, nil
		}
	}
	p.stop(time.Second)
	return nil, "", fmt.Errorf("nats-server did not answer on %s (see %s)", url, filepath.Join(dir, "nats-server.log"))
}

// fleet is a dispatcher and a worker of one prefix on the shared NATS server, and the Go
// client's connection to them.
type fleet struct {
	prefix     string
	worker     *proc
	workerID   string
	dispatcher *proc
	nc         *nats.Conn
	client     *client.Client
}

func startFleet(ctx context.Context, dir, url, image, prefix string, workerArgs ...string) (*fleet, error) {
	f := &fleet{prefix: prefix, workerID: fmt.Sprintf("%s-%d", prefix, os.Getpid())}
	var err error
	f.dispatcher, err = startProc(dir, prefix+"-dispatcher", filepath.Join(dir, "dispatcher"),
		"--nats-url", url, "--prefix", prefix, "--name", prefix+"-dispatcher")
	if err != nil {
		return nil, err
	}
	f.worker, err = startProc(dir, prefix+"-worker", filepath.Join(dir, "worker"), append([]string{
		"--nats-url", url, "--prefix", prefix, "--id", f.workerID, "--image", image,
		"--capacity", "64", "--destroy-on-shutdown"}, workerArgs...)...)
	if err != nil {
		f.stop()
		return nil, err
	}
	if f.nc, err = nats.Connect(url, nats.Name("bench client")); err == nil {
		f.client, err = client.New(f.nc, client.WithPrefix(prefix), client.WithTenant("bench"))
	}
	if err == nil {
		err = f.ready(ctx)
	}
	if err != nil {
		f.stop()
		return nil, fmt.Errorf("fleet %s: %w (logs in %s)", prefix, err, dir)
	}
	return f, nil
}

// ready waits for a first run to go through the fleet (the worker registered, the dispatcher
// sees it), then closes that conversation.
func (f *fleet) ready(ctx context.Context) error {
	conv := f.client.Conversation("ready")
	var last error
	for start := time.Now(); time.Since(start) < time.Minute; time.Sleep(200 * time.Millisecond) {
		if _, _, last = timedRun(ctx, conv, "bash", "true"); last == nil {
			_, err := conv.Close(ctx)
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return last
}

// stop stops the worker first (it destroys its sandboxes), then the dispatcher.
func (f *fleet) stop() {
	if f.nc != nil {
		f.nc.Close()
	}
	if f.worker != nil {
		f.worker.stop(time.Minute)
	}
	if f.dispatcher != nil {
		f.dispatcher.stop(30 * time.Second)
	}
}

// timedRun runs one snippet through the fleet and times it as the client sees it.
func timedRun(ctx context.Context, conv *client.Conversation, lang, code string) (time.Duration, *protocol.RunResult, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	res, err := conv.Run(ctx, code, lang, nil)
	took := time.Since(start)
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("%s %q: exit %d: %s", lang, code, res.ExitCode, res.Output)
	}
	return took, res, err
}

// removeLeftovers removes the sandboxes of an earlier bench whose process died before its
// worker could destroy them (a SIGKILL): the containers of workers named as startFleet names
// them, after a process that no longer exists.
func removeLeftovers(ctx context.Context, cli *dockerclient.Client) error {
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", envs.LabelWorker))})
	if err != nil {
		return err
	}
	for _, c := range list {
		id := c.Labels[envs.LabelWorker]
		i := strings.LastIndexByte(id, '-')
		pid, err := strconv.Atoi(id[i+1:])
		if (id[:max(i, 0)] != "bench" && id[:max(i, 0)] != "benchnopool") || err != nil || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		logf("removing container %.12s of worker %s, left by a bench that died", c.ID, id)
		if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
			return err
		}
	}
	return nil
}
