// Package dispatcher is the codefleet dispatcher: a stateless relay between clients and
// workers. It answers <prefix>.run.<tenant>.<conversation>, <prefix>.close.* and
// <prefix>.files.* in the queue group codefleet-dispatchers, finds the worker that owns the
// conversation (pkg/affinity: JetStream KV, cached and kept fresh by a watch), places new
// conversations on the least-loaded live worker (pkg/registry), and relays. A file request is
// relayed as a run is, without a run slot; a streamed run's chunks do not pass here (the worker
// publishes them).
//
// Files: dispatcher.go (lifecycle, the three request handlers), placement.go (finding or making
// a conversation's owner), relay.go (the runs in flight to workers and how each is answered),
// quota.go (the tenants' quotas: run slots taken before a run is routed, sandbox slots before a
// new conversation is claimed), config.go.
//
// The relay is asynchronous: a request is published to the worker with a reply subject of the
// dispatcher's own inbox and answered from the inbox's callback, so one dispatcher carries many
// thousands of requests in flight without a goroutine or a blocked subscription per request.
// Requests of one conversation are published in the order they arrived.
//
// A dead owner is answered at once, never by a bare timeout: runs in flight on a worker whose
// registration disappears get worker_lost; a worker that has no subscription any more (NATS
// answers "no responders") has its conversation moved to a live worker and the run is sent
// there, its result marked recreated.
package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/reply"
	"github.com/codefleet/codefleet/pkg/affinity"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
	"github.com/codefleet/codefleet/pkg/registry"
)

// ServiceName is the dispatcher's name in NATS service discovery.
const ServiceName = "codefleet-dispatcher"

// Dispatcher routes requests to workers.
type Dispatcher struct {
	cfg      Config
	nc       *nats.Conn
	log      zerolog.Logger
	subjects protocol.Subjects

	store *affinity.Store
	reg   *registry.Registry
	// quota counts the tenants' quotas; nil when Config.Quotas limits nothing, and then no
	// request does anything for quotas.
	quota *quota.Manager
	svc   micro.Service
	inbox *nats.Subscription
	// inboxPrefix is this dispatcher's reply subject prefix; a relay's reply is prefix+token.
	inboxPrefix string
	seq         atomic.Uint64

	// mu guards flights, placing and admitting. It is not held across a KV call.
	mu      sync.Mutex
	flights flights
	// placing holds the conversations being placed, by key, with the runs waiting for them.
	placing map[string]*placement
	// admitting holds the conversations whose runs wait for run slots, by key.
	admitting map[string]*admission
	// answering counts the answers waiting for KV writes to land first (later). A request
	// counts in flights, placing or admitting until it is taken for its answer, then here:
	// Stop waits for both.
	answering atomic.Int64

	relayed  atomic.Int64
	arrivals atomic.Uint64

	metrics *metrics
	// serving is set once Start has returned nil (Ready reads what Start set only after it),
	// stopping once Stop is called.
	serving, stopping atomic.Bool
}

// New returns a dispatcher; it does no I/O.
func New(cfg Config, nc *nats.Conn, log zerolog.Logger) (*Dispatcher, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil {
		return nil, fmt.Errorf("%w: a NATS connection is required", ErrInvalidConfig)
	}
	d := &Dispatcher{
		cfg: cfg, nc: nc, subjects: protocol.Subjects{Prefix: cfg.Prefix},
		log:       log.With().Str("component", "dispatcher").Str("dispatcher", cfg.Name).Logger(),
		flights:   newFlights(),
		placing:   map[string]*placement{},
		admitting: map[string]*admission{},
		metrics:   newMetrics(),
	}
	if cfg.Metrics != nil {
		if err := d.registerMetrics(cfg.Metrics); err != nil {
			return nil, fmt.Errorf("dispatcher: metrics: %w", err)
		}
	}
	return d, nil
}

// Ready reports whether the dispatcher can route requests now: it serves, its NATS connection
// is up, and its KV buckets (the quota bucket too, with quotas) answer with their watches
// running.
func (d *Dispatcher) Ready(ctx context.Context) error {
	switch {
	case !d.serving.Load():
		return errors.New("starting")
	case d.stopping.Load():
		return errors.New("stopping")
	case !d.nc.IsConnected():
		return fmt.Errorf("NATS not connected (%s)", strings.ToLower(d.nc.Status().String()))
	}
	if err := d.reg.Check(ctx); err != nil {
		return err
	}
	if d.quota != nil {
		if err := d.quota.Check(ctx); err != nil {
			return err
		}
	}
	return d.store.Check(ctx)
}

// Start opens the affinity store, the worker registry and, with quotas, the quota bucket, and
// starts answering requests.
func (d *Dispatcher) Start(ctx context.Context) error {
	js, err := jetstream.New(d.nc)
	if err != nil {
		return fmt.Errorf("dispatcher: jetstream: %w", err)
	}
	d.reg, err = registry.Open(ctx, js, registry.Config{Fleet: d.subjects, TTL: d.cfg.HeartbeatTTL, Replicas: d.cfg.KVReplicas, OnLost: d.workerLost})
	if err != nil {
		return fmt.Errorf("dispatcher: worker registry: %w", err)
	}
	d.store, err = affinity.OpenStore(ctx, js, affinity.Config{Fleet: d.subjects, Replicas: d.cfg.KVReplicas})
	if err != nil {
		d.reg.Stop()
		return fmt.Errorf("dispatcher: affinity store: %w", err)
	}
	if d.cfg.Quotas.Enabled() {
		d.quota, err = quota.Open(ctx, js, quota.Config{
			Fleet: d.subjects, Replicas: d.cfg.KVReplicas, Limits: d.cfg.Quotas, Holder: d.cfg.Name,
			Owned: d.owned, Grace: d.cfg.QuotaGrace,
		})
		if err != nil {
			d.store.Stop()
			d.reg.Stop()
			return fmt.Errorf("dispatcher: %w", err)
		}
	}
	d.inboxPrefix = d.nc.NewRespInbox() + "."
	d.inbox, err = d.nc.Subscribe(d.inboxPrefix+"*", d.onReply)
	if err != nil {
		return fmt.Errorf("dispatcher: inbox: %w", err)
	}
	d.inbox.SetPendingLimits(-1, -1)

	d.svc, err = micro.AddService(d.nc, micro.Config{
		Name:        ServiceName,
		Version:     d.cfg.Version,
		Description: "codefleet dispatcher: routes conversations to the workers that hold their sandboxes",
		QueueGroup:  protocol.DispatcherQueue,
		Metadata:    map[string]string{"name": d.cfg.Name, "prefix": d.cfg.Prefix},
	})
	if err != nil {
		return fmt.Errorf("dispatcher: service: %w", err)
	}
	if err := d.svc.AddEndpoint("run", micro.HandlerFunc(d.handleRun), micro.WithEndpointSubject(d.subjects.RunAll())); err != nil {
		return fmt.Errorf("dispatcher: endpoint run: %w", err)
	}
	if err := d.svc.AddEndpoint("close", micro.HandlerFunc(d.handleClose), micro.WithEndpointSubject(d.subjects.CloseAll())); err != nil {
		return fmt.Errorf("dispatcher: endpoint close: %w", err)
	}
	if err := d.svc.AddEndpoint("files", micro.HandlerFunc(d.handleFiles), micro.WithEndpointSubject(d.subjects.FilesAll())); err != nil {
		return fmt.Errorf("dispatcher: endpoint files: %w", err)
	}
	if err := d.nc.FlushTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("dispatcher: flush subscriptions: %w", err)
	}
	d.serving.Store(true)
	d.log.Info().Msg("dispatcher started")
	return nil
}

// Stop stops taking requests (in-flight relays are answered first, up to ctx) and closes the
// watches.
func (d *Dispatcher) Stop(ctx context.Context) error {
	d.stopping.Store(true)
	var errs []error
	if d.svc != nil {
		if err := d.svc.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for {
		d.mu.Lock()
		n := d.pendingLocked() + int(d.answering.Load())
		d.mu.Unlock()
		if n == 0 || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	if d.inbox != nil {
		d.inbox.Unsubscribe()
	}
	if d.quota != nil {
		d.quota.Stop()
	}
	if d.store != nil {
		d.store.Stop()
	}
	if d.reg != nil {
		d.reg.Stop()
	}
	return errors.Join(errs...)
}

// pendingLocked counts the requests taken and not yet answered: relayed, waiting for their
// conversation's placement, or for a run slot. d.mu is held.
func (d *Dispatcher) pendingLocked() int {
	n := d.flights.len()
	for _, p := range d.placing {
		n += len(p.waiters)
	}
	for _, a := range d.admitting {
		n += len(a.queue)
	}
	return n
}

// Relayed returns how many replies of workers this dispatcher has relayed to clients.
func (d *Dispatcher) Relayed() int64 { return d.relayed.Load() }

// Workers returns the live workers as the dispatcher sees them.
func (d *Dispatcher) Workers() []protocol.WorkerInfo { return d.reg.Live() }

// handleRun validates a run request and relays it to its conversation's worker.
func (d *Dispatcher) handleRun(req micro.Request) {
	arrived := time.Now()
	if d.refuseReply(verbRun, req) {
		return
	}
	_, tenant, conv, err := d.subjects.ParseConversation(req.Subject())
	if err != nil {
		d.replyError(req, asProtocolError(err))
		return
	}
	run, perr := protocol.DecodeRunRequest(req.Data())
	if perr != nil {
		d.replyError(req, perr)
		return
	}
	r := &relay{
		verb: verbRun, req: req, tenant: tenant, conv: conv, data: req.Data(), seq: d.arrivals.Add(1), arrived: arrived,
		timeout: min(run.Timeout(), d.cfg.MaxTimeout) + d.cfg.RelayOverhead,
	}
	if run.Sandbox != nil {
		r.backend = run.Sandbox.Backend
	}
	d.admit(r)
}

// handleFiles validates a file request and relays it to its conversation's worker, placing a
// new conversation as a run would: a file request may be the first of its conversation.
func (d *Dispatcher) handleFiles(req micro.Request) {
	arrived := time.Now()
	if d.refuseReply(verbFiles, req) {
		return
	}
	_, tenant, conv, err := d.subjects.ParseConversation(req.Subject())
	if err != nil {
		d.replyFileError(req, asProtocolError(err), false)
		return
	}
	fr, perr := protocol.DecodeFileRequest(req.Data())
	if perr != nil {
		d.replyFileError(req, perr, false)
		return
	}
	r := &relay{
		verb: verbFiles, req: req, tenant: tenant, conv: conv, data: req.Data(), seq: d.arrivals.Add(1), arrived: arrived,
		// It may wait behind the conversation's runs, the longest of which may take MaxTimeout.
		timeout: d.cfg.MaxTimeout + d.cfg.RelayOverhead,
	}
	if fr.Sandbox != nil {
		r.backend = fr.Sandbox.Backend
	}
	d.admit(r)
}

// handleClose relays a close to the owner and drops the ownership.
func (d *Dispatcher) handleClose(req micro.Request) {
	arrived := time.Now()
	if d.refuseReply(verbClose, req) {
		return
	}
	_, tenant, conv, err := d.subjects.ParseConversation(req.Subject())
	if err != nil {
		d.replyClose(req, &protocol.CloseResult{Error: asProtocolError(err)})
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.CloseTimeout)
		defer cancel()
		owner, ok, err := d.store.Get(ctx, tenant, conv)
		if err != nil {
			d.replyClose(req, &protocol.CloseResult{Error: protocol.Errorf(protocol.CodeInternal, "affinity lookup: %v", err)})
			return
		}
		if !ok {
			d.replyClose(req, &protocol.CloseResult{Closed: false})
			return
		}
		r := &relay{verb: verbClose, req: req, tenant: tenant, conv: conv, data: []byte("{}"), timeout: d.cfg.CloseTimeout, owner: owner, arrived: arrived}
		if !d.live(owner.Worker) {
			d.release(r)
			d.replyClose(req, &protocol.CloseResult{Closed: false})
			return
		}
		d.mu.Lock()
		d.sendLocked(r)
		d.mu.Unlock()
	}()
}

// refuseReply drops a request whose reply subject is a system subject ($JS.API, $KV, $SYS,
// ...) rather than an inbox: the dispatcher answers with its own permissions, which include
// writing the fleet's KV buckets, so such a request would have it write what the requester
// cannot (a run sent with the reply subject of another tenant's affinity entry overwrites
// it). It reports whether the request was dropped.
func (d *Dispatcher) refuseReply(verb string, req micro.Request) bool {
	if !strings.HasPrefix(req.Reply(), "$") {
		return false
	}
	d.metrics.answered(verb, outcomeDropped)
	d.log.Warn().Str("subject", req.Subject()).Str("reply", req.Reply()).Msg("request with a system subject as its reply subject dropped")
	return true
}

// replyError answers a run with an error result carrying the client's request id, from the
// request's handler; replyErrorLater does from any other goroutine (see reply.SendLater).
func (d *Dispatcher) replyError(req micro.Request, perr *protocol.Error) {
	d.metrics.answered(verbRun, outcomeOf(perr))
	d.sent(reply.Send(req, protocol.Encode(protocol.ErrorResult(requestID(req.Data()), perr)), perr))
}

func (d *Dispatcher) replyErrorLater(req micro.Request, perr *protocol.Error) {
	d.metrics.answered(verbRun, outcomeOf(perr))
	d.sent(reply.SendLater(req, protocol.Encode(protocol.ErrorResult(requestID(req.Data()), perr)), perr))
}

// replyFileError answers a file request with an error result carrying the client's request id;
// later says the answer is sent after the handler returned (see reply.SendLater).
func (d *Dispatcher) replyFileError(req micro.Request, perr *protocol.Error, later bool) {
	d.metrics.answered(verbFiles, outcomeOf(perr))
	body := protocol.Encode(protocol.FileErrorResult(requestID(req.Data()), "", perr))
	if later {
		d.sent(reply.SendLater(req, body, perr))
		return
	}
	d.sent(reply.Send(req, body, perr))
}

// replyClose answers a close, from any goroutine: closes are answered from goroutines of their
// own (see reply.SendLater).
func (d *Dispatcher) replyClose(req micro.Request, res *protocol.CloseResult) {
	d.metrics.answered(verbClose, outcomeOf(res.Error))
	d.sent(reply.SendLater(req, protocol.Encode(res), res.Error))
}

func (d *Dispatcher) sent(err error) {
	if err != nil {
		d.log.Warn().Err(err).Msg("reply")
	}
}

// requestID digs the client's request id out of a request for an error reply, or makes one.
func requestID(data []byte) string {
	var v struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(data, &v) == nil && protocol.ValidID(v.ID) {
		return v.ID
	}
	return nuid.Next()
}

func asProtocolError(err error) *protocol.Error {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return pe
	}
	return protocol.Errorf(protocol.CodeBadRequest, "%v", err)
}
