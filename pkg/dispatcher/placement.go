package dispatcher

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/pkg/affinity"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
)

// placement is a conversation being placed (claimed for a worker, or moved to a live one),
// with the runs waiting for the result: runs of one conversation keep their order, and a
// conversation is placed once however many of its runs arrive meanwhile.
type placement struct {
	waiters []*relay
	// resent counts the runs at the head of waiters that were sent before and came back with
	// no responders: they go first, in the order they were first sent.
	resent int
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
	ctx, cancel := context.WithTimeout(context.Background(), placeTimeout)
	defer cancel()
	if avoid != "" && d.awaitWorker(ctx, avoid) {
		avoid = "" // it was only reconnecting: the conversation stays
	}
	start := time.Now()
	owner, recreated, perr := d.resolve(ctx, tenant, conv, backend, avoid)
	d.metrics.placement.WithLabelValues(outcomeOf(perr)).Observe(time.Since(start).Seconds())

	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.placing, key)
	for _, r := range p.waiters {
		if perr != nil {
			d.failRun(r, perr)
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
//
// A new conversation of a tenant with a sandbox quota takes a sandbox slot before its claim;
// the slot is kept only if the claim wins, and given back otherwise (another dispatcher placed
// the conversation first, with a slot of its own, or the placement failed). A moved
// conversation keeps the slot it has.
func (d *Dispatcher) resolve(ctx context.Context, tenant, conv, backend, avoid string) (affinity.Owner, bool, *protocol.Error) {
	usable := func(worker string) bool { return worker != avoid && d.live(worker) }
	b := backoff{ctx: ctx}
	var slot *quota.Slot // taken for this conversation; nil once its claim has won
	defer func() {
		if slot != nil {
			// On a context of its own: ctx may be what ended the placement.
			rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := slot.Release(rctx); err != nil {
				d.log.Warn().Err(err).Str("tenant", tenant).Str("conversation_id", conv).Msg("give back a sandbox slot (reclaimed when its tenant is at the quota)")
			}
		}
	}()
	for attempt := 0; attempt < 5; attempt++ {
		cur, ok, err := d.store.Get(ctx, tenant, conv)
		if err != nil && b.wait(err) {
			attempt--
			continue
		}
		if err != nil {
			return affinity.Owner{}, false, protocol.Errorf(protocol.CodeInternal, "affinity lookup: %v", err)
		}
		if ok && usable(cur.Worker) {
			return cur, cur.Worker != avoid && avoid != "", nil
		}
		if !ok && slot == nil {
			// The quota first: a refused conversation is not counted as a placement on a
			// worker (Place counts each as pending on it, for a while).
			slot, err = d.acquireSandbox(ctx, tenant, conv)
			if err != nil && b.wait(err) {
				attempt--
				continue
			}
			if err != nil {
				return affinity.Owner{}, false, d.quotaError(err)
			}
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
			if err == nil && won {
				slot = nil // the conversation's now
			}
		}
		if err != nil && b.wait(err) {
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
