package registry_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/registry"
)

// lostLog records OnLost calls and checks that they never overlap.
type lostLog struct {
	mu       sync.Mutex
	ids      []string
	at       map[string]time.Time
	inflight atomic.Int32
	overlap  atomic.Bool
}

func (l *lostLog) onLost(id string) {
	if l.inflight.Add(1) > 1 {
		l.overlap.Store(true)
	}
	defer l.inflight.Add(-1)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ids = append(l.ids, id)
	if l.at == nil {
		l.at = make(map[string]time.Time)
	}
	l.at[id] = time.Now()
}

func (l *lostLog) count(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, x := range l.ids {
		if x == id {
			n++
		}
	}
	return n
}

// wait waits until OnLost was called n times for id.
func (l *lostLog) wait(t testing.TB, id string, n int) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() error {
		if got := l.count(id); got != n {
			return fmt.Errorf("OnLost(%s) called %d times, want %d", id, got, n)
		}
		return nil
	})
}

func (l *lostLog) when(id string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.at[id]
}

func openRegistry(t testing.TB, js jetstream.JetStream, cfg registry.Config) *registry.Registry {
	t.Helper()
	r, err := registry.Open(testutil.Context(t), js, cfg)
	if err != nil {
		t.Fatalf("registry.Open: %v", err)
	}
	t.Cleanup(r.Stop)
	return r
}

func workersKV(t testing.TB, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	kv, err := js.KeyValue(testutil.Context(t), protocol.Subjects{}.WorkersBucket())
	if err != nil {
		t.Fatalf("workers bucket: %v", err)
	}
	return kv
}

// register puts info the way a worker's heartbeat does (Updated = now) and returns it.
func register(t testing.TB, kv jetstream.KeyValue, info protocol.WorkerInfo) protocol.WorkerInfo {
	t.Helper()
	if info.Backends == nil {
		info.Backends = []string{"docker"}
	}
	if info.Started.IsZero() {
		info.Started = time.Now()
	}
	if info.Updated.IsZero() {
		info.Updated = time.Now()
	}
	if _, err := kv.Put(testutil.Context(t), info.ID, protocol.Encode(&info)); err != nil {
		t.Fatalf("put %s: %v", info.ID, err)
	}
	return info
}

// seen waits until r has the registration info (by its Updated time).
func seen(t testing.TB, r *registry.Registry, infos ...protocol.WorkerInfo) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, func() error {
		for _, info := range infos {
			got, ok := r.Get(info.ID)
			if !ok || !got.Updated.Equal(info.Updated) {
				return fmt.Errorf("registry has %s = %+v, %v; want the registration updated %s", info.ID, got, ok, info.Updated)
			}
		}
		return nil
	})
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func ids(infos []protocol.WorkerInfo) []string {
	var out []string
	for _, i := range infos {
		out = append(out, i.ID)
	}
	return out
}

func TestBucketConfig(t *testing.T) {
	js := testutil.JetStream(t, testutil.StartNATS(t))
	ctx := testutil.Context(t)

	// The Registry creates the bucket when it is missing, with WorkersBucketConfig.
	openRegistry(t, js, registry.Config{TTL: 2 * time.Second})
	st, err := workersKV(t, js).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 2*time.Second || st.History() != 1 || st.LimitMarkerTTL() != 2*time.Second {
		t.Fatalf("bucket TTL %s history %d marker TTL %s", st.TTL(), st.History(), st.LimitMarkerTTL())
	}
	// A worker calling CreateOrUpdateKeyValue with the same function changes nothing.
	if _, err := js.CreateOrUpdateKeyValue(ctx, registry.BucketConfig(protocol.Subjects{}, 2*time.Second, 1)); err != nil {
		t.Fatalf("worker's CreateOrUpdate: %v", err)
	}

	// A short TTL keeps the marker TTL at JetStream's minimum of a second.
	if c := registry.BucketConfig(protocol.Subjects{}, 500*time.Millisecond, 0); c.TTL != 500*time.Millisecond || c.LimitMarkerTTL != time.Second ||
		c.Storage != jetstream.MemoryStorage || c.Replicas != 1 || c.Bucket != "codefleet-workers" {
		t.Fatalf("BucketConfig(500ms) = %+v", c)
	}

	// An existing bucket (here created by a worker with another TTL) is opened, not changed.
	js2 := testutil.JetStream(t, testutil.StartNATS(t))
	if _, err := js2.CreateKeyValue(ctx, registry.BucketConfig(protocol.Subjects{}, 10*time.Second, 1)); err != nil {
		t.Fatal(err)
	}
	openRegistry(t, js2, registry.Config{TTL: time.Second})
	st, err = workersKV(t, js2).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 10*time.Second {
		t.Fatalf("the registry changed the bucket TTL to %s", st.TTL())
	}
}

func TestRegistryLiveAndDelete(t *testing.T) {
	s := testutil.StartNATS(t)
	js := testutil.JetStream(t, s)
	var lost lostLog
	r := openRegistry(t, js, registry.Config{TTL: 30 * time.Second, OnLost: lost.onLost})
	kv := workersKV(t, js)

	if got := r.Live(); len(got) != 0 {
		t.Fatalf("Live of an empty bucket = %v", got)
	}
	w2 := register(t, kv, protocol.WorkerInfo{ID: "w2", Capacity: 4, Load: 1})
	w1 := register(t, kv, protocol.WorkerInfo{ID: "w1", Capacity: 8, Backends: []string{"docker", "daytona"}})
	// A worker whose clock lags is live while the watch sees it refreshed.
	w3 := register(t, kv, protocol.WorkerInfo{ID: "w3", Capacity: 8, Updated: time.Now().Add(-time.Hour)})
	seen(t, r, w1, w2, w3)
	if got := ids(r.Live()); !slices.Equal(got, []string{"w1", "w2", "w3"}) {
		t.Fatalf("Live = %v", got)
	}
	if got, _ := r.Get("w1"); !slices.Equal(got.Backends, []string{"docker", "daytona"}) || got.Capacity != 8 {
		t.Fatalf("Get(w1) = %+v", got)
	}

	lost1 := r.Lost("w1")
	if closed(lost1) {
		t.Fatal("Lost(w1) closed for a live worker")
	}
	if !closed(r.Lost("nobody")) {
		t.Fatal("Lost of an unknown worker is not closed")
	}

	// Graceful shutdown: the worker deletes its key.
	if err := kv.Delete(testutil.Context(t), "w1"); err != nil {
		t.Fatal(err)
	}
	lost.wait(t, "w1", 1)
	if !closed(lost1) || !closed(r.Lost("w1")) {
		t.Fatal("Lost(w1) not closed after its key was deleted")
	}
	if _, ok := r.Get("w1"); ok {
		t.Fatal("Get(w1) after delete")
	}
	if got := ids(r.Live()); !slices.Equal(got, []string{"w2", "w3"}) {
		t.Fatalf("Live = %v", got)
	}

	// Purge loses a worker too.
	if err := kv.Purge(testutil.Context(t), "w2"); err != nil {
		t.Fatal(err)
	}
	lost.wait(t, "w2", 1)

	// Re-registration: live again, with a fresh Lost channel.
	w1 = register(t, kv, protocol.WorkerInfo{ID: "w1", Capacity: 8})
	seen(t, r, w1)
	lost1b := r.Lost("w1")
	if closed(lost1b) {
		t.Fatal("Lost(w1) closed after re-registration")
	}
	if err := kv.Delete(testutil.Context(t), "w1"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if !closed(lost1b) {
			return errors.New("the new Lost(w1) channel is not closed")
		}
		return nil
	})
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := lost.count("w1"); n != 2 {
			return fmt.Errorf("OnLost(w1) called %d times, want 2", n)
		}
		return nil
	})
	if lost.overlap.Load() {
		t.Fatal("OnLost calls overlapped")
	}

	// A registry opened now loads the registered workers before it returns.
	r2 := openRegistry(t, testutil.JetStream(t, s), registry.Config{TTL: 30 * time.Second})
	if got := ids(r2.Live()); !slices.Equal(got, []string{"w3"}) {
		t.Fatalf("new registry Live = %v", got)
	}
}

// TestRegistryExpiry leaves an entry to expire in a bucket with a 500ms TTL: the server's delete
// marker (or the registry's own check) loses the worker within TTL + 1s.
func TestRegistryExpiry(t *testing.T) {
	const ttl = 500 * time.Millisecond
	s := testutil.StartNATS(t)
	js := testutil.JetStream(t, s)
	var lost lostLog
	r := openRegistry(t, js, registry.Config{TTL: ttl, OnLost: lost.onLost})
	kv := workersKV(t, js)

	// Watch the bucket as a dispatcher would, to see how an expired entry shows up.
	w, err := kv.WatchAll(testutil.Context(t), jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	info := register(t, kv, protocol.WorkerInfo{ID: "w1", Capacity: 4})
	put := time.Now()
	seen(t, r, info)
	lostCh := r.Lost("w1")
	testutil.Eventually(t, ttl+time.Second, func() error {
		if !closed(lostCh) || lost.count("w1") != 1 {
			return errors.New("w1 not lost yet")
		}
		return nil
	})
	t.Logf("expired worker lost %s after its last refresh (TTL %s)", lost.when("w1").Sub(put).Round(time.Millisecond), ttl)

	// The server's marker: a KeyValuePurge operation (Nats-Marker-Reason: MaxAge).
	deadline := time.After(5 * time.Second)
	for {
		select {
		case e := <-w.Updates():
			if e == nil || e.Key() != "w1" || e.Operation() == jetstream.KeyValuePut {
				continue
			}
			t.Logf("expiry marker seen by a watch %s after the put: operation %s", time.Since(put).Round(time.Millisecond), e.Operation())
			if e.Operation() != jetstream.KeyValuePurge {
				t.Fatalf("expiry marker operation %s, want KeyValuePurge", e.Operation())
			}
			if _, err := kv.Get(testutil.Context(t), "w1"); !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Fatalf("Get of an expired key: %v", err)
			}
			return
		case <-deadline:
			t.Fatal("no expiry marker within 5s")
		}
	}
}

// TestRegistryStaleWithoutExpiry: the bucket keeps entries for a minute (a worker made it),
// but the registry's TTL is 1s: a worker that stops refreshing is lost by the registry's own
// check within TTL + TTL/4.
func TestRegistryStaleWithoutExpiry(t *testing.T) {
	const ttl = time.Second
	js := testutil.JetStream(t, testutil.StartNATS(t))
	if _, err := js.CreateKeyValue(testutil.Context(t), registry.BucketConfig(protocol.Subjects{}, time.Minute, 1)); err != nil {
		t.Fatal(err)
	}
	var lost lostLog
	r := openRegistry(t, js, registry.Config{TTL: ttl, OnLost: lost.onLost})
	kv := workersKV(t, js)

	// Refreshed every TTL/5 for a while: stays live.
	var info protocol.WorkerInfo
	for range 10 {
		info = register(t, kv, protocol.WorkerInfo{ID: "w1", Capacity: 4})
		seen(t, r, info)
		refreshed := time.Now()
		testutil.Eventually(t, time.Second, func() error {
			if time.Since(refreshed) < ttl/5 {
				return errors.New("waiting")
			}
			return nil
		})
		if _, ok := r.Get("w1"); !ok || lost.count("w1") != 0 {
			t.Fatal("a refreshed worker was lost")
		}
	}
	lostCh := r.Lost("w1")
	last := info.Updated
	testutil.Eventually(t, ttl+ttl/4+time.Second, func() error {
		if !closed(lostCh) || lost.count("w1") != 1 {
			return errors.New("w1 not lost yet")
		}
		return nil
	})
	after := lost.when("w1").Sub(last)
	t.Logf("stale worker lost %s after its last refresh (TTL %s)", after.Round(time.Millisecond), ttl)
	if after < ttl {
		t.Fatalf("lost after %s, before its TTL", after)
	}
	if _, err := kv.Get(testutil.Context(t), "w1"); err != nil {
		t.Fatalf("the key should still be in the bucket: %v", err)
	}
	if got := r.Live(); len(got) != 0 {
		t.Fatalf("Live = %v", ids(got))
	}

	// Refreshed again: live again.
	info = register(t, kv, protocol.WorkerInfo{ID: "w1", Capacity: 4})
	seen(t, r, info)
	if closed(r.Lost("w1")) {
		t.Fatal("Lost(w1) closed after re-registration")
	}
}

func TestPlace(t *testing.T) {
	setup := func(t *testing.T) (*registry.Registry, jetstream.KeyValue) {
		js := testutil.JetStream(t, testutil.StartNATS(t))
		r := openRegistry(t, js, registry.Config{TTL: time.Minute})
		return r, workersKV(t, js)
	}

	t.Run("least loaded by ratio", func(t *testing.T) {
		r, kv := setup(t)
		seen(t, r,
			register(t, kv, protocol.WorkerInfo{ID: "a", Capacity: 10, Load: 5}),
			register(t, kv, protocol.WorkerInfo{ID: "b", Capacity: 10, Load: 2}),
			register(t, kv, protocol.WorkerInfo{ID: "c", Capacity: 4, Load: 1}))
		var got []string
		for range 4 {
			w, err := r.Place("docker")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, w.ID)
		}
		// b 0.2 → c 0.25 (b is 0.3 now) → b 0.3 (c is 0.5) → b 0.4
		if !slices.Equal(got, []string{"b", "c", "b", "b"}) {
			t.Fatalf("placements %v, want [b c b b]", got)
		}
	})

	t.Run("skips draining, full and other backends", func(t *testing.T) {
		r, kv := setup(t)
		seen(t, r,
			register(t, kv, protocol.WorkerInfo{ID: "draining", Capacity: 10, Draining: true}),
			register(t, kv, protocol.WorkerInfo{ID: "full", Capacity: 3, Load: 3}),
			register(t, kv, protocol.WorkerInfo{ID: "daytona", Capacity: 10, Backends: []string{"daytona"}}),
			register(t, kv, protocol.WorkerInfo{ID: "busy", Capacity: 10, Load: 9}))
		if w, err := r.Place("docker"); err != nil || w.ID != "busy" {
			t.Fatalf("Place(docker) = %s, %v; want busy", w.ID, err)
		}
		for range 3 {
			if w, err := r.Place("daytona"); err != nil || w.ID != "daytona" {
				t.Fatalf("Place(daytona) = %s, %v; want daytona", w.ID, err)
			}
		}
		// busy is full now (9 + 1 pending); the next docker placement has nowhere to go.
		if w, err := r.Place("docker"); !errors.Is(err, registry.ErrNoWorker) || !strings.Contains(err.Error(), "full") {
			t.Fatalf("Place(docker) with all full = %s, %v", w.ID, err)
		}
		// "" takes any backend.
		if w, err := r.Place(""); err != nil || w.ID != "daytona" {
			t.Fatalf(`Place("") = %s, %v; want daytona`, w.ID, err)
		}
	})

	t.Run("no worker errors", func(t *testing.T) {
		r, kv := setup(t)
		check := func(backend, want string) {
			t.Helper()
			_, err := r.Place(backend)
			if !errors.Is(err, registry.ErrNoWorker) || !strings.Contains(err.Error(), want) {
				t.Fatalf("Place(%q) error %v, want ErrNoWorker saying %q", backend, err, want)
			}
			t.Logf("Place(%q): %v", backend, err)
		}
		check("docker", "no live workers")
		seen(t, r, register(t, kv, protocol.WorkerInfo{ID: "d1", Capacity: 2, Draining: true}))
		check("docker", "draining")
		check("", "draining")
		check("daytona", `has backend "daytona"`)
		seen(t, r, register(t, kv, protocol.WorkerInfo{ID: "f1", Capacity: 2, Load: 2}))
		check("docker", "full")
		seen(t, r, register(t, kv, protocol.WorkerInfo{ID: "z1", Capacity: 0}))
		check("docker", "full")
	})

	t.Run("power of two choices", func(t *testing.T) {
		r, kv := setup(t)
		var infos []protocol.WorkerInfo
		for i := range 20 {
			infos = append(infos, register(t, kv, protocol.WorkerInfo{ID: fmt.Sprintf("w%02d", i), Capacity: 10000, Load: i * 50}))
		}
		seen(t, r, infos...)
		counts := map[string]int{}
		const n = 100
		for range n {
			w, err := r.Place("docker")
			if err != nil {
				t.Fatal(err)
			}
			counts[w.ID]++
		}
		t.Logf("placements over 20 workers loaded 0, 50, ..., 950: %v", counts)
		// Least-loaded alone would put the first 50 on w00; two random choices spread them
		// (w00 is picked with probability 1/10), skewed to the less loaded, never on the most
		// loaded (it loses every pair).
		if counts["w19"] != 0 {
			t.Fatalf("the most loaded worker got %d placements", counts["w19"])
		}
		if counts["w00"] >= n/2 {
			t.Fatalf("w00 got %d of %d placements: not power of two choices", counts["w00"], n)
		}
		if len(counts) < 5 {
			t.Fatalf("only %d workers got placements", len(counts))
		}
		low, high := 0, 0
		for id, c := range counts {
			if id < "w10" {
				low += c
			} else {
				high += c
			}
		}
		if low <= high {
			t.Fatalf("less loaded half got %d, more loaded half %d", low, high)
		}
	})

	t.Run("burst spreads with pending counter", func(t *testing.T) {
		r, kv := setup(t)
		seen(t, r,
			register(t, kv, protocol.WorkerInfo{ID: "a", Capacity: 1000}),
			register(t, kv, protocol.WorkerInfo{ID: "b", Capacity: 1000}),
			register(t, kv, protocol.WorkerInfo{ID: "c", Capacity: 1000}))
		counts := map[string]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 100 {
					w, err := r.Place("docker")
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					counts[w.ID]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		t.Logf("300 placements over 3 equal workers: %v", counts)
		for _, id := range []string{"a", "b", "c"} {
			if c := counts[id]; c < 85 || c > 115 {
				t.Fatalf("%s got %d placements, want 100 ± 15%%", id, c)
			}
		}
	})

	t.Run("registration computed before the placements arrived keeps them pending", func(t *testing.T) {
		r, kv := setup(t)
		placeOnTwo(t, r, kv, 10)
		// a's heartbeat of a moment ago cannot count the 5 runs just sent to it: they stay
		// pending, and a does not look empty.
		seen(t, r, register(t, kv, protocol.WorkerInfo{ID: "a", Capacity: 100, Updated: time.Now()}))
		counts := map[string]int{}
		for range 4 {
			w, err := r.Place("docker")
			if err != nil {
				t.Fatal(err)
			}
			counts[w.ID]++
		}
		if counts["a"] != 2 || counts["b"] != 2 {
			t.Fatalf("placements after a's early heartbeat: %v, want 2 and 2", counts)
		}
	})

	t.Run("prefers a free pool sandbox", func(t *testing.T) {
		js := testutil.JetStream(t, testutil.StartNATS(t))
		// Placements count until the next registration (a nanosecond's window), whatever time
		// the test takes.
		r := openRegistry(t, js, registry.Config{TTL: time.Minute, PendingWindow: time.Nanosecond})
		kv := workersKV(t, js)
		// pooled and fuller are more loaded than empty, within the band; far is beyond it.
		seen(t, r,
			register(t, kv, protocol.WorkerInfo{ID: "pooled", Capacity: 100, Load: 6, PoolFree: 2}),
			register(t, kv, protocol.WorkerInfo{ID: "empty", Capacity: 100, Load: 0}),
			register(t, kv, protocol.WorkerInfo{ID: "fuller", Capacity: 100, Load: 9, PoolFree: 1}),
			register(t, kv, protocol.WorkerInfo{ID: "far", Capacity: 100, Load: 50, PoolFree: 4}))
		var got []string
		for range 5 {
			w, err := r.Place("docker")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, w.ID)
		}
		// pooled's two free ones (least loaded of the workers with one free), then fuller's one
		// (pending counts what the placements claimed), then least-loaded as without pools;
		// far's pool never draws one.
		if !slices.Equal(got, []string{"pooled", "pooled", "fuller", "empty", "empty"}) {
			t.Fatalf("placements %v, want [pooled pooled fuller empty empty]", got)
		}
		// A refreshed registration saying a sandbox is free again draws the next one back;
		// a full worker is not a candidate however many it has free.
		seen(t, r,
			register(t, kv, protocol.WorkerInfo{ID: "pooled", Capacity: 100, Load: 8, PoolFree: 1}),
			register(t, kv, protocol.WorkerInfo{ID: "fuller", Capacity: 10, Load: 10, PoolFree: 1}))
		if w, err := r.Place("docker"); err != nil || w.ID != "pooled" {
			t.Fatalf("after pooled's refresh: %s, %v; want pooled", w.ID, err)
		}
	})

	t.Run("fresh registration resets pending", func(t *testing.T) {
		js := testutil.JetStream(t, testutil.StartNATS(t))
		r := openRegistry(t, js, registry.Config{TTL: time.Minute, PendingWindow: time.Nanosecond})
		kv := workersKV(t, js)
		placeOnTwo(t, r, kv, 10)
		// a reports its load again, after the placements had time to reach it (the window is a
		// nanosecond here), still 0: they went elsewhere; b has 5 pending.
		seen(t, r, register(t, kv, protocol.WorkerInfo{ID: "a", Capacity: 100}))
		for i := range 5 {
			if w, err := r.Place("docker"); err != nil || w.ID != "a" {
				t.Fatalf("placement %d after a's refresh = %s, %v; want a", i, w.ID, err)
			}
		}
	})
}

// TestRegistrySilentBucketIsNoNews: when the registry bucket itself does not answer (here the
// NATS server is gone; on a cluster, its stream electing a leader after a node loss), no
// heartbeat can land, and the workers' silence does not make them lost.
func TestRegistrySilentBucketIsNoNews(t *testing.T) {
	const ttl = time.Second
	ns := testutil.StartNATS(t)
	js := testutil.JetStream(t, ns)
	if _, err := js.CreateKeyValue(testutil.Context(t), registry.BucketConfig(protocol.Subjects{}, time.Minute, 1)); err != nil {
		t.Fatal(err)
	}
	r := openRegistry(t, js, registry.Config{TTL: ttl})
	seen(t, r, register(t, workersKV(t, js), protocol.WorkerInfo{ID: "w1", Capacity: 4}))
	lost := r.Lost("w1")
	ns.Shutdown()
	// A stale worker is lost within TTL + TTL/4 when the bucket answers; give it three TTLs.
	select {
	case <-lost:
		t.Fatal("w1 was lost while the registry bucket could not be reached")
	case <-time.After(3 * ttl):
	}
	if _, ok := r.Get("w1"); !ok {
		t.Fatal("w1 is not live")
	}
}

// TestRegistryStalledWatch: the watch's consumer is gone (it lived on a NATS node that died)
// while the bucket answers and heartbeats land; nats.go recreates such a consumer only after
// two of its 5 s idle heartbeats are missed. The registry must not lose the workers that keep
// refreshing meanwhile (a dispatcher would answer "no live workers"), must still lose one that
// stopped, and must watch again without waiting for nats.go.
func TestRegistryStalledWatch(t *testing.T) {
	const ttl = time.Second
	js := testutil.JetStream(t, testutil.StartNATS(t))
	// Entries are kept for a minute, so only the registry's own check loses a stale worker.
	if _, err := js.CreateKeyValue(testutil.Context(t), registry.BucketConfig(protocol.Subjects{}, time.Minute, 1)); err != nil {
		t.Fatal(err)
	}
	var lost lostLog
	r := openRegistry(t, js, registry.Config{TTL: ttl, OnLost: lost.onLost})
	kv := workersKV(t, js)
	seen(t, r, register(t, kv, protocol.WorkerInfo{ID: "beating", Capacity: 4}),
		register(t, kv, protocol.WorkerInfo{ID: "stopped", Capacity: 4}))

	stream := "KV_" + protocol.Subjects{}.WorkersBucket()
	s, err := js.Stream(testutil.Context(t), stream)
	if err != nil {
		t.Fatal(err)
	}
	names := s.ConsumerNames(testutil.Context(t))
	var deleted []string
	for name := range names.Name() {
		if err := s.DeleteConsumer(testutil.Context(t), name); err != nil {
			t.Fatal(err)
		}
		deleted = append(deleted, name)
	}
	if len(deleted) != 1 {
		t.Fatalf("the registry's watch should be the stream's one consumer; deleted %v", deleted)
	}
	stalled := time.Now()

	// "beating" refreshes every TTL/5 for three TTLs; the stall is found within TTL + TTL/4.
	var info protocol.WorkerInfo
	for time.Since(stalled) < 3*ttl {
		info = register(t, kv, protocol.WorkerInfo{ID: "beating", Capacity: 4})
		at := time.Now()
		testutil.Eventually(t, time.Second, func() error {
			if time.Since(at) < ttl/5 {
				return errors.New("waiting")
			}
			return nil
		})
		if n := lost.count("beating"); n != 0 {
			t.Fatalf("a worker whose heartbeats land was lost %d times while the watch was stalled", n)
		}
	}
	lost.wait(t, "stopped", 1)
	// Watching again well before nats.go's own 10 s: a new worker and the latest refresh show.
	seen(t, r, info, register(t, kv, protocol.WorkerInfo{ID: "new", Capacity: 4}))
	t.Logf("a new registration seen %s after the watch's consumer was deleted", time.Since(stalled).Round(time.Millisecond))
	if after := time.Since(stalled); after > 8*time.Second {
		t.Fatalf("the registry watched again only %s after the stall", after)
	}
	if !slices.Equal(ids(r.Live()), []string{"beating", "new"}) {
		t.Fatalf("Live = %v, want beating and new", ids(r.Live()))
	}
}

// placeOnTwo registers workers a and b (capacity 100 each, empty) and places n conversations.
func placeOnTwo(t *testing.T, r *registry.Registry, kv jetstream.KeyValue, n int) {
	t.Helper()
	seen(t, r,
		register(t, kv, protocol.WorkerInfo{ID: "a", Capacity: 100}),
		register(t, kv, protocol.WorkerInfo{ID: "b", Capacity: 100}))
	for range n {
		if _, err := r.Place("docker"); err != nil {
			t.Fatal(err)
		}
	}
}

func join(t testing.TB, js jetstream.JetStream, cfg registry.MemberConfig) *registry.Member {
	t.Helper()
	m, err := registry.Join(testutil.Context(t), js, cfg)
	if err != nil {
		t.Fatalf("Join %s: %v", cfg.ID, err)
	}
	return m
}

func listIDs(t testing.TB, js jetstream.JetStream, fleet protocol.Subjects) []string {
	t.Helper()
	infos, err := registry.List(testutil.Context(t), js, fleet)
	if err != nil {
		t.Fatalf("List %s: %v", fleet.Prefix, err)
	}
	return ids(infos)
}

// TestMembersOfTwoFleets: workers of two prefixes on one server register in two buckets, and
// each fleet's List and Registry see only its own, even when both have a worker of the same id.
func TestMembersOfTwoFleets(t *testing.T) {
	js := testutil.JetStream(t, testutil.StartNATS(t))
	ctx := testutil.Context(t)
	stg, prd := protocol.Subjects{Prefix: "stg"}, protocol.Subjects{Prefix: "prd"}
	if got := listIDs(t, js, stg); len(got) != 0 {
		t.Fatalf("List before any worker: %v", got)
	}
	view := openRegistry(t, js, registry.Config{Fleet: prd, TTL: 30 * time.Second})
	for _, w := range []struct {
		fleet protocol.Subjects
		id    string
	}{{stg, "w1"}, {stg, "same"}, {prd, "same"}, {prd, "p1"}} {
		m := join(t, js, registry.MemberConfig{Fleet: w.fleet, ID: w.id, TTL: 30 * time.Second})
		if err := m.Heartbeat(ctx, protocol.WorkerInfo{Backends: []string{w.fleet.Prefix}, Capacity: 1, Updated: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Join(listIDs(t, js, stg), ","); got != "same,w1" {
		t.Fatalf("stg lists %s", got)
	}
	if got := strings.Join(listIDs(t, js, prd), ","); got != "p1,same" {
		t.Fatalf("prd lists %s", got)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		live := view.Live()
		if len(live) != 2 || live[1].ID != "same" || live[1].Backends[0] != "prd" {
			return fmt.Errorf("prd's registry sees %+v", live)
		}
		return nil
	})
	names := map[string]bool{}
	for name := range js.KeyValueStoreNames(ctx).Name() {
		names[name] = true
	}
	if !names["stg-workers"] || !names["prd-workers"] || names["codefleet-workers"] {
		t.Fatalf("buckets %v, want stg-workers and prd-workers only", names)
	}
}

// TestMemberLifecycle: a heartbeat registers the worker under its id whatever the info says, a
// heartbeat that finds the bucket deleted makes it again, Leave deregisters, and a second Join of
// a live id is refused while the holder keeps refreshing.
func TestMemberLifecycle(t *testing.T) {
	js := testutil.JetStream(t, testutil.StartNATS(t))
	ctx := testutil.Context(t)
	fleet := protocol.Subjects{}
	m := join(t, js, registry.MemberConfig{ID: "w", Interval: 100 * time.Millisecond, TTL: 10 * time.Second})
	if err := m.Heartbeat(ctx, protocol.WorkerInfo{ID: "not-me", Capacity: 3, Updated: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := listIDs(t, js, fleet); len(got) != 1 || got[0] != "w" {
		t.Fatalf("after a heartbeat: %v", got)
	}

	// An operator deletes the bucket: the next heartbeat makes it again.
	if err := js.DeleteKeyValue(ctx, fleet.WorkersBucket()); err != nil {
		t.Fatal(err)
	}
	if err := m.Heartbeat(ctx, protocol.WorkerInfo{Updated: time.Now()}); err != nil {
		t.Fatalf("heartbeat after the bucket was deleted: %v", err)
	}
	if got := listIDs(t, js, fleet); len(got) != 1 || got[0] != "w" {
		t.Fatalf("after the bucket came back: %v", got)
	}

	// The id is held while it is refreshed.
	stop := keepBeating(ctx, m)
	_, err := registry.Join(ctx, js, registry.MemberConfig{ID: "w", Interval: 100 * time.Millisecond, TTL: 10 * time.Second})
	stop()
	if !errors.Is(err, registry.ErrIDInUse) {
		t.Fatalf("Join of a live id: %v, want ErrIDInUse", err)
	}

	if err := m.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if got := listIDs(t, js, fleet); len(got) != 0 {
		t.Fatalf("after Leave: %v", got)
	}
	if err := m.Heartbeat(ctx, protocol.WorkerInfo{}); err == nil {
		t.Fatal("heartbeat after Leave succeeded")
	}
	// The id is free again: Join does not wait (for a holder that would be waited out for two
	// hour-long intervals).
	if _, err := registry.Join(ctx, js, registry.MemberConfig{ID: "w", Interval: time.Hour, TTL: 2 * time.Hour}); err != nil {
		t.Fatalf("Join of a free id: %v", err)
	}
	if _, err := registry.Join(ctx, js, registry.MemberConfig{ID: "a.b"}); err == nil || !strings.Contains(err.Error(), `"a.b"`) {
		t.Fatalf("Join with a bad id: %v", err)
	}
	if _, err := registry.Join(ctx, js, registry.MemberConfig{Fleet: protocol.Subjects{Prefix: "a.b"}, ID: "w2"}); err == nil || !strings.Contains(err.Error(), "prefix") {
		t.Fatalf("Join with a bad prefix: %v", err)
	}
}

// TestJoinRace: of two workers joining with one id at the same moment, one claims it (the claim
// is a compare-and-set) and the other, seeing the winner refresh its registration, is refused.
func TestJoinRace(t *testing.T) {
	js := testutil.JetStream(t, testutil.StartNATS(t))
	ctx := testutil.Context(t)
	cfg := registry.MemberConfig{ID: "twin", Interval: 100 * time.Millisecond, TTL: 10 * time.Second}
	type joined struct {
		m   *registry.Member
		err error
	}
	results := make(chan joined, 2)
	for range 2 {
		go func() {
			m, err := registry.Join(ctx, js, cfg)
			results <- joined{m, err}
		}()
	}
	first := <-results
	if first.err != nil {
		t.Fatalf("neither join won: %v", first.err)
	}
	defer keepBeating(ctx, first.m)()
	if second := <-results; !errors.Is(second.err, registry.ErrIDInUse) {
		t.Fatalf("both joins claimed the id: the second returned %v, want ErrIDInUse", second.err)
	}
}

// keepBeating refreshes m's registration every 50 ms, as a live worker does, until the returned
// func is called (which waits for the last heartbeat).
func keepBeating(ctx context.Context, m *registry.Member) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				return
			case <-tick.C:
				m.Heartbeat(ctx, protocol.WorkerInfo{Started: time.Now(), Updated: time.Now()})
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}
