package jskv_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/jskv"
	"github.com/codefleet/codefleet/internal/testutil"
)

// TestFollowerSurvivesALostBucket: a bucket kept in memory is lost with its NATS server's
// restart, which ends a watch of it. The Follower makes the bucket again, forgets what it
// knew (reset) and watches anew: a value put after the restart reaches apply.
func TestFollowerSurvivesALostBucket(t *testing.T) {
	ns := testutil.StartRestartableNATS(t)
	nc, err := nats.Connect(ns.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := jetstream.KeyValueConfig{Bucket: "follow-test", Storage: jetstream.MemoryStorage}
	ctx := testutil.Context(t)
	kv, err := js.CreateKeyValue(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]string{}
	var resets atomic.Int32
	ensure := func(ctx context.Context) error {
		_, err := js.CreateOrUpdateKeyValue(ctx, cfg)
		return err
	}
	reset := func() {
		resets.Add(1)
		mu.Lock()
		clear(seen)
		mu.Unlock()
	}
	f, err := jskv.Follow(ctx, kv, ensure, reset, func(e jetstream.KeyValueEntry) {
		mu.Lock()
		seen[e.Key()] = string(e.Value())
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	mu.Lock()
	if seen["before"] != "1" || !f.Watching() {
		t.Fatalf("initial values %v, watching %v", seen, f.Watching())
	}
	mu.Unlock()

	ns.Stop()
	ns.Start()
	testutil.Eventually(t, 30*time.Second, func() error {
		if _, err := kv.Put(ctx, "after", []byte("2")); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if seen["after"] != "2" || !f.Watching() {
			return fmt.Errorf("seen %v, watching %v", seen, f.Watching())
		}
		return nil
	})
	if resets.Load() == 0 {
		t.Error("the watch went on without a reset: the test did not lose the bucket")
	}
	mu.Lock()
	if _, ok := seen["before"]; ok {
		t.Errorf("a key of the lost bucket is still known: %v", seen)
	}
	mu.Unlock()

	f.Stop()
	if f.Watching() {
		t.Error("watching after Stop")
	}
	select {
	case <-f.Done():
	default:
		t.Error("Done not closed after Stop")
	}
}

// TestFollowStartFails: a bucket that cannot be watched fails Follow.
func TestFollowStartFails(t *testing.T) {
	ns := testutil.StartNATS(t)
	js := testutil.JetStream(t, ns)
	ctx := testutil.Context(t)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "gone"})
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if f, err := jskv.Follow(sctx, kv, nil, nil, func(jetstream.KeyValueEntry) {}); err == nil {
		f.Stop()
		t.Fatal("Follow of a deleted bucket succeeded")
	} else if errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
