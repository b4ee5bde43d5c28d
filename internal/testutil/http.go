package testutil

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Get fetches url and returns its status code and body.
func Get(url string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// WantStatus returns nil when url answers with status code want, else an error with the answer,
// for Eventually.
func WantStatus(url string, want int) error {
	code, body, err := Get(url)
	if err != nil {
		return err
	}
	if code != want {
		return fmt.Errorf("GET %s: %d %q, want %d", url, code, body, want)
	}
	return nil
}

// Metrics are the metric families of one scrape, with the text they were parsed from.
type Metrics struct {
	Text     string
	Families map[string]*dto.MetricFamily
}

// Scrape fetches and parses a Prometheus text endpoint.
func Scrape(t testing.TB, url string) Metrics {
	t.Helper()
	code, body, err := Get(url)
	if err != nil || code != http.StatusOK {
		t.Fatalf("scrape %s: %d %v", url, code, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return Metrics{Text: body, Families: fams}
}

// Value returns the sum over the samples of family name whose labels include labels (given as
// name, value pairs) of a counter's or gauge's value, a histogram's sample count. No sample is 0
// (a counter not yet incremented is not exported).
func (m Metrics) Value(name string, labels ...string) float64 {
	f := m.Families[name]
	if f == nil {
		return 0
	}
	sum := 0.0
next:
	for _, s := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range s.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case s.Counter != nil:
			sum += s.Counter.GetValue()
		case s.Gauge != nil:
			sum += s.Gauge.GetValue()
		case s.Histogram != nil:
			sum += float64(s.Histogram.GetSampleCount())
		case s.Untyped != nil:
			sum += s.Untyped.GetValue()
		}
	}
	return sum
}

// ReadinessFollowsNATS runs a daemon (run, given its NATS URL and --http-addr) on a NATS
// server it then stops and starts again, and checks what an orchestrator's probes see: /readyz
// 200 once it serves, 503 within 5 s of the server going away (naming check, the daemon's
// failing check) and 200 again within 15 s of its return, and /healthz 200 throughout. The
// daemon is stopped as SIGTERM does when the test ends, and must return nil.
func ReadinessFollowsNATS(t *testing.T, check string, run func(ctx context.Context, natsURL, httpAddr string, stderr io.Writer) error) {
	t.Helper()
	ns := StartRestartableNATS(t)
	addr := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	base := "http://" + addr
	ctx, cancel := context.WithCancel(context.Background())
	var logs SyncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, ns.URL(), addr, &logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v\n%s", err, logs.String())
			}
		case <-time.After(time.Minute):
			t.Errorf("run did not return after cancel\n%s", logs.String())
		}
	})
	Eventually(t, time.Minute, func() error { return WantStatus(base+PathReadyz, http.StatusOK) })

	ns.Stop()
	down := time.Now()
	Eventually(t, 5*time.Second, func() error { return WantStatus(base+PathReadyz, http.StatusServiceUnavailable) })
	t.Logf("not ready %s after NATS went away", time.Since(down).Round(10*time.Millisecond))
	if _, body, _ := Get(base + PathReadyz); !strings.Contains(body, "fail "+check) {
		t.Errorf("/readyz while NATS is down: %q, want a failing %s check", body, check)
	}
	if err := WantStatus(base+PathHealthz, http.StatusOK); err != nil {
		t.Errorf("liveness while NATS is down: %v", err)
	}

	ns.Start()
	up := time.Now()
	Eventually(t, 15*time.Second, func() error { return WantStatus(base+PathReadyz, http.StatusOK) })
	t.Logf("ready %s after NATS was back", time.Since(up).Round(10*time.Millisecond))
}

// Paths of the daemons' HTTP endpoint (internal/ops).
const (
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
)
