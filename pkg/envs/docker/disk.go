package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"maps"
	"strconv"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"

	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/internal/config"
)

// How a sandbox's disk limit (Config.Disk) is held.
const (
	// DiskKernel: the daemon's storage driver limits each container's writable layer
	// (--storage-opt size: overlay2 on xfs with project quotas, btrfs, zfs), so writes past
	// the limit fail with ENOSPC; the agent's file size limit is set as well.
	DiskKernel = "storage-opt"
	// DiskAgent: the driver cannot (fuse-overlayfs, overlay2 on ext4, vfs): the sandbox agent
	// holds the limit, a file size limit for every process and a watchdog that ends the runs
	// once the snippets' files pass it (internal/agent/disk.go).
	DiskAgent = "agent"
	// DiskNone: no limit (Config.Disk 0).
	DiskNone = "none"
)

// DiskMode returns how the disk limit is held on this daemon, finding it out on first use
// with img (any image: the storage driver decides): a container is created, never started,
// with a size option, and removed.
func (e *Env) DiskMode(ctx context.Context, img string) (string, error) {
	if e.cfg.Disk <= 0 {
		return DiskNone, nil
	}
	e.diskMu.Lock()
	defer e.diskMu.Unlock()
	if e.diskMode != "" {
		return e.diskMode, nil
	}
	var b [6]byte
	rand.Read(b[:])
	name := "codefleet-probe-" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(ctx, e.cfg.APITimeout)
	defer cancel()
	labels := maps.Clone(e.cfg.Labels) // the worker's, so that a probe left by a crash is its own
	if labels == nil {
		labels = map[string]string{}
	}
	labels[labelProbe] = "true"
	created, err := e.cli.ContainerCreate(ctx,
		&container.Config{Image: img, Entrypoint: []string{"/nonexistent"}, Labels: labels},
		&container.HostConfig{NetworkMode: "none", StorageOpt: map[string]string{"size": strconv.FormatInt(e.cfg.Disk, 10)}},
		nil, nil, name)
	switch {
	case err == nil:
		e.cli.ContainerRemove(context.WithoutCancel(ctx), created.ID, container.RemoveOptions{Force: true})
		e.diskMode = DiskKernel
	case client.IsErrConnectionFailed(err) || ctx.Err() != nil:
		return "", e.classify("create a container to find how its disk can be limited", err)
	default:
		// The daemon refused the size option: its drivers answer with plain errors (a 500:
		// "--storage-opt is not supported", "... supported only for overlay over xfs with
		// 'pquota' mount option"), so any refusal of this otherwise plain container counts.
		e.diskMode = DiskAgent
		e.log.Debug().Err(err).Msg("the Docker daemon refused a container size")
	}
	how := "the Docker daemon's storage driver limits each sandbox's writable layer (--storage-opt size)"
	if e.diskMode == DiskAgent {
		how = "the Docker daemon's storage driver cannot limit a container's size: the sandbox agent holds it (a file size limit and a watchdog of the files)"
	}
	e.log.Info().Str("disk", config.FormatSize(e.cfg.Disk)).Str("mode", e.diskMode).Msg("sandbox disk limit: " + how)
	return e.diskMode, nil
}

// labelProbe marks the container DiskMode creates (never started, removed at once).
const labelProbe = "io.codefleet.probe"

// diskSettings returns the agent's arguments and the storage options of a new container of
// img for the disk limit.
func (e *Env) diskSettings(ctx context.Context, img string) (args []string, storage map[string]string, err error) {
	mode, err := e.DiskMode(ctx, img)
	if err != nil || mode == DiskNone {
		return nil, nil, err
	}
	args = []string{wire.ArgDiskLimit + "=" + strconv.FormatInt(e.cfg.Disk, 10)}
	if mode == DiskKernel {
		return args, map[string]string{"size": strconv.FormatInt(e.cfg.Disk, 10)}, nil
	}
	return append(args, wire.ArgDiskWatch), nil, nil
}
