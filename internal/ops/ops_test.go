package ops_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/ops"
	"github.com/codefleet/codefleet/internal/testutil"
)

func TestProbes(t *testing.T) {
	srv, err := ops.Listen("127.0.0.1:0", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	srv.Serve()
	defer srv.Shutdown(context.Background())
	base := "http://" + srv.Addr()

	// No checks: ready.
	if err := testutil.WantStatus(base+ops.PathReadyz, 200); err != nil {
		t.Fatal(err)
	}
	var broken error = errors.New("backend down")
	srv.Check("nats", func(context.Context) error { return nil })
	srv.Check("backend", func(context.Context) error { return broken })
	srv.Check("slow", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	start := time.Now()
	code, body, err := testutil.Get(base + ops.PathReadyz)
	if err != nil {
		t.Fatal(err)
	}
	if code != 503 || body != "ok nats\nfail backend: backend down\nfail slow: context deadline exceeded\n" {
		t.Errorf("/readyz = %d %q", code, body)
	}
	if d := time.Since(start); d > 5*ops.CheckTimeout {
		t.Errorf("/readyz took %s: the checks run at once, each bounded", d)
	}
	if err := testutil.WantStatus(base+ops.PathHealthz, 200); err != nil {
		t.Error(err)
	}
	if err := testutil.WantStatus(base+"/nothing", 404); err != nil {
		t.Error(err)
	}

	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "codefleet_test_total", Help: "A test counter."})
	srv.Registry.MustRegister(c)
	c.Add(3)
	m := testutil.Scrape(t, base+ops.PathMetrics)
	if v := m.Value("codefleet_test_total"); v != 3 {
		t.Errorf("codefleet_test_total = %v", v)
	}
	if m.Families["go_goroutines"] == nil || m.Families["process_cpu_seconds_total"] == nil {
		t.Error("no Go runtime or process metrics")
	}
}

func TestListenTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = ops.Listen(ln.Addr().String(), zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "--http-addr "+ln.Addr().String()) || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("Listen on a taken port: %v", err)
	}
}
