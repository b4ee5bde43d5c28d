package docker

import (
	"context"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/codefleet/codefleet/pkg/envs"
)

// Transport says which channel a sandbox's frames take: "socket" or "attach".
func Transport(sb envs.Sandbox) string { return sb.(*sandbox).transport() }

// SocketsOn reports whether new sandboxes still get a socket directory.
func (e *Env) SocketsOn() bool { return e.socketsOn() }

// MoveBindSources makes the daemon look for every bind mount's source under dir instead, as a
// daemon on another filesystem than the worker's would.
func (e *Env) MoveBindSources(dir string) { e.cli = &bindMover{apiClient: e.cli, dir: dir} }

type bindMover struct {
	apiClient
	dir string
}

func (m *bindMover) ContainerCreate(ctx context.Context, cfg *container.Config, host *container.HostConfig, net *network.NetworkingConfig, p *ocispec.Platform, name string) (container.CreateResponse, error) {
	for i := range host.Mounts {
		host.Mounts[i].Source = m.dir + host.Mounts[i].Source
	}
	return m.apiClient.ContainerCreate(ctx, cfg, host, net, p, name)
}
