package affinity

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/jskv"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// Owners reads conversations' owners straight from a fleet's affinity bucket, without a Store
// and its watch: what a worker needs to check, now and then, that its conversations are still
// its own, and to drop the ownership of those whose sandboxes it reaped. Its methods are safe
// for concurrent use.
type Owners struct {
	js    jetstream.JetStream
	fleet protocol.Subjects

	mu sync.Mutex
	kv jetstream.KeyValue // opened when first found
}

// NewOwners returns the owners of fleet's conversations; it does no I/O.
func NewOwners(js jetstream.JetStream, fleet protocol.Subjects) *Owners {
	return &Owners{js: js, fleet: fleet}
}

// Owner returns the worker that owns a conversation. Without the bucket (no dispatcher of the
// fleet ever ran) no conversation has an owner: ok is false and err nil.
func (o *Owners) Owner(ctx context.Context, tenant, conv string) (worker string, ok bool, err error) {
	kv, err := o.bucket(ctx)
	if kv == nil {
		return "", false, err
	}
	owner, ok, err := lookup(ctx, kv, tenant, conv)
	return owner.Worker, ok, err
}

// Release drops the ownership of a conversation if worker owns it, at the revision it read:
// an ownership moved to another worker, or claimed again, since is left alone, and so is a
// conversation without one.
func (o *Owners) Release(ctx context.Context, tenant, conv, worker string) error {
	kv, err := o.bucket(ctx)
	if kv == nil {
		return err
	}
	owner, ok, err := lookup(ctx, kv, tenant, conv)
	if err != nil || !ok || owner.Worker != worker {
		return err
	}
	k := protocol.Key(tenant, conv)
	err = kv.Delete(ctx, k, jetstream.LastRevision(owner.Revision))
	if err != nil && !jskv.IsConflict(err) {
		return fmt.Errorf("affinity: release %s: %w", k, err)
	}
	return nil
}

// bucket returns the affinity bucket, opened when first found; nil and a nil error while it
// does not exist.
func (o *Owners) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	o.mu.Lock()
	kv := o.kv
	o.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	kv, err := o.js.KeyValue(ctx, o.fleet.AffinityBucket())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("affinity: bucket %s: %w", o.fleet.AffinityBucket(), err)
	}
	o.mu.Lock()
	o.kv = kv
	o.mu.Unlock()
	return kv, nil
}
