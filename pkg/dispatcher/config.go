package dispatcher

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
)

// ErrInvalidConfig wraps every configuration error.
var ErrInvalidConfig = errors.New("invalid dispatcher config")

// Defaults of Config.
const (
	DefaultHeartbeatTTL = 3 * time.Second
	// DefaultRelayOverhead is added to a run's timeout to bound the wait for its worker's
	// answer: room for creating a sandbox (an image pull aside).
	DefaultRelayOverhead = 2 * time.Minute
	DefaultMaxTimeout    = 10 * time.Minute
	DefaultCloseTimeout  = time.Minute
)

// Config configures a Dispatcher. The zero value of each field means its default.
type Config struct {
	// Name identifies this dispatcher in logs and discovery; default a random id.
	Name string
	// Prefix is the subject prefix; default "codefleet".
	Prefix string
	// HeartbeatTTL is the workers' registration TTL: a worker silent this long is dead.
	HeartbeatTTL time.Duration
	// KVReplicas is the replica count of the KV buckets, should the dispatcher create them.
	KVReplicas int
	// MaxTimeout caps the run timeout the dispatcher waits for (workers cap it too).
	MaxTimeout time.Duration
	// RelayOverhead is added to a run's timeout to bound the wait for the worker's answer.
	RelayOverhead time.Duration
	// CloseTimeout bounds a close relayed to a worker.
	CloseTimeout time.Duration
	// Version is reported by `nats micro info`.
	Version string
	// Metrics, when set, is where the dispatcher registers its Prometheus metrics
	// (codefleet_dispatcher_*).
	Metrics prometheus.Registerer
	// Quotas are the tenants' sandbox and run quotas, counted fleet-wide in the quota bucket
	// (pkg/quota); every dispatcher of a fleet should have the same. The zero value limits
	// nothing, and the dispatcher then opens no quota bucket.
	Quotas quota.Limits
	// QuotaGrace is how old a sandbox slot must be before it can be found stale (its
	// conversation without an owner) and reclaimed; default quota.DefaultGrace, longer than a
	// placement takes.
	QuotaGrace time.Duration
}

func (c *Config) setDefaults() {
	c.Name = cmp.Or(c.Name, nuid.Next())
	c.Prefix = cmp.Or(c.Prefix, protocol.DefaultPrefix)
	c.HeartbeatTTL = cmp.Or(c.HeartbeatTTL, DefaultHeartbeatTTL)
	c.KVReplicas = cmp.Or(c.KVReplicas, 1)
	c.MaxTimeout = cmp.Or(c.MaxTimeout, DefaultMaxTimeout)
	c.RelayOverhead = cmp.Or(c.RelayOverhead, DefaultRelayOverhead)
	c.CloseTimeout = cmp.Or(c.CloseTimeout, DefaultCloseTimeout)
	c.Version = cmp.Or(c.Version, "0.1.0")
	c.QuotaGrace = cmp.Or(c.QuotaGrace, quota.DefaultGrace)
}

// Validate checks the configuration (after defaults).
func (c *Config) Validate() error {
	switch {
	case !protocol.ValidPrefix(c.Prefix):
		return fmt.Errorf("%w: %w", ErrInvalidConfig, protocol.CheckPrefix(c.Prefix))
	case c.HeartbeatTTL < 0, c.MaxTimeout < 0, c.RelayOverhead < 0, c.CloseTimeout < 0, c.QuotaGrace < 0:
		return fmt.Errorf("%w: heartbeat TTL, max timeout, relay overhead, close timeout and quota grace must not be negative", ErrInvalidConfig)
	case c.KVReplicas < 0 || c.KVReplicas > 5:
		return fmt.Errorf("%w: KV replicas %d: want 1 to 5", ErrInvalidConfig, c.KVReplicas)
	}
	if err := c.Quotas.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}
