package dispatcher

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
)

// outcomeOK is the outcome label of a request answered with a result rather than an error
// (whatever the code's exit: the workers' codefleet_worker_runs_total tells those apart).
const outcomeOK = "ok"

// outcomeDropped is the outcome label of a request left unanswered because its reply subject
// was a system subject (refuseReply).
const outcomeDropped = "dropped"

// latencyBuckets are the bounds, in seconds, of the relay and placement histograms: a relay
// includes the run itself, from a few milliseconds to the longest timeout.
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 600}

// metrics are the dispatcher's Prometheus metrics. Label values are bounded: a verb (run,
// close, files), an outcome (ok or a wire error code), a quota kind (sandboxes, runs); never a tenant,
// conversation or worker id.
type metrics struct {
	requests  *prometheus.CounterVec
	relay     *prometheus.HistogramVec
	placement *prometheus.HistogramVec
	lost      prometheus.Counter
	refusals  *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "codefleet_dispatcher_requests_total",
			Help: "Run, close and file requests answered, by verb and outcome: ok (a result), or the error code of the reply.",
		}, []string{"verb", "outcome"}),
		relay: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "codefleet_dispatcher_relay_duration_seconds",
			Help:    "Time from a request's arrival to its worker's answer relayed to the client (placement, sandbox creation and the run included), by verb.",
			Buckets: latencyBuckets,
		}, []string{"verb"}),
		placement: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "codefleet_dispatcher_placement_duration_seconds",
			Help:    "Time to find or make a conversation's owner in the affinity bucket (claiming a worker for a new conversation, moving one from a lost worker), by outcome.",
			Buckets: latencyBuckets,
		}, []string{"outcome"}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_dispatcher_workers_lost_total",
			Help: "Workers whose registration disappeared or expired while this dispatcher watched.",
		}),
		refusals: refusals(),
	}
}

// refusals is the counter of requests refused with quota_exceeded, by the quota the tenant was
// at; both kinds' series exist from the start, at 0.
func refusals() *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "codefleet_dispatcher_quota_refusals_total",
		Help: "Requests refused with quota_exceeded because their tenant was at its quota, by quota: sandboxes (a new conversation) or runs.",
	}, []string{"quota"})
	for _, k := range quota.Kinds {
		c.WithLabelValues(string(k))
	}
	return c
}

func (d *Dispatcher) registerMetrics(reg prometheus.Registerer) error {
	m := d.metrics
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	cs := []prometheus.Collector{
		m.requests, m.relay, m.placement, m.lost, m.refusals,
		gauge("codefleet_dispatcher_relays_in_flight", "Requests relayed to workers and not yet answered, and those waiting for their conversation's placement or a run slot of their tenant.",
			func() float64 {
				d.mu.Lock()
				defer d.mu.Unlock()
				return float64(d.pendingLocked())
			}),
		gauge("codefleet_dispatcher_workers", "Live workers of the fleet, as this dispatcher's registry watch sees them.",
			func() float64 {
				if d.reg == nil {
					return 0
				}
				return float64(len(d.reg.Live()))
			}),
		gauge("codefleet_dispatcher_conversations", "Conversations with an owner in the affinity bucket, as this dispatcher's cache holds them.",
			func() float64 {
				if d.store == nil {
					return 0
				}
				return float64(d.store.Len())
			}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// outcomeOf is the outcome label of an answer with error perr (nil: a result).
func outcomeOf(perr *protocol.Error) string {
	if perr != nil {
		return string(perr.Code)
	}
	return outcomeOK
}

func (m *metrics) answered(verb, outcome string) {
	m.requests.WithLabelValues(verb, outcome).Inc()
}

func (m *metrics) relayed(verb string, arrived time.Time) {
	m.relay.WithLabelValues(verb).Observe(time.Since(arrived).Seconds())
}
