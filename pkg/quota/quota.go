// Package quota counts per-tenant quotas across a whole fleet: the most sandboxes a tenant holds
// and the most runs it has in flight, whichever dispatchers its requests reach. The count lives
// in one JetStream KV bucket all dispatchers share, <prefix>-quotas
// (protocol.Subjects.QuotasBucket); pkg/quota is the only code that touches it.
//
// # Slots
//
// A tenant with a quota of N of a kind has N slots, the keys <tenant>.<kind>.<i> for i in
// [0, N), kind "sandboxes" or "runs". Holding a slot is holding one unit of the quota. A slot is
// taken with kv.Create, a compare-and-set: of any number of dispatchers racing for one slot
// exactly one wins, so however many race, no more than N hold the tenant's slots. A slot is
// given back by deleting it at the revision it was taken at, so a slot taken over meanwhile
// (expired, or reclaimed as stale, then taken by someone else) is left to its new holder.
//
// Each Manager keeps a cache of the bucket fed by a watch (jskv.Follower), and tries a slot the
// cache shows free, picked at random so that racing dispatchers seldom try the same one: a
// tenant below its quota takes a slot with one Create. A Create that finds its slot taken
// teaches the cache and tries another. When the cache shows every slot taken, the Manager
// first makes sure it is current (the watch has delivered the bucket's last revision: a slot
// given back a moment ago through another dispatcher is seen), then refuses with an
// ExceededError, without probing the N slots.
//
// # Runs
//
// A run slot is held from a run's admission until its answer is relayed, whatever the outcome.
// It carries a per-key TTL (the run's longest wait plus a margin; the bucket allows per-key TTLs
// with LimitMarkerTTL), so the slots of a dispatcher that dies with runs in flight come back by
// themselves.
//
// # Sandboxes
//
// A sandbox slot holds its conversation's id. It is taken when a new conversation is placed,
// before the conversation's affinity claim (so a conversation over quota never gets an owner),
// given back at once when that claim loses a race or the placement fails, and when the
// conversation is closed (Holding). A conversation moved to another worker keeps its
// slot: it still has one sandbox. A crash between those steps, or an owner that went away
// without a close (a worker drops the affinity entry of a conversation whose sandbox it reaped),
// leaves a slot behind; it is stale once it is older than Config.Grace and its conversation has
// no owner (Config.Owned) or holds another slot too. Stale slots are reclaimed, each deleted at
// the revision found, when their tenant is at its quota: a leftover never keeps a tenant out
// for good, and costs nothing while the tenant is below its quota.
//
// The bucket is file-backed, like the affinity bucket: a NATS restart keeps both, so the
// conversations that survive it keep their slots (a bucket in memory would come back empty
// while the conversations it counted go on, and the tenant could hold twice its quota).
//
// Manager's methods do not log; errors are returned.
package quota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/jskv"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// DefaultGrace is how old a sandbox slot must be before it can be found stale: longer than a
// placement takes (a dispatcher gives one 30 s), since a slot is taken before its conversation's
// affinity claim and has no owner in between.
const DefaultGrace = time.Minute

// markerTTL is how long the bucket keeps the marker a run slot leaves when its TTL expires: long
// enough for every watch to see it (it is delivered at once).
const markerTTL = time.Minute

// catchUpWait bounds the wait for the watch to deliver the bucket's last revision before a
// refusal. The watch delivers within milliseconds; the bound matters while a watch is being
// started again, after which the refusal goes by what the cache shows.
const catchUpWait = time.Second

// maxConflicts bounds, on top of the quota, the Creates that find their slot taken in one
// acquisition: each teaches the cache one taken slot, so more are only seen when slots are
// given back and taken again as fast as the dispatcher tries.
const maxConflicts = 16

// ErrExceeded is matched (errors.Is) by every ExceededError.
var ErrExceeded = errors.New("quota exceeded")

// ExceededError is the refusal of a tenant at its quota.
type ExceededError struct {
	Tenant string
	Kind   Kind
	// Held is how many slots the tenant holds; Limit its quota.
	Held, Limit int
}

// Error says who, what and the quota: "tenant acme has 10 sandboxes, its quota (max_sandboxes
// 10)".
func (e *ExceededError) Error() string {
	var what string
	switch {
	case e.Kind == Sandboxes && e.Held == 1:
		what = "sandbox"
	case e.Kind == Sandboxes:
		what = "sandboxes"
	case e.Held == 1:
		what = "run in flight"
	default:
		what = "runs in flight"
	}
	return fmt.Sprintf("tenant %s has %d %s, its quota (%s %d)", e.Tenant, e.Held, what, e.Kind.field(), e.Limit)
}

// Is makes errors.Is(err, ErrExceeded) match.
func (e *ExceededError) Is(target error) bool { return target == ErrExceeded }

// Config configures a Manager.
type Config struct {
	// Fleet names the bucket (Fleet.QuotasBucket).
	Fleet protocol.Subjects
	// Replicas is the bucket's replica count (default 1).
	Replicas int
	// Limits are the quotas enforced.
	Limits Limits
	// Owned reports whether a conversation has an owner (an affinity entry). A sandbox slot
	// whose conversation has none is stale; when Owned fails, the slot is kept. Required when
	// any tenant has a sandbox quota.
	Owned func(ctx context.Context, tenant, conv string) (bool, error)
	// Grace is how old a sandbox slot must be before it can be found stale (default
	// DefaultGrace).
	Grace time.Duration
	// Holder names the process in the slots it takes (a dispatcher's name), for operators
	// reading the bucket.
	Holder string
}

// BucketConfig is the configuration Open creates (or updates) a fleet's quota bucket with: file
// storage (see the package comment), history 1, per-key TTLs allowed.
func BucketConfig(fleet protocol.Subjects, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         fleet.QuotasBucket(),
		Description:    "codefleet quotas of prefix " + fleet.Prefix + ": <tenant>.<sandboxes|runs>.<slot> -> the conversation holding the slot",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       max(replicas, 1),
		LimitMarkerTTL: markerTTL,
	}
}

// group is one tenant's slots of one kind.
type group struct {
	tenant string
	kind   Kind
}

func (g group) key(i int) string { return g.tenant + "." + string(g.kind) + "." + strconv.Itoa(i) }

// parseKey splits a slot key; ok is false for a key that is not one.
func parseKey(k string) (group, int, bool) {
	parts := strings.Split(k, ".")
	if len(parts) != 3 || (parts[1] != string(Sandboxes) && parts[1] != string(Runs)) {
		return group{}, 0, false
	}
	i, err := strconv.Atoi(parts[2])
	if err != nil || i < 0 || strconv.Itoa(i) != parts[2] {
		return group{}, 0, false
	}
	return group{parts[0], Kind(parts[1])}, i, true
}

// holding is the value of a slot.
type holding struct {
	Conversation string `json:"conversation"`
	Holder       string `json:"holder,omitempty"`
}

// entry is one cached slot. gone marks a slot this process deleted at rev whose delete marker
// the watch has not delivered yet: it counts as free, and keeps the watch from putting the
// deleted value back meanwhile.
type entry struct {
	rev  uint64
	conv string    // "" when the value does not decode: the slot still counts as held
	at   time.Time // when it was taken (the bucket's time, or this process's for its own)
	gone bool
}

// Manager takes and gives back the slots of the quotas in Config.Limits. Its methods are safe
// for concurrent use.
type Manager struct {
	cfg Config
	kv  jetstream.KeyValue // the bucket: the handle stays good when the bucket is made again
	f   *jskv.Follower

	mu    sync.Mutex
	slots map[group]map[int]entry
	// watched is the highest revision the watch delivered; floor the bucket's last revision
	// before the current watch started, which its initial values reflect (seenLocked).
	watched, floor uint64
}

// Open creates or updates the quota bucket, starts a watch of it and returns once the slots
// taken are loaded. ctx bounds the opening only; the watch runs until Stop.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Manager, error) {
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if err := cfg.Limits.Validate(); err != nil {
		return nil, err
	}
	if cfg.Owned == nil && cfg.Limits.limits(Sandboxes) {
		return nil, fmt.Errorf("%w: a sandbox quota needs Config.Owned, to find the slots of conversations that are gone", ErrInvalidLimits)
	}
	bucket := cfg.Fleet.QuotasBucket()
	kv, err := js.CreateOrUpdateKeyValue(ctx, BucketConfig(cfg.Fleet, cfg.Replicas))
	if err != nil {
		return nil, fmt.Errorf("quota: bucket %s: %w", bucket, err)
	}
	m := &Manager{cfg: cfg, kv: kv, slots: map[group]map[int]entry{}}
	if err := m.noteFloor(ctx); err != nil {
		return nil, fmt.Errorf("quota: bucket %s: %w", bucket, err)
	}
	// A watch that ends (its bucket deleted, or lost by a NATS server without storage) is
	// started anew, the bucket made again first.
	ensure := func(ctx context.Context) error {
		if _, err := js.CreateOrUpdateKeyValue(ctx, BucketConfig(cfg.Fleet, cfg.Replicas)); err != nil {
			return err
		}
		return m.noteFloor(ctx)
	}
	f, err := jskv.Follow(ctx, kv, ensure, m.reset, m.apply)
	if err != nil {
		return nil, fmt.Errorf("quota: watch %s: %w", bucket, err)
	}
	m.mu.Lock() // seenLocked reads it
	m.f = f
	m.mu.Unlock()
	return m, nil
}

// noteFloor notes the bucket's last revision before a watch starts: the watch's initial values
// reflect it, so the cache is current up to it once they are loaded.
func (m *Manager) noteFloor(ctx context.Context) error {
	last, err := lastRevision(ctx, m.kv)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.floor = last
	m.mu.Unlock()
	return nil
}

// Stop stops the watch. The Manager must not be used afterwards.
func (m *Manager) Stop() { m.f.Stop() }

// Check reports whether the bucket answers and the watch runs, for readiness.
func (m *Manager) Check(ctx context.Context) error {
	if !m.f.Watching() {
		return fmt.Errorf("quota bucket %s: not watching it (starting it again)", m.cfg.Fleet.QuotasBucket())
	}
	if _, err := m.kv.Status(ctx); err != nil {
		return fmt.Errorf("quota bucket %s: %w", m.cfg.Fleet.QuotasBucket(), err)
	}
	return nil
}

// Limits returns the quotas of tenant.
func (m *Manager) Limits(tenant string) Limit { return m.cfg.Limits.For(tenant) }

// reset forgets the cache before a new watch fills it again: slots deleted while no watch ran
// are not delivered again.
func (m *Manager) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.slots)
	m.watched = 0
}

// seenLocked returns the revision up to which the cache is current: the highest the watch
// delivered or, once a watch has loaded its initial values, the bucket's last revision before
// that watch started (a last revision that expired since, such as a marker's, no watch
// delivers again). m.mu is held.
func (m *Manager) seenLocked() uint64 {
	if m.f != nil && m.f.Watching() {
		return max(m.watched, m.floor)
	}
	return m.watched
}

// apply takes one watch entry (in revision order).
func (m *Manager) apply(e jetstream.KeyValueEntry) {
	g, i, ok := parseKey(e.Key())
	m.mu.Lock()
	defer m.mu.Unlock()
	m.watched = max(m.watched, e.Revision())
	if !ok {
		return
	}
	if cur, has := m.slots[g][i]; has && cur.rev >= e.Revision() {
		return // this process already knows a later state of the slot
	}
	if e.Operation() != jetstream.KeyValuePut {
		// Given back, or expired (the server's marker, a purge).
		delete(m.slots[g], i)
		return
	}
	m.setLocked(g, i, decode(e))
}

func decode(e jetstream.KeyValueEntry) entry {
	var h holding
	_ = json.Unmarshal(e.Value(), &h) // a value that does not decode is a slot taken all the same
	return entry{rev: e.Revision(), conv: h.Conversation, at: e.Created()}
}

func (m *Manager) setLocked(g group, i int, en entry) {
	s := m.slots[g]
	if s == nil {
		s = map[int]entry{}
		m.slots[g] = s
	}
	s[i] = en
}

// learn caches a slot this process took or read, unless the cache knows the same or a later
// state of it.
func (m *Manager) learn(g group, i int, en entry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if en.rev <= m.seenLocked() {
		return // the watch delivered this revision or a later one
	}
	if cur, has := m.slots[g][i]; has && cur.rev >= en.rev {
		return
	}
	m.setLocked(g, i, en)
}

// released records that this process deleted a slot it held at rev.
func (m *Manager) released(g group, i int, rev uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, has := m.slots[g][i]
	if (has && cur.rev > rev) || (!has && m.seenLocked() >= rev) {
		return // the watch went past the delete already
	}
	m.setLocked(g, i, entry{rev: rev, gone: true})
}

func (m *Manager) heldLocked(g group) int {
	n := 0
	for _, en := range m.slots[g] {
		if !en.gone {
			n++
		}
	}
	return n
}

// pick returns a slot of g the cache shows free, starting from a random one, and how many the
// cache shows held; ok is false when the tenant holds limit slots or more (a quota lowered
// since they were taken leaves slots at limit or above, which count until given back).
func (m *Manager) pick(g group, limit int) (slot, held int, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	held = m.heldLocked(g)
	if held >= limit {
		return 0, held, false
	}
	s := m.slots[g]
	start := rand.IntN(limit)
	for n := range limit {
		i := (start + n) % limit
		if en, has := s[i]; !has || en.gone {
			return i, held, true
		}
	}
	return 0, held, false // not reached: held < limit leaves a slot below limit free
}

// Slot is a slot a tenant holds. Give it back with Release.
type Slot struct {
	m   *Manager
	g   group
	i   int
	rev uint64
}

// AcquireRun takes a run slot of tenant for a run of conv, which comes back by itself after
// ttl should it not be released. It returns a nil Slot and a nil error when the tenant has no
// run quota (no I/O then), an *ExceededError when the tenant is at its quota.
func (m *Manager) AcquireRun(ctx context.Context, tenant, conv string, ttl time.Duration) (*Slot, error) {
	return m.acquire(ctx, group{tenant, Runs}, conv, ttl)
}

// AcquireSandbox takes a sandbox slot of tenant for the new conversation conv. It returns a nil
// Slot and a nil error when the tenant has no sandbox quota (no I/O then), an *ExceededError
// when the tenant is at its quota once its stale slots are reclaimed.
func (m *Manager) AcquireSandbox(ctx context.Context, tenant, conv string) (*Slot, error) {
	return m.acquire(ctx, group{tenant, Sandboxes}, conv, 0)
}

func (m *Manager) acquire(ctx context.Context, g group, conv string, ttl time.Duration) (*Slot, error) {
	limit := m.cfg.Limits.For(g.tenant).Of(g.kind)
	if limit == 0 {
		return nil, nil
	}
	value, err := json.Marshal(holding{Conversation: conv, Holder: m.cfg.Holder})
	if err != nil {
		return nil, fmt.Errorf("quota: encode slot: %w", err)
	}
	var opts []jetstream.KVCreateOpt
	if ttl > 0 {
		opts = append(opts, jetstream.KeyTTL(max(ttl, time.Second))) // JetStream's shortest TTL
	}
	checked := false // the cache was made current, and stale slots reclaimed
	for range limit + maxConflicts {
		i, held, ok := m.pick(g, limit)
		if !ok {
			if checked {
				return nil, &ExceededError{Tenant: g.tenant, Kind: g.kind, Held: held, Limit: limit}
			}
			checked = true
			if err := m.catchUp(ctx); err != nil {
				return nil, err
			}
			if g.kind == Sandboxes {
				m.reclaim(ctx, g)
			}
			continue
		}
		key := g.key(i)
		rev, err := m.kv.Create(ctx, key, value, opts...)
		if err == nil {
			m.learn(g, i, entry{rev: rev, conv: conv, at: time.Now()})
			return &Slot{m: m, g: g, i: i, rev: rev}, nil
		}
		if !jskv.IsConflict(err) {
			return nil, fmt.Errorf("quota: take %s: %w", key, err)
		}
		// The cache did not know the slot was taken: learn it now rather than from the watch.
		if err := m.refresh(ctx, g, i); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("quota: %s of tenant %s: the slots kept changing over %d attempts", g.kind, g.tenant, limit+maxConflicts)
}

// refresh reads one slot from the bucket into the cache.
func (m *Manager) refresh(ctx context.Context, g group, i int) error {
	e, err := m.kv.Get(ctx, g.key(i))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil // given back since: free again
	}
	if err != nil {
		return fmt.Errorf("quota: read %s: %w", g.key(i), err)
	}
	m.learn(g, i, decode(e))
	return nil
}

// lastRevision returns the revision of the bucket's last message.
func lastRevision(ctx context.Context, kv jetstream.KeyValue) (uint64, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, fmt.Errorf("quota: status of bucket %s is a %T, not a KeyValueBucketStatus", kv.Bucket(), st)
	}
	return bs.StreamInfo().State.LastSeq, nil
}

// catchUp waits until the cache is current up to the bucket's last revision when it is called
// (up to catchUpWait), so that it shows the slots given back through other dispatchers until
// then. It polls: the watch is normally there already, or a few milliseconds behind, and this
// runs only before a refusal.
func (m *Manager) catchUp(ctx context.Context) error {
	last, err := lastRevision(ctx, m.kv)
	if err != nil {
		return fmt.Errorf("quota: bucket %s: %w", m.kv.Bucket(), err)
	}
	deadline := time.Now().Add(catchUpWait)
	for {
		m.mu.Lock()
		seen := m.seenLocked()
		m.mu.Unlock()
		if seen >= last || time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// reclaim deletes the stale sandbox slots of g: older than Grace, and whose conversation has no
// owner or holds a later slot too. Each is deleted at the revision the cache shows, so a slot
// taken again meanwhile stays. Failures leave the slot: it is tried again at the next refusal.
func (m *Manager) reclaim(ctx context.Context, g group) {
	type held struct {
		i   int
		rev uint64
	}
	cutoff := time.Now().Add(-m.cfg.Grace)
	byConv := map[string][]held{}
	m.mu.Lock()
	for i, en := range m.slots[g] {
		if !en.gone && en.conv != "" && en.at.Before(cutoff) {
			byConv[en.conv] = append(byConv[en.conv], held{i, en.rev})
		}
	}
	m.mu.Unlock()
	for conv, hs := range byConv {
		owned, err := m.cfg.Owned(ctx, g.tenant, conv)
		if err != nil {
			continue
		}
		if owned {
			// One slot is the conversation's; the others were left by an earlier life of it.
			latest := 0
			for j, h := range hs {
				if h.rev > hs[latest].rev {
					latest = j
				}
			}
			hs = append(hs[:latest], hs[latest+1:]...)
		}
		for _, h := range hs {
			err := m.kv.Delete(ctx, g.key(h.i), jetstream.LastRevision(h.rev))
			if err == nil {
				m.released(g, h.i, h.rev)
			}
		}
	}
}

// Release gives the slot back (a delete at the revision it was taken at). A slot taken over
// meanwhile (its TTL expired, or it was reclaimed as stale) is left to its new holder. Release
// of a nil Slot does nothing.
func (s *Slot) Release(ctx context.Context) error {
	if s == nil {
		return nil
	}
	return s.m.delete(ctx, s.g, s.i, s.rev)
}

func (m *Manager) delete(ctx context.Context, g group, i int, rev uint64) error {
	err := m.kv.Delete(ctx, g.key(i), jetstream.LastRevision(rev))
	switch {
	case err == nil:
		m.released(g, i, rev)
		return nil
	case jskv.IsConflict(err):
		return nil
	default:
		return fmt.Errorf("quota: give back %s: %w", g.key(i), err)
	}
}

// Holding returns the sandbox slots the cache shows conv of tenant holding, for the caller to
// give back once the conversation's ownership is gone (closed): taken before, the list leaves
// out a slot that a new placement of the conversation takes afterwards. Without one (none
// known, or the tenant has no sandbox quota) it returns nil.
func (m *Manager) Holding(tenant, conv string) []*Slot {
	g := group{tenant, Sandboxes}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Slot
	for i, en := range m.slots[g] {
		if !en.gone && en.conv == conv {
			out = append(out, &Slot{m: m, g: g, i: i, rev: en.rev})
		}
	}
	return out
}
