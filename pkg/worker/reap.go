package worker

import (
	"context"
	"time"

	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// reap ends sessions idle past IdleTTL or older than MaxLife (when not running), dropping their
// conversations' ownership, and those whose conversation the affinity store gives to another
// worker, replaces free pool sandboxes older than MaxLife (free ones are never idle), and
// removes sandboxes labelled with this worker that neither a session nor the pool holds
// (orphans of a crash or a race).
func (m *manager) reap(ctx context.Context) {
	now := time.Now()
	if m.pool != nil {
		m.pool.expire(now, m.cfg.MaxLife)
	}
	reaped := m.retire(func(s *session) (string, bool) {
		switch {
		case now.Sub(s.lastUsed) > m.cfg.IdleTTL:
			return reasonIdle, true
		case s.sb != nil && now.Sub(s.created) > m.cfg.MaxLife:
			return reasonMaxLife, true
		}
		return "", false
	})
	m.disownReaped(ctx, reaped)
	m.evictMoved(ctx)
	m.removeOrphans(ctx, now)
}

// disownReaped drops the ownership of the conversations whose sessions were reaped: with its
// sandbox gone the conversation is over for the fleet, so its next run is placed as a new
// conversation's (created, as it would be here), the affinity bucket does not keep every
// conversation ever opened, and the dispatchers count the conversation out of its tenant's
// sandbox quota (a conversation with an owner holds a sandbox slot). A conversation that got a
// run since (a new session) stays this worker's; one whose run comes in between the check and
// the delete gets a sandbox here without an owner, and its next run is placed anew (this copy
// then removed as moved, or reaped when idle).
func (m *manager) disownReaped(ctx context.Context, reaped []*session) {
	if m.disown == nil {
		return
	}
	for _, s := range reaped {
		m.mu.Lock()
		_, again := m.sessions[s.key]
		m.mu.Unlock()
		if again {
			continue
		}
		if err := m.disown(ctx, s.tenant, s.conv); err != nil {
			s.log.Warn().Err(err).Msg("drop the ownership of a reaped conversation")
		}
	}
}

// retire ends the sessions without runs for which why returns a reason (a reason* label),
// destroying their sandboxes or, when why says not to, only letting go of them, and returns
// them once they have ended.
func (m *manager) retire(why func(*session) (reason string, destroy bool)) []*session {
	var ended []*session
	m.mu.Lock()
	for _, s := range m.sessions {
		s.mu.Lock()
		if s.active == 0 {
			if reason, destroy := why(s); reason != "" {
				s.destroy, s.reason = destroy, reason
				delete(m.sessions, s.key)
				ended = append(ended, s)
				s.log.Info().Str("why", reason).Bool("destroy", destroy).Msg("removing sandbox")
			}
		}
		s.mu.Unlock()
	}
	m.mu.Unlock()
	for _, s := range ended {
		s.cancel()
		<-s.done
	}
	return ended
}

// evictMoved removes the sandboxes of conversations that were moved to another worker while
// this one was unreachable (cut off, paused, its registration expired): the new owner serves
// them now, and this worker's copy is stale.
func (m *manager) evictMoved(ctx context.Context) {
	if m.ownerOf == nil {
		return
	}
	type conv struct{ key, tenant, conv string }
	var idle []conv
	m.mu.Lock()
	for _, s := range m.sessions {
		s.mu.Lock()
		if s.active == 0 && s.sb != nil {
			idle = append(idle, conv{s.key, s.tenant, s.conv})
		}
		s.mu.Unlock()
	}
	m.mu.Unlock()
	moved := map[string]string{}
	for _, c := range idle {
		owner, ok, err := m.ownerOf(ctx, c.tenant, c.conv)
		if err != nil {
			m.log.Warn().Err(err).Msg("check conversation ownership")
			return
		}
		if ok && owner != m.worker {
			moved[c.key] = owner
		}
	}
	if len(moved) == 0 {
		return
	}
	// A sandbox that outlives its worker (Daytona) is the new owner's now, files and all: this
	// worker only lets go of it.
	_, shared := m.env.(envs.Reattacher)
	m.retire(func(s *session) (string, bool) {
		if owner, ok := moved[s.key]; ok {
			s.log.Info().Str("owner", owner).Msg("conversation moved to another worker")
			return reasonMoved, !shared
		}
		return "", false
	})
}

// removeOrphans destroys the sandboxes labelled with this worker that no session holds.
func (m *manager) removeOrphans(ctx context.Context, now time.Time) {
	// The pool's first: a claimed sandbox leaves it only once its session holds it.
	owned := map[string]bool{}
	if m.pool != nil {
		owned = m.pool.heldIDs()
	}
	m.mu.Lock()
	for _, s := range m.sessions {
		s.mu.Lock()
		if s.sb != nil {
			owned[s.sb.Info().ID] = true
		}
		s.mu.Unlock()
	}
	m.mu.Unlock()

	list, _, err := m.sandboxes(ctx)
	if err != nil {
		m.log.Warn().Err(err).Msg("list sandboxes for reconciliation")
		return
	}
	for _, info := range list {
		if owned[info.ID] || now.Sub(info.Created) < m.cfg.OrphanGrace {
			continue
		}
		if info.Free() { // the pool's, and the pool does not hold it: left over
			m.log.Info().Str("sandbox_id", info.ID).Msg("removing a free pool sandbox the pool does not hold")
			m.destroyQuietly(info.ID, reasonOrphan)
			continue
		}
		m.mu.Lock()
		s := m.sessions[protocol.Key(info.Tenant, info.Conversation)]
		m.mu.Unlock()
		if s != nil {
			s.mu.Lock()
			// Created since the snapshot above, or being created now (Create has not returned
			// its id yet): not an orphan.
			mine := s.sb == nil || s.sb.Info().ID == info.ID
			s.mu.Unlock()
			if mine {
				continue
			}
		}
		if m.stillWanted(ctx, info) {
			continue
		}
		m.log.Info().Str("sandbox_id", info.ID).Str("conversation_id", info.Conversation).Msg("removing orphaned sandbox")
		m.destroyQuietly(info.ID, reasonOrphan)
	}
}

// stillWanted reports whether a sandbox without a session must be kept anyway: with a backend
// whose sandboxes outlive their worker, a conversation that still has an owner will be
// re-attached to it (by this worker after a failed re-attach, or by another). When in doubt
// (the affinity store cannot be read), it is kept.
func (m *manager) stillWanted(ctx context.Context, info envs.Info) bool {
	if _, shared := m.env.(envs.Reattacher); !shared || m.ownerOf == nil {
		return false
	}
	_, owned, err := m.ownerOf(ctx, info.Tenant, info.Conversation)
	return owned || err != nil
}
