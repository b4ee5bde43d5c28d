// Package worker is the codefleet worker: it holds the sandboxes of many conversations on one
// backend and runs their snippets, serving the internal subjects <prefix>.worker.<id>.run,
// .close, .files and .ping over NATS.
//
// Each conversation has a session: its sandbox (created on the first run or file request), a
// bounded FIFO of pending runs and file requests and a goroutine that does them one at a time,
// so the requests of one conversation keep their order while conversations run in parallel. A
// streamed run's output chunks are published by the worker itself on the run's stream subject. Request ids are remembered per conversation:
// a retry gets the first run's result and never runs the code twice.
//
// The worker registers itself in its fleet's registry (pkg/registry: the KV bucket
// <prefix>-workers) and refreshes the entry every second; dispatchers read it to place
// conversations. On shutdown it drains: it marks itself draining, stops taking requests, lets
// in-flight runs finish, and keeps its sandboxes for the next process with the same id (which
// re-adopts them), or destroys them.
//
// With a warm pool (Config.WarmPool, Docker), free sandboxes of the default image wait started
// for new conversations, which claim them instead of waiting for a creation (pool.go).
//
// Files: worker.go (lifecycle, registration), handlers.go (the NATS endpoints and replies),
// manager.go (the sessions of all conversations: admission, close, drain), session.go (one
// conversation: its queue, request ids, its sandbox, running a job), files.go (a file request in
// the sandbox), stream.go (a streamed run's chunks published), pool.go (the warm pool),
// adopt.go (sandboxes of an earlier process), reap.go (idle, expired, moved and orphaned
// sandboxes), config.go.
package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/pkg/affinity"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/registry"
)

// ServiceName is the worker's name in NATS service discovery (`nats micro ls`).
const ServiceName = "codefleet-worker"

// Worker serves one backend's sandboxes over NATS.
type Worker struct {
	cfg      Config
	nc       *nats.Conn
	env      envs.Env
	log      zerolog.Logger
	subjects protocol.Subjects
	m        *manager

	started time.Time
	// starting is set from the id's claim until Start serves, draining from Shutdown on; the
	// registration says draining in both, so nothing is placed on the worker.
	starting, draining atomic.Bool
	// serving is set once Start has returned nil: Ready reads what Start set only after it.
	serving atomic.Bool

	svc micro.Service
	// member is the worker's registration, set by Start; hbMu serializes heartbeats.
	member *registry.Member
	hbMu   sync.Mutex

	stop    context.CancelFunc
	bg      sync.WaitGroup
	stopped atomic.Bool
}

// New returns a worker. It does no I/O; Start does.
func New(cfg Config, nc *nats.Conn, env envs.Env, log zerolog.Logger) (*Worker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil || env == nil {
		return nil, fmt.Errorf("%w: a NATS connection and a backend are required", ErrInvalidConfig)
	}
	log = log.With().Str("component", "worker").Str("worker_id", cfg.ID).Logger()
	w := &Worker{cfg: cfg, nc: nc, env: env, log: log, subjects: protocol.Subjects{Prefix: cfg.Prefix}}
	w.m = newManager(&w.cfg, env, log)
	if cfg.Metrics != nil {
		if err := w.registerMetrics(cfg.Metrics); err != nil {
			return nil, fmt.Errorf("worker: metrics: %w", err)
		}
	}
	return w, nil
}

// Ready reports whether the worker can run code now: it serves (not starting or draining),
// its NATS connection is up, its registration can be read back from the registry, and its
// backend answers (when the backend can tell: envs.Pinger).
func (w *Worker) Ready(ctx context.Context) error {
	switch {
	case w.stopped.Load() || w.draining.Load():
		return errors.New("draining")
	case !w.serving.Load():
		return errors.New("starting")
	case !w.nc.IsConnected():
		return fmt.Errorf("NATS not connected (%s)", strings.ToLower(w.nc.Status().String()))
	}
	if err := w.member.Check(ctx); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	if p, ok := w.env.(envs.Pinger); ok {
		if err := p.Ping(ctx); err != nil {
			return fmt.Errorf("%s backend: %w", w.env.Name(), err)
		}
	}
	return nil
}

// ID returns the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Start re-adopts the sandboxes of an earlier process with this id, registers the worker and
// starts serving. It returns once requests are being served.
func (w *Worker) Start(ctx context.Context) error {
	w.started = time.Now()
	js, err := jetstream.New(w.nc)
	if err != nil {
		return fmt.Errorf("worker: jetstream: %w", err)
	}
	w.member, err = registry.Join(ctx, js, registry.MemberConfig{
		Fleet: w.subjects, ID: w.cfg.ID, Interval: w.cfg.HeartbeatInterval, TTL: w.cfg.HeartbeatTTL,
		Replicas: w.cfg.KVReplicas, DrainTimeout: w.cfg.DrainTimeout,
		Note: func(msg string) { w.log.Info().Msg(msg) },
	})
	if errors.Is(err, registry.ErrIDInUse) {
		return fmt.Errorf("worker: %w; give each worker its own --id", err)
	}
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}

	// From the claim on, the registration is refreshed (saying draining until the worker
	// serves): re-adoption may take longer than the two heartbeat intervals after which another
	// worker with this id would take the registration over.
	w.starting.Store(true)
	bgctx, cancel := context.WithCancel(context.Background())
	w.stop = cancel
	w.bg.Add(1)
	go w.every(bgctx, w.cfg.HeartbeatInterval, w.beat())

	owners := affinity.NewOwners(js, w.subjects)
	w.m.ownerOf = owners.Owner
	w.m.disown = func(ctx context.Context, tenant, conv string) error {
		return owners.Release(ctx, tenant, conv, w.cfg.ID)
	}
	n, err := w.m.adopt(ctx)
	if err != nil {
		// The backend may be down for now; sandboxes left behind are found by the reconciler.
		w.log.Warn().Err(err).Msg("re-adopt sandboxes")
	} else if n > 0 {
		w.log.Info().Int("sandboxes", n).Msg("re-adopted sandboxes")
		// Conversations moved elsewhere while this worker was down are no longer its own.
		w.m.evictMoved(ctx)
	}

	w.svc, err = micro.AddService(w.nc, micro.Config{
		Name:        ServiceName,
		Version:     w.cfg.Version,
		Description: "codefleet worker: runs conversations' code in " + w.env.Name() + " sandboxes",
		Metadata:    map[string]string{"worker_id": w.cfg.ID, "backend": w.env.Name(), "prefix": w.cfg.Prefix},
	})
	if err != nil {
		return fmt.Errorf("worker: service: %w", err)
	}
	g := w.svc.AddGroup(w.subjects.WorkerGroup(w.cfg.ID))
	if err := g.AddEndpoint("run", micro.HandlerFunc(w.handleRun)); err != nil {
		return fmt.Errorf("worker: endpoint run: %w", err)
	}
	if err := g.AddEndpoint("close", micro.HandlerFunc(w.handleClose)); err != nil {
		return fmt.Errorf("worker: endpoint close: %w", err)
	}
	if err := g.AddEndpoint("files", micro.HandlerFunc(w.handleFiles)); err != nil {
		return fmt.Errorf("worker: endpoint files: %w", err)
	}
	// ping tells a dispatcher that the worker is subscribed again after a reconnect.
	if err := g.AddEndpoint("ping", micro.HandlerFunc(func(req micro.Request) { req.Respond([]byte("{}")) })); err != nil {
		return fmt.Errorf("worker: endpoint ping: %w", err)
	}

	// The subscriptions must reach the server before Start returns: a request sent right after
	// would otherwise find no responders.
	if err := w.nc.FlushTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("worker: flush subscriptions: %w", err)
	}
	w.starting.Store(false)
	if err := w.heartbeat(ctx); err != nil {
		return fmt.Errorf("worker: register: %w", err)
	}
	w.bg.Add(1)
	go w.every(bgctx, w.cfg.ReapInterval, w.m.reap)
	if p := w.m.pool; p != nil {
		w.bg.Add(1)
		go func() {
			defer w.bg.Done()
			p.run(bgctx)
		}()
	}
	w.serving.Store(true)
	w.log.Info().Str("backend", w.env.Name()).Int("capacity", w.cfg.Capacity).Int("warm_pool", w.poolSize()).Msg("worker started")
	return nil
}

func (w *Worker) every(ctx context.Context, d time.Duration, f func(context.Context)) {
	defer w.bg.Done()
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f(ctx)
		}
	}
}

// beat returns the heartbeat loop's step: it refreshes the registration and, when that has
// failed for a whole TTL while the connection claims to be up, forces a reconnect.
func (w *Worker) beat() func(context.Context) {
	lastBeat := time.Now()
	return func(ctx context.Context) {
		err := w.heartbeat(ctx)
		if err == nil || ctx.Err() != nil {
			lastBeat = time.Now()
			return
		}
		w.log.Warn().Err(err).Msg("heartbeat")
		// Silent for a whole TTL while the connection claims to be up: it is probably dead
		// (a network cut leaves no error until pings time out). Reconnect now, so the worker
		// is back as soon as the network is.
		if time.Since(lastBeat) > w.cfg.HeartbeatTTL && w.nc.IsConnected() {
			w.log.Warn().Dur("silent", time.Since(lastBeat)).Msg("registration not refreshed for a TTL; reconnecting to NATS")
			w.nc.ForceReconnect()
			lastBeat = time.Now()
		}
	}
}

// Info returns the worker's registration as it stands.
func (w *Worker) Info() protocol.WorkerInfo {
	sessions, running := w.m.load()
	return protocol.WorkerInfo{
		ID: w.cfg.ID, Backends: []string{w.env.Name()}, Languages: w.m.languageList(),
		Capacity: w.cfg.Capacity, Load: sessions, Running: running, Draining: w.draining.Load() || w.starting.Load(),
		PoolFree: w.m.poolFree(),
		Version:  w.cfg.Version, Started: w.started, Updated: time.Now(),
	}
}

// poolSize is the warm pool's size: 0 without one (none asked for, or a backend without).
func (w *Worker) poolSize() int {
	if w.m.pool == nil {
		return 0
	}
	return w.m.pool.size
}

// ErrIDInUse is returned by Start when a live worker already has the id.
var ErrIDInUse = registry.ErrIDInUse

// heartbeat refreshes the worker's registration. The loop's, Start's and Shutdown's
// heartbeats take turns, each putting the state it read: a put of a state read before another
// heartbeat's must not land after it (it would say draining again once Start has served).
func (w *Worker) heartbeat(ctx context.Context) error {
	if w.member == nil {
		return nil // not started
	}
	w.hbMu.Lock()
	defer w.hbMu.Unlock()
	return w.member.Heartbeat(ctx, w.Info())
}

// Shutdown drains the worker: it is marked draining, stops taking requests, waits for
// in-flight runs until DrainTimeout (or ctx) ends, then keeps its sandboxes for re-adoption
// (or destroys them with DestroyOnShutdown) and removes its registration. It blocks until done.
func (w *Worker) Shutdown(ctx context.Context) error {
	if w.stopped.Swap(true) {
		return nil
	}
	w.draining.Store(true)
	var errs []error
	if err := w.heartbeat(ctx); err != nil {
		errs = append(errs, fmt.Errorf("announce draining: %w", err))
	}
	if w.svc != nil {
		if err := w.svc.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop service: %w", err))
		}
	}
	dctx, cancel := context.WithTimeout(ctx, w.cfg.DrainTimeout)
	defer cancel()
	if err := w.m.drain(dctx); err != nil {
		w.log.Warn().Err(err).Msg("drain incomplete; stopping runs")
	}
	w.m.stopAll(w.cfg.DestroyOnShutdown)
	if w.m.pool != nil {
		w.m.pool.stop() // its free sandboxes are destroyed: they hold nothing
	}
	if w.stop != nil {
		w.stop()
		w.bg.Wait()
	}
	// The last replies reach the server before the registration goes: a dispatcher that saw
	// the worker leave first would answer their runs worker_lost. (Not connected: nothing can
	// reach the server, and the replies buffered go out if it comes back before the drain.)
	if !w.nc.IsConnected() {
		errs = append(errs, errors.New("flush replies: NATS not connected"))
	} else if err := w.nc.FlushTimeout(5 * time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		errs = append(errs, fmt.Errorf("flush replies: %w", err))
	}
	if w.member != nil {
		// Bounded by a heartbeat TTL: a registration that cannot be removed sooner (NATS is
		// away) expires in that time anyway, and waiting for it would hold the whole stop
		// budget (a minute) after the sandboxes are dealt with.
		lctx, cancel := context.WithTimeout(ctx, w.cfg.HeartbeatTTL)
		err := w.member.Leave(lctx)
		cancel()
		if err != nil {
			errs = append(errs, err)
		}
	}
	w.log.Info().Bool("destroyed_sandboxes", w.cfg.DestroyOnShutdown).Msg("worker stopped")
	return errors.Join(errs...)
}
