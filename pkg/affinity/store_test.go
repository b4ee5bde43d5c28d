package affinity_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/affinity"
)

func openStore(t testing.TB, js jetstream.JetStream) *affinity.Store {
	t.Helper()
	st, err := affinity.OpenStore(testutil.Context(t), js, affinity.Config{})
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	t.Cleanup(st.Stop)
	return st
}

func sameOwner(a, b affinity.Owner) bool {
	return a.Worker == b.Worker && a.Backend == b.Backend && a.Sandbox == b.Sandbox &&
		a.Since.Equal(b.Since) && a.Revision == b.Revision
}

func mustGet(t testing.TB, st *affinity.Store, tenant, conv string) (affinity.Owner, bool) {
	t.Helper()
	o, ok, err := st.Get(testutil.Context(t), tenant, conv)
	if err != nil {
		t.Fatalf("Get %s.%s: %v", tenant, conv, err)
	}
	return o, ok
}

func TestStoreBasics(t *testing.T) {
	js := testutil.JetStream(t, testutil.StartNATS(t))
	st := openStore(t, js)
	ctx := testutil.Context(t)

	if _, ok := mustGet(t, st, "default", "c1"); ok {
		t.Fatal("Get of a new conversation found an owner")
	}

	w1 := affinity.Owner{Worker: "w1", Backend: "docker", Sandbox: "sb1"}
	got, won, err := st.Claim(ctx, "default", "c1", w1)
	if err != nil || !won {
		t.Fatalf("Claim: won=%v err=%v", won, err)
	}
	if got.Worker != "w1" || got.Sandbox != "sb1" || got.Revision == 0 || got.Since.IsZero() {
		t.Fatalf("Claim returned %+v", got)
	}
	owned1 := got
	if o, ok := mustGet(t, st, "default", "c1"); !ok || !sameOwner(o, owned1) {
		t.Fatalf("Get = %+v, %v; want %+v", o, ok, owned1)
	}

	// A second claim loses to the first.
	got, won, err = st.Claim(ctx, "default", "c1", affinity.Owner{Worker: "w2", Backend: "docker"})
	if err != nil || won || !sameOwner(got, owned1) {
		t.Fatalf("second Claim = %+v, won=%v, err=%v; want the first owner", got, won, err)
	}

	// Move with a stale revision returns the current owner.
	stale := owned1
	stale.Revision += 1000
	got, moved, err := st.Move(ctx, "default", "c1", stale, affinity.Owner{Worker: "w3", Backend: "docker"})
	if err != nil || moved || !sameOwner(got, owned1) {
		t.Fatalf("Move with a stale revision = %+v, moved=%v, err=%v", got, moved, err)
	}

	// Move with the current revision replaces it.
	got, moved, err = st.Move(ctx, "default", "c1", owned1, affinity.Owner{Worker: "w2", Backend: "docker", Sandbox: "sb2"})
	if err != nil || !moved || got.Worker != "w2" || got.Revision <= owned1.Revision {
		t.Fatalf("Move = %+v, moved=%v, err=%v", got, moved, err)
	}
	owned2 := got
	if o, ok := mustGet(t, st, "default", "c1"); !ok || !sameOwner(o, owned2) {
		t.Fatalf("Get after Move = %+v, %v; want %+v", o, ok, owned2)
	}

	// A second dispatcher moving from the old owner loses to the first move.
	got, moved, err = st.Move(ctx, "default", "c1", owned1, affinity.Owner{Worker: "w4", Backend: "docker"})
	if err != nil || moved || !sameOwner(got, owned2) {
		t.Fatalf("Move from a replaced owner = %+v, moved=%v, err=%v; want %+v", got, moved, err, owned2)
	}

	// Release at a stale revision is refused.
	if err := st.Release(ctx, "default", "c1", owned1.Revision); !errors.Is(err, affinity.ErrChanged) {
		t.Fatalf("Release at a stale revision: %v, want ErrChanged", err)
	}
	if o, ok := mustGet(t, st, "default", "c1"); !ok || !sameOwner(o, owned2) {
		t.Fatalf("Get after refused Release = %+v, %v", o, ok)
	}

	// Release at the current revision; the store reads its own delete at once.
	if err := st.Release(ctx, "default", "c1", owned2.Revision); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if o, ok := mustGet(t, st, "default", "c1"); ok {
		t.Fatalf("Get after Release found %+v", o)
	}
	// Idempotent, with and without a revision.
	if err := st.Release(ctx, "default", "c1", owned2.Revision); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if err := st.Release(ctx, "default", "c1", 0); err != nil {
		t.Fatalf("Release(0) of a released conversation: %v", err)
	}
	if err := st.Release(ctx, "default", "never-seen", 0); err != nil {
		t.Fatalf("Release of an unknown conversation: %v", err)
	}

	// Move of a deleted conversation claims it.
	got, moved, err = st.Move(ctx, "default", "c1", owned2, affinity.Owner{Worker: "w5", Backend: "docker"})
	if err != nil || !moved || got.Worker != "w5" {
		t.Fatalf("Move of a released conversation = %+v, moved=%v, err=%v", got, moved, err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := st.Len(); n != 1 {
			return fmt.Errorf("Len = %d, want 1", n)
		}
		return nil
	})

	// Release(0) deletes whatever is there.
	if err := st.Release(ctx, "default", "c1", 0); err != nil {
		t.Fatalf("Release(0): %v", err)
	}
	if o, ok := mustGet(t, st, "default", "c1"); ok {
		t.Fatalf("Get after Release(0) found %+v", o)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := st.Len(); n != 0 {
			return fmt.Errorf("Len = %d, want 0", n)
		}
		return nil
	})

	// Keys are checked.
	if _, _, err := st.Claim(ctx, "default", "a.b", w1); !errors.Is(err, affinity.ErrInvalidKey) {
		t.Fatalf("Claim with a dotted conversation: %v", err)
	}
	if _, _, err := st.Get(ctx, "", "c1"); !errors.Is(err, affinity.ErrInvalidKey) {
		t.Fatalf("Get with an empty tenant: %v", err)
	}
}

// TestStoreReadsOwnWrites cycles claims and releases faster than the watch follows: the store
// must never show a released owner or miss its own claim.
func TestStoreReadsOwnWrites(t *testing.T) {
	js := testutil.JetStream(t, testutil.StartNATS(t))
	st := openStore(t, js)
	ctx := testutil.Context(t)
	for i := range 100 {
		w := fmt.Sprintf("w%d", i)
		got, won, err := st.Claim(ctx, "t", "c", affinity.Owner{Worker: w, Backend: "docker"})
		if err != nil || !won {
			t.Fatalf("round %d: Claim won=%v err=%v", i, won, err)
		}
		if o, ok := mustGet(t, st, "t", "c"); !ok || o.Worker != w {
			t.Fatalf("round %d: Get after Claim = %+v, %v", i, o, ok)
		}
		rev := got.Revision
		if i%2 == 1 {
			rev = 0
		}
		if err := st.Release(ctx, "t", "c", rev); err != nil {
			t.Fatalf("round %d: Release: %v", i, err)
		}
		if o, ok := mustGet(t, st, "t", "c"); ok {
			t.Fatalf("round %d: Get after Release = %+v", i, o)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if n := st.Len(); n != 0 {
			return fmt.Errorf("Len = %d, want 0", n)
		}
		return nil
	})
}

func TestStoreClaimRace(t *testing.T) {
	s := testutil.StartNATS(t)
	const conns, goroutines = 5, 50
	stores := make([]*affinity.Store, conns)
	for i := range stores {
		stores[i] = openStore(t, testutil.JetStream(t, s))
	}
	for round := range 3 {
		conv := fmt.Sprintf("race-%d", round)
		type result struct {
			owner affinity.Owner
			won   bool
			err   error
		}
		results := make([]result, goroutines)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				o, won, err := stores[g%conns].Claim(context.Background(), "default", conv,
					affinity.Owner{Worker: fmt.Sprintf("w%02d", g), Backend: "docker"})
				results[g] = result{o, won, err}
			}()
		}
		close(start)
		wg.Wait()

		var winner *affinity.Owner
		for g, r := range results {
			if r.err != nil {
				t.Fatalf("goroutine %d: %v", g, r.err)
			}
			if r.won {
				if winner != nil {
					t.Fatalf("two winners: %+v and %+v", *winner, r.owner)
				}
				winner = &results[g].owner
			}
		}
		if winner == nil {
			t.Fatal("no winner")
		}
		for g, r := range results {
			if !sameOwner(r.owner, *winner) {
				t.Fatalf("goroutine %d got %+v, the winner is %+v", g, r.owner, *winner)
			}
		}
		for i, st := range stores {
			testutil.Eventually(t, 5*time.Second, func() error {
				o, ok, err := st.Get(context.Background(), "default", conv)
				if err != nil || !ok || !sameOwner(o, *winner) {
					return fmt.Errorf("store %d: Get = %+v, %v, %v; want %+v", i, o, ok, err, *winner)
				}
				return nil
			})
		}
		t.Logf("round %d: %s won among %d claims on %d connections", round, winner.Worker, goroutines, conns)
	}
}

func TestStoreCacheFreshness(t *testing.T) {
	s := testutil.StartNATS(t)
	a := openStore(t, testutil.JetStream(t, s))
	b := openStore(t, testutil.JetStream(t, s))
	ctx := testutil.Context(t)

	const n = 20
	for i := range n {
		conv := fmt.Sprintf("c%d", i)
		got, won, err := a.Claim(ctx, "acme", conv, affinity.Owner{Worker: "w1", Backend: "docker"})
		if err != nil || !won {
			t.Fatalf("Claim: won=%v err=%v", won, err)
		}
		// Visible on B at once, from the cache or the KV.
		if o, ok := mustGet(t, b, "acme", conv); !ok || !sameOwner(o, got) {
			t.Fatalf("B.Get right after A.Claim = %+v, %v; want %+v", o, ok, got)
		}
	}
	// And through B's watch.
	testutil.Eventually(t, 5*time.Second, func() error {
		if b.Len() != n {
			return fmt.Errorf("B.Len = %d, want %d", b.Len(), n)
		}
		return nil
	})

	// A store opened now loads the existing keys before OpenStore returns.
	c := openStore(t, testutil.JetStream(t, s))
	if c.Len() != n {
		t.Fatalf("a new store has Len %d, want %d", c.Len(), n)
	}

	// A move on B reaches A's cache through the watch.
	cur, _ := mustGet(t, b, "acme", "c0")
	moved, ok, err := b.Move(ctx, "acme", "c0", cur, affinity.Owner{Worker: "w2", Backend: "docker"})
	if err != nil || !ok {
		t.Fatalf("Move: %v %v", ok, err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if o, _ := mustGet(t, a, "acme", "c0"); !sameOwner(o, moved) {
			return fmt.Errorf("A.Get = %+v, want %+v", o, moved)
		}
		return nil
	})

	// Releases on A reach B and C.
	for i := range n {
		if err := a.Release(ctx, "acme", fmt.Sprintf("c%d", i), 0); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		if b.Len() != 0 || c.Len() != 0 {
			return fmt.Errorf("B.Len = %d, C.Len = %d, want 0", b.Len(), c.Len())
		}
		return nil
	})
	if o, ok := mustGet(t, b, "acme", "c3"); ok {
		t.Fatalf("B.Get after release = %+v", o)
	}
}

func TestStoreStop(t *testing.T) {
	s := testutil.StartNATS(t)
	js := testutil.JetStream(t, s)
	st, err := affinity.OpenStore(testutil.Context(t), js, affinity.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Claim(testutil.Context(t), "t", "c", affinity.Owner{Worker: "w1"}); err != nil {
		t.Fatal(err)
	}
	st.Stop()
	st.Stop() // idempotent
	select {
	case <-st.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	// Reads still work, from the KV.
	if o, ok := mustGet(t, st, "t", "c"); !ok || o.Worker != "w1" {
		t.Fatalf("Get after Stop = %+v, %v", o, ok)
	}

	// A cancelled context fails the opening.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := affinity.OpenStore(ctx, js, affinity.Config{}); err == nil {
		t.Fatal("OpenStore with a cancelled context succeeded")
	}
}
