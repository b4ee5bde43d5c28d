package affinity

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// Owners reads conversations' owners straight from a fleet's affinity bucket, without a Store
// and its watch: what a worker needs to check, now and then, that its conversations are still
// its own. Its methods are safe for concurrent use.
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
	o.mu.Lock()
	kv := o.kv
	o.mu.Unlock()
	if kv == nil {
		kv, err = o.js.KeyValue(ctx, o.fleet.AffinityBucket())
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return "", false, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("affinity: bucket %s: %w", o.fleet.AffinityBucket(), err)
		}
		o.mu.Lock()
		o.kv = kv
		o.mu.Unlock()
	}
	owner, ok, err := lookup(ctx, kv, tenant, conv)
	return owner.Worker, ok, err
}
