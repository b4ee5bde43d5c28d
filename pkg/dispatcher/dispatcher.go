// Package dispatcher is the codefleet dispatcher: a stateless relay between clients and
// workers. It answers codefleet.run.<tenant>.<conversation> and codefleet.close.* in the queue
// group codefleet-dispatchers, finds the worker that owns the conversation (affinity in
// JetStream KV, cached and kept fresh by a watch), places new conversations on the least-loaded
// live worker, and relays.
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
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/pkg/affinity"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// ServiceName is the dispatcher's name in NATS service discovery.
const ServiceName = "codefleet-dispatcher"

// Defaults of Config.
const (
	DefaultHeartbeatTTL = 3 * time.Second
	// DefaultRelayOverhead is added to a run's timeout to bound the wait for its worker's
	// answer: room for creating a sandbox (an image pull aside).
	DefaultRelayOverhead = 2 * time.Minute
	DefaultMaxTimeout    = 10 * time.Minute
	DefaultCloseTimeout  = time.Minute
)

// Config configures a Dispatcher. The zero value of each field means its default.
type Config struct {
	// Name identifies this dispatcher in logs and discovery; default a random id.
	Name string
	// Prefix is the subject prefix; default "codefleet".
	Prefix string
	// HeartbeatTTL is the workers' registration TTL: a worker silent this long is dead.
	HeartbeatTTL time.Duration
	// KVReplicas is the replica count of the KV buckets, should the dispatcher create them.
	KVReplicas int
	// MaxTimeout caps the run timeout the dispatcher waits for (workers cap it too).
	MaxTimeout time.Duration
	// RelayOverhead is added to a run's timeout to bound the wait for the worker's answer.
	RelayOverhead time.Duration
	// CloseTimeout bounds a close relayed to a worker.
	CloseTimeout time.Duration
	// Version is reported by `nats micro info`.
	Version string
}

func (c *Config) setDefaults() {
	if c.Name == "" {
		c.Name = nuid.Next()
	}
	if c.Prefix == "" {
		c.Prefix = protocol.DefaultPrefix
	}
	if c.HeartbeatTTL == 0 {
		c.HeartbeatTTL = DefaultHeartbeatTTL
	}
	if c.KVReplicas == 0 {
		c.KVReplicas = 1
	}
	if c.MaxTimeout == 0 {
		c.MaxTimeout = DefaultMaxTimeout
	}
	if c.RelayOverhead == 0 {
		c.RelayOverhead = DefaultRelayOverhead
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	if c.Version == "" {
		c.Version = "0.1.0"
	}
}

// Dispatcher routes requests to workers.
type Dispatcher struct {
	cfg      Config
	nc       *nats.Conn
	log      zerolog.Logger
	subjects protocol.Subjects

	store *affinity.Store
	reg   *affinity.Registry
	svc   micro.Service
	inbox *nats.Subscription
	// inboxPrefix is this dispatcher's reply subject prefix; a relay's reply is prefix+token.
	inboxPrefix string
	seq         atomic.Uint64

	mu sync.Mutex
	// pending relays by token, and the tokens of each worker (to fail them when it is lost).
	pending  map[string]*relay
	byWorker map[string]map[string]struct{}
	// placing holds the conversations being placed, with the runs waiting for the result, so
	// runs of one conversation keep their order and a placement is done once.
	placing map[string]*placement

	relayed  atomic.Int64
	arrivals atomic.Uint64
}

// relay is one run (or close) in flight to a worker.
type relay struct {
	req          micro.Request
	tenant, conv string
	data         []byte // the client's request, relayed as is
	timeout      time.Duration
	backend      string
	owner        affinity.Owner
	recreated    bool
	retried      bool
	isClose      bool
	seq          uint64 // arrival order at this dispatcher
	token        string
	timer        *time.Timer
}

type placement struct {
	waiters []*relay
	// resent counts the runs at the head of waiters that were sent before and came back with
	// no responders: they go first, in the order they were first sent.
	resent int
}

// New returns a dispatcher; it does no I/O.
func New(cfg Config, nc *nats.Conn, log zerolog.Logger) (*Dispatcher, error) {
	cfg.setDefaults()
	if nc == nil {
		return nil, errors.New("dispatcher: a NATS connection is required")
	}
	return &Dispatcher{
		cfg: cfg, nc: nc, subjects: protocol.Subjects{Prefix: cfg.Prefix},
		log:      log.With().Str("component", "dispatcher").Str("dispatcher", cfg.Name).Logger(),
		pending:  map[string]*relay{},
		byWorker: map[string]map[string]struct{}{},
		placing:  map[string]*placement{},
	}, nil
}

// Start opens the affinity store and the worker registry and starts answering requests.
func (d *Dispatcher) Start(ctx context.Context) error {
	js, err := jetstream.New(d.nc)
	if err != nil {
		return fmt.Errorf("dispatcher: jetstream: %w", err)
	}
	d.reg, err = affinity.OpenRegistry(ctx, js, affinity.RegistryConfig{TTL: d.cfg.HeartbeatTTL, Replicas: d.cfg.KVReplicas, OnLost: d.workerLost})
	if err != nil {
		return fmt.Errorf("dispatcher: worker registry: %w", err)
	}
	d.store, err = affinity.OpenStore(ctx, js, affinity.Config{Replicas: d.cfg.KVReplicas})
	if err != nil {
		d.reg.Stop()
		return fmt.Errorf("dispatcher: affinity store: %w", err)
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
		Metadata:    map[string]string{"name": d.cfg.Name},
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
	if err := d.nc.FlushTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("dispatcher: flush subscriptions: %w", err)
	}
	d.log.Info().Msg("dispatcher started")
	return nil
}

// Stop stops taking requests (in-flight relays are answered first, up to ctx) and closes the
// watches.
func (d *Dispatcher) Stop(ctx context.Context) error {
	var errs []error
	if d.svc != nil {
		if err := d.svc.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for {
		d.mu.Lock()
		n := len(d.pending) + len(d.placing)
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
	if d.store != nil {
		d.store.Stop()
	}
	if d.reg != nil {
		d.reg.Stop()
	}
	return errors.Join(errs...)
}

// Relayed returns how many replies of workers this dispatcher has relayed to clients.
func (d *Dispatcher) Relayed() int64 { return d.relayed.Load() }

// Workers returns the live workers as the dispatcher sees them.
func (d *Dispatcher) Workers() []protocol.WorkerInfo { return d.reg.Live() }

// handleRun validates a run request and relays it to its conversation's worker.
func (d *Dispatcher) handleRun(req micro.Request) {
	_, tenant, conv, err := d.subjects.ParseConversation(req.Subject())
	if err != nil {
		d.replyError(req, "", asProtocolError(err))
		return
	}
	run, perr := protocol.DecodeRunRequest(req.Data())
	if perr != nil {
		d.replyError(req, "", perr)
		return
	}
	r := &relay{
		req: req, tenant: tenant, conv: conv, data: req.Data(), seq: d.arrivals.Add(1),
		timeout: min(run.Timeout(), d.cfg.MaxTimeout) + d.cfg.RelayOverhead,
	}
	if run.Sandbox != nil {
		r.backend = run.Sandbox.Backend
	}
	d.route(r)
}

// route sends r to its conversation's live owner, or queues it behind a placement.
func (d *Dispatcher) route(r *relay) {
	key := protocol.Key(r.tenant, r.conv)
	d.mu.Lock()
	if p := d.placing[key]; p != nil {
		p.waiters = append(p.waiters, r)
		d.mu.Unlock()
		return
	}
	owner, ok := d.store.Cached(r.tenant, r.conv)
	if ok && d.live(owner.Worker) {
		r.owner = owner
		d.sendLocked(r)
		d.mu.Unlock()
		return
	}
	p := &placement{waiters: []*relay{r}}
	d.placing[key] = p
	d.mu.Unlock()
	go d.place(key, p, r.tenant, r.conv, r.backend, "")
}

func (d *Dispatcher) live(worker string) bool {
	_, ok := d.reg.Get(worker)
	return ok
}

// place finds or makes the conversation's owner, then sends the runs that waited for it.
func (d *Dispatcher) place(key string, p *placement, tenant, conv, backend, avoid string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if avoid != "" && d.awaitWorker(ctx, avoid) {
		avoid = "" // it was only reconnecting: the conversation stays
	}
	owner, recreated, perr := d.resolve(ctx, tenant, conv, backend, avoid)

	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.placing, key)
	for _, r := range p.waiters {
		if perr != nil {
			d.replyError(r.req, "", perr)
			continue
		}
		r.owner, r.recreated = owner, recreated
		d.sendLocked(r)
	}
}

// awaitWorker waits for a registered worker that had no responders to answer again, as it
// does within a second or two of a NATS restart or a network blip, and reports whether it did.
// It gives up when the registry loses the worker or after a heartbeat TTL, the time in which a
// worker that is really gone loses its registration.
func (d *Dispatcher) awaitWorker(ctx context.Context, worker string) bool {
	lost := d.reg.Lost(worker)
	deadline := time.NewTimer(d.cfg.HeartbeatTTL)
	defer deadline.Stop()
	subject := d.subjects.Worker(worker, "ping")
	for {
		pctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		_, err := d.nc.RequestWithContext(pctx, subject, nil)
		cancel()
		if err == nil {
			return true
		}
		select {
		case <-lost:
			return false
		case <-deadline.C:
			return false
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// resolve returns the live owner of a conversation, claiming or moving it as needed. avoid
// names a worker known not to answer (its registration may not have expired yet): it is
// treated as dead. recreated is true when the conversation had an owner that is gone.
func (d *Dispatcher) resolve(ctx context.Context, tenant, conv, backend, avoid string) (affinity.Owner, bool, *protocol.Error) {
	usable := func(worker string) bool { return worker != avoid && d.live(worker) }
	backoff := 50 * time.Millisecond
	// wait reports whether err is a passing JetStream fault (a stream leader being elected
	// after a node loss, a reconnect) worth retrying, after waiting a little.
	wait := func(err error) bool {
		if !transient(err) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
		return true
	}
	for attempt := 0; attempt < 5; attempt++ {
		cur, ok, err := d.store.Get(ctx, tenant, conv)
		if err != nil && wait(err) {
			attempt--
			continue
		}
		if err != nil {
			return affinity.Owner{}, false, protocol.Errorf(protocol.CodeInternal, "affinity lookup: %v", err)
		}
		if ok && usable(cur.Worker) {
			return cur, cur.Worker != avoid && avoid != "", nil
		}
		backend := backendOr(backend, cur.Backend)
		w, perr := d.pick(backend, avoid)
		if perr != nil {
			return affinity.Owner{}, false, perr
		}
		next := affinity.Owner{Worker: w.ID, Backend: firstBackend(w, backend), Since: time.Now()}
		var got affinity.Owner
		var won bool
		if ok {
			got, won, err = d.store.Move(ctx, tenant, conv, cur, next)
		} else {
			got, won, err = d.store.Claim(ctx, tenant, conv, next)
		}
		if err != nil && wait(err) {
			attempt--
			continue
		}
		if err != nil {
			return affinity.Owner{}, false, protocol.Errorf(protocol.CodeInternal, "affinity update: %v", err)
		}
		if won && ok {
			d.log.Info().Str("tenant", tenant).Str("conversation_id", conv).Str("from", cur.Worker).Str("worker_id", got.Worker).Msg("conversation moved")
		}
		// Won, or another dispatcher placed it first: use its choice if that worker answers.
		if won || usable(got.Worker) {
			return got, ok, nil
		}
	}
	return affinity.Owner{}, false, protocol.Errorf(protocol.CodeInternal, "conversation %s: placement did not settle", conv)
}

// transient reports whether a KV error may pass by itself: no JetStream answer yet (a stream
// leader election after a node loss) or the connection being re-established.
func transient(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
}

// pick places a conversation on a live worker other than avoid.
func (d *Dispatcher) pick(backend, avoid string) (protocol.WorkerInfo, *protocol.Error) {
	for i := 0; i < 8; i++ {
		w, err := d.reg.Place(backend)
		if err != nil {
			return w, protocol.Errorf(protocol.CodeCapacity, "%v", err)
		}
		if w.ID != avoid {
			return w, nil
		}
	}
	return protocol.WorkerInfo{}, protocol.Errorf(protocol.CodeWorkerLost, "worker %s does not answer and no other worker is available", avoid)
}

func backendOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func firstBackend(w protocol.WorkerInfo, want string) string {
	if want != "" {
		return want
	}
	if len(w.Backends) > 0 {
		return w.Backends[0]
	}
	return ""
}

// sendLocked publishes r to its owner's worker subject. d.mu is held.
func (d *Dispatcher) sendLocked(r *relay) {
	r.token = strconv.FormatUint(d.seq.Add(1), 36)
	verb := "run"
	if r.isClose {
		verb = "close"
	}
	msg := &nats.Msg{
		Subject: d.subjects.Worker(r.owner.Worker, verb),
		Reply:   d.inboxPrefix + r.token,
		Header:  nats.Header{protocol.HeaderTenant: {r.tenant}, protocol.HeaderConversation: {r.conv}},
		Data:    r.data,
	}
	if r.recreated {
		msg.Header.Set(protocol.HeaderRecreated, "true")
	}
	d.pending[r.token] = r
	ws := d.byWorker[r.owner.Worker]
	if ws == nil {
		ws = map[string]struct{}{}
		d.byWorker[r.owner.Worker] = ws
	}
	ws[r.token] = struct{}{}
	token := r.token
	r.timer = time.AfterFunc(r.timeout, func() { d.expire(token) })
	if err := d.nc.PublishMsg(msg); err != nil {
		d.takeLocked(token)
		r.timer.Stop()
		d.replyError(r.req, "", protocol.Errorf(protocol.CodeInternal, "relay to worker %s: %v", r.owner.Worker, err))
		return
	}
	// The worker may have been lost between the liveness check and now.
	if !d.live(r.owner.Worker) {
		d.takeLocked(token)
		r.timer.Stop()
		d.replyError(r.req, "", protocol.Errorf(protocol.CodeWorkerLost, "worker %s holding conversation %s is gone", r.owner.Worker, r.conv))
	}
}

// takeLocked removes a pending relay. d.mu is held.
func (d *Dispatcher) takeLocked(token string) *relay {
	r := d.pending[token]
	if r == nil {
		return nil
	}
	delete(d.pending, token)
	if ws := d.byWorker[r.owner.Worker]; ws != nil {
		delete(ws, token)
		if len(ws) == 0 {
			delete(d.byWorker, r.owner.Worker)
		}
	}
	return r
}

// onReply answers the client of a relay with its worker's reply.
func (d *Dispatcher) onReply(msg *nats.Msg) {
	token := msg.Subject[len(d.inboxPrefix):]
	d.mu.Lock()
	r := d.takeLocked(token)
	d.mu.Unlock()
	if r == nil {
		return // answered already (worker lost, timeout)
	}
	r.timer.Stop()
	if msg.Header.Get("Status") == "503" {
		d.noResponders(r)
		return
	}
	d.relayed.Add(1)
	err := r.req.Respond(msg.Data, func(m *nats.Msg) {
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
			m.Header = nats.Header{micro.ErrorCodeHeader: {code}, micro.ErrorHeader: {msg.Header.Get(micro.ErrorHeader)}}
		}
	})
	if err != nil {
		d.log.Warn().Err(err).Msg("reply to client")
	}
	if !r.isClose && bytes.Contains(msg.Data, []byte(`"created":true`)) {
		go d.recordSandbox(r, msg.Data)
	}
	if r.isClose {
		go d.release(r)
	}
}

// noResponders: the owner has no subscription: it died or stopped, or it is reconnecting. The
// run was not delivered, so it is safe to send it again, once: to the owner if it answers again
// soon (awaitWorker), else to a live worker the conversation is moved to.
func (d *Dispatcher) noResponders(r *relay) {
	if r.isClose {
		go d.release(r)
		d.replyClose(r.req, &protocol.CloseResult{Closed: false})
		return
	}
	if r.retried {
		d.replyError(r.req, "", protocol.Errorf(protocol.CodeWorkerLost, "worker %s holding conversation %s does not answer", r.owner.Worker, r.conv))
		return
	}
	r.retried = true
	d.log.Info().Str("worker_id", r.owner.Worker).Str("conversation_id", r.conv).Msg("owner has no responders; waiting for it or moving the conversation")
	key := protocol.Key(r.tenant, r.conv)
	d.mu.Lock()
	if p := d.placing[key]; p != nil {
		i := p.resent
		for i > 0 && p.waiters[i-1].seq > r.seq {
			i--
		}
		p.waiters = slices.Insert(p.waiters, i, r)
		p.resent++
		d.mu.Unlock()
		return
	}
	p := &placement{waiters: []*relay{r}, resent: 1}
	d.placing[key] = p
	d.mu.Unlock()
	go d.place(key, p, r.tenant, r.conv, r.backend, r.owner.Worker)
}

// recordSandbox stores the id of the sandbox a run created in the conversation's ownership.
func (d *Dispatcher) recordSandbox(r *relay, data []byte) {
	var res struct {
		Sandbox *protocol.SandboxInfo `json:"sandbox"`
	}
	if json.Unmarshal(data, &res) != nil || res.Sandbox == nil || !res.Sandbox.Created {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cur, ok, err := d.store.Get(ctx, r.tenant, r.conv)
	if err != nil || !ok || cur.Worker != res.Sandbox.Worker || cur.Sandbox == res.Sandbox.ID {
		return
	}
	next := cur
	next.Sandbox, next.Backend = res.Sandbox.ID, res.Sandbox.Backend
	d.store.Move(ctx, r.tenant, r.conv, cur, next)
}

// expire answers a relay whose worker did not answer in time.
func (d *Dispatcher) expire(token string) {
	d.mu.Lock()
	r := d.takeLocked(token)
	d.mu.Unlock()
	if r == nil {
		return
	}
	if r.isClose {
		d.replyClose(r.req, &protocol.CloseResult{Error: protocol.Errorf(protocol.CodeWorkerLost, "worker %s did not answer the close in time", r.owner.Worker)})
		return
	}
	d.replyError(r.req, "", protocol.Errorf(protocol.CodeWorkerLost, "worker %s did not answer within %s", r.owner.Worker, r.timeout))
}

// lostGrace is how long after a worker is lost its runs still in flight are failed: a worker
// that stopped gracefully sent its last replies before it left the registry, but they travel
// apart from the registry's news and may arrive a moment later.
const lostGrace = 200 * time.Millisecond

// workerLost answers, after lostGrace, every relay still in flight on a worker that is gone.
func (d *Dispatcher) workerLost(worker string) {
	time.AfterFunc(lostGrace, func() { d.failInFlight(worker) })
}

func (d *Dispatcher) failInFlight(worker string) {
	d.mu.Lock()
	var lost []*relay
	for token := range d.byWorker[worker] {
		if r := d.takeLocked(token); r != nil {
			lost = append(lost, r)
		}
	}
	d.mu.Unlock()
	if len(lost) > 0 {
		d.log.Warn().Str("worker_id", worker).Int("in_flight", len(lost)).Msg("worker lost")
	}
	for _, r := range lost {
		r.timer.Stop()
		if r.isClose {
			go d.release(r)
			d.replyClose(r.req, &protocol.CloseResult{Closed: false})
			continue
		}
		d.replyError(r.req, "", protocol.Errorf(protocol.CodeWorkerLost, "worker %s holding conversation %s was lost during the run", worker, r.conv))
	}
}

// handleClose relays a close to the owner and drops the ownership.
func (d *Dispatcher) handleClose(req micro.Request) {
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
		r := &relay{req: req, tenant: tenant, conv: conv, data: []byte("{}"), timeout: d.cfg.CloseTimeout, owner: owner, isClose: true}
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

func (d *Dispatcher) release(r *relay) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.store.Release(ctx, r.tenant, r.conv, 0); err != nil {
		d.log.Warn().Err(err).Str("conversation_id", r.conv).Msg("release ownership")
	}
}

func (d *Dispatcher) replyError(req micro.Request, id string, perr *protocol.Error) {
	if id == "" {
		id = requestID(req.Data())
	}
	if err := req.Error(string(perr.Code), perr.Message, protocol.Encode(protocol.ErrorResult(id, perr))); err != nil {
		d.log.Warn().Err(err).Msg("reply")
	}
}

func (d *Dispatcher) replyClose(req micro.Request, res *protocol.CloseResult) {
	var err error
	if res.Error != nil {
		err = req.Error(string(res.Error.Code), res.Error.Message, protocol.Encode(res))
	} else {
		err = req.Respond(protocol.Encode(res))
	}
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
