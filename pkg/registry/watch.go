package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/jskv"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// Config configures a Registry. The zero value is valid: the default fleet, DefaultTTL.
type Config struct {
	// Fleet names the registry bucket (Fleet.WorkersBucket).
	Fleet protocol.Subjects
	// TTL: a worker whose entry is older than this, both by WorkerInfo.Updated and by the time
	// the watch last saw it, is dead (default 3s). It is also the bucket's TTL when the
	// Registry creates the bucket.
	TTL time.Duration
	// Replicas is the replica count of the bucket when the Registry creates it (default 1).
	Replicas int
	// OnLost is called, from one goroutine and never concurrently, when a known worker is
	// lost: its key was deleted or purged (Delete on graceful shutdown, or the server's delete
	// marker when its entry expires), or it was not refreshed for TTL (checked every TTL/4, so a
	// worker that stops without its key expiring is noticed within TTL + TTL/4) and the bucket
	// confirms it (see confirm: silence is no news while no heartbeat can land). Calls are
	// queued: a slow OnLost delays later calls, not the Registry. It must not call Stop.
	OnLost func(workerID string)
	// PendingWindow is how long a placement keeps counting on top of a worker's registered
	// load after the registration was computed (default DefaultPendingWindow).
	PendingWindow time.Duration
}

type workerState struct {
	info protocol.WorkerInfo
	seen time.Time // when the watch last delivered the entry
	rev  uint64    // the revision of info
	// purged: the watch delivered the entry's purge (the server's marker when it expired),
	// which loses the worker once the bucket confirms it (see confirm).
	purged bool
	lost   chan struct{} // closed when the worker is lost
}

// Registry is the set of live workers of one fleet, read from its registry bucket and kept
// fresh by a KV watch (a dispatcher's view). Its methods are safe for concurrent use.
type Registry struct {
	cfg  Config
	js   jetstream.JetStream
	kv   jetstream.KeyValue
	f    *jskv.Follower
	quit chan struct{} // closed by Stop
	bg   sync.WaitGroup
	once sync.Once

	mu      sync.Mutex
	workers map[string]*workerState
	// pending holds, per worker, when this Registry placed conversations on it that its
	// registration may not count yet (see PendingWindow).
	pending map[string][]time.Time
	events  []string      // lost workers not yet passed to OnLost
	check   chan struct{} // wakes the expiry loop to confirm a purge at once
	// gone holds the revision of the entry of each worker lost while its key stayed in the
	// bucket (it stopped refreshing), so that a watch started again, which delivers that entry
	// once more, does not bring the worker back for another TTL. Delete markers remove them.
	gone   map[string]uint64
	notify chan struct{}
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Open opens the fleet's registry bucket (creating it with BucketConfig(cfg.Fleet, cfg.TTL,
// cfg.Replicas) if it does not exist, never changing an existing one), starts a watch of all
// its keys and returns once the registered workers are loaded. ctx bounds the opening only.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Registry, error) {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.PendingWindow <= 0 {
		cfg.PendingWindow = DefaultPendingWindow
	}
	kv, err := openBucket(ctx, js, cfg.Fleet, cfg.TTL, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	r := &Registry{
		cfg: cfg, js: js, kv: kv, quit: make(chan struct{}),
		workers: make(map[string]*workerState), pending: make(map[string][]time.Time),
		gone:   make(map[string]uint64),
		notify: make(chan struct{}, 1), check: make(chan struct{}, 1),
	}
	// The bucket is kept in memory: a NATS server's restart loses it (the workers' next
	// heartbeats make it again) and ends the watch, which is then started anew.
	ensure := func(ctx context.Context) error {
		_, err := openBucket(ctx, js, cfg.Fleet, cfg.TTL, cfg.Replicas)
		return err
	}
	r.f, err = jskv.Follow(ctx, kv, ensure, nil, r.apply)
	if err != nil {
		return nil, fmt.Errorf("registry: watch %s: %w", cfg.Fleet.WorkersBucket(), err)
	}
	r.bg.Add(2)
	go r.expireLoop()
	go r.callbackLoop()
	return r, nil
}

// Stop stops the watch and the expiry checks; queued OnLost calls are dropped and a running one
// is waited for. The Registry must not be used afterwards.
func (r *Registry) Stop() {
	r.once.Do(func() {
		close(r.quit)
		r.f.Stop()
		r.bg.Wait()
	})
}

// Check reports whether the bucket answers (its stream's info, within ctx) and the watch runs,
// for readiness. A bucket found gone (a NATS server restarted without it) is made again, as a
// worker's heartbeat would: the watch then goes on by itself instead of waiting for its consumer
// to give up.
func (r *Registry) Check(ctx context.Context) error {
	if !r.f.Watching() {
		return errors.New("registry: not watching the bucket (starting it again)")
	}
	_, err := r.kv.Status(ctx)
	if bucketGone(err) {
		if _, err := openBucket(ctx, r.js, r.cfg.Fleet, r.cfg.TTL, r.cfg.Replicas); err != nil {
			return err
		}
		_, err = r.kv.Status(ctx)
	}
	return wrapBucket(r.kv.Bucket(), err)
}

// Done is closed once Stop has stopped the watch. (A watch that ends otherwise, its bucket
// gone with a NATS server's restart, say, is started again.)
func (r *Registry) Done() <-chan struct{} { return r.f.Done() }

// apply takes one watch entry. A delete (a worker's Leave) loses the worker. A purge, the
// server's marker when an entry expires (a KeyValuePurge with the Nats-Marker-Reason header
// MaxAge), loses it once confirm finds the bucket agrees: a stream that has just elected a
// leader after a node loss expires at once every entry no heartbeat could refresh meanwhile.
func (r *Registry) apply(e jetstream.KeyValueEntry) {
	id := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.gone, id)
		ws := r.workers[id]
		if ws == nil {
			return
		}
		if e.Operation() == jetstream.KeyValueDelete {
			r.loseLocked(id)
			return
		}
		ws.purged = true
		select {
		case r.check <- struct{}{}:
		default:
		}
		return
	}
	info, err := decode(id, e.Value())
	if err != nil {
		return // not a registration: ignored
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if rev, ok := r.gone[id]; ok {
		if rev == e.Revision() {
			return // the entry of a worker found stale, delivered again by a new watch
		}
		delete(r.gone, id)
	}
	ws := r.workers[id]
	if ws == nil {
		ws = &workerState{lost: make(chan struct{})}
		r.workers[id] = ws
	}
	ws.info, ws.seen, ws.rev, ws.purged = info, now, e.Revision(), false
	// The registration counts the placements whose runs reached the worker before it was
	// computed; the later ones stay pending.
	cut := info.Updated
	if cut.IsZero() || cut.After(now) {
		cut = now
	}
	cut = cut.Add(-r.cfg.PendingWindow)
	kept := r.pending[id][:0]
	for _, at := range r.pending[id] {
		if at.After(cut) {
			kept = append(kept, at)
		}
	}
	r.pending[id] = kept
}

// DefaultPendingWindow is how long a placement keeps counting on top of a worker's registered
// load after the registration was computed: time for the run to reach the worker and open its
// session. Dropping placements sooner than that makes every dispatcher pile new conversations
// onto the worker whose latest registration does not show the last burst yet; keeping them a
// little too long only overcounts every worker alike.
const DefaultPendingWindow = 250 * time.Millisecond

// loseLocked forgets a worker, closes its Lost channel and queues the OnLost call.
func (r *Registry) loseLocked(id string) {
	ws := r.workers[id]
	if ws == nil {
		return
	}
	delete(r.workers, id)
	delete(r.pending, id)
	close(ws.lost)
	if r.cfg.OnLost != nil {
		r.events = append(r.events, id)
		select {
		case r.notify <- struct{}{}:
		default:
		}
	}
}

func (r *Registry) stale(ws *workerState, now time.Time) bool {
	return ws.purged || now.Sub(ws.info.Updated) > r.cfg.TTL && now.Sub(ws.seen) > r.cfg.TTL
}

func (r *Registry) expireLoop() {
	defer r.bg.Done()
	t := time.NewTicker(r.cfg.TTL / 4)
	defer t.Stop()
	for {
		select {
		case <-r.quit:
			return
		case <-r.check:
		case <-t.C:
		}
		now := time.Now()
		r.mu.Lock()
		var stale []string
		for id, ws := range r.workers {
			if r.stale(ws, now) {
				stale = append(stale, id)
			}
		}
		r.mu.Unlock()
		if len(stale) > 0 {
			r.confirm(stale)
		}
	}
}

// confirm asks the bucket itself about workers the watch has not refreshed for TTL or whose
// entry it saw purged, and loses only those the bucket confirms gone: the key deleted or expired,
// or its latest entry the one the watch last delivered, while the bucket's stream has had its
// leader for a TTL at least. Silence alone is not enough:
//   - while the bucket does not answer (its stream is electing a leader after a node loss, this
//     process is cut off) no heartbeat can land, so that is no news;
//   - a leader elected less than a TTL ago has expired at once every entry that no heartbeat
//     could refresh during the election, and the workers have not had a TTL to write again;
//   - a watch whose consumer died with a NATS node delivers nothing for up to two of the
//     consumer's 5 s idle heartbeats before nats.go recreates it, while heartbeats land. A newer
//     entry than the watch delivered is such a stall: it is applied, and the watch is started
//     again rather than left to find out by itself.
//
// No news gives the workers a whole TTL again.
func (r *Registry) confirm(ids []string) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.TTL/4)
	defer cancel()
	type answer struct {
		e   jetstream.KeyValueEntry
		err error
	}
	var answers map[string]answer
	if st, err := r.kv.Status(ctx); err == nil && leaderSettled(st, r.cfg.TTL) {
		answers = make(map[string]answer, len(ids))
		for _, id := range ids {
			e, err := r.kv.Get(ctx, id)
			answers[id] = answer{e, err}
		}
	}
	stalled := false
	r.mu.Lock()
	now := time.Now()
	for _, id := range ids {
		ws := r.workers[id]
		if ws == nil || !r.stale(ws, now) {
			continue // lost or refreshed by the watch meanwhile
		}
		a, ok := answers[id]
		switch {
		case !ok || a.err != nil && !errors.Is(a.err, jetstream.ErrKeyNotFound):
			ws.seen, ws.purged = now, false // no news
		case a.err != nil:
			r.loseLocked(id) // deleted or expired
		case a.e.Revision() != ws.rev: // a later write (or the bucket made again since)
			info, err := decode(id, a.e.Value())
			if err != nil {
				r.loseLocked(id)
				continue
			}
			ws.info, ws.seen, ws.rev, ws.purged = info, now, a.e.Revision(), false
			stalled = true
		default:
			r.loseLocked(id) // no heartbeat landed since the one the watch delivered
			r.gone[id] = ws.rev
		}
	}
	r.mu.Unlock()
	if stalled {
		r.f.Restart()
	}
}

// leaderSettled reports whether the bucket's stream has had its leader for at least ttl (by
// the server's clock); a stream without a cluster (one server) has no elections.
func leaderSettled(st jetstream.KeyValueStatus, ttl time.Duration) bool {
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil || bs.StreamInfo().Cluster == nil || bs.StreamInfo().Cluster.LeaderSince == nil {
		return true
	}
	si := bs.StreamInfo()
	now := si.TimeStamp
	if now.IsZero() {
		now = time.Now()
	}
	return now.Sub(*si.Cluster.LeaderSince) >= ttl
}

func (r *Registry) callbackLoop() {
	defer r.bg.Done()
	for {
		select {
		case <-r.quit:
			return
		case <-r.notify:
		}
		r.mu.Lock()
		events := r.events
		r.events = nil
		r.mu.Unlock()
		for _, id := range events {
			select {
			case <-r.quit:
				return
			default:
			}
			r.cfg.OnLost(id)
		}
	}
}

// Live returns the live workers (draining ones included), sorted by id.
func (r *Registry) Live() []protocol.WorkerInfo {
	r.mu.Lock()
	out := make([]protocol.WorkerInfo, 0, len(r.workers))
	for _, ws := range r.workers {
		out = append(out, cloneInfo(ws.info))
	}
	r.mu.Unlock()
	sortByID(out)
	return out
}

// Get returns the registration of a live worker.
func (r *Registry) Get(id string) (protocol.WorkerInfo, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ws := r.workers[id]
	if ws == nil {
		return protocol.WorkerInfo{}, false
	}
	return cloneInfo(ws.info), true
}

// Lost returns a channel closed when worker id is lost; it is already closed if the worker is
// not live now. A later registration of the same id makes a new channel for later callers.
func (r *Registry) Lost(id string) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ws := r.workers[id]; ws != nil {
		return ws.lost
	}
	return closedChan
}
