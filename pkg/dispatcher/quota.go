package dispatcher

import (
	"context"
	"errors"
	"time"

	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
)

// The tenants' quotas (pkg/quota), as the dispatcher applies them. A tenant without a quota of
// a kind costs nothing here: its requests take the paths they took before quotas existed, with
// no KV call added.
//
//   - Runs: a run of a tenant with a run quota takes a run slot before it is routed (admit) and
//     gives it back once it is answered, whatever the answer, just before the answer is sent
//     (settle): a client that sends its next run when the last is answered never finds that
//     last one still counted.
//   - Sandboxes: a new conversation of a tenant with a sandbox quota takes a sandbox slot before
//     its affinity claim, kept only if the claim wins (resolve); a close gives it back.
//
// A tenant at a quota is refused at once with quota_exceeded; nothing is queued.

// placeTimeout bounds one placement (finding or making a conversation's owner, passing
// JetStream faults waited out), and the wait for a run slot.
const placeTimeout = 30 * time.Second

// admission is the runs of one conversation that wait for run slots, in arrival order: taking a
// slot is a KV round trip, done off the request handler's goroutine, and the runs of one
// conversation must still be routed in the order they arrived. The head of queue is the run
// whose slot is being taken.
type admission struct {
	queue []*relay
}

// admit routes r, first taking a run slot for it when its tenant has a run quota.
func (d *Dispatcher) admit(r *relay) {
	if d.quota == nil || d.quota.Limits(r.tenant).MaxRuns == 0 {
		d.route(r)
		return
	}
	key := protocol.Key(r.tenant, r.conv)
	d.mu.Lock()
	if a := d.admitting[key]; a != nil {
		a.queue = append(a.queue, r)
		d.mu.Unlock()
		return
	}
	a := &admission{queue: []*relay{r}}
	d.admitting[key] = a
	d.mu.Unlock()
	go d.admitQueue(key, a)
}

// admitQueue takes a run slot for each run of a, in order, and routes it, or refuses it. A run
// leaves the queue once routed or answered, so that Stop, counting the queue, never misses it.
func (d *Dispatcher) admitQueue(key string, a *admission) {
	d.mu.Lock()
	for len(a.queue) > 0 {
		r := a.queue[0]
		d.mu.Unlock()
		if r.verb != verbRun {
			d.route(r) // a file request takes no run slot, but keeps its place among the runs
		} else if slot, perr := d.acquireRun(r); perr != nil {
			d.failRun(r, perr)
		} else {
			r.runSlot = slot
			d.route(r)
		}
		d.mu.Lock()
		a.queue = a.queue[1:]
	}
	delete(d.admitting, key)
	d.mu.Unlock()
}

// acquireRun takes a run slot for r. Its TTL outlasts every wait of the dispatcher for the run:
// two placements (the run may be sent again once after no responders), the wait for an owner
// that is reconnecting, the relay's own timeout, and room to give it back.
func (d *Dispatcher) acquireRun(r *relay) (*quota.Slot, *protocol.Error) {
	ctx, cancel := context.WithTimeout(context.Background(), placeTimeout)
	defer cancel()
	ttl := r.timeout + 2*placeTimeout + d.cfg.HeartbeatTTL + 10*time.Second
	b := backoff{ctx: ctx}
	for {
		slot, err := d.quota.AcquireRun(ctx, r.tenant, r.conv, ttl)
		if err != nil && b.wait(err) {
			continue
		}
		if err != nil {
			return nil, d.quotaError(err)
		}
		return slot, nil
	}
}

// acquireSandbox takes a sandbox slot for a new conversation; nil without a sandbox quota.
func (d *Dispatcher) acquireSandbox(ctx context.Context, tenant, conv string) (*quota.Slot, error) {
	if d.quota == nil {
		return nil, nil
	}
	return d.quota.AcquireSandbox(ctx, tenant, conv)
}

// quotaError is the answer to a request whose slot could not be taken: quota_exceeded for a
// tenant at its quota (counted by kind), internal for a fault of the quota bucket.
func (d *Dispatcher) quotaError(err error) *protocol.Error {
	var qe *quota.ExceededError
	if errors.As(err, &qe) {
		d.metrics.refusals.WithLabelValues(string(qe.Kind)).Inc()
		return protocol.Errorf(protocol.CodeQuotaExceeded, "%s", qe.Error())
	}
	return protocol.Errorf(protocol.CodeInternal, "quota: %v", err)
}

// settle calls answer, the answer to r's client, once r's run slot is given back: the slot is
// free before the client hears back. Without a slot it answers at once; with one, later (the
// give back is a KV round trip, and the caller may be the inbox's callback, which answers
// every relay of the dispatcher).
func (d *Dispatcher) settle(r *relay, answer func()) {
	slot := r.runSlot
	if slot == nil {
		answer()
		return
	}
	r.runSlot = nil
	d.later(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := slot.Release(ctx); err != nil {
			d.log.Warn().Err(err).Str("tenant", r.tenant).Str("conversation_id", r.conv).Msg("give back a run slot (its TTL frees it)")
		}
	}, answer)
}

// later calls first, then answer, in a goroutine that Stop waits for (answering): the KV
// writes an answer depends on (a run slot given back, a closed conversation's ownership
// dropped) land before the client hears back, so that its next request finds them done.
func (d *Dispatcher) later(first, answer func()) {
	d.answering.Add(1)
	go func() {
		defer d.answering.Add(-1)
		first()
		answer()
	}()
}

// failRun answers a run relay with an error, after its handler returned, its run slot given
// back first.
func (d *Dispatcher) failRun(r *relay, perr *protocol.Error) {
	if r.verb == verbFiles {
		d.replyFileError(r.req, perr, true)
		return
	}
	d.settle(r, func() { d.replyErrorLater(r.req, perr) })
}

// owned tells the quota Manager whether a conversation still has an owner: a sandbox slot whose
// conversation has none is stale.
func (d *Dispatcher) owned(ctx context.Context, tenant, conv string) (bool, error) {
	_, ok, err := d.store.Get(ctx, tenant, conv)
	return ok, err
}

// backoff waits out passing JetStream faults (a stream leader being elected after a node loss,
// a reconnect): 50 ms, doubling up to a second, within ctx.
type backoff struct {
	ctx context.Context
	d   time.Duration
}

// wait reports whether err may pass by itself, after waiting a little; false when it will not,
// or ctx is over.
func (b *backoff) wait(err error) bool {
	if !transient(err) {
		return false
	}
	if b.d == 0 {
		b.d = 50 * time.Millisecond
	} else {
		b.d = min(2*b.d, time.Second)
	}
	select {
	case <-b.ctx.Done():
		return false
	case <-time.After(b.d):
		return true
	}
}
