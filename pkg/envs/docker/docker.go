// Package docker is the Docker backend of codefleet: one container per conversation, with the
// sandbox agent (cmd/sandbox-agent) as PID 1 spoken to over the container's attached stdin and
// stdout, or, when the worker shares a directory with the daemon, over a unix socket in it
// (socket.go). A run is one frame each way on an open channel, not a `docker exec`, which is why
// a warm run costs a couple of milliseconds instead of tens.
//
// Containers are locked down by default (no network, memory without swap, pids and CPU limits,
// all capabilities dropped, no-new-privileges, an unprivileged user, logging off) and labelled
// so that a restarted worker finds and re-adopts them, and a reconciler can remove orphans.
package docker

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/output"
	"github.com/codefleet/codefleet/pkg/envs"
)

// Name is the backend's name.
const Name = "docker"

// Defaults of Config.
const (
	DefaultImage     = "codefleet-sandbox:bookworm"
	DefaultMemory    = 512 << 20
	DefaultPidsLimit = 256
	DefaultNanoCPUs  = 1_000_000_000
	DefaultUser      = "1000:1000"
	DefaultWorkdir   = "/workspace"
	DefaultNetwork   = "none"
	DefaultMaxOutput = output.DefaultMax
	// DefaultAPITimeout bounds each short Docker API call (create, start, inspect, remove).
	DefaultAPITimeout = 30 * time.Second
	// DefaultPullTimeout bounds pulling a missing image.
	DefaultPullTimeout = 5 * time.Minute
	// agentPath is where the agent is copied inside the container.
	agentPath = "/.codefleet/sandbox-agent"
)

// Config configures the Docker backend. The zero value of each field means its default.
type Config struct {
	// Host is the Docker daemon address; empty means the environment (DOCKER_HOST) or the
	// local socket.
	Host string
	// Image is the default sandbox image.
	Image string
	// AgentPath is the sandbox-agent binary (static, linux) copied into every container.
	// Required.
	AgentPath string
	// Memory is the memory limit in bytes; swap is disabled (MemorySwap = Memory).
	Memory int64
	// PidsLimit bounds the processes of one sandbox (fork bombs).
	PidsLimit int64
	// NanoCPUs bounds CPU, in billionths of a CPU.
	NanoCPUs int64
	// User runs the agent and the snippets; "root" to run as root (capabilities are still dropped).
	User string
	// Workdir is the working directory of every run, where files persist.
	Workdir string
	// Network is the container's network mode: "none" by default.
	Network string
	// CapAdd re-adds capabilities after all are dropped (e.g. CHOWN). Empty by default.
	CapAdd []string
	// Disk bounds what a sandbox's snippets may write, in bytes (0: no limit): held by the
	// storage driver where it can, else by the agent (see DiskMode).
	Disk int64
	// ReadonlyRootfs makes everything but Workdir and /tmp read-only.
	ReadonlyRootfs bool
	// Runtime is an OCI runtime for stronger isolation, e.g. "runsc" (gVisor); empty = default.
	Runtime string
	// MaxOutput caps the output of one run (head and tail kept).
	MaxOutput int
	// Labels are put on every container (the worker id among them).
	Labels map[string]string
	// SocketDir is a directory the worker shares with the Docker daemon, where each container
	// gets a socket directory of its own, for the fast transport (socket.go); DefaultSocketDir by
	// default, NoSocketDir to use the attached stream only. A daemon that does not see it
	// (remote, or the worker in a container without it mounted at the same path) is detected,
	// and sandboxes use the attached stream then.
	SocketDir string
	// Egress is what the sandboxes may reach, through the worker's proxy (egress.go); none by
	// default. It needs Network none and the socket directory.
	Egress envs.Egress
	// EgressLimits bound each sandbox's egress proxy.
	EgressLimits EgressLimits
	// APITimeout bounds each short Docker call; PullTimeout bounds an image pull.
	APITimeout  time.Duration
	PullTimeout time.Duration
}

func (c *Config) setDefaults() {
	c.Image = cmp.Or(c.Image, DefaultImage)
	c.Memory = cmp.Or(c.Memory, DefaultMemory)
	c.PidsLimit = cmp.Or(c.PidsLimit, DefaultPidsLimit)
	c.NanoCPUs = cmp.Or(c.NanoCPUs, DefaultNanoCPUs)
	c.User = cmp.Or(c.User, DefaultUser)
	if c.User == "root" {
		c.User = "0:0"
	}
	c.Workdir = cmp.Or(c.Workdir, DefaultWorkdir)
	c.Network = cmp.Or(c.Network, DefaultNetwork)
	c.MaxOutput = cmp.Or(c.MaxOutput, DefaultMaxOutput)
	c.SocketDir = cmp.Or(c.SocketDir, DefaultSocketDir)
	if c.SocketDir != NoSocketDir {
		c.SocketDir = filepath.Clean(c.SocketDir)
	}
	c.APITimeout = cmp.Or(c.APITimeout, DefaultAPITimeout)
	c.PullTimeout = cmp.Or(c.PullTimeout, DefaultPullTimeout)
	c.EgressLimits.setDefaults()
}

// apiClient is the part of the Docker client this backend uses.
type apiClient interface {
	ContainerCreate(ctx context.Context, config *container.Config, hostConfig *container.HostConfig, networkingConfig *network.NetworkingConfig, platform *ocispec.Platform, containerName string) (container.CreateResponse, error)
	CopyToContainer(ctx context.Context, containerID, dstPath string, content io.Reader, options container.CopyToContainerOptions) error
	ContainerAttach(ctx context.Context, containerID string, options container.AttachOptions) (types.HijackedResponse, error)
	ContainerStart(ctx context.Context, containerID string, options container.StartOptions) error
	ContainerInspect(ctx context.Context, containerID string) (container.InspectResponse, error)
	ContainerWait(ctx context.Context, containerID string, condition container.WaitCondition) (<-chan container.WaitResponse, <-chan error)
	ContainerRemove(ctx context.Context, containerID string, options container.RemoveOptions) error
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ContainerRename(ctx context.Context, containerID, newContainerName string) error
	CopyFromContainer(ctx context.Context, containerID, srcPath string) (io.ReadCloser, container.PathStat, error)
	ImageInspect(ctx context.Context, imageID string, inspectOpts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImagePull(ctx context.Context, refStr string, options image.PullOptions) (io.ReadCloser, error)
	Ping(ctx context.Context) (types.Ping, error)
	DaemonHost() string
	Close() error
}

// Env is the Docker backend. It is safe for concurrent use.
type Env struct {
	cfg Config
	cli apiClient
	log zerolog.Logger

	// agentTar is the tar copied into each new container: the agent and the workdir owned by
	// the sandbox user. Built once, on first use.
	agentOnce sync.Once
	agentTar  []byte
	agentErr  error

	// noSockets is set once the socket transport proved impossible here (socket.go).
	noSockets atomic.Bool

	// diskMode is how Disk is held (DiskMode), found out on first use.
	diskMu   sync.Mutex
	diskMode string
	// egress holds the sandboxes' egress proxies and their metrics (egress.go).
	egress egressState

	// pulls lets concurrent creations share one pull of the same image.
	pullMu sync.Mutex
	pulls  map[string]*pull
}

type pull struct {
	done chan struct{}
	err  error
}

var (
	_ envs.Env    = (*Env)(nil)
	_ envs.Pinger = (*Env)(nil)
	_ envs.Pooler = (*Env)(nil)
)

// New returns a Docker backend. It does no I/O: the daemon is first reached by Create, Open
// or List.
func New(cfg Config, log zerolog.Logger) (*Env, error) {
	cfg.setDefaults()
	if cfg.AgentPath == "" {
		return nil, errors.New("docker: config: AgentPath (the sandbox-agent binary) is required")
	}
	if err := cfg.checkEgress(); err != nil {
		return nil, err
	}
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if cfg.Host != "" {
		opts = append(opts, client.WithHost(cfg.Host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker: client: %w", err)
	}
	return &Env{cfg: cfg, cli: cli, log: log.With().Str("component", "envs.docker").Logger(), pulls: map[string]*pull{},
		egress: egressState{m: newEgressMetrics(), proxies: map[string]*egressProxy{}}}, nil
}

// Name returns "docker".
func (e *Env) Name() string { return Name }

// Ping asks the Docker daemon whether it answers.
func (e *Env) Ping(ctx context.Context) error {
	if _, err := e.cli.Ping(ctx); err != nil {
		return e.classify("ping", err)
	}
	return nil
}

// Config returns the effective configuration (defaults filled in).
func (e *Env) Config() Config { return e.cfg }

// Close closes the Docker client; containers are left running.
func (e *Env) Close() error { return e.cli.Close() }

// classify wraps a Docker API error with the envs sentinel it stands for.
func (e *Env) classify(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case client.IsErrConnectionFailed(err):
		return fmt.Errorf("%w: docker: %s: the Docker daemon at %s is not reachable (is it running?): %v",
			envs.ErrBackendUnavailable, op, e.cli.DaemonHost(), err)
	case errdefs.IsNotFound(err):
		return fmt.Errorf("%w: docker: %s: %v", envs.ErrNotFound, op, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: docker: %s: the Docker daemon did not answer in time: %v", envs.ErrBackendUnavailable, op, err)
	default:
		return fmt.Errorf("%w: docker: %s: %v", envs.ErrSandboxFailed, op, err)
	}
}

// Create makes, starts and attaches to a container for spec.
func (e *Env) Create(ctx context.Context, spec envs.Spec) (envs.Sandbox, error) {
	return e.create(ctx, spec, false)
}

// create makes, starts and attaches to a container for spec, or for the warm pool (pool.go):
// then for no conversation, without spec.Env.
func (e *Env) create(ctx context.Context, spec envs.Spec, free bool) (envs.Sandbox, error) {
	img := spec.Image
	if img == "" {
		img = e.cfg.Image
	}
	tarball, err := e.agentArchive()
	if err != nil {
		return nil, err
	}
	if err := e.ensureImage(ctx, img); err != nil {
		return nil, err
	}
	agentArgs, storageOpt, err := e.diskSettings(ctx, img)
	if err != nil {
		return nil, err
	}

	labels := envs.SandboxLabels(e.cfg.Labels, spec)
	name := containerName(spec)
	env := map[string]string{"HOME": e.cfg.Workdir}
	if free {
		spec.Tenant, spec.Conversation, spec.Env = "", "", nil
		delete(labels, envs.LabelTenant)
		delete(labels, envs.LabelConversation)
		labels[envs.LabelPool] = "true"
		name = freeName()
	}
	for k, v := range spec.Env {
		env[k] = v
	}
	cfg := &container.Config{
		Image:        img,
		Entrypoint:   []string{agentPath},
		Cmd:          append([]string{}, agentArgs...),
		Env:          environ(env),
		Labels:       labels,
		WorkingDir:   e.cfg.Workdir,
		User:         e.cfg.User,
		AttachStdin:  true,
		AttachStdout: true,
		AttachStderr: true,
		OpenStdin:    true,
		StdinOnce:    false, // stdin stays open when the worker detaches, for re-attaching
	}
	host := &container.HostConfig{
		NetworkMode:    container.NetworkMode(e.cfg.Network),
		CapDrop:        []string{"ALL"},
		CapAdd:         e.cfg.CapAdd,
		SecurityOpt:    []string{"no-new-privileges"},
		LogConfig:      container.LogConfig{Type: "none"},
		ReadonlyRootfs: e.cfg.ReadonlyRootfs,
		Runtime:        e.cfg.Runtime,
		StorageOpt:     storageOpt,
		Resources: container.Resources{
			Memory:     e.cfg.Memory,
			MemorySwap: e.cfg.Memory,
			PidsLimit:  &e.cfg.PidsLimit,
			NanoCPUs:   e.cfg.NanoCPUs,
		},
	}
	if e.cfg.ReadonlyRootfs {
		host.Tmpfs = map[string]string{"/tmp": "rw,nosuid,nodev,size=64m"}
	}
	host.Mounts = e.socketMount()
	sockDir := ""
	if host.Mounts != nil {
		sockDir = host.Mounts[0].Source
	}
	allow, egress := e.egressOf(spec.Tenant, free)
	if egress && sockDir == "" {
		return nil, egressNeedsSockets(spec.Tenant, "new sandboxes get none here (the daemon does not see it, or it cannot be made: see the log)")
	}

	actx, cancel := context.WithTimeout(ctx, e.cfg.APITimeout)
	defer cancel()
	// The container's creation is not cancelled with ctx: the daemon would make it all the
	// same, after the call was given up, and nothing would know its id to remove it (a worker
	// stopping cancels its warm pool's creations). A ctx cancelled meanwhile fails the next
	// step instead, which removes the container.
	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), e.cfg.APITimeout)
	defer ccancel()
	created, err := e.cli.ContainerCreate(cctx, cfg, host, nil, nil, name)
	if err != nil && sockDir != "" && cctx.Err() == nil && egress {
		e.removeSocketDir(sockDir)
		return nil, egressNeedsSockets(spec.Tenant, "the daemon refused the container with its mount (give the worker and the daemon the same directory at the same path): "+err.Error())
	}
	if err != nil && sockDir != "" && cctx.Err() == nil {
		// The daemon may refuse the mount (it does not see the directory: a remote daemon, a
		// worker in a container without it). Without it, the container may do.
		e.removeSocketDir(sockDir)
		sockDir, host.Mounts = "", nil
		mountErr := err
		if created, err = e.cli.ContainerCreate(cctx, cfg, host, nil, nil, name); err == nil {
			e.socketsOff("the Docker daemon refused the socket directory's mount (give the worker and the daemon the same directory at the same path to use it)", mountErr)
		}
	}
	if err != nil {
		if cctx.Err() != nil {
			// The daemon did not answer in time; it may make the container later: by name, then.
			e.remove(name)
		}
		e.removeSocketDir(sockDir)
		return nil, e.classify("create container", err)
	}
	id := created.ID
	log := e.log.With().Str("sandbox_id", short(id)).Str("tenant", spec.Tenant).Str("conversation_id", spec.Conversation).Logger()
	fail := func(err error) (envs.Sandbox, error) {
		if rerr := e.remove(id); rerr != nil {
			err = errors.Join(err, rerr)
		}
		e.removeSocketDir(sockDir)
		return nil, err
	}
	if err := e.cli.CopyToContainer(actx, id, "/", bytes.NewReader(tarball), container.CopyToContainerOptions{}); err != nil {
		return fail(e.classify("copy agent", err))
	}
	sb, err := e.attach(actx, id, log)
	if err != nil {
		return fail(err)
	}
	if err := e.cli.ContainerStart(actx, id, container.StartOptions{}); err != nil {
		sb.Close()
		return fail(e.classify("start container", err))
	}
	if err := sb.hello(actx); err != nil {
		sb.Close()
		return fail(err)
	}
	sb.upgrade(actx, sockDir)
	if egress {
		if err := sb.startEgress(actx, sockDir, allow); err != nil {
			sb.Close()
			return fail(err)
		}
	}
	sb.info = envs.Info{ID: id, Backend: Name, Tenant: spec.Tenant, Conversation: spec.Conversation, Image: img, Labels: labels, Created: time.Now(), Pool: free}
	log.Debug().Str("image", img).Strs("languages", sb.languages).Str("transport", sb.transport()).Msg("sandbox created")
	return sb, nil
}

// Open re-attaches to an existing container, starting it again if it had stopped (its files
// are intact either way).
func (e *Env) Open(ctx context.Context, id string) (envs.Sandbox, error) {
	actx, cancel := context.WithTimeout(ctx, e.cfg.APITimeout)
	defer cancel()
	c, err := e.cli.ContainerInspect(actx, id)
	if err != nil {
		return nil, e.classify("inspect container", err)
	}
	if c.Config == nil || c.Config.Labels[envs.LabelManagedBy] != envs.ManagedByValue {
		return nil, fmt.Errorf("%w: docker: container %s is not managed by codefleet", envs.ErrNotFound, short(id))
	}
	info := infoOf(c.ID, c.Name, c.Config.Image, c.Config.Labels, c.Created)
	var runEnv map[string]string
	if info.Pool && info.Conversation != "" {
		// A claimed pool sandbox: its conversation's sandbox-wide env is in the container.
		if runEnv, err = e.readClaimEnv(actx, c.ID); err != nil {
			return nil, err
		}
	}
	log := e.log.With().Str("sandbox_id", short(c.ID)).Str("tenant", info.Tenant).
		Str("conversation_id", info.Conversation).Logger()
	sb, err := e.attach(actx, c.ID, log)
	if err != nil {
		return nil, err
	}
	if c.State == nil || !c.State.Running {
		// The daemon does not make a missing bind source on start: the socket directory is in
		// /run, which a reboot empties.
		e.remakeSocketDir(c)
		if err := e.cli.ContainerStart(actx, c.ID, container.StartOptions{}); err != nil {
			sb.Close()
			return nil, e.classify("start container", err)
		}
	}
	if err := sb.hello(actx); err != nil {
		sb.Close()
		return nil, err
	}
	sb.upgrade(actx, e.socketDirOf(c))
	if allow, egress := e.egressOf(info.Tenant, info.Free()); egress {
		if err := sb.startEgress(actx, e.socketDirOf(c), allow); err != nil {
			log.Warn().Err(err).Msg("sandbox re-attached without egress (its network is none: nothing gets out)")
		}
	}
	sb.info, sb.runEnv = info, runEnv
	log.Debug().Str("transport", sb.transport()).Msg("sandbox re-attached")
	return sb, nil
}

// List returns the managed containers whose labels include match. A claimed pool sandbox's
// Labels include its tenant and conversation (from its name, pool.go), and match sees them.
func (e *Env) List(ctx context.Context, match map[string]string) ([]envs.Info, error) {
	args := filters.NewArgs(filters.Arg("label", envs.LabelManagedBy+"="+envs.ManagedByValue))
	var own map[string]string // the labels a claimed pool sandbox does not carry: matched here
	for k, v := range match {
		if k == envs.LabelTenant || k == envs.LabelConversation {
			if own == nil {
				own = map[string]string{}
			}
			own[k] = v
			continue
		}
		args.Add("label", k+"="+v)
	}
	actx, cancel := context.WithTimeout(ctx, e.cfg.APITimeout)
	defer cancel()
	list, err := e.cli.ContainerList(actx, container.ListOptions{All: true, Filters: args})
	if err != nil {
		return nil, e.classify("list containers", err)
	}
	out := make([]envs.Info, 0, len(list))
	for _, c := range list {
		name := ""
		if len(c.Names) > 0 {
			name = c.Names[0]
		}
		info := infoOf(c.ID, name, c.Image, c.Labels, "")
		info.Created = time.Unix(c.Created, 0)
		if !matches(info.Labels, own) {
			continue
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Destroy removes a container and its files. An unknown id is not an error.
func (e *Env) Destroy(ctx context.Context, id string) error {
	e.stopEgress(id)
	actx, cancel := context.WithTimeout(ctx, e.cfg.APITimeout)
	defer cancel()
	sockDir := ""
	if e.cfg.SocketDir != NoSocketDir { // find the container's socket directory, to remove it too
		if c, err := e.cli.ContainerInspect(actx, id); err == nil {
			sockDir = e.socketDirOf(c)
		}
	}
	err := e.cli.ContainerRemove(actx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err == nil || errdefs.IsNotFound(err) || errdefs.IsConflict(err) && strings.Contains(err.Error(), "already in progress") {
		e.removeSocketDir(sockDir)
		return nil
	}
	return e.classify("remove container", err)
}

// remove is Destroy on cleanup paths, with a context of its own.
func (e *Env) remove(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.APITimeout)
	defer cancel()
	return e.Destroy(ctx, id)
}

// infoOf describes a container from its id, name, image, labels and creation time. A pool
// sandbox's conversation, if one claimed it, comes from its name (pool.go).
func infoOf(id, name, img string, labels map[string]string, created string) envs.Info {
	info := envs.Info{ID: id, Backend: Name, Tenant: labels[envs.LabelTenant], Conversation: labels[envs.LabelConversation], Image: img, Labels: labels}
	if labels[envs.LabelPool] != "" {
		info.Pool = true
		info.Tenant, info.Conversation = "", ""
		if tenant, conv, ok := claimOf(name); ok {
			info.Tenant, info.Conversation = tenant, conv
			info.Labels = claimedLabels(labels, tenant, conv)
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, created); err == nil {
		info.Created = t
	}
	return info
}

// matches reports whether labels include all of want.
func matches(labels, want map[string]string) bool {
	for k, v := range want {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// ensureImage makes sure img is present, pulling it once (shared by concurrent callers).
func (e *Env) ensureImage(ctx context.Context, img string) error {
	actx, cancel := context.WithTimeout(ctx, e.cfg.APITimeout)
	_, err := e.cli.ImageInspect(actx, img)
	cancel()
	if err == nil {
		return nil
	}
	if !errdefs.IsNotFound(err) {
		return e.classify("inspect image "+img, err)
	}

	e.pullMu.Lock()
	p, ok := e.pulls[img]
	if !ok {
		p = &pull{done: make(chan struct{})}
		e.pulls[img] = p
		go func() {
			p.err = e.pull(img)
			e.pullMu.Lock()
			delete(e.pulls, img)
			e.pullMu.Unlock()
			close(p.done)
		}()
	}
	e.pullMu.Unlock()
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("%w: docker: pull image %s: %v", envs.ErrSandboxFailed, img, ctx.Err())
	}
}

func (e *Env) pull(img string) error {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.PullTimeout)
	defer cancel()
	e.log.Info().Str("image", img).Msg("pulling image")
	rc, err := e.cli.ImagePull(ctx, img, image.PullOptions{})
	if err == nil {
		// The pull happens while the progress stream is read; an error can come at its end.
		var body []byte
		body, err = io.ReadAll(rc)
		rc.Close()
		if err == nil {
			if i := bytes.LastIndex(body, []byte(`"error"`)); i >= 0 {
				err = errors.New(strings.TrimSpace(string(body[i:])))
			}
		}
	}
	if err != nil {
		if client.IsErrConnectionFailed(err) {
			return e.classify("pull image "+img, err)
		}
		return fmt.Errorf("%w: docker: image %s is not present and could not be pulled: %v", envs.ErrSandboxFailed, img, err)
	}
	return nil
}

// agentArchive returns the tar copied to / of every new container.
func (e *Env) agentArchive() ([]byte, error) {
	e.agentOnce.Do(func() {
		bin, err := os.ReadFile(e.cfg.AgentPath)
		if err != nil {
			e.agentErr = fmt.Errorf("%w: docker: read sandbox agent: %v", envs.ErrSandboxFailed, err)
			return
		}
		uid, gid := 0, 0
		fmt.Sscanf(e.cfg.User, "%d:%d", &uid, &gid)
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		now := time.Now()
		entries := []struct {
			hdr  tar.Header
			body []byte
		}{
			{tar.Header{Typeflag: tar.TypeDir, Name: ".codefleet/", Mode: 0o755, ModTime: now}, nil},
			{tar.Header{Typeflag: tar.TypeReg, Name: agentPath[1:], Mode: 0o755, Size: int64(len(bin)), ModTime: now}, bin},
			{tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(e.cfg.Workdir, "/") + "/", Mode: 0o755, Uid: uid, Gid: gid, ModTime: now}, nil},
		}
		for _, ent := range entries {
			if err := tw.WriteHeader(&ent.hdr); err != nil {
				e.agentErr = err
				return
			}
			if _, err := tw.Write(ent.body); err != nil {
				e.agentErr = err
				return
			}
		}
		e.agentErr = tw.Close()
		e.agentTar = buf.Bytes()
	})
	return e.agentTar, e.agentErr
}

func environ(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// containerName is codefleet-<tenant>-<conversation>-<random>, cut to a readable length.
func containerName(spec envs.Spec) string {
	var b [4]byte
	rand.Read(b[:])
	base := "codefleet-" + spec.Tenant + "-" + spec.Conversation
	if len(base) > 100 {
		base = base[:100]
	}
	return base + "-" + hex.EncodeToString(b[:])
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
