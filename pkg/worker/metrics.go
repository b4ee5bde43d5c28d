package worker

import (
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// Outcomes of a run in codefleet_worker_runs_total besides the error codes: the code ran and
// exited 0, exited otherwise, or was ended by its timeout.
const (
	OutcomeOK          = "ok"
	OutcomeExitNonZero = "exit_nonzero"
	OutcomeTimeout     = "timeout"
)

// Reasons a sandbox is destroyed, the values of codefleet_worker_sandboxes_destroyed_total's
// reason label.
const (
	reasonClosed   = "closed"   // its conversation was closed
	reasonIdle     = "idle"     // unused for IdleTTL
	reasonMaxLife  = "max_life" // older than MaxLife
	reasonMoved    = "moved"    // its conversation moved to another worker
	reasonOrphan   = "orphan"   // no session held it
	reasonLost     = "lost"     // its container or agent was gone and it could not be opened again
	reasonShutdown = "shutdown" // the worker stopped with DestroyOnShutdown
	reasonAdopt    = "adopt"    // left by an earlier process and not re-adoptable
	reasonPool     = "pool"     // a free pool sandbox: made room, past max life, left by an earlier process, a failed claim, or the worker stopped
)

// runBuckets are the bounds of the run duration histogram, in seconds: from a warm bash run
// (a few milliseconds) to the longest timeout.
var runBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// createBuckets are the bounds of the sandbox creation histogram, in seconds.
var createBuckets = []float64{.1, .25, .5, 1, 2, 5, 10, 30, 60, 120}

// metrics are the worker's Prometheus metrics. Label values are bounded: a language of
// protocol.Languages (else "other"), an outcome (above, or a wire error code), a reason. Never
// a tenant, conversation or request id.
type metrics struct {
	runs           *prometheus.CounterVec
	runDuration    *prometheus.HistogramVec
	created        prometheus.Counter
	createErrors   prometheus.Counter
	createDuration prometheus.Histogram
	destroyed      *prometheus.CounterVec
	adopted        prometheus.Counter
	// The warm pool's: its creations (not in created), their failures, the conversations that
	// claimed a pool sandbox, and those a pool sandbox could have served that found none.
	poolCreated      prometheus.Counter
	poolCreateErrors prometheus.Counter
	poolClaims       prometheus.Counter
	poolMisses       prometheus.Counter
	// files counts file requests answered, by op and outcome (ok or the error code);
	// streamChunks the output chunks published for streamed runs.
	files        *prometheus.CounterVec
	streamChunks prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "codefleet_worker_runs_total",
			Help: "Run requests answered, by language and outcome: ok, exit_nonzero, timeout, or the error code of the reply.",
		}, []string{"language", "outcome"}),
		runDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "codefleet_worker_run_duration_seconds",
			Help:    "Wall time of the runs whose code ran, inside the sandbox, by language.",
			Buckets: runBuckets,
		}, []string{"language"}),
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_worker_sandboxes_created_total",
			Help: "Sandboxes created for new conversations (re-attached ones not included).",
		}),
		createErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_worker_sandbox_create_errors_total",
			Help: "Sandbox creations that failed.",
		}),
		createDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "codefleet_worker_sandbox_create_duration_seconds",
			Help:    "Time to get a new conversation a sandbox, created or claimed from the warm pool, the wait for a creation turn included.",
			Buckets: createBuckets,
		}),
		destroyed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "codefleet_worker_sandboxes_destroyed_total",
			Help: "Sandboxes destroyed, by reason: closed, idle, max_life, moved, orphan, lost, shutdown, adopt, pool.",
		}, []string{"reason"}),
		adopted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_worker_sandboxes_adopted_total",
			Help: "Sandboxes of an earlier process with this worker id re-adopted at start.",
		}),
		poolCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_worker_pool_sandboxes_created_total",
			Help: "Sandboxes created for the warm pool (not in codefleet_worker_sandboxes_created_total).",
		}),
		poolCreateErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_worker_pool_create_errors_total",
			Help: "Warm pool sandbox creations that failed (cancelled ones not included).",
		}),
		poolClaims: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_worker_pool_claims_total",
			Help: "New conversations that claimed a warm pool sandbox.",
		}),
		poolMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_worker_pool_misses_total",
			Help: "New conversations a warm pool sandbox could have served that found none free and got a sandbox created.",
		}),
		files: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "codefleet_worker_file_requests_total",
			Help: "File requests answered, by op (put, get, list, delete) and outcome: ok, or the error code of the reply.",
		}, []string{"op", "outcome"}),
		streamChunks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "codefleet_worker_stream_chunks_total",
			Help: "Output chunks published for streamed runs.",
		}),
	}
}

// fileAnswered counts a file request's answer.
func (m *metrics) fileAnswered(op string, perr *protocol.Error) {
	if !slices.Contains(protocol.FileOps, op) {
		op = "other"
	}
	outcome := OutcomeOK
	if perr != nil {
		outcome = string(perr.Code)
	}
	m.files.WithLabelValues(op, outcome).Inc()
}

// register registers the metrics, and gauges read from the worker at scrape time, on reg.
func (w *Worker) registerMetrics(reg prometheus.Registerer) error {
	m := w.m.metrics
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	cs := []prometheus.Collector{
		m.runs, m.runDuration, m.created, m.createErrors, m.createDuration, m.destroyed, m.adopted,
		m.poolCreated, m.poolCreateErrors, m.poolClaims, m.poolMisses, m.files, m.streamChunks,
		gauge("codefleet_worker_pool_free", "Free warm pool sandboxes: started, claimed by no conversation yet.",
			func() float64 { return float64(w.m.poolFree()) }),
		gauge("codefleet_worker_capacity", "Most sandboxes the worker holds at once (--capacity).",
			func() float64 { return float64(w.cfg.Capacity) }),
		gauge("codefleet_worker_sandboxes", "Conversations the worker holds: sandboxes active or being created.",
			func() float64 { n, _ := w.m.load(); return float64(n) }),
		gauge("codefleet_worker_runs_running", "Runs whose code is running now.",
			func() float64 { return float64(w.m.running.Load()) }),
		gauge("codefleet_worker_runs_pending", "Runs accepted whose code has not started: queued behind their conversation's earlier runs, or waiting for a sandbox or a run slot.",
			func() float64 { return float64(w.m.pending.Load()) }),
		gauge("codefleet_worker_draining", "1 while the worker takes no new conversations (starting or draining).",
			func() float64 {
				if w.draining.Load() || w.starting.Load() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "codefleet_worker_info",
			Help:        "Always 1; the labels say the worker's backend and version.",
			ConstLabels: prometheus.Labels{"backend": w.env.Name(), "version": w.cfg.Version},
		}, func() float64 { return 1 }),
	}
	if c, ok := w.env.(prometheus.Collector); ok {
		cs = append(cs, c) // the backend's own: the Docker egress proxy's
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// languageLabel bounds the language label to the known languages.
func languageLabel(lang string) string {
	if slices.Contains(protocol.Languages, lang) {
		return lang
	}
	return "other"
}

// outcome is a run result's outcome label.
func outcome(res *protocol.RunResult) string {
	switch {
	case res.Error != nil:
		return string(res.Error.Code)
	case res.TimedOut:
		return OutcomeTimeout
	case res.ExitCode != 0:
		return OutcomeExitNonZero
	}
	return OutcomeOK
}

func (m *metrics) answered(lang string, res *protocol.RunResult) {
	m.runs.WithLabelValues(languageLabel(lang), outcome(res)).Inc()
}

func (m *metrics) ran(lang string, d time.Duration) {
	m.runDuration.WithLabelValues(languageLabel(lang)).Observe(d.Seconds())
}
