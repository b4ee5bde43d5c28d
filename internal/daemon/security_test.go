package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/testutil"
)

// tlsService is a service that keeps the TLS state of its connection.
type tlsService struct {
	service
	tls    tls.ConnectionState
	tlsErr error
}

// startTLSServer runs a NATS server configured as docs/security.md says for mutual TLS (a tls
// block with verify: true) and a user, on a free loopback port, until the test ends. It
// returns the server's port.
func startTLSServer(t *testing.T, pki testutil.TLSFiles) int {
	t.Helper()
	port := testutil.FreePort(t)
	conf := filepath.Join(t.TempDir(), "nats.conf")
	text := fmt.Sprintf("listen: 127.0.0.1:%d\ntls {\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n  verify: true\n}\n"+
		"authorization { user: fleet, password: s3cret }\n", port, pki.ServerCert, pki.ServerKey, pki.CA)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	testutil.StartNATSWith(t, opts)
	return port
}

// runParsed parses args as a daemon's command line and runs a service with Run on the options,
// stopping it once it is ready. It returns the service and Run's error (the Check's, when the
// options do not hold together).
func runParsed(t *testing.T, args ...string) (*tlsService, error) {
	t.Helper()
	var o Options
	if err := Parse(o.FlagSet("test", "", io.Discard), args); err != nil {
		t.Fatal(err)
	}
	if err := o.Check(); err != nil {
		return nil, err
	}
	var logs testutil.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc := &tlsService{}
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, o, zerolog.New(&logs), spec(), func(nc *nats.Conn, _ prometheus.Registerer) (Service, error) {
			svc.nc = nc
			svc.tls, svc.tlsErr = nc.TLSConnectionState()
			return svc, nil
		})
	}()
	var runErr error
	testutil.Eventually(t, 10*time.Second, func() error {
		select {
		case runErr = <-done:
			return nil
		default:
		}
		if !strings.Contains(logs.String(), `"message":"test ready"`) {
			return fmt.Errorf("not ready: %s", logs.String())
		}
		cancel()
		runErr = <-done
		return nil
	})
	return svc, runErr
}

// TestRunSecured: a daemon's security flags are what it connects with. With the CA, the client
// certificate and the user it gets into a server that verifies client certificates; without
// the certificate, or with the certificate but no password, it is refused; flags that do not
// hold together are refused by Check before anything connects.
func TestRunSecured(t *testing.T) {
	testutil.ClearEnv(t)
	pki := testutil.MakeTLS(t)
	url := "tls://127.0.0.1:" + strconv.Itoa(startTLSServer(t, pki))
	tlsFlags := []string{"--nats-url", url, "--nats-tls-ca", pki.CA, "--nats-tls-cert", pki.ClientCert, "--nats-tls-key", pki.ClientKey}

	t.Setenv("CODEFLEET_NATS_PASSWORD", "s3cret") // the password as the usage advises: a variable
	svc, err := runParsed(t, append(tlsFlags, "--nats-user", "fleet")...)
	if err != nil {
		t.Fatalf("Run with the client certificate: %v", err)
	}
	if st := svc.tls; svc.tlsErr != nil || len(st.VerifiedChains) == 0 || st.PeerCertificates[0].Subject.CommonName != "server" {
		t.Errorf("TLS state %+v, %v; want the server's certificate verified", st, svc.tlsErr)
	}
	if h := svc.history(); h != "start,stop" {
		t.Errorf("calls %s, want start,stop", h)
	}

	for _, tc := range []struct {
		name string
		args []string
		want func(error) bool
	}{
		// With TLS 1.3 the client's handshake ends before the server checks the certificate:
		// the client reads the server's alert, or finds the connection closed when it writes.
		{"no client certificate", []string{"--nats-url", url, "--nats-tls-ca", pki.CA, "--nats-user", "fleet"},
			func(err error) bool {
				return strings.Contains(err.Error(), "remote error: tls: certificate required") || strings.Contains(err.Error(), "nats: tls error")
			}},
		{"no CA: the system's roots do not know the server", []string{"--nats-url", url, "--nats-tls-cert", pki.ClientCert, "--nats-tls-key", pki.ClientKey, "--nats-user", "fleet"},
			func(err error) bool { var ua x509.UnknownAuthorityError; return errors.As(err, &ua) }},
		{"wrong password", append(tlsFlags, "--nats-user", "fleet", "--nats-password", "guess"),
			func(err error) bool { return errors.Is(err, nats.ErrAuthorization) }},
	} {
		if _, err := runParsed(t, tc.args...); err == nil || !strings.Contains(err.Error(), "connect to NATS at "+url) || !tc.want(err) {
			t.Errorf("%s: Run = %v, want the connection refused", tc.name, err)
		}
	}

	t.Setenv("CODEFLEET_NATS_PASSWORD", "")
	if _, err := runParsed(t, append(tlsFlags, "--nats-user", "fleet", "--nats-tls-key", "")...); err == nil ||
		!strings.Contains(err.Error(), "--nats-user needs --nats-password") || !strings.Contains(err.Error(), "--nats-tls-cert needs --nats-tls-key") {
		t.Errorf("Check = %v, want both problems named", err)
	}
}
