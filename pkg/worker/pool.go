package worker

import (
	"context"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/pkg/envs"
)

// pool is the worker's warm pool (Config.WarmPool): free sandboxes of the default image,
// started ahead of demand for no conversation, so that a new conversation's first run does not
// wait for a container to be created and started.
//
// Claims. A new conversation that a pool sandbox can serve (the default image, and a
// sandbox-wide env the backend can bind after creation: envs.Pooler.Claimable) takes the
// oldest free one when the worker accepts its first run (manager.submit, under the manager's
// lock: two conversations never get the same one), and its session binds it
// (envs.Pooler.Claim) before the run. A conversation that finds none free waits for a creation
// turn as without a pool, or for a pool creation in progress to finish, whichever comes first.
//
// Capacity. Free pool sandboxes and pool creations in progress count towards Capacity with the
// sessions, but never turn a conversation away: conversations are admitted while fewer than
// Capacity are held, as without a pool, and when sessions, free pool sandboxes and pool
// creations together would pass Capacity, free ones are destroyed (then pool creations
// cancelled) to make room (fit). The pool refills only below Capacity.
//
// Refill priority. A refill takes a creation turn (manager.createSem) only when no session is
// waiting for one and another turn stays free (unless there is only one), and never blocks on
// it: a burst of new conversations gets the creation turns, and the pool refills after it.
//
// Restarts, reaping. A worker that starts destroys the free pool sandboxes an earlier process
// left (one may have been claimed half-way) and builds its pool anew; claimed ones are
// re-adopted as any (the backend reports their conversation). The reaper leaves the pool's
// sandboxes alone as orphans (held), and replaces free ones past MaxLife (expire).
//
// Lock order: manager.mu before pool.mu.
type pool struct {
	m    *manager
	env  envs.Pooler
	size int
	log  zerolog.Logger

	// kick wakes the refill loop: a sandbox was taken, a creation ended, room was made.
	kick chan struct{}
	// wg counts the pool's creations and destructions in progress; Add only under mu while
	// not stopped.
	wg sync.WaitGroup

	mu sync.Mutex
	// free are the started, unclaimed sandboxes, oldest first.
	free []freeSandbox
	// held are the ids of the pool's sandboxes that no session holds as its sandbox yet (free
	// ones, and those taken whose claim is not done): the orphan reconciler leaves them.
	held map[string]bool
	// creations are the pool creations in progress, by key, each with its cancel.
	creations map[uint64]context.CancelFunc
	next      uint64
	// ready is closed, and replaced, when a sandbox joins free.
	ready   chan struct{}
	stopped bool
	// failures counts the creations failed in a row; none is tried again before retryAt.
	failures int
	retryAt  time.Time
}

type freeSandbox struct {
	sb      envs.Sandbox
	id      string
	created time.Time
}

// maxPoolBackoff bounds the wait before a pool creation is tried again after failures.
const maxPoolBackoff = 30 * time.Second

func newPool(m *manager, env envs.Pooler, size int) *pool {
	return &pool{
		m: m, env: env, size: size, log: m.log.With().Str("component", "worker.pool").Logger(),
		kick: make(chan struct{}, 1), held: map[string]bool{}, creations: map[uint64]context.CancelFunc{},
		ready: make(chan struct{}),
	}
}

// wake makes the refill loop look again.
func (p *pool) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run refills the pool until ctx ends.
func (p *pool) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		p.fill(ctx)
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-t.C:
		}
	}
}

// fill starts the pool creations the pool lacks, as far as Capacity and the creation turns
// allow.
func (p *pool) fill(ctx context.Context) {
	for {
		p.m.mu.Lock()
		sessions, draining := len(p.m.sessions), p.m.draining
		p.mu.Lock()
		pooled := len(p.free) + len(p.creations)
		need := min(p.size-pooled, p.m.cfg.Capacity-sessions-pooled)
		if p.stopped || draining || need <= 0 || time.Now().Before(p.retryAt) || !p.turn() {
			p.mu.Unlock()
			p.m.mu.Unlock()
			return
		}
		cctx, cancel := context.WithTimeout(ctx, p.m.cfg.CreateTimeout)
		key := p.next
		p.next++
		p.creations[key] = cancel
		p.wg.Add(1)
		p.mu.Unlock()
		p.m.mu.Unlock()
		go p.create(cctx, key)
	}
}

// turn takes a creation turn for the pool without waiting: only when no session waits for one
// and, unless there is only one, another stays free for the next session that needs one.
func (p *pool) turn() bool {
	sem := p.m.createSem
	if p.m.createWaiting.Load() > 0 || (cap(sem) > 1 && len(sem) >= cap(sem)-1) {
		return false
	}
	select {
	case sem <- struct{}{}:
		return true
	default:
		return false
	}
}

// create makes one pool sandbox; its creation turn is held and given back here.
func (p *pool) create(ctx context.Context, key uint64) {
	defer p.wg.Done()
	sb, err := p.env.CreateFree(ctx, envs.Spec{Image: p.m.cfg.Image, Labels: p.m.labels()})
	<-p.m.createSem
	if err != nil {
		p.mu.Lock()
		cancel, wanted := p.creations[key] // not wanted: cancelled to make room, or the pool stopped
		delete(p.creations, key)
		if wanted {
			cancel()
			p.failures++
			p.retryAt = time.Now().Add(min(maxPoolBackoff, time.Second<<min(p.failures-1, 5)))
		}
		p.mu.Unlock()
		if wanted {
			p.m.metrics.poolCreateErrors.Inc()
			p.log.Warn().Err(err).Msg("create pool sandbox")
		}
		p.wake()
		return
	}
	p.m.metrics.poolCreated.Inc()
	p.m.noteLanguages(sb.Languages())
	p.put(key, sb)
	p.wake()
}

// put adds the sandbox of creation key to the free ones, or destroys it when the creation was
// cancelled or there is no room for it any more.
func (p *pool) put(key uint64, sb envs.Sandbox) {
	id := sb.Info().ID
	p.m.mu.Lock()
	p.mu.Lock()
	cancel, wanted := p.creations[key]
	delete(p.creations, key)
	if wanted {
		cancel()
		p.failures = 0
	}
	keep := wanted && !p.stopped && !p.m.draining && len(p.m.sessions)+len(p.free)+len(p.creations) < p.m.cfg.Capacity
	if keep {
		p.free = append(p.free, freeSandbox{sb: sb, id: id, created: sb.Info().Created})
		p.held[id] = true
		close(p.ready)
		p.ready = make(chan struct{})
	}
	p.mu.Unlock()
	p.m.mu.Unlock()
	if !keep {
		p.destroy(sb, id)
	}
}

// take hands out the oldest free sandbox, which is its caller's alone from then on: the caller
// claims it (claim) or gives it back (giveBack). With none free it returns instead the channel
// closed when one comes, nil when none is being created.
func (p *pool) take() (envs.Sandbox, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.stopped:
		return nil, nil
	case len(p.free) == 0 && len(p.creations) == 0:
		return nil, nil
	case len(p.free) == 0:
		return nil, p.ready
	}
	f := p.free[0]
	p.free = append(p.free[:0], p.free[1:]...)
	p.wake()
	return f.sb, nil
}

// claim binds a taken sandbox to spec's conversation; on failure the sandbox is destroyed.
func (p *pool) claim(ctx context.Context, sb envs.Sandbox, spec envs.Spec) error {
	if err := p.env.Claim(ctx, sb, spec); err != nil {
		id := sb.Info().ID
		p.bound(id)
		p.destroy(sb, id)
		return err
	}
	p.m.metrics.poolClaims.Inc()
	return nil
}

// bound says that a taken sandbox is no longer the pool's to keep from the reconciler: a
// session holds it (set after the session's sandbox), or it was destroyed.
func (p *pool) bound(id string) {
	p.mu.Lock()
	delete(p.held, id)
	p.mu.Unlock()
}

// giveBack takes back a sandbox taken and never claimed (its session ended first).
func (p *pool) giveBack(sb envs.Sandbox) {
	id := sb.Info().ID
	p.m.mu.Lock()
	p.mu.Lock()
	pooled := len(p.free) + len(p.creations)
	keep := !p.stopped && !p.m.draining && pooled < p.size && len(p.m.sessions)+pooled < p.m.cfg.Capacity
	if keep {
		p.free = append([]freeSandbox{{sb: sb, id: id, created: sb.Info().Created}}, p.free...)
		close(p.ready)
		p.ready = make(chan struct{})
	} else {
		delete(p.held, id)
	}
	p.mu.Unlock()
	p.m.mu.Unlock()
	if !keep {
		p.destroy(sb, id)
	}
}

// fit makes room for sessions (the count just admitted, with manager.mu held): free sandboxes,
// then pool creations in progress, go until the pool and the sessions fit in Capacity.
func (p *pool) fit(sessions int) {
	p.mu.Lock()
	excess := sessions + len(p.free) + len(p.creations) - p.m.cfg.Capacity
	var evicted []freeSandbox
	for ; excess > 0 && len(p.free) > 0; excess-- {
		f := p.free[0]
		p.free = append(p.free[:0], p.free[1:]...)
		delete(p.held, f.id)
		evicted = append(evicted, f)
	}
	for key, cancel := range p.creations {
		if excess <= 0 {
			break
		}
		cancel()
		delete(p.creations, key)
		excess--
	}
	p.mu.Unlock()
	for _, f := range evicted {
		p.destroy(f.sb, f.id)
	}
}

// expire replaces the free sandboxes older than maxLife.
func (p *pool) expire(now time.Time, maxLife time.Duration) {
	p.mu.Lock()
	var old []freeSandbox
	kept := p.free[:0]
	for _, f := range p.free {
		if now.Sub(f.created) > maxLife {
			delete(p.held, f.id)
			old = append(old, f)
		} else {
			kept = append(kept, f)
		}
	}
	p.free = kept
	p.mu.Unlock()
	for _, f := range old {
		p.log.Info().Str("sandbox_id", f.id).Msg("replacing a free pool sandbox past its max life")
		p.destroy(f.sb, f.id)
	}
	if len(old) > 0 {
		p.wake()
	}
}

// destroy detaches from and destroys a pool sandbox no session holds, in the background
// (synchronously once the pool is stopped).
func (p *pool) destroy(sb envs.Sandbox, id string) {
	gone := func() {
		sb.Close()
		p.m.destroyQuietly(id, reasonPool)
	}
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		gone()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	go func() {
		defer p.wg.Done()
		gone()
	}()
}

// stop ends the pool: creations in progress are cancelled, free sandboxes destroyed (they
// hold nothing; a restarted worker would destroy them anyway). It returns when all is done.
func (p *pool) stop() {
	p.mu.Lock()
	p.stopped = true
	for key, cancel := range p.creations {
		cancel()
		delete(p.creations, key)
	}
	free := p.free
	p.free = nil
	for _, f := range free {
		delete(p.held, f.id)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, f := range free {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.destroy(f.sb, f.id)
		}()
	}
	wg.Wait()
	p.wg.Wait()
}

// freeCount is the number of free sandboxes.
func (p *pool) freeCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free)
}

// heldIDs returns the ids of the pool's sandboxes no session holds yet.
func (p *pool) heldIDs() map[string]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]bool, len(p.held))
	for id := range p.held {
		out[id] = true
	}
	return out
}
