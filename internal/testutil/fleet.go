package testutil

import (
	"cmp"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/worker"
)

// FleetTTL is the heartbeat TTL of the in-process fleets tests start: short, so a lost worker
// shows within a second.
const FleetTTL = time.Second

// StartWorker starts a worker of env on its own connection to ns, shut down (its sandboxes
// destroyed) when the test ends. cfg's zero fields get the fleet's test defaults: heartbeat
// every 200 ms, FleetTTL.
func StartWorker(t testing.TB, ns *server.Server, cfg worker.Config, env envs.Env) *worker.Worker {
	t.Helper()
	cfg.DestroyOnShutdown = true
	w := startWorker(t, Connect(t, ns), cfg, env)
	t.Cleanup(func() { w.Shutdown(context.Background()) })
	return w
}

// StartDoomedWorker starts a worker of env on a connection of its own that the test closes to
// make the worker vanish as a killed process does (no shutdown, its registration left to
// expire). Its loops are stopped when the test ends. cfg's zero fields are as in StartWorker.
func StartDoomedWorker(t testing.TB, ns *server.Server, cfg worker.Config, env envs.Env) (*worker.Worker, *nats.Conn) {
	t.Helper()
	nc := Connect(t, ns)
	w := startWorker(t, nc, cfg, env)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		w.Shutdown(ctx) // its connection is closed by now: this only stops its loops
	})
	return w, nc
}

func startWorker(t testing.TB, nc *nats.Conn, cfg worker.Config, env envs.Env) *worker.Worker {
	t.Helper()
	cfg.HeartbeatInterval = cmp.Or(cfg.HeartbeatInterval, 200*time.Millisecond)
	cfg.HeartbeatTTL = cmp.Or(cfg.HeartbeatTTL, FleetTTL)
	w, err := worker.New(cfg, nc, env, Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return w
}

// StartDispatcher starts a dispatcher on its own connection to ns, stopped when the test ends.
// A zero HeartbeatTTL is FleetTTL.
func StartDispatcher(t testing.TB, ns *server.Server, cfg dispatcher.Config) *dispatcher.Dispatcher {
	t.Helper()
	cfg.HeartbeatTTL = cmp.Or(cfg.HeartbeatTTL, FleetTTL)
	d, err := dispatcher.New(cfg, Connect(t, ns), Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop(context.Background()) })
	return d
}

// WaitWorkers waits until every dispatcher sees n live workers that serve: registered and not
// draining (a worker says draining from its id's claim until it serves, and while it stops).
func WaitWorkers(t testing.TB, n int, ds ...*dispatcher.Dispatcher) {
	t.Helper()
	Eventually(t, 10*time.Second, func() error {
		for _, d := range ds {
			serving := 0
			for _, w := range d.Workers() {
				if !w.Draining {
					serving++
				}
			}
			if serving != n {
				return fmt.Errorf("a dispatcher sees %d serving workers, want %d", serving, n)
			}
		}
		return nil
	})
}
