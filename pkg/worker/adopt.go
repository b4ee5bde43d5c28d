package worker

import (
	"context"
	"errors"
	"sort"

	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// adopt re-attaches the sandboxes a previous process with this worker id left, so their
// conversations go on with their files, claimed pool sandboxes among them (the backend reports
// their conversation). Sandboxes that cannot be re-attached are destroyed, and so are free pool
// sandboxes: one may have been claimed half-way when the process died, and the pool is built
// anew (pool.go).
func (m *manager) adopt(ctx context.Context) (int, error) {
	list, unlabelled, err := m.sandboxes(ctx)
	if err != nil {
		return 0, err
	}
	m.warnUnlabelled(unlabelled)
	// Newest first: if a conversation somehow has two sandboxes, the newest wins.
	sort.Slice(list, func(i, j int) bool { return list[i].Created.After(list[j].Created) })
	adopted := 0
	for _, info := range list {
		if info.Free() {
			m.destroyQuietly(info.ID, reasonPool)
			continue
		}
		key := protocol.Key(info.Tenant, info.Conversation)
		m.mu.Lock()
		_, dup := m.sessions[key]
		m.mu.Unlock()
		if dup || !protocol.ValidID(info.Tenant) || !protocol.ValidID(info.Conversation) {
			m.destroyQuietly(info.ID, reasonAdopt)
			continue
		}
		sb, err := m.env.Open(ctx, info.ID)
		if err != nil {
			if errors.Is(err, envs.ErrSandboxFailed) {
				m.log.Warn().Err(err).Str("sandbox_id", info.ID).Msg("re-adopt sandbox; destroying it")
				m.destroyQuietly(info.ID, reasonAdopt)
			} else {
				// Passing (the backend unreachable): left alone; the reconciler sees it later.
				m.log.Warn().Err(err).Str("sandbox_id", info.ID).Msg("re-adopt sandbox; keeping it for later")
			}
			continue
		}
		s := m.newSession(info.Tenant, info.Conversation)
		s.sb, s.created = sb, info.Created
		m.noteLanguages(sb.Languages())
		m.mu.Lock()
		m.sessions[key] = s
		m.mu.Unlock()
		go m.loop(s)
		adopted++
		m.metrics.adopted.Inc()
		s.log.Info().Str("sandbox_id", info.ID).Msg("sandbox re-adopted")
	}
	return adopted, nil
}

// sandboxes lists the sandboxes this worker made: labelled with its id, in its fleet; it also
// counts those with its id and no fleet label. Another
// fleet on the same backend may have a worker of the same id (the default id is the host
// name); its sandboxes are left alone.
func (m *manager) sandboxes(ctx context.Context) (ours []envs.Info, unlabelled int, err error) {
	list, err := m.env.List(ctx, map[string]string{envs.LabelWorker: m.worker})
	if err != nil {
		return nil, 0, err
	}
	for _, info := range list {
		if _, ok := info.Labels[envs.LabelFleet]; !ok {
			unlabelled++
		}
		if envs.InFleet(info.Labels, m.cfg.Prefix) {
			ours = append(ours, info)
		}
	}
	return ours, unlabelled, nil
}

// warnUnlabelled says when a worker of a fleet with another prefix than the default found
// sandboxes with its id and no fleet label: made before sandboxes named their fleet, they count
// as the default fleet's, so this worker neither re-adopts nor reaps them. If this fleet made
// them before the upgrade, they are stale (its conversations moved to its own buckets too) and
// can be removed (docs/operations.md, "Upgrading").
func (m *manager) warnUnlabelled(n int) {
	if n > 0 && m.cfg.Prefix != protocol.DefaultPrefix {
		m.log.Warn().Int("sandboxes", n).Str("label", envs.LabelFleet).
			Msg("sandboxes with this worker's id and no fleet label belong to the default prefix's fleet and are left alone; if this fleet made them before it upgraded, remove them")
	}
}
