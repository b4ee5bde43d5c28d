package registry_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/registry"
)

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
	stop := make(chan struct{})
	beats := make(chan struct{})
	go func() {
		defer close(beats)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				m.Heartbeat(ctx, protocol.WorkerInfo{Started: time.Now(), Updated: time.Now()})
			}
		}
	}()
	_, err := registry.Join(ctx, js, registry.MemberConfig{ID: "w", Interval: 100 * time.Millisecond, TTL: 10 * time.Second})
	close(stop)
	<-beats
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
