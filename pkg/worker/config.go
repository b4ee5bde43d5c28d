package worker

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// ErrInvalidConfig wraps every configuration error.
var ErrInvalidConfig = errors.New("invalid worker config")

// Defaults of Config.
const (
	DefaultCapacity             = 32
	DefaultQueueDepth           = 16
	DefaultMaxConcurrentCreates = 4
	DefaultMaxTimeout           = 10 * time.Minute
	DefaultIdleTTL              = 30 * time.Minute
	DefaultMaxLife              = 24 * time.Hour
	DefaultReapInterval         = 10 * time.Second
	DefaultHeartbeatInterval    = time.Second
	DefaultHeartbeatTTL         = 3 * time.Second
	DefaultDrainTimeout         = 30 * time.Second
	DefaultOrphanGrace          = 2 * time.Minute
	DefaultDedupeSize           = 64
	DefaultCreateTimeout        = 2 * time.Minute
	// DefaultWarmPool is the warm pool of the worker command (--warm-pool); Config.WarmPool's
	// zero value is no pool.
	DefaultWarmPool = 4
)

// Config configures a Worker. The zero value of each optional field means its default.
type Config struct {
	// ID names the worker: its subjects, its registration and the labels of its sandboxes.
	// A worker restarted with the same ID re-adopts its sandboxes. Required.
	ID string
	// Prefix is the subject prefix; default "codefleet".
	Prefix string
	// Capacity is the most sandboxes held at once; a new conversation past it gets `capacity`.
	Capacity int
	// MaxConcurrentRuns bounds runs executing at once across conversations; default Capacity.
	MaxConcurrentRuns int
	// MaxConcurrentCreates bounds sandbox creations in progress at once, so a burst of new
	// conversations queues here instead of swamping the backend (a Docker daemon starting
	// hundreds of containers at once answers none of them in time).
	MaxConcurrentCreates int
	// WarmPool is how many free sandboxes of the default image the worker keeps started ahead
	// of demand, for new conversations to claim (pool.go); 0, the zero value, is none. Only
	// backends that implement envs.Pooler (Docker) have one. Free pool sandboxes count
	// towards Capacity but never turn a conversation away: one is destroyed to make room.
	WarmPool int
	// QueueDepth bounds the runs waiting per conversation; past it a run gets `busy`.
	QueueDepth int
	// MaxTimeout caps a run's timeout_ms.
	MaxTimeout time.Duration
	// IdleTTL destroys a sandbox unused for this long; MaxLife destroys it this long after its
	// creation (after its current run).
	IdleTTL time.Duration
	MaxLife time.Duration
	// ReapInterval is how often idle, expired and orphaned sandboxes are looked for.
	ReapInterval time.Duration
	// OrphanGrace spares containers younger than this from the orphan reconciler (they may be
	// being created).
	OrphanGrace time.Duration
	// HeartbeatInterval is how often the registration is refreshed; HeartbeatTTL is the
	// registry bucket's TTL, after which a silent worker counts as dead.
	HeartbeatInterval time.Duration
	HeartbeatTTL      time.Duration
	// KVReplicas is the replica count of the KV buckets the worker creates (1 on a single
	// server, 3 on a cluster).
	KVReplicas int
	// DrainTimeout bounds how long Shutdown waits for in-flight runs.
	DrainTimeout time.Duration
	// DestroyOnShutdown destroys the sandboxes at shutdown instead of keeping them for the
	// next worker with the same ID.
	DestroyOnShutdown bool
	// Image is the default sandbox image (empty: the backend's default). AllowedImages lists
	// the images a request's sandbox.image may name besides it; "*" allows any.
	Image         string
	AllowedImages []string
	// DedupeSize is how many request ids per conversation are remembered for retries.
	DedupeSize int
	// CreateTimeout bounds the creation of one sandbox.
	CreateTimeout time.Duration
	// MaxFileSize is the largest file a file request may put or get; default
	// protocol.DefaultMaxFileBytes, at most protocol.MaxFileBytes.
	MaxFileSize int64
	// Version is reported in the registration and in `nats micro info`.
	Version string
	// Metrics, when set, is where the worker registers its Prometheus metrics
	// (codefleet_worker_*).
	Metrics prometheus.Registerer
}

func (c *Config) setDefaults() {
	c.Prefix = cmp.Or(c.Prefix, protocol.DefaultPrefix)
	c.Capacity = cmp.Or(c.Capacity, DefaultCapacity)
	c.MaxConcurrentRuns = cmp.Or(c.MaxConcurrentRuns, c.Capacity)
	c.MaxConcurrentCreates = cmp.Or(c.MaxConcurrentCreates, DefaultMaxConcurrentCreates)
	c.QueueDepth = cmp.Or(c.QueueDepth, DefaultQueueDepth)
	c.MaxTimeout = cmp.Or(c.MaxTimeout, DefaultMaxTimeout)
	c.IdleTTL = cmp.Or(c.IdleTTL, DefaultIdleTTL)
	c.MaxLife = cmp.Or(c.MaxLife, DefaultMaxLife)
	c.ReapInterval = cmp.Or(c.ReapInterval, DefaultReapInterval)
	c.OrphanGrace = cmp.Or(c.OrphanGrace, DefaultOrphanGrace)
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, DefaultHeartbeatInterval)
	c.HeartbeatTTL = cmp.Or(c.HeartbeatTTL, DefaultHeartbeatTTL)
	c.KVReplicas = cmp.Or(c.KVReplicas, 1)
	c.DrainTimeout = cmp.Or(c.DrainTimeout, DefaultDrainTimeout)
	c.DedupeSize = cmp.Or(c.DedupeSize, DefaultDedupeSize)
	c.CreateTimeout = cmp.Or(c.CreateTimeout, DefaultCreateTimeout)
	c.MaxFileSize = cmp.Or(c.MaxFileSize, protocol.DefaultMaxFileBytes)
	c.Version = cmp.Or(c.Version, "0.1.0")
}

// Validate checks the configuration (after defaults).
func (c *Config) Validate() error {
	switch {
	case !protocol.ValidID(c.ID):
		return fmt.Errorf("%w: id %q must match [A-Za-z0-9_-]{1,128}", ErrInvalidConfig, c.ID)
	case !protocol.ValidPrefix(c.Prefix):
		return fmt.Errorf("%w: %w", ErrInvalidConfig, protocol.CheckPrefix(c.Prefix))
	case c.Capacity < 0, c.MaxConcurrentRuns < 0, c.MaxConcurrentCreates < 0, c.QueueDepth < 0, c.DedupeSize < 0:
		return fmt.Errorf("%w: capacity, max concurrent runs, queue depth and dedupe size must be positive", ErrInvalidConfig)
	case c.WarmPool < 0:
		return fmt.Errorf("%w: the warm pool (%d) must be 0 (none) or more", ErrInvalidConfig, c.WarmPool)
	case c.HeartbeatTTL <= c.HeartbeatInterval:
		return fmt.Errorf("%w: heartbeat TTL %s must exceed the heartbeat interval %s", ErrInvalidConfig, c.HeartbeatTTL, c.HeartbeatInterval)
	case c.MaxFileSize < 0 || c.MaxFileSize > protocol.MaxFileBytes:
		return fmt.Errorf("%w: max file size %d out of range (1 to %d bytes)", ErrInvalidConfig, c.MaxFileSize, int64(protocol.MaxFileBytes))
	case c.MaxTimeout < 0 || c.MaxTimeout > protocol.MaxTimeout:
		return fmt.Errorf("%w: max timeout %s out of range", ErrInvalidConfig, c.MaxTimeout)
	}
	return nil
}

// imageAllowed reports whether a request may ask for img.
func (c *Config) imageAllowed(img string) bool {
	if img == "" || img == c.Image {
		return true
	}
	for _, a := range c.AllowedImages {
		if a == "*" || a == img {
			return true
		}
	}
	return false
}
