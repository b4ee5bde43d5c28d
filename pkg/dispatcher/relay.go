package dispatcher

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/codefleet/codefleet/pkg/affinity"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
)

// Verbs of the worker subjects a dispatcher relays to.
const (
	verbRun   = "run"
	verbClose = "close"
	verbFiles = "files"
)

// relay is one run or close in flight to a worker. Its life: admitted (a run slot taken, when
// its tenant has a run quota), routed (sent at once to a live owner, or queued behind the
// conversation's placement), sent (in flights, under a token, with a timer), then answered
// exactly once, by whichever comes first: the worker's reply (onReply), the timer (expire), the
// owner lost (failInFlight), or no responders (resent once, then lost). A run's answer gives its
// run slot back first (settle).
type relay struct {
	verb         string // verbRun, verbClose or verbFiles (relayed as a run is, without a run slot)
	req          micro.Request
	tenant, conv string
	data         []byte // the client's request, relayed as is
	timeout      time.Duration
	backend      string // the backend the run asks for ("" any)
	owner        affinity.Owner
	recreated    bool      // the conversation moved: its earlier sandbox is gone
	retried      bool      // sent once already and answered by no responders
	seq          uint64    // arrival order at this dispatcher
	arrived      time.Time // when the client's request arrived
	token        string
	timer        *time.Timer
	runSlot      *quota.Slot // the tenant's run slot this run holds; nil without a run quota
}

// flights are the relays sent and not yet answered, by token, and the tokens of each worker,
// so that a lost worker's relays are found at once. Both maps change together, only through
// add and take. It is guarded by Dispatcher.mu.
type flights struct {
	byToken  map[string]*relay
	byWorker map[string]map[string]struct{}
}

func newFlights() flights {
	return flights{byToken: map[string]*relay{}, byWorker: map[string]map[string]struct{}{}}
}

func (f *flights) add(r *relay) {
	f.byToken[r.token] = r
	ws := f.byWorker[r.owner.Worker]
	if ws == nil {
		ws = map[string]struct{}{}
		f.byWorker[r.owner.Worker] = ws
	}
	ws[r.token] = struct{}{}
}

// take removes and returns the relay of token; nil when it was answered already.
func (f *flights) take(token string) *relay {
	r := f.byToken[token]
	if r == nil {
		return nil
	}
	delete(f.byToken, token)
	if ws := f.byWorker[r.owner.Worker]; ws != nil {
		delete(ws, token)
		if len(ws) == 0 {
			delete(f.byWorker, r.owner.Worker)
		}
	}
	return r
}

// takeWorker removes and returns every relay in flight to worker.
func (f *flights) takeWorker(worker string) []*relay {
	var out []*relay
	for token := range f.byWorker[worker] {
		if r := f.take(token); r != nil {
			out = append(out, r)
		}
	}
	return out
}

func (f *flights) len() int { return len(f.byToken) }

// sendLocked publishes r to its owner's worker subject. d.mu is held.
func (d *Dispatcher) sendLocked(r *relay) {
	r.token = strconv.FormatUint(d.seq.Add(1), 36)
	msg := &nats.Msg{
		Subject: d.subjects.Worker(r.owner.Worker, r.verb),
		Reply:   d.inboxPrefix + r.token,
		Header:  nats.Header{protocol.HeaderTenant: {r.tenant}, protocol.HeaderConversation: {r.conv}},
		Data:    r.data,
	}
	if r.recreated {
		msg.Header.Set(protocol.HeaderRecreated, "true")
	}
	d.flights.add(r)
	token := r.token
	r.timer = time.AfterFunc(r.timeout, func() { d.expire(token) })
	if err := d.nc.PublishMsg(msg); err != nil {
		d.flights.take(token)
		r.timer.Stop()
		d.fail(r, protocol.Errorf(protocol.CodeInternal, "relay to worker %s: %v", r.owner.Worker, err))
		return
	}
	// The worker may have been lost between the liveness check and now.
	if !d.live(r.owner.Worker) {
		d.flights.take(token)
		r.timer.Stop()
		d.ownerGone(r, "is gone")
	}
}

// onReply answers the client of a relay with its worker's reply.
func (d *Dispatcher) onReply(msg *nats.Msg) {
	token := msg.Subject[len(d.inboxPrefix):]
	d.mu.Lock()
	r := d.flights.take(token)
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
	switch {
	case r.verb == verbClose:
		// The client hears of the close once the conversation's ownership and sandbox slot are
		// gone: its next request (a new conversation of a tenant at its sandbox quota, the
		// same conversation again) finds them gone.
		d.later(func() { d.release(r) }, func() { d.respond(r, msg) })
	case r.runSlot != nil:
		d.settle(r, func() { d.respond(r, msg) })
	default:
		d.respond(r, msg) // as settle would, without a closure on the hot path
	}
	if id := msg.Header.Get(protocol.HeaderSandboxCreated); r.verb != verbClose && id != "" {
		go d.recordSandbox(r, id)
	}
}

// respond relays a worker's reply to the client of r.
func (d *Dispatcher) respond(r *relay, msg *nats.Msg) {
	d.metrics.answered(r.verb, cmp.Or(msg.Header.Get(micro.ErrorCodeHeader), outcomeOK))
	d.metrics.relayed(r.verb, r.arrived)
	// Only the error headers reach the client: the others are the worker's, for the dispatcher.
	err := r.req.Respond(msg.Data, func(m *nats.Msg) {
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
			m.Header = nats.Header{micro.ErrorCodeHeader: {code}, micro.ErrorHeader: {msg.Header.Get(micro.ErrorHeader)}}
		}
	})
	if err != nil {
		d.log.Warn().Err(err).Msg("reply to client")
	}
}

// noResponders: the owner has no subscription: it died or stopped, or it is reconnecting. The
// run was not delivered, so it is safe to send it again, once: to the owner if it answers again
// soon (awaitWorker), else to a live worker the conversation is moved to.
func (d *Dispatcher) noResponders(r *relay) {
	if r.verb == verbClose || r.retried {
		d.ownerGone(r, "does not answer")
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
func (d *Dispatcher) recordSandbox(r *relay, sandboxID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cur, ok, err := d.store.Get(ctx, r.tenant, r.conv)
	if err != nil || !ok || cur.Worker != r.owner.Worker || cur.Sandbox == sandboxID {
		return
	}
	next := cur
	next.Sandbox = sandboxID
	d.store.Move(ctx, r.tenant, r.conv, cur, next)
}

// expire answers a relay whose worker did not answer in time.
func (d *Dispatcher) expire(token string) {
	d.mu.Lock()
	r := d.flights.take(token)
	d.mu.Unlock()
	if r == nil {
		return
	}
	d.fail(r, protocol.Errorf(protocol.CodeWorkerLost, "worker %s did not answer the %s within %s", r.owner.Worker, r.verb, r.timeout))
}

// lostGrace is how long after a worker is lost its runs still in flight are failed: a worker
// that stopped gracefully sent its last replies before it left the registry, but they travel
// apart from the registry's news and may arrive a moment later.
const lostGrace = 200 * time.Millisecond

// workerLost answers, after lostGrace, every relay still in flight on a worker that is gone.
func (d *Dispatcher) workerLost(worker string) {
	d.metrics.lost.Inc()
	time.AfterFunc(lostGrace, func() { d.failInFlight(worker) })
}

func (d *Dispatcher) failInFlight(worker string) {
	d.mu.Lock()
	lost := d.flights.takeWorker(worker)
	d.mu.Unlock()
	if len(lost) > 0 {
		d.log.Warn().Str("worker_id", worker).Int("in_flight", len(lost)).Msg("worker lost")
	}
	for _, r := range lost {
		r.timer.Stop()
		d.ownerGone(r, "was lost during the "+r.verb)
	}
}

// ownerGone answers a relay whose owner is gone. A run gets worker_lost; a close finds nothing
// left to close (the sandbox went with its worker): the ownership is released and the answer is
// closed false.
func (d *Dispatcher) ownerGone(r *relay, what string) {
	if r.verb == verbClose {
		d.later(func() { d.release(r) }, func() { d.replyClose(r.req, &protocol.CloseResult{Closed: false}) })
		return
	}
	d.failRun(r, protocol.Errorf(protocol.CodeWorkerLost, "worker %s holding conversation %s %s", r.owner.Worker, r.conv, what))
}

// fail answers a relay with an error in the shape of its verb's result.
func (d *Dispatcher) fail(r *relay, perr *protocol.Error) {
	if r.verb == verbClose {
		d.replyClose(r.req, &protocol.CloseResult{Error: perr})
		return
	}
	d.failRun(r, perr)
}

// release drops a closed conversation's ownership, then gives back its sandbox slots: in this
// order, a conversation never goes on without the slot it counts under. The slots are those
// held before the ownership went, not one that a new placement of the conversation, on
// another dispatcher, takes right after. A slot not given back (a failure, a slot this
// dispatcher's cache did not know yet) is reclaimed as stale when its tenant is at its quota.
func (d *Dispatcher) release(r *relay) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var slots []*quota.Slot
	if d.quota != nil {
		slots = d.quota.Holding(r.tenant, r.conv)
	}
	if err := d.store.Release(ctx, r.tenant, r.conv, 0); err != nil {
		d.log.Warn().Err(err).Str("conversation_id", r.conv).Msg("release ownership")
		return
	}
	for _, s := range slots {
		if err := s.Release(ctx); err != nil {
			d.log.Warn().Err(err).Str("tenant", r.tenant).Str("conversation_id", r.conv).Msg("give back a sandbox slot (reclaimed when its tenant is at the quota)")
		}
	}
}
