// Package worker is the codefleet worker: it holds the sandboxes of many conversations on one
// backend and runs their snippets, serving the internal subjects codefleet.worker.<id>.run and
// .close over NATS.
//
// Each conversation has a session: its sandbox (created on the first run), a bounded FIFO of
// pending runs and a goroutine that runs them one at a time, so runs of one conversation keep
// their order while conversations run in parallel. Request ids are remembered per conversation:
// a retry gets the first run's result and never runs the code twice.
//
// The worker registers itself in the KV bucket codefleet-workers and refreshes the entry every
// second; dispatchers read it to place conversations. On shutdown it drains: it marks itself
// draining, stops taking requests, lets in-flight runs finish, and keeps its sandboxes for the
// next process with the same id (which re-adopts them), or destroys them.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/output"
	"github.com/codefleet/codefleet/pkg/affinity"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
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

	started  time.Time
	draining atomic.Bool

	svc micro.Service
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	// hbMu serializes heartbeats, which may replace kv.
	hbMu sync.Mutex
	// affinity is the dispatchers' affinity bucket, opened when first found.
	affinity jetstream.KeyValue

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
	return w, nil
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
	w.js = js
	if err := w.openRegistry(ctx); err != nil {
		return err
	}
	if err := w.claimID(ctx); err != nil {
		return err
	}

	w.m.ownerOf = w.ownerOf
	n, err := w.m.adopt(ctx)
	if err != nil {
		// The backend may be down for now; sandboxes left behind are found by the reconciler.
		w.log.Warn().Err(err).Msg("re-adopt sandboxes")
	} else if n > 0 {
		w.log.Info().Int("sandboxes", n).Msg("re-adopted sandboxes")
		// Conversations moved elsewhere while this worker was down are no longer its own.
		w.m.evictMoved(ctx)
	}
	if err := w.heartbeat(ctx); err != nil {
		return fmt.Errorf("worker: register: %w", err)
	}

	w.svc, err = micro.AddService(w.nc, micro.Config{
		Name:        ServiceName,
		Version:     w.cfg.Version,
		Description: "codefleet worker: runs conversations' code in " + w.env.Name() + " sandboxes",
		Metadata:    map[string]string{"worker_id": w.cfg.ID, "backend": w.env.Name()},
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
	// ping tells a dispatcher that the worker is subscribed again after a reconnect.
	if err := g.AddEndpoint("ping", micro.HandlerFunc(func(req micro.Request) { req.Respond([]byte("{}")) })); err != nil {
		return fmt.Errorf("worker: endpoint ping: %w", err)
	}

	// The subscriptions must reach the server before Start returns: a request sent right after
	// would otherwise find no responders.
	if err := w.nc.FlushTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("worker: flush subscriptions: %w", err)
	}

	bgctx, cancel := context.WithCancel(context.Background())
	w.stop = cancel
	w.bg.Add(2)
	lastBeat := time.Now()
	go w.every(bgctx, w.cfg.HeartbeatInterval, func(ctx context.Context) {
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
	})
	go w.every(bgctx, w.cfg.ReapInterval, w.m.reap)
	w.log.Info().Str("backend", w.env.Name()).Int("capacity", w.cfg.Capacity).Msg("worker started")
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

// ownerOf reads a conversation's owner from the dispatchers' affinity bucket. Without the
// bucket (no dispatcher ever ran) every conversation is the worker's own.
func (w *Worker) ownerOf(ctx context.Context, tenant, conv string) (string, bool, error) {
	if w.affinity == nil {
		kv, err := w.js.KeyValue(ctx, protocol.AffinityBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return "", false, nil
		}
		if err != nil {
			return "", false, err
		}
		w.affinity = kv
	}
	owner, ok, err := affinity.Lookup(ctx, w.affinity, tenant, conv)
	return owner.Worker, ok, err
}

// Info returns the worker's registration as it stands.
func (w *Worker) Info() protocol.WorkerInfo {
	sessions, running := w.m.load()
	return protocol.WorkerInfo{
		ID: w.cfg.ID, Backends: []string{w.env.Name()}, Languages: w.m.languageList(),
		Capacity: w.cfg.Capacity, Load: sessions, Running: running, Draining: w.draining.Load(),
		Version: w.cfg.Version, Started: w.started, Updated: time.Now(),
	}
}

// ErrIDInUse is returned by Start when a live worker already has the id.
var ErrIDInUse = errors.New("worker id in use")

// claimID makes sure no live worker has this id: two would re-adopt, and fight over, the same
// sandboxes. A registration under the id that is still being refreshed belongs to a live one;
// one left by a process that died is not refreshed, and is waited out for two heartbeat
// intervals (a restart after a crash is not held up for the whole TTL). A worker that is
// draining (a graceful stop still finishing its runs) is waited for until it is gone, up to
// DrainTimeout and a TTL.
func (w *Worker) claimID(ctx context.Context) error {
	_, err := w.kv.Get(ctx, w.cfg.ID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("worker: registry: %w", err)
	}
	watcher, err := w.kv.Watch(ctx, w.cfg.ID, jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("worker: registry: %w", err)
	}
	defer watcher.Stop()
	quiet := 2 * w.cfg.HeartbeatInterval
	timer := time.NewTimer(quiet)
	defer timer.Stop()
	giveUp := time.After(w.cfg.DrainTimeout + w.cfg.HeartbeatTTL)
	draining := false // the holder said it drains: it is waited for
	for {
		select {
		case e, ok := <-watcher.Updates():
			if !ok {
				return fmt.Errorf("worker: registry: watch of %s ended", w.cfg.ID)
			}
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				return nil // deregistered or expired: the other one is gone
			}
			var info protocol.WorkerInfo
			if json.Unmarshal(e.Value(), &info) == nil && info.Draining {
				if !draining {
					w.log.Info().Msg("a worker with this id is draining; waiting for it to finish")
					draining = true
				}
				timer.Reset(quiet)
				continue
			}
			return fmt.Errorf("%w: a live worker with id %s refreshed its registration (started %s); give each worker its own --id",
				ErrIDInUse, w.cfg.ID, info.Started.Format(time.RFC3339))
		case <-timer.C:
			w.log.Info().Bool("was_draining", draining).Msg("taking over the registration of a previous worker with this id that stopped refreshing it")
			return nil
		case <-giveUp:
			return fmt.Errorf("%w: the worker with id %s is still draining", ErrIDInUse, w.cfg.ID)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// openRegistry opens (creating it if need be) the registry bucket.
func (w *Worker) openRegistry(ctx context.Context) error {
	kv, err := w.js.CreateOrUpdateKeyValue(ctx, affinity.WorkersBucketConfig(w.cfg.HeartbeatTTL, w.cfg.KVReplicas))
	if err != nil {
		return fmt.Errorf("worker: registry bucket %s: %w", protocol.WorkersBucket, err)
	}
	w.kv = kv
	return nil
}

func (w *Worker) heartbeat(ctx context.Context) error {
	// One heartbeat at a time: Shutdown's announcement runs beside the background loop, and a
	// heartbeat may re-open the bucket (w.kv).
	w.hbMu.Lock()
	defer w.hbMu.Unlock()
	if w.kv == nil {
		return nil // not started
	}
	// A put slower than the interval still counts if it lands within the TTL: give it half of
	// it (ticks are skipped meanwhile), so a loaded server or machine does not lose the worker.
	ctx, cancel := context.WithTimeout(ctx, max(w.cfg.HeartbeatInterval, w.cfg.HeartbeatTTL/2))
	defer cancel()
	info := w.Info()
	_, err := w.kv.Put(ctx, w.cfg.ID, protocol.Encode(&info))
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		// The bucket is gone (a NATS server that lost its state, an operator's delete): make
		// it again, or dispatchers would never see this worker.
		if rerr := w.openRegistry(ctx); rerr != nil {
			return errors.Join(err, rerr)
		}
		_, err = w.kv.Put(ctx, w.cfg.ID, protocol.Encode(&info))
	}
	return err
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
	if w.stop != nil {
		w.stop()
		w.bg.Wait()
	}
	// The last replies reach the server before the registration goes: a dispatcher that saw
	// the worker leave first would answer their runs worker_lost.
	if err := w.nc.FlushTimeout(5 * time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		errs = append(errs, fmt.Errorf("flush replies: %w", err))
	}
	// No heartbeat runs any more: w.kv is read without hbMu.
	if w.kv != nil {
		if err := w.kv.Delete(ctx, w.cfg.ID); err != nil {
			errs = append(errs, fmt.Errorf("deregister: %w", err))
		}
	}
	w.log.Info().Bool("destroyed_sandboxes", w.cfg.DestroyOnShutdown).Msg("worker stopped")
	return errors.Join(errs...)
}

// handleRun takes a run request. Validation and queueing happen here, in the subscription's
// order, so runs of one conversation keep the order they were sent in; the session's goroutine
// answers.
func (w *Worker) handleRun(req micro.Request) {
	tenant, conv := req.Headers().Get(protocol.HeaderTenant), req.Headers().Get(protocol.HeaderConversation)
	if !protocol.ValidID(tenant) || !protocol.ValidID(conv) {
		w.reply(req, protocol.ErrorResult(nuid.Next(), protocol.Errorf(protocol.CodeBadRequest,
			"headers %s and %s must name the conversation ([A-Za-z0-9_-]{1,128})", protocol.HeaderTenant, protocol.HeaderConversation)))
		return
	}
	run, perr := protocol.DecodeRunRequest(req.Data())
	if perr != nil {
		w.reply(req, protocol.ErrorResult(nuid.Next(), perr))
		return
	}
	dedupe := run.ID != ""
	if !dedupe {
		run.ID = nuid.Next()
	}
	if perr := w.checkSandboxOptions(run); perr != nil {
		w.reply(req, protocol.ErrorResult(run.ID, perr))
		return
	}
	recreated := req.Headers().Get(protocol.HeaderRecreated) == "true"
	respond := func(res *protocol.RunResult) { w.reply(req, res) }
	if perr := w.m.submit(tenant, conv, run, dedupe, recreated, respond); perr != nil {
		w.reply(req, protocol.ErrorResult(run.ID, perr))
	}
}

func (w *Worker) checkSandboxOptions(run *protocol.RunRequest) *protocol.Error {
	o := run.Sandbox
	if o == nil {
		return nil
	}
	if o.Backend != "" && o.Backend != w.env.Name() {
		return protocol.Errorf(protocol.CodeBadRequest, "worker %s runs %s sandboxes, not %s", w.cfg.ID, w.env.Name(), o.Backend)
	}
	if !w.cfg.imageAllowed(o.Image) {
		return protocol.Errorf(protocol.CodeImageNotAllowed, "image %q is not allowed on worker %s", o.Image, w.cfg.ID)
	}
	return nil
}

func (w *Worker) handleClose(req micro.Request) {
	tenant, conv := req.Headers().Get(protocol.HeaderTenant), req.Headers().Get(protocol.HeaderConversation)
	if !protocol.ValidID(tenant) || !protocol.ValidID(conv) {
		w.replyJSON(req, &protocol.CloseResult{Error: protocol.Errorf(protocol.CodeBadRequest,
			"headers %s and %s must name the conversation", protocol.HeaderTenant, protocol.HeaderConversation)})
		return
	}
	go func() {
		closed, info := w.m.close(tenant, conv)
		w.log.Debug().Str("conversation_id", conv).Bool("closed", closed).Msg("close")
		w.replyJSON(req, &protocol.CloseResult{Closed: closed, Sandbox: info})
	}()
}

// reply sends a run result, cutting the output further if the message would not fit in the
// connection's max payload. Errors also travel as micro error headers, for `nats micro stats`.
func (w *Worker) reply(req micro.Request, res *protocol.RunResult) {
	body := fitPayload(res, int(w.nc.MaxPayload()))
	var err error
	if res.Error != nil {
		err = req.Error(string(res.Error.Code), res.Error.Message, body)
	} else {
		err = req.Respond(body)
	}
	if err != nil {
		w.log.Warn().Err(err).Str("request_id", res.ID).Msg("reply")
	}
}

func (w *Worker) replyJSON(req micro.Request, v *protocol.CloseResult) {
	var err error
	if v.Error != nil {
		err = req.Error(string(v.Error.Code), v.Error.Message, protocol.Encode(v))
	} else {
		err = req.Respond(protocol.Encode(v))
	}
	if err != nil {
		w.log.Warn().Err(err).Msg("reply")
	}
}

// fitPayload encodes res, trimming the middle of its output until it fits in limit bytes
// (JSON escaping can make output grow up to six-fold).
func fitPayload(res *protocol.RunResult, limit int) []byte {
	b, _ := json.Marshal(res)
	if limit <= 0 || len(b) <= limit-512 {
		return b
	}
	for keep := len(res.Output) / 2; keep > 0 && len(b) > limit-512; keep /= 2 {
		trimmed := *res
		trimmed.Output, _ = output.Cap(res.Output, keep)
		trimmed.Truncated = true
		b, _ = json.Marshal(&trimmed)
	}
	return b
}
