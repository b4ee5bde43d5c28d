// Package registry owns codefleet's worker registry end to end: the KV bucket
// <prefix>-workers (protocol.Subjects.WorkersBucket) in which every live worker keeps one entry,
// its protocol.WorkerInfo, refreshed every heartbeat.
//
//   - A worker joins with Join: it claims its id (no other live worker may hold it), then
//     refreshes its entry with Member.Heartbeat and removes it with Member.Leave.
//   - A dispatcher watches the registry with Open: Registry keeps the live workers in memory,
//     reports the lost ones (OnLost) and places new conversations (Registry.Place).
//   - `codefleet status` reads it once with List.
//
// Nothing else in codefleet reads or writes the bucket. Every entry expires TTL after its last
// refresh, and an expired entry leaves a delete marker (LimitMarkerTTL), so watchers learn of
// a dead worker at once. The bucket is kept in memory: it is rebuilt within a heartbeat by the
// workers themselves (a heartbeat that finds the bucket gone makes it again), so it does not
// need to survive a NATS restart.
//
// The package does not log: failures are returned, worker losses are reported through
// Config.OnLost, and Join tells what it waits for through MemberConfig.Note.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// DefaultTTL is how long a worker's registration stays valid without a refresh.
const DefaultTTL = 3 * time.Second

// minMarkerTTL is the shortest delete-marker TTL JetStream accepts.
const minMarkerTTL = time.Second

// BucketConfig is the configuration of a fleet's registry bucket. Workers and dispatchers
// create it with this same function (a dispatcher never changes an existing bucket; a worker
// that has claimed its id sets it to its own TTL and replicas): entries
// expire ttl after their last refresh, and an expired entry leaves a delete marker
// (LimitMarkerTTL) so that watchers learn of a dead worker at once. JetStream keeps markers at
// least a second, so LimitMarkerTTL is max(ttl, 1s).
func BucketConfig(fleet protocol.Subjects, ttl time.Duration, replicas int) jetstream.KeyValueConfig {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if replicas <= 0 {
		replicas = 1
	}
	return jetstream.KeyValueConfig{
		Bucket:         fleet.WorkersBucket(),
		Description:    "codefleet workers of prefix " + fleet.Prefix + ": one entry per live worker, refreshed every heartbeat",
		TTL:            ttl,
		History:        1,
		Storage:        jetstream.MemoryStorage,
		Replicas:       replicas,
		LimitMarkerTTL: max(ttl, minMarkerTTL),
	}
}

// openBucket opens a fleet's registry bucket, or creates it with BucketConfig when it is
// missing; an existing bucket's configuration is never changed. Two processes creating it at
// the same moment with other settings make one create fail with ErrBucketExists: the other's
// bucket is then used.
func openBucket(ctx context.Context, js jetstream.JetStream, fleet protocol.Subjects, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	name := fleet.WorkersBucket()
	kv, err := js.KeyValue(ctx, name)
	if err == nil || !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, wrapBucket(name, err)
	}
	kv, err = js.CreateKeyValue(ctx, BucketConfig(fleet, ttl, replicas))
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, name)
	}
	return kv, wrapBucket(name, err)
}

func wrapBucket(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("registry: bucket %s: %w", name, err)
}

// bucketGone reports whether a KV error says the bucket itself is missing (a NATS server that
// lost its state, an operator's delete).
func bucketGone(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrBucketNotFound) ||
		errors.Is(err, jetstream.ErrStreamNotFound)
}

// decode reads a registration; the key is the worker's id whatever the value says.
func decode(key string, value []byte) (protocol.WorkerInfo, error) {
	var info protocol.WorkerInfo
	if err := json.Unmarshal(value, &info); err != nil {
		return protocol.WorkerInfo{}, fmt.Errorf("registry: entry %s: %w", key, err)
	}
	info.ID = key
	return info, nil
}

// List reads the registrations of a fleet's workers once, without a watch, sorted by id: what
// `codefleet status` shows. Entries that do not decode are skipped. A fleet whose bucket does
// not exist (no worker ever started) has no workers: List returns none and no error.
func List(ctx context.Context, js jetstream.JetStream, fleet protocol.Subjects) ([]protocol.WorkerInfo, error) {
	kv, err := js.KeyValue(ctx, fleet.WorkersBucket())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, wrapBucket(fleet.WorkersBucket(), err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, wrapBucket(fleet.WorkersBucket(), err)
	}
	defer keys.Stop()
	var out []protocol.WorkerInfo
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired since the listing
		}
		if err != nil {
			return nil, wrapBucket(fleet.WorkersBucket(), err)
		}
		if info, err := decode(k, e.Value()); err == nil {
			out = append(out, info)
		}
	}
	sortByID(out)
	return out, nil
}

func sortByID(infos []protocol.WorkerInfo) {
	slices.SortFunc(infos, func(a, b protocol.WorkerInfo) int { return strings.Compare(a.ID, b.ID) })
}

func cloneInfo(info protocol.WorkerInfo) protocol.WorkerInfo {
	info.Backends = slices.Clone(info.Backends)
	info.Languages = slices.Clone(info.Languages)
	return info
}
