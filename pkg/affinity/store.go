// Package affinity holds which worker owns each conversation of a fleet, in JetStream KV
// (bucket <prefix>-affinity, protocol.Subjects.AffinityBucket; key <tenant>.<conversation>):
//
//   - Store, the dispatchers' view: a local cache kept fresh by a KV watch, so lookups on the
//     hot path cost no round trip; ownership is claimed and moved with compare-and-set, so
//     racing dispatchers agree;
//   - Owners, the workers' view: a plain read of one conversation's owner, now and then, to
//     find the sandboxes of conversations moved elsewhere.
//
// The live workers themselves are pkg/registry's. The package does not log: failures are
// returned.
package affinity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/jskv"
	"github.com/codefleet/codefleet/pkg/protocol"
)

var (
	// ErrChanged is returned by Release with a revision when the ownership was changed
	// (moved or re-claimed) since that revision.
	ErrChanged = errors.New("affinity: ownership changed")
	// ErrInvalidKey is returned when a tenant or conversation is not a valid id
	// ([A-Za-z0-9_-]{1,128}).
	ErrInvalidKey = errors.New("affinity: invalid tenant or conversation")
)

// maxAttempts bounds the compare-and-set retries of Claim and Release when the key keeps
// flipping between existing and deleted under them.
const maxAttempts = 16

// Owner is the value stored under <tenant>.<conversation> in the affinity bucket.
type Owner struct {
	Worker   string    `json:"worker"`
	Backend  string    `json:"backend"`
	Sandbox  string    `json:"sandbox,omitempty"`
	Since    time.Time `json:"since"`
	Revision uint64    `json:"-"` // KV revision of this value; 0 for an Owner not stored yet
}

// Config configures a Store. The zero value is valid: the default fleet.
type Config struct {
	// Fleet names the affinity bucket (Fleet.AffinityBucket).
	Fleet protocol.Subjects
	// Replicas is the replica count of the affinity bucket (default 1).
	Replicas int
}

// BucketConfig is the configuration OpenStore creates (or updates) a fleet's affinity bucket
// with: file storage, so ownership survives a NATS restart, history 1.
func BucketConfig(fleet protocol.Subjects, replicas int) jetstream.KeyValueConfig {
	if replicas <= 0 {
		replicas = 1
	}
	return jetstream.KeyValueConfig{
		Bucket:      fleet.AffinityBucket(),
		Description: "codefleet affinity of prefix " + fleet.Prefix + ": <tenant>.<conversation> -> the worker that holds its sandbox",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	}
}

// slot is one cached key. gone marks a key this process deleted at a revision after
// owner.Revision, whose delete marker the watch has not delivered yet: it reads as a miss, and
// it keeps the watch from re-inserting the deleted value meanwhile.
type slot struct {
	owner Owner
	gone  bool
}

// Store is the conversation ownership kept in JetStream KV, cached locally and kept fresh by a
// KV watch. Its methods are safe for concurrent use.
//
// Reads come from the cache (Get falls back to the KV on a miss); writes go to the KV with
// compare-and-set and update the cache at once, so a process reads its own writes.
type Store struct {
	kv jetstream.KeyValue
	f  *jskv.Follower

	mu      sync.RWMutex
	cache   map[string]slot
	live    int    // slots not gone
	watched uint64 // highest revision the watch delivered
}

// OpenStore creates or updates the affinity bucket (file storage, history 1), starts a watch of
// all its keys and returns once the existing values are loaded. ctx bounds the opening only;
// the watch runs until Stop (or until the connection closes: see Done).
func OpenStore(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, BucketConfig(cfg.Fleet, cfg.Replicas))
	if err != nil {
		return nil, fmt.Errorf("affinity: bucket %s: %w", cfg.Fleet.AffinityBucket(), err)
	}
	s := &Store{kv: kv, cache: make(map[string]slot)}
	// A watch that ends (its bucket deleted, or lost by a NATS server without storage) is
	// started anew, the bucket made again first; meanwhile Get reads the KV.
	ensure := func(ctx context.Context) error {
		_, err := js.CreateOrUpdateKeyValue(ctx, BucketConfig(cfg.Fleet, cfg.Replicas))
		return err
	}
	s.f, err = jskv.Follow(ctx, kv, ensure, s.reset, s.apply)
	if err != nil {
		return nil, fmt.Errorf("affinity: watch %s: %w", cfg.Fleet.AffinityBucket(), err)
	}
	return s, nil
}

// Stop stops the watch. The Store must not be used afterwards.
func (s *Store) Stop() { s.f.Stop() }

// Done is closed once Stop has stopped the watch.
func (s *Store) Done() <-chan struct{} { return s.f.Done() }

// reset forgets the cache before a new watch fills it again: keys deleted while no watch ran
// are not delivered again, and a bucket made again numbers its revisions from 1.
func (s *Store) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.cache)
	s.live, s.watched = 0, 0
}

// Check reports whether the bucket answers (its stream's info, within ctx) and the watch runs,
// for readiness.
func (s *Store) Check(ctx context.Context) error {
	if !s.f.Watching() {
		return fmt.Errorf("affinity bucket %s: not watching it (starting it again)", s.kv.Bucket())
	}
	if _, err := s.kv.Status(ctx); err != nil {
		return fmt.Errorf("affinity bucket %s: %w", s.kv.Bucket(), err)
	}
	return nil
}

// Len returns the number of cached ownerships.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.live
}

// apply takes one watch entry (in revision order).
func (s *Store) apply(e jetstream.KeyValueEntry) {
	key, rev := e.Key(), e.Revision()
	var o Owner
	ok := false
	if e.Operation() == jetstream.KeyValuePut {
		if err := json.Unmarshal(e.Value(), &o); err == nil {
			o.Revision, ok = rev, true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rev > s.watched {
		s.watched = rev
	}
	if cur, has := s.cache[key]; has && cur.owner.Revision >= rev {
		return // a write of this process already put a newer value here
	}
	if ok {
		s.setLocked(key, slot{owner: o})
	} else {
		// Deleted, purged, or a value that does not decode (Get then reads the KV and
		// reports the decode error).
		s.deleteLocked(key)
	}
}

func (s *Store) setLocked(key string, sl slot) {
	if cur, has := s.cache[key]; !has || cur.gone {
		if !sl.gone {
			s.live++
		}
	} else if sl.gone {
		s.live--
	}
	s.cache[key] = sl
}

func (s *Store) deleteLocked(key string) {
	if cur, has := s.cache[key]; has {
		if !cur.gone {
			s.live--
		}
		delete(s.cache, key)
	}
}

// learn caches o, read from or written to the KV by this process, unless the cache already
// knows the same or a later state of the key.
func (s *Store) learn(key string, o Owner) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.Revision <= s.watched {
		return // the watch delivered this revision or a later one: the cache is as fresh
	}
	if cur, has := s.cache[key]; has && cur.owner.Revision >= o.Revision {
		return
	}
	s.setLocked(key, slot{owner: o})
}

// released records that this process deleted key when it was at revision rev: its delete
// marker has a later revision the watch will deliver.
func (s *Store) released(key string, rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, has := s.cache[key]
	if has && cur.owner.Revision > rev {
		return // a value newer than the delete: the watch already went past it
	}
	if !has && s.watched >= rev {
		return // the watch already delivered the delete marker (or will never show rev)
	}
	s.setLocked(key, slot{owner: Owner{Revision: rev}, gone: true})
}

func key(tenant, conv string) (string, error) {
	if !protocol.ValidID(tenant) || !protocol.ValidID(conv) {
		return "", fmt.Errorf("%w: %q.%q", ErrInvalidKey, trim(tenant), trim(conv))
	}
	return protocol.Key(tenant, conv), nil
}

func trim(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Get returns the owner of a conversation from the cache, or from the KV on a cache miss (a
// key another dispatcher created a moment ago may not have reached the watch yet). A
// conversation without owner returns false and a nil error.
func (s *Store) Get(ctx context.Context, tenant, conv string) (Owner, bool, error) {
	k, err := key(tenant, conv)
	if err != nil {
		return Owner{}, false, err
	}
	s.mu.RLock()
	sl, has := s.cache[k]
	s.mu.RUnlock()
	if has && !sl.gone && !s.stopped() {
		return sl.owner, true, nil
	}
	return s.fetch(ctx, k)
}

// stopped reports whether no watch keeps the cache fresh (stopped, or between two watches).
func (s *Store) stopped() bool { return !s.f.Watching() }

// fetch reads key from the KV and caches what it finds.
func (s *Store) fetch(ctx context.Context, k string) (Owner, bool, error) {
	tenant, conv, _ := strings.Cut(k, ".")
	o, ok, err := lookup(ctx, s.kv, tenant, conv)
	if ok {
		s.learn(k, o)
	}
	return o, ok, err
}

// lookup reads the owner of a conversation straight from the bucket.
func lookup(ctx context.Context, kv jetstream.KeyValue, tenant, conv string) (Owner, bool, error) {
	k, err := key(tenant, conv)
	if err != nil {
		return Owner{}, false, err
	}
	e, err := kv.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Owner{}, false, nil
	}
	if err != nil {
		return Owner{}, false, fmt.Errorf("affinity: get %s: %w", k, err)
	}
	o, err := decode(k, e.Value(), e.Revision())
	return o, err == nil, err
}

func decode(k string, data []byte, rev uint64) (Owner, error) {
	var o Owner
	if err := json.Unmarshal(data, &o); err != nil {
		return Owner{}, fmt.Errorf("affinity: decode %s at revision %d: %w", k, rev, err)
	}
	o.Revision = rev
	return o, nil
}

// encode returns owner as stored (Since defaults to now, in UTC) and its JSON.
func encode(owner Owner) (Owner, []byte, error) {
	owner.Revision = 0
	if owner.Since.IsZero() {
		owner.Since = time.Now()
	}
	owner.Since = owner.Since.UTC()
	data, err := json.Marshal(owner)
	if err != nil {
		return Owner{}, nil, fmt.Errorf("affinity: encode owner: %w", err)
	}
	// Return what a reader decodes, so every Store hands out equal Owners.
	var stored Owner
	if err := json.Unmarshal(data, &stored); err != nil {
		return Owner{}, nil, fmt.Errorf("affinity: encode owner: %w", err)
	}
	return stored, data, nil
}

// Claim stores owner for a conversation that has none (kv.Create: compare-and-set). If another
// dispatcher claimed it first, Claim returns that winner's Owner and won=false. Exactly one of
// any number of racing Claims wins. A zero owner.Since is set to now; owner.Revision is ignored.
// The returned Owner carries its revision.
func (s *Store) Claim(ctx context.Context, tenant, conv string, owner Owner) (got Owner, won bool, err error) {
	k, err := key(tenant, conv)
	if err != nil {
		return Owner{}, false, err
	}
	stored, data, err := encode(owner)
	if err != nil {
		return Owner{}, false, err
	}
	return s.claim(ctx, k, stored, data)
}

func (s *Store) claim(ctx context.Context, k string, stored Owner, data []byte) (Owner, bool, error) {
	for range maxAttempts {
		rev, err := s.kv.Create(ctx, k, data)
		if err == nil {
			stored.Revision = rev
			s.learn(k, stored)
			return stored, true, nil
		}
		if !jskv.IsConflict(err) {
			return Owner{}, false, fmt.Errorf("affinity: claim %s: %w", k, err)
		}
		cur, ok, err := s.fetch(ctx, k)
		if err != nil {
			return Owner{}, false, err
		}
		if ok {
			return cur, false, nil
		}
		// Released between the Create and the Get: try again.
	}
	return Owner{}, false, fmt.Errorf("affinity: claim %s: the key kept changing over %d attempts", k, maxAttempts)
}

// Move replaces the owner from (matched by from.Revision, kv.Update) with to. If the value
// changed meanwhile, Move returns the current Owner and moved=false (someone else moved it
// first). If the key was deleted meanwhile (or from.Revision is 0), it behaves as Claim. A zero
// to.Since is set to now.
func (s *Store) Move(ctx context.Context, tenant, conv string, from, to Owner) (got Owner, moved bool, err error) {
	k, err := key(tenant, conv)
	if err != nil {
		return Owner{}, false, err
	}
	stored, data, err := encode(to)
	if err != nil {
		return Owner{}, false, err
	}
	if from.Revision == 0 {
		return s.claim(ctx, k, stored, data)
	}
	rev, err := s.kv.Update(ctx, k, data, from.Revision)
	if err == nil {
		stored.Revision = rev
		s.learn(k, stored)
		return stored, true, nil
	}
	if !jskv.IsConflict(err) {
		return Owner{}, false, fmt.Errorf("affinity: move %s: %w", k, err)
	}
	cur, ok, err := s.fetch(ctx, k)
	if err != nil {
		return Owner{}, false, err
	}
	if ok {
		return cur, false, nil
	}
	return s.claim(ctx, k, stored, data)
}

// Release deletes the ownership of a conversation. It is idempotent: releasing a conversation
// without owner returns nil. With rev == 0 it deletes whatever owner is stored. With rev != 0
// it deletes only if the key is still at that revision (jetstream.LastRevision); when the key
// was deleted meanwhile it returns nil, when it holds another value (moved or re-claimed since
// rev) it returns an error wrapping ErrChanged and leaves it.
func (s *Store) Release(ctx context.Context, tenant, conv string, rev uint64) error {
	k, err := key(tenant, conv)
	if err != nil {
		return err
	}
	if rev != 0 {
		err := s.kv.Delete(ctx, k, jetstream.LastRevision(rev))
		if err == nil {
			s.released(k, rev)
			return nil
		}
		if !jskv.IsConflict(err) {
			return fmt.Errorf("affinity: release %s: %w", k, err)
		}
		cur, ok, err := s.fetch(ctx, k)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		return fmt.Errorf("%w: %s is owned by worker %s at revision %d, not revision %d", ErrChanged, k, cur.Worker, cur.Revision, rev)
	}
	for range maxAttempts {
		cur, ok, err := s.fetch(ctx, k)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		err = s.kv.Delete(ctx, k, jetstream.LastRevision(cur.Revision))
		if err == nil {
			s.released(k, cur.Revision)
			return nil
		}
		if !jskv.IsConflict(err) {
			return fmt.Errorf("affinity: release %s: %w", k, err)
		}
	}
	return fmt.Errorf("affinity: release %s: the key kept changing over %d attempts", k, maxAttempts)
}

// Cached returns a conversation's owner from the cache only, without I/O; ok is false when the
// cache does not know it (Get then reads the KV).
func (s *Store) Cached(tenant, conv string) (Owner, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sl, has := s.cache[protocol.Key(tenant, conv)]
	if !has || sl.gone {
		return Owner{}, false
	}
	return sl.owner, true
}
