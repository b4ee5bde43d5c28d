package docker

// Sandboxes for the worker's warm pool (envs.Pooler).
//
// A free pool sandbox is an ordinary sandbox of the default image started for no
// conversation: labelled envs.LabelPool and the worker's labels, without LabelTenant and
// LabelConversation, and named codefleet-pool-<random>. Labels are fixed when a container is
// created, so a claim records its conversation in the one thing Docker lets the worker change
// afterwards and no snippet can: the container's name. Claim renames it
// codefleet.<tenant>.<conversation>.<random>; ids are [A-Za-z0-9_-]{1,128} and Docker names
// allow dots, so the name reads back unambiguously, and List and Open (a restarted worker's
// re-adoption, the reaper) report the sandbox as the conversation's from then on.
//
// The conversation's sandbox-wide env (sandbox.env), which a container made for it would have
// had from the start, is given to every run instead (the agent applies a run's env to the
// run's process). For a worker that restarts, Claim first writes it into the container, in
// /.codefleet/env.json (root's, mode 0400), where Open reads it back; the rename comes last,
// so a sandbox whose claim was cut short still looks free (and the worker destroys free pool
// sandboxes it finds at start). A snippet running as root could change that file: it only
// changes its own conversation's env, which it can read anyway; who owns the sandbox is in the
// name. Two kinds of env are not given to a pool sandbox (Claimable), and such conversations
// get a container of their own: PATH, which the agent also uses to find the interpreters
// (container-wide, a PATH chooses which python runs; per run, it would not), and any env when
// the root filesystem is read-only (the file cannot be written).

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"path"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/errdefs"

	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
)

const (
	// claimEnvPath is where Claim keeps a claimed pool sandbox's sandbox-wide env.
	claimEnvPath = "/.codefleet/env.json"
	// claimPrefix starts the name of a claimed pool sandbox, freePrefix a free one's.
	claimPrefix = "codefleet."
	freePrefix  = "codefleet-pool-"
)

// CreateFree makes a sandbox of spec.Image for the warm pool: for no conversation, without
// spec.Env (see the top of this file).
func (e *Env) CreateFree(ctx context.Context, spec envs.Spec) (envs.Sandbox, error) {
	return e.create(ctx, spec, true)
}

// Claimable reports whether a free pool sandbox can take spec's sandbox-wide env: not when it
// sets PATH, nor with a read-only root filesystem.
func (e *Env) Claimable(spec envs.Spec) bool {
	if len(spec.Env) == 0 {
		return true
	}
	_, path := spec.Env["PATH"]
	return !path && !e.cfg.ReadonlyRootfs
}

// Claim binds a free pool sandbox to spec's conversation: its env is written into the
// container, then the container is renamed after the conversation (the commit point).
func (e *Env) Claim(ctx context.Context, sbi envs.Sandbox, spec envs.Spec) error {
	sb, ok := sbi.(*sandbox)
	switch {
	case !ok || sb.env != e:
		return fmt.Errorf("%w: docker: claim: not a sandbox of this backend", envs.ErrSandboxFailed)
	case !sb.info.Free():
		return fmt.Errorf("%w: docker: claim: sandbox %s is not a free pool sandbox", envs.ErrSandboxFailed, short(sb.info.ID))
	case !protocol.ValidID(spec.Tenant) || !protocol.ValidID(spec.Conversation):
		return fmt.Errorf("%w: docker: claim: tenant %q and conversation %q must match [A-Za-z0-9_-]{1,128}", envs.ErrSandboxFailed, spec.Tenant, spec.Conversation)
	case spec.Image != "" && spec.Image != sb.info.Image:
		return fmt.Errorf("%w: docker: claim: sandbox %s runs %s, not %s", envs.ErrSandboxFailed, short(sb.info.ID), sb.info.Image, spec.Image)
	case !e.Claimable(spec):
		return fmt.Errorf("%w: docker: claim: this sandbox env must be the container's own", envs.ErrSandboxFailed)
	}
	sb.mu.Lock()
	dead := sb.dead
	sb.mu.Unlock()
	if dead != nil {
		return dead // its agent is gone: it would fail the conversation's first run
	}
	actx, cancel := context.WithTimeout(ctx, e.cfg.APITimeout)
	defer cancel()
	id := sb.info.ID
	if len(spec.Env) > 0 {
		body, err := envArchive(spec.Env)
		if err != nil {
			return fmt.Errorf("%w: docker: claim: %v", envs.ErrSandboxFailed, err)
		}
		if err := e.cli.CopyToContainer(actx, id, path.Dir(claimEnvPath), bytes.NewReader(body), container.CopyToContainerOptions{}); err != nil {
			return e.classify("claim: write env", err)
		}
	}
	if err := e.cli.ContainerRename(actx, id, claimName(spec.Tenant, spec.Conversation)); err != nil {
		return e.classify("claim: rename container", err)
	}
	sb.info.Tenant, sb.info.Conversation = spec.Tenant, spec.Conversation
	sb.info.Labels = claimedLabels(sb.info.Labels, spec.Tenant, spec.Conversation)
	if len(spec.Env) > 0 {
		sb.runEnv = maps.Clone(spec.Env)
	}
	sb.claimEgress(spec.Tenant)
	e.log.Debug().Str("sandbox_id", short(id)).Str("tenant", spec.Tenant).Str("conversation_id", spec.Conversation).Msg("pool sandbox claimed")
	return nil
}

// readClaimEnv reads the sandbox-wide env Claim wrote into a container; none when it wrote
// none.
func (e *Env) readClaimEnv(ctx context.Context, id string) (map[string]string, error) {
	rc, _, err := e.cli.CopyFromContainer(ctx, id, claimEnvPath)
	if errdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, e.classify("read the claim's env", err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	if _, err := tr.Next(); err != nil {
		return nil, fmt.Errorf("%w: docker: read the claim's env of %s: %v", envs.ErrSandboxFailed, short(id), err)
	}
	var env map[string]string
	if err := json.NewDecoder(io.LimitReader(tr, 4<<20)).Decode(&env); err != nil {
		return nil, fmt.Errorf("%w: docker: read the claim's env of %s: %v", envs.ErrSandboxFailed, short(id), err)
	}
	return env, nil
}

// envArchive is the tar of claimEnvPath holding env.
func envArchive(env map[string]string) ([]byte, error) {
	body, err := json.Marshal(env)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: path.Base(claimEnvPath), Mode: 0o400, Size: int64(len(body)), ModTime: time.Now()}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(body); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// claimName is the name of a pool sandbox claimed by tenant's conversation:
// codefleet.<tenant>.<conversation>.<random> (the random part keeps it unique should the
// conversation have another container, an older one being removed, say).
func claimName(tenant, conv string) string {
	var b [4]byte
	rand.Read(b[:])
	return claimPrefix + tenant + "." + conv + "." + hex.EncodeToString(b[:])
}

// claimOf reads the tenant and conversation back from a claimed pool sandbox's name (with or
// without Docker's leading slash).
func claimOf(name string) (tenant, conv string, ok bool) {
	parts := strings.Split(strings.TrimPrefix(name, "/"), ".")
	if len(parts) != 4 || parts[0]+"." != claimPrefix || !protocol.ValidID(parts[1]) || !protocol.ValidID(parts[2]) {
		return "", "", false
	}
	return parts[1], parts[2], true
}

// freeName is the name of a new pool sandbox.
func freeName() string {
	var b [6]byte
	rand.Read(b[:])
	return freePrefix + hex.EncodeToString(b[:])
}

// claimedLabels returns labels with the tenant and conversation a claim gave the sandbox.
func claimedLabels(labels map[string]string, tenant, conv string) map[string]string {
	out := maps.Clone(labels)
	if out == nil {
		out = map[string]string{}
	}
	out[envs.LabelTenant], out[envs.LabelConversation] = tenant, conv
	return out
}
