package quota_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/affinity"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
)

// owned is a Config.Owned for tests that have no stale slots: every conversation has an owner.
func owned(context.Context, string, string) (bool, error) { return true, nil }

// open opens a Manager on a connection of its own to ns, as a dispatcher does, stopped when the
// test ends.
func open(t testing.TB, ns *server.Server, cfg quota.Config) *quota.Manager {
	t.Helper()
	if cfg.Owned == nil {
		cfg.Owned = owned
	}
	m, err := quota.Open(testutil.Context(t), testutil.JetStream(t, ns), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	return m
}

// exceeded fails unless err is the refusal of tenant's quota of kind, naming both.
func exceeded(t testing.TB, err error, tenant string, kind quota.Kind) {
	t.Helper()
	var qe *quota.ExceededError
	if !errors.As(err, &qe) || !errors.Is(err, quota.ErrExceeded) || qe.Tenant != tenant || qe.Kind != kind {
		t.Fatalf("got %v, want tenant %s's %s quota exceeded", err, tenant, kind)
	}
	if msg := err.Error(); !strings.Contains(msg, "tenant "+tenant) || !strings.Contains(msg, "max_"+string(kind)) {
		t.Fatalf("message %q names neither the tenant nor the quota", msg)
	}
}

// slotsHeld counts the slots of tenant's quota of kind held in the bucket.
func slotsHeld(t testing.TB, ns *server.Server, tenant string, kind quota.Kind) int {
	t.Helper()
	kv, err := testutil.JetStream(t, ns).KeyValue(testutil.Context(t), protocol.Subjects{}.QuotasBucket())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.ListKeysFiltered(testutil.Context(t), tenant+"."+string(kind)+".*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for range keys.Keys() {
		n++
	}
	return n
}

// lastRevision returns the quota bucket's last revision: what any write to it moves.
func lastRevision(t testing.TB, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(testutil.Context(t), "KV_"+protocol.Subjects{}.QuotasBucket())
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

// TestRaceForTheLastSlots: goroutines on two Managers (two dispatchers, two connections) race
// for a tenant's last free slots of each kind: exactly as many win as slots were free, the
// others are refused naming the tenant and the quota, and the tenant holds its quota, no more.
func TestRaceForTheLastSlots(t *testing.T) {
	for _, kind := range quota.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			const limit, taken, racers = 5, 2, 24
			ns := testutil.StartNATS(t)
			limits := quota.Limits{Tenants: map[string]quota.Limit{"acme": {MaxSandboxes: limit, MaxRuns: limit}}}
			ms := []*quota.Manager{open(t, ns, quota.Config{Limits: limits, Holder: "d1"}), open(t, ns, quota.Config{Limits: limits, Holder: "d2"})}
			ctx := testutil.Context(t)
			acquire := func(m *quota.Manager, conv string) (*quota.Slot, error) {
				if kind == quota.Runs {
					return m.AcquireRun(ctx, "acme", conv, time.Minute)
				}
				return m.AcquireSandbox(ctx, "acme", conv)
			}
			for i := range taken {
				if _, err := acquire(ms[0], fmt.Sprintf("early-%d", i)); err != nil {
					t.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			start := make(chan struct{})
			wins := make(chan *quota.Slot, racers)
			errs := make(chan error, racers)
			for i := range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					s, err := acquire(ms[i%2], fmt.Sprintf("racer-%d", i))
					if err != nil {
						errs <- err
						return
					}
					wins <- s
				}()
			}
			close(start)
			wg.Wait()
			close(wins)
			close(errs)
			if len(wins) != limit-taken {
				t.Fatalf("%d racers won a slot, want %d", len(wins), limit-taken)
			}
			for err := range errs {
				exceeded(t, err, "acme", kind)
			}
			if n := slotsHeld(t, ns, "acme", kind); n != limit {
				t.Fatalf("the bucket holds %d slots of the tenant, want %d", n, limit)
			}
			// A slot given back through one dispatcher is free at once on the other.
			s := <-wins
			if err := s.Release(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := acquire(ms[1], "after"); err != nil {
				t.Fatalf("a slot given back on d1 is not free on d2 at once: %v", err)
			}
		})
	}
}

// TestReleaseAndRetake: a tenant at its quota gets a slot again as soon as one is given back,
// whichever dispatcher gave it back, and every time: the slots are reused, not used up.
func TestReleaseAndRetake(t *testing.T) {
	ns := testutil.StartNATS(t)
	limits := quota.Limits{Default: quota.Limit{MaxRuns: 2}}
	m1, m2 := open(t, ns, quota.Config{Limits: limits}), open(t, ns, quota.Config{Limits: limits})
	ctx := testutil.Context(t)
	held, err := m1.AcquireRun(ctx, "acme", "c", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		// A client that sends its next run once the last one is answered: never refused.
		s, err := []*quota.Manager{m1, m2}[i%2].AcquireRun(ctx, "acme", "c", time.Minute)
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		if _, err := []*quota.Manager{m2, m1}[i%2].AcquireRun(ctx, "acme", "c", time.Minute); err == nil {
			t.Fatalf("run %d: a third run in flight got a slot", i)
		} else {
			exceeded(t, err, "acme", quota.Runs)
		}
		if err := s.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := held.Release(ctx); err != nil {
		t.Fatalf("release twice: %v", err)
	}
}

// TestRunSlotExpires: the run slots of a dispatcher that died with runs in flight come back by
// themselves after their TTL.
func TestRunSlotExpires(t *testing.T) {
	ns := testutil.StartNATS(t)
	limits := quota.Limits{Default: quota.Limit{MaxRuns: 1}}
	nc := testutil.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	dying, err := quota.Open(testutil.Context(t), js, quota.Config{Limits: limits, Owned: owned})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t)
	if _, err := dying.AcquireRun(ctx, "acme", "c", time.Second); err != nil {
		t.Fatal(err)
	}
	dying.Stop()
	nc.Close() // gone without giving its slot back
	survivor := open(t, ns, quota.Config{Limits: limits})
	_, err = survivor.AcquireRun(ctx, "acme", "c", time.Minute)
	exceeded(t, err, "acme", quota.Runs)
	taken := time.Now()
	testutil.Eventually(t, 10*time.Second, func() error {
		_, err := survivor.AcquireRun(ctx, "acme", "c", time.Minute)
		return err
	})
	t.Logf("the slot came back %s after the dying dispatcher's run", time.Since(taken))
}

// TestStaleSandboxSlotsReclaimed: a sandbox slot left behind (a dispatcher that died between
// taking it and the conversation's affinity claim, a conversation whose owner went away without
// a close, a conversation holding two slots) is reclaimed once its tenant is at its quota and
// the slot is older than the grace; a slot whose conversation has an owner is kept, and a slot
// younger than the grace is kept whatever its conversation.
func TestStaleSandboxSlotsReclaimed(t *testing.T) {
	ns := testutil.StartNATS(t)
	ctx := testutil.Context(t)
	store, err := affinity.OpenStore(ctx, testutil.JetStream(t, ns), affinity.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Stop)
	ownedInStore := func(ctx context.Context, tenant, conv string) (bool, error) {
		_, ok, err := store.Get(ctx, tenant, conv)
		return ok, err
	}
	claim := func(conv string) {
		t.Helper()
		if _, _, err := store.Claim(ctx, "acme", conv, affinity.Owner{Worker: "w"}); err != nil {
			t.Fatal(err)
		}
	}
	limits := quota.Limits{Default: quota.Limit{MaxSandboxes: 4}}
	patient := open(t, ns, quota.Config{Limits: limits, Owned: ownedInStore, Grace: time.Hour})
	// live: placed. dup: its slot of an earlier life, then placed again with a new one.
	// crashed: its dispatcher died after taking the slot, before the claim.
	for _, conv := range []string{"live", "dup", "dup", "crashed"} {
		if _, err := patient.AcquireSandbox(ctx, "acme", conv); err != nil {
			t.Fatal(err)
		}
	}
	claim("live")
	claim("dup")
	_, err = patient.AcquireSandbox(ctx, "acme", "next")
	exceeded(t, err, "acme", quota.Sandboxes) // every slot is younger than the grace

	eager := open(t, ns, quota.Config{Limits: limits, Owned: ownedInStore, Grace: 50 * time.Millisecond})
	testutil.Eventually(t, 5*time.Second, func() error {
		_, err := eager.AcquireSandbox(ctx, "acme", "next")
		return err
	})
	claim("next")
	// crashed's slot and dup's extra one went: another takes the second.
	if _, err := eager.AcquireSandbox(ctx, "acme", "another"); err != nil {
		t.Fatal(err)
	}
	claim("another")
	_, err = eager.AcquireSandbox(ctx, "acme", "third")
	exceeded(t, err, "acme", quota.Sandboxes) // live, dup, next, another: all owned
	// A conversation gone without a close: its slot is reclaimed once the tenant needs it.
	if err := store.Release(ctx, "acme", "live", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := eager.AcquireSandbox(ctx, "acme", "third"); err != nil {
		t.Fatalf("live's slot, its conversation gone, was not reclaimed: %v", err)
	}
}

// TestHolding: the sandbox slots of one conversation, given back through another dispatcher
// than the one that took them, and none of another conversation's.
func TestHolding(t *testing.T) {
	ns := testutil.StartNATS(t)
	limits := quota.Limits{Default: quota.Limit{MaxSandboxes: 2}}
	m1, m2 := open(t, ns, quota.Config{Limits: limits}), open(t, ns, quota.Config{Limits: limits})
	ctx := testutil.Context(t)
	for _, conv := range []string{"a", "b"} {
		if _, err := m1.AcquireSandbox(ctx, "acme", conv); err != nil {
			t.Fatal(err)
		}
	}
	var held []*quota.Slot
	testutil.Eventually(t, 5*time.Second, func() error {
		if held = m2.Holding("acme", "a"); len(held) != 1 {
			return fmt.Errorf("d2 sees %d slots of a", len(held))
		}
		return nil
	})
	if err := held[0].Release(ctx); err != nil { // a closed through d2
		t.Fatal(err)
	}
	if _, err := m1.AcquireSandbox(ctx, "acme", "c"); err != nil {
		t.Fatal(err)
	}
	_, err := m1.AcquireSandbox(ctx, "acme", "d")
	exceeded(t, err, "acme", quota.Sandboxes)
	if held := m2.Holding("acme", "unknown"); held != nil {
		t.Fatalf("slots of a conversation without any: %v", held)
	}
}

// TestOtherTenantsUnaffected: a tenant at its quota leaves the others their own, and a tenant
// without a quota costs no traffic on the bucket at all.
func TestOtherTenantsUnaffected(t *testing.T) {
	ns := testutil.StartNATS(t)
	limits := quota.Limits{Tenants: map[string]quota.Limit{"acme": {MaxSandboxes: 1, MaxRuns: 1}, "beta": {MaxSandboxes: 2}}}
	m := open(t, ns, quota.Config{Limits: limits})
	ctx := testutil.Context(t)
	if _, err := m.AcquireSandbox(ctx, "acme", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AcquireRun(ctx, "acme", "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	_, err := m.AcquireSandbox(ctx, "acme", "b")
	exceeded(t, err, "acme", quota.Sandboxes)
	_, err = m.AcquireRun(ctx, "acme", "a", time.Minute)
	exceeded(t, err, "acme", quota.Runs)
	for _, conv := range []string{"x", "y"} {
		if _, err := m.AcquireSandbox(ctx, "beta", conv); err != nil {
			t.Fatalf("beta: %v", err)
		}
	}

	js := testutil.JetStream(t, ns)
	before := lastRevision(t, js)
	for i := range 100 {
		conv := fmt.Sprintf("c%d", i)
		// beta has no run quota, gamma none at all.
		for _, tenant := range []string{"beta", "gamma"} {
			if s, err := m.AcquireRun(ctx, tenant, conv, time.Minute); s != nil || err != nil {
				t.Fatalf("%s without a run quota: %v %v", tenant, s, err)
			}
			if held := m.Holding(tenant, conv); held != nil {
				t.Fatalf("%s holds sandbox slots: %v", tenant, held)
			}
		}
		if s, err := m.AcquireSandbox(ctx, "gamma", conv); s != nil || err != nil {
			t.Fatalf("gamma without a sandbox quota: %v %v", s, err)
		}
		var none *quota.Slot
		if err := none.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if after := lastRevision(t, js); after != before {
		t.Fatalf("tenants without a quota wrote to the bucket: revision %d -> %d", before, after)
	}
}

// TestBucketConfig: file-backed (the conversations the slots count survive a NATS restart in
// the affinity bucket, so must their slots), per-key TTLs allowed, named after the prefix.
func TestBucketConfig(t *testing.T) {
	ns := testutil.StartNATS(t)
	js := testutil.JetStream(t, ns)
	fleet := protocol.Subjects{Prefix: "acme-cf"}
	open(t, ns, quota.Config{Fleet: fleet, Limits: quota.Limits{Default: quota.Limit{MaxRuns: 1}}})
	kv, err := js.KeyValue(testutil.Context(t), "acme-cf-quotas")
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(testutil.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config
	if cfg.Storage != jetstream.FileStorage || !cfg.AllowMsgTTL || cfg.MaxMsgsPerSubject != 1 {
		t.Fatalf("bucket: storage %v, per-key TTL %v, history %d", cfg.Storage, cfg.AllowMsgTTL, cfg.MaxMsgsPerSubject)
	}
}

func TestExceededMessage(t *testing.T) {
	for _, tc := range []struct {
		err  quota.ExceededError
		want string
	}{
		{quota.ExceededError{Tenant: "acme", Kind: quota.Sandboxes, Held: 10, Limit: 10}, "tenant acme has 10 sandboxes, its quota (max_sandboxes 10)"},
		{quota.ExceededError{Tenant: "acme", Kind: quota.Sandboxes, Held: 1, Limit: 1}, "tenant acme has 1 sandbox, its quota (max_sandboxes 1)"},
		{quota.ExceededError{Tenant: "acme", Kind: quota.Runs, Held: 4, Limit: 4}, "tenant acme has 4 runs in flight, its quota (max_runs 4)"},
		{quota.ExceededError{Tenant: "acme", Kind: quota.Runs, Held: 5, Limit: 2}, "tenant acme has 5 runs in flight, its quota (max_runs 2)"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}

// TestBucketMadeAgain: a quota bucket deleted under the dispatchers (an operator, a NATS server
// without storage) is made again and watched anew, and slots are taken from it as before.
func TestBucketMadeAgain(t *testing.T) {
	ns := testutil.StartNATS(t)
	limits := quota.Limits{Default: quota.Limit{MaxSandboxes: 1}}
	m := open(t, ns, quota.Config{Limits: limits})
	ctx := testutil.Context(t)
	if _, err := m.AcquireSandbox(ctx, "acme", "a"); err != nil {
		t.Fatal(err)
	}
	if err := testutil.JetStream(t, ns).DeleteKeyValue(ctx, protocol.Subjects{}.QuotasBucket()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, func() error {
		if err := m.Check(ctx); err != nil {
			return err
		}
		_, err := m.AcquireSandbox(ctx, "acme", "b")
		return err
	})
	_, err := m.AcquireSandbox(ctx, "acme", "c")
	exceeded(t, err, "acme", quota.Sandboxes)
}
