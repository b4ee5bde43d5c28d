package dispatcher_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
)

// instant is a fake backend that answers every run at once.
func instant() *fake.Env {
	e := fake.New()
	e.RunFunc = func(context.Context, envs.Info, envs.Exec) (envs.Result, error) {
		return envs.Result{Output: "1\n"}, nil
	}
	return e
}

// BenchmarkHop measures what the dispatcher adds to a request: each iteration sends the same
// warm run once straight to the owning worker's subject (as the dispatcher relays it) and once
// through the dispatcher, on loopback with an instant backend. Reported: p50 of both and the
// difference (hop-p50-us), the dispatcher's cost.
//
//	go test -run '^$' -bench Hop -benchtime 5000x ./pkg/dispatcher/
func BenchmarkHop(b *testing.B) {
	ns := testutil.StartNATS(b)
	fleetWorker(b, ns, "w1", instant())
	d := loadDispatcher(b, ns)
	testutil.WaitWorkers(b, 1, d)
	nc := testutil.Connect(b, ns)
	subjects := protocol.Subjects{Prefix: protocol.DefaultPrefix}
	data := protocol.Encode(&protocol.RunRequest{Code: "print(1)", Language: "python"})

	routed := &nats.Msg{Subject: subjects.Run("default", "hop"), Data: data}
	direct := &nats.Msg{Subject: subjects.Worker("w1", "run"), Data: data,
		Header: nats.Header{protocol.HeaderTenant: {"default"}, protocol.HeaderConversation: {"hop"}}}
	send := func(m *nats.Msg) time.Duration {
		start := time.Now()
		reply, err := nc.RequestMsg(m, 10*time.Second)
		took := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if res, err := protocol.DecodeRunResult(reply.Data); err != nil || res.Error != nil || res.Sandbox.Worker != "w1" {
			b.Fatalf("%s: %+v %v", m.Subject, res, err)
		}
		return took
	}
	send(routed) // places the conversation and creates its sandbox
	var viaDirect, viaDispatcher []time.Duration
	for b.Loop() {
		viaDirect = append(viaDirect, send(direct))
		viaDispatcher = append(viaDispatcher, send(routed))
	}
	p50d, p50r := percentile(viaDirect, 0.5), percentile(viaDispatcher, 0.5)
	b.ReportMetric(us(p50d), "direct-p50-us")
	b.ReportMetric(us(p50r), "routed-p50-us")
	b.ReportMetric(us(percentile(viaDispatcher, 0.99)), "routed-p99-us")
	b.ReportMetric(us(p50r-p50d), "hop-p50-us")
}

// BenchmarkQuotaHop measures what a run quota adds to a run: each iteration sends the same warm
// run through the dispatcher for a tenant without quotas and for one with a run quota (a slot
// taken before the run is routed, given back before its answer), on loopback with an instant
// backend. Reported: p50 of both and the difference (quota-p50-us).
//
//	go test -run '^$' -bench QuotaHop -benchtime 5000x ./pkg/dispatcher/
func BenchmarkQuotaHop(b *testing.B) {
	ns := testutil.StartNATS(b)
	fleetWorker(b, ns, "w1", instant())
	d := testutil.StartDispatcher(b, ns, dispatcher.Config{HeartbeatTTL: loadTTL, Quotas: quota.Limits{Tenants: map[string]quota.Limit{"limited": {MaxRuns: 4}}}})
	testutil.WaitWorkers(b, 1, d)
	nc := testutil.Connect(b, ns)
	subjects := protocol.Subjects{Prefix: protocol.DefaultPrefix}
	data := protocol.Encode(&protocol.RunRequest{Code: "print(1)", Language: "python"})
	send := func(tenant string) time.Duration {
		start := time.Now()
		reply, err := nc.Request(subjects.Run(tenant, "hop"), data, 10*time.Second)
		took := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if res, err := protocol.DecodeRunResult(reply.Data); err != nil || res.Error != nil {
			b.Fatalf("%s: %+v %v", tenant, res, err)
		}
		return took
	}
	send("free") // place the conversations, create their sandboxes
	send("limited")
	var free, limited []time.Duration
	for b.Loop() {
		free = append(free, send("free"))
		limited = append(limited, send("limited"))
	}
	p50f, p50l := percentile(free, 0.5), percentile(limited, 0.5)
	b.ReportMetric(us(p50f), "free-p50-us")
	b.ReportMetric(us(p50l), "limited-p50-us")
	b.ReportMetric(us(p50l-p50f), "quota-p50-us")
}

// BenchmarkRouted measures routed requests per second: 2 dispatchers and 3 workers with an
// instant backend, 1,000 warm conversations, a window of requests kept in flight by 4 client
// connections. Everything (NATS server included) shares this machine's cores.
//
//	go test -run '^$' -bench Routed -benchtime 200000x ./pkg/dispatcher/
func BenchmarkRouted(b *testing.B) {
	const (
		convs   = 1000
		clients = 4
		window  = 256 // in flight per client
	)
	ns := testutil.StartNATS(b)
	for _, id := range []string{"w1", "w2", "w3"} {
		fleetWorker(b, ns, id, instant())
	}
	d1, d2 := loadDispatcher(b, ns), loadDispatcher(b, ns)
	testutil.WaitWorkers(b, 3, d1, d2)
	subjects := protocol.Subjects{Prefix: protocol.DefaultPrefix}
	data := protocol.Encode(&protocol.RunRequest{Code: "print(1)", Language: "python"})
	subject := func(i int) string { return subjects.Run("default", fmt.Sprintf("c%04d", i%convs)) }

	// Warm up: every conversation placed and its sandbox created.
	warm := testutil.Connect(b, ns)
	for i := 0; i < convs; i++ {
		if _, err := warm.Request(subject(i), data, 10*time.Second); err != nil {
			b.Fatal(err)
		}
	}

	type counter struct {
		nc    *nats.Conn
		inbox string
		slot  chan struct{}
		wg    sync.WaitGroup
	}
	var failed atomic.Int64
	cs := make([]*counter, clients)
	for i := range cs {
		c := &counter{nc: testutil.Connect(b, ns), inbox: nats.NewInbox(), slot: make(chan struct{}, window)}
		sub, err := c.nc.Subscribe(c.inbox, func(m *nats.Msg) {
			if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
				failed.Add(1)
			}
			<-c.slot
			c.wg.Done()
		})
		if err != nil {
			b.Fatal(err)
		}
		sub.SetPendingLimits(-1, -1)
		c.nc.Flush()
		cs[i] = c
		b.Cleanup(func() { sub.Unsubscribe() })
	}
	b.ResetTimer()
	start := time.Now()
	var all sync.WaitGroup
	for ci, c := range cs {
		n := b.N / clients
		if ci < b.N%clients {
			n++
		}
		all.Add(1)
		go func() {
			defer all.Done()
			for i := 0; i < n; i++ {
				c.slot <- struct{}{}
				c.wg.Add(1)
				if err := c.nc.PublishRequest(subject(i*clients+ci), c.inbox, data); err != nil {
					b.Error(err)
					return
				}
			}
			c.wg.Wait()
		}()
	}
	all.Wait()
	took := time.Since(start)
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d requests failed", n, b.N)
	}
	b.ReportMetric(float64(b.N)/took.Seconds(), "req/s")
}

func percentile(lat []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
