package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/jskv"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// ErrIDInUse is returned by Join when a live worker already has the id.
var ErrIDInUse = errors.New("worker id in use")

// MemberConfig configures a worker's membership of its fleet's registry.
type MemberConfig struct {
	// Fleet names the registry bucket (Fleet.WorkersBucket).
	Fleet protocol.Subjects
	// ID is the worker's id: the key of its entry. Required.
	ID string
	// Interval is how often the worker refreshes its entry, TTL how long the entry lives
	// without a refresh (the bucket's TTL once Join has claimed the id). Defaults 1s and DefaultTTL.
	Interval, TTL time.Duration
	// Replicas of the bucket once Join has claimed the id (default 1).
	Replicas int
	// DrainTimeout bounds, with a TTL on top, the wait for a draining worker that holds the id
	// (a graceful stop still finishing its runs). Default 30s.
	DrainTimeout time.Duration
	// Note, if set, is told in a sentence what Join waits for or takes over, for the log.
	Note func(msg string)
}

func (c *MemberConfig) setDefaults() {
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.TTL <= 0 {
		c.TTL = DefaultTTL
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
}

// Member is a worker's entry in its fleet's registry. Its methods are safe for concurrent use;
// heartbeats are serialized.
type Member struct {
	cfg MemberConfig
	js  jetstream.JetStream

	// mu serializes heartbeats and Leave, and guards kv, which a heartbeat replaces when the
	// bucket was gone.
	mu sync.Mutex
	kv jetstream.KeyValue
	// bucket is a handle of the bucket for Check, which must not wait for a heartbeat in
	// progress (Status reads the stream by name: any handle of the bucket serves); left is set
	// by Leave.
	bucket jetstream.KeyValue
	left   atomic.Bool
}

// Join claims cfg.ID in the fleet's registry bucket (creating the bucket if need be). No two
// live workers may share an id: both would re-adopt, and fight over, the same sandboxes.
//
// The claim is a compare-and-set: an entry for the id is created when there is none, or
// replaced at the revision Join saw, so of two workers joining at once one wins and the other
// waits for it like for any holder. The entry says the worker is draining until its first
// Heartbeat, so no conversation is placed on a worker that is still starting; a worker must
// heartbeat from the moment it joins (its start, re-adoption included, may take longer than
// two intervals, and a joiner takes over an entry not refreshed for that long).
//
// A holder that is still refreshing its entry is a live worker: Join returns an error wrapping
// ErrIDInUse. One left by a process that died is not refreshed, and is waited out for two
// heartbeat intervals (a restart after a crash is not held up for the whole TTL); a holder that
// is draining (a graceful stop, or a worker starting) is waited for until it is gone, up to
// DrainTimeout and a TTL. Once the claim is won the bucket's configuration is updated to the
// worker's (a fleet's new heartbeat TTL takes effect), never before: a refused duplicate leaves
// it as it was.
func Join(ctx context.Context, js jetstream.JetStream, cfg MemberConfig) (*Member, error) {
	cfg.setDefaults()
	if !protocol.ValidID(cfg.ID) {
		return nil, fmt.Errorf("registry: worker id %q must match [A-Za-z0-9_-]{1,%d}", cfg.ID, protocol.MaxIDLen)
	}
	if cfg.Fleet.Prefix != "" {
		if err := protocol.CheckPrefix(cfg.Fleet.Prefix); err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
	}
	m := &Member{cfg: cfg, js: js}
	kv, err := openBucket(ctx, js, cfg.Fleet, cfg.TTL, cfg.Replicas)
	if err != nil {
		return nil, err
	}
	m.kv = kv
	if err := m.claim(ctx); err != nil {
		return nil, err
	}
	if m.kv, err = m.open(ctx); err != nil {
		return nil, err
	}
	m.bucket = m.kv
	return m, nil
}

// open creates or updates the bucket with the member's configuration.
func (m *Member) open(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := m.js.CreateOrUpdateKeyValue(ctx, BucketConfig(m.cfg.Fleet, m.cfg.TTL, m.cfg.Replicas))
	return kv, wrapBucket(m.cfg.Fleet.WorkersBucket(), err)
}

// claim takes the id: it creates the entry when there is none, or waits for its holder to go
// and replaces the entry at the revision it last saw.
func (m *Member) claim(ctx context.Context) error {
	id := m.cfg.ID
	for range maxClaims {
		e, err := m.kv.Get(ctx, id)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = m.kv.Create(ctx, id, m.claimEntry())
		case err == nil:
			var rev uint64
			if rev, err = m.waitOut(ctx, e); err == nil {
				if rev == 0 {
					_, err = m.kv.Create(ctx, id, m.claimEntry()) // the holder deregistered or expired
				} else {
					_, err = m.kv.Update(ctx, id, m.claimEntry(), rev)
				}
			}
		}
		if err == nil {
			return nil
		}
		if !jskv.IsConflict(err) {
			return wrapBucket(m.cfg.Fleet.WorkersBucket(), err)
		}
		// Another worker wrote under the id since: look again.
	}
	return fmt.Errorf("%w: the registration of %s kept changing while this worker claimed it", ErrIDInUse, id)
}

// maxClaims bounds the claims lost to another writer of the same id.
const maxClaims = 4

// claimEntry is the registration a claim writes: draining until the first Heartbeat.
func (m *Member) claimEntry() []byte {
	now := time.Now()
	return protocol.Encode(&protocol.WorkerInfo{ID: m.cfg.ID, Draining: true, Started: now, Updated: now})
}

// waitOut waits for the holder of the entry e to go. It returns the revision to replace (that
// of the holder's last refresh), or 0 when the holder deleted the entry or let it expire.
func (m *Member) waitOut(ctx context.Context, e jetstream.KeyValueEntry) (uint64, error) {
	id := m.cfg.ID
	watcher, err := m.kv.Watch(ctx, id, jetstream.UpdatesOnly())
	if err != nil {
		return 0, wrapBucket(m.cfg.Fleet.WorkersBucket(), err)
	}
	defer watcher.Stop()
	rev := e.Revision()
	quiet := 2 * m.cfg.Interval
	timer := time.NewTimer(quiet)
	defer timer.Stop()
	giveUp := time.NewTimer(m.cfg.DrainTimeout + m.cfg.TTL)
	defer giveUp.Stop()
	info, _ := decode(id, e.Value())
	draining := info.Draining // the holder said it drains (or starts): it is waited for
	if draining {
		m.note("a worker with this id is draining; waiting for it to finish")
	}
	for {
		select {
		case e, ok := <-watcher.Updates():
			if !ok {
				return 0, fmt.Errorf("registry: the watch of %s ended", id)
			}
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				return 0, nil // deregistered or expired: the other one is gone
			}
			rev = e.Revision()
			info, err := decode(id, e.Value())
			if err == nil && info.Draining {
				if !draining {
					m.note("a worker with this id is draining; waiting for it to finish")
				}
				draining = true
				timer.Reset(quiet)
				continue
			}
			return 0, fmt.Errorf("%w: a live worker with id %s refreshed its registration (started %s)",
				ErrIDInUse, id, info.Started.Format(time.RFC3339))
		case <-timer.C:
			// Not refreshed for two intervals: its holder is gone.
			m.note("taking over the registration of a previous worker with this id that stopped refreshing it")
			return rev, nil
		case <-giveUp.C:
			return 0, fmt.Errorf("%w: the worker with id %s is still draining", ErrIDInUse, id)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (m *Member) note(msg string) {
	if m.cfg.Note != nil {
		m.cfg.Note(msg)
	}
}

// Heartbeat writes info (its ID set to the member's) as the worker's registration. A put slower
// than the interval still counts if it lands within the TTL, so it is given half of the TTL: a
// loaded server or machine does not lose the worker. When the bucket is gone (a NATS server
// that lost its state, an operator's delete) it is made again, or dispatchers would never see
// this worker.
func (m *Member) Heartbeat(ctx context.Context, info protocol.WorkerInfo) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kv == nil {
		return errors.New("registry: the member has left")
	}
	ctx, cancel := context.WithTimeout(ctx, max(m.cfg.Interval, m.cfg.TTL/2))
	defer cancel()
	info.ID = m.cfg.ID
	data := protocol.Encode(&info)
	_, err := m.kv.Put(ctx, m.cfg.ID, data)
	if bucketGone(err) {
		kv, rerr := m.open(ctx)
		if rerr != nil {
			return errors.Join(err, rerr)
		}
		m.kv = kv
		_, err = m.kv.Put(ctx, m.cfg.ID, data)
	}
	if err != nil {
		return fmt.Errorf("registry: heartbeat of %s: %w", m.cfg.ID, err)
	}
	return nil
}

// Check reports whether the registry bucket answers (its stream's info, within ctx), for
// readiness. It does not wait for a heartbeat in progress.
func (m *Member) Check(ctx context.Context) error {
	if m.left.Load() {
		return errors.New("registry: the member has left")
	}
	if _, err := m.bucket.Status(ctx); err != nil {
		return wrapBucket(m.bucket.Bucket(), err)
	}
	return nil
}

// Leave removes the worker's registration: dispatchers lose it at once. Later heartbeats fail.
func (m *Member) Leave(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kv == nil {
		return nil
	}
	err := m.kv.Delete(ctx, m.cfg.ID)
	m.kv = nil
	m.left.Store(true)
	if err != nil {
		return fmt.Errorf("registry: deregister %s: %w", m.cfg.ID, err)
	}
	return nil
}
