package config_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/testutil"
)

// natsVars are the variables of the nats CLI that the security flags also read.
var natsVars = []string{"NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD", "NATS_CA", "NATS_CERT", "NATS_KEY"}

// parseAuth declares the security flags on a flag set and parses args.
func parseAuth(t *testing.T, args ...string) config.NATSAuth {
	t.Helper()
	var a config.NATSAuth
	fs := config.New("test", io.Discard)
	a.Register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	return a
}

// TestNATSAuthFlags: the flags, their CODEFLEET_ variables and the nats CLI's variables, the
// flag winning over its variables and CODEFLEET_ over the nats CLI's.
func TestNATSAuthFlags(t *testing.T) {
	testutil.ClearEnv(t) // the nats CLI's variables too
	got := parseAuth(t, "--nats-creds", "c", "--nats-nkey", "n", "--nats-user", "u", "--nats-password", "p", "--nats-token", "t",
		"--nats-tls-ca", "ca", "--nats-tls-cert", "cert", "--nats-tls-key", "key")
	want := config.NATSAuth{Creds: "c", NKey: "n", User: "u", Password: "p", Token: "t", TLSCA: "ca", TLSCert: "cert", TLSKey: "key"}
	if got != want {
		t.Errorf("flags: %+v, want %+v", got, want)
	}

	for i, v := range natsVars {
		t.Setenv(v, strings.ToLower(v))
		if i == 0 {
			t.Setenv("CODEFLEET_NATS_CREDS", "mine") // wins over NATS_CREDS
		}
	}
	t.Setenv("CODEFLEET_NATS_TOKEN", "tok")
	got = parseAuth(t, "--nats-tls-key", "flag")
	want = config.NATSAuth{Creds: "mine", NKey: "nats_nkey", User: "nats_user", Password: "nats_password", Token: "tok",
		TLSCA: "nats_ca", TLSCert: "nats_cert", TLSKey: "flag"}
	if got != want {
		t.Errorf("variables: %+v, want %+v", got, want)
	}

	var usage bytes.Buffer
	var a config.NATSAuth
	fs := config.New("test", &usage)
	a.Register(fs)
	if err := fs.Parse([]string{"--help"}); !errors.Is(err, config.ErrHelp) {
		t.Fatal(err)
	}
	for _, w := range []string{"--nats-tls-ca string", "$CODEFLEET_NATS_TLS_CA, $NATS_CA", "$CODEFLEET_NATS_PASSWORD, $NATS_PASSWORD",
		"$CODEFLEET_NATS_TOKEN\n", "prefer the variable to the flag, which shows in ps"} {
		if !strings.Contains(usage.String(), w) {
			t.Errorf("usage lacks %q:\n%s", w, usage.String())
		}
	}
}

// files writes the files the options name: a TLS PKI, an nkey seed, a creds file (only read
// at connect), a file that is no PEM.
type files struct {
	testutil.TLSFiles
	seed, creds, junk, dir string
	nkeyPub                string
}

func makeFiles(t *testing.T) files {
	t.Helper()
	f := files{TLSFiles: testutil.MakeTLS(t), dir: t.TempDir()}
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	if f.nkeyPub, err = kp.PublicKey(); err != nil {
		t.Fatal(err)
	}
	f.seed, f.creds, f.junk = filepath.Join(f.dir, "user.nk"), filepath.Join(f.dir, "user.creds"), filepath.Join(f.dir, "junk")
	for path, data := range map[string][]byte{f.seed: seed, f.creds: []byte("not read before connecting"), f.junk: []byte("no PEM here\n")} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// TestNATSAuthCheck: one way to authenticate at most, a user with its password, a certificate
// with its key, readable files; every error names the flags.
func TestNATSAuthCheck(t *testing.T) {
	f := makeFiles(t)
	missing := filepath.Join(f.dir, "missing.pem")
	for _, tc := range []struct {
		name string
		auth config.NATSAuth
		want []string // in the error; none: no error
	}{
		{"nothing", config.NATSAuth{}, nil},
		{"creds", config.NATSAuth{Creds: f.creds}, nil},
		{"nkey", config.NATSAuth{NKey: f.seed}, nil},
		{"user", config.NATSAuth{User: "u", Password: "p"}, nil},
		{"token", config.NATSAuth{Token: "t"}, nil},
		{"mutual TLS", config.NATSAuth{User: "u", Password: "p", TLSCA: f.CA, TLSCert: f.ClientCert, TLSKey: f.ClientKey}, nil},
		{"client certificate without a CA", config.NATSAuth{TLSCert: f.ClientCert, TLSKey: f.ClientKey}, nil},
		{"creds and user", config.NATSAuth{Creds: f.creds, User: "u", Password: "p"}, []string{"--nats-creds, --nats-user: give one way to authenticate to NATS, not 2"}},
		{"nkey and token", config.NATSAuth{NKey: f.seed, Token: "t"}, []string{"--nats-nkey, --nats-token: give one way"}},
		{"all four", config.NATSAuth{Creds: f.creds, NKey: f.seed, User: "u", Password: "p", Token: "t"}, []string{"not 4"}},
		{"user without password", config.NATSAuth{User: "u"}, []string{"--nats-user needs --nats-password"}},
		{"password without user", config.NATSAuth{Password: "p"}, []string{"--nats-password needs --nats-user"}},
		{"cert without key", config.NATSAuth{TLSCert: f.ClientCert}, []string{"--nats-tls-cert needs --nats-tls-key"}},
		{"key without cert", config.NATSAuth{TLSKey: f.ClientKey}, []string{"--nats-tls-key needs --nats-tls-cert"}},
		{"missing creds", config.NATSAuth{Creds: missing}, []string{"--nats-creds: open " + missing + ": no such file or directory"}},
		{"missing nkey", config.NATSAuth{NKey: missing}, []string{"--nats-nkey: open " + missing}},
		{"missing CA", config.NATSAuth{TLSCA: missing}, []string{"--nats-tls-ca: open " + missing}},
		{"missing cert", config.NATSAuth{TLSCert: missing, TLSKey: f.ClientKey}, []string{"--nats-tls-cert: open " + missing + ": no such file or directory"}},
		{"missing key", config.NATSAuth{TLSCert: f.ClientCert, TLSKey: missing}, []string{"--nats-tls-key: open " + missing}},
		{"a directory", config.NATSAuth{TLSCA: f.dir}, []string{"--nats-tls-ca: read " + f.dir + ": is a directory"}},
		{"two problems", config.NATSAuth{User: "u", TLSCert: f.ClientCert}, []string{"--nats-user needs --nats-password", "--nats-tls-cert needs --nats-tls-key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.auth.Check()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Check = nil, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check = %q, want %q in it", err, w)
				}
			}
			if _, oerr := tc.auth.Options(); oerr == nil || oerr.Error() != err.Error() {
				t.Errorf("Options = %v, want Check's error", oerr)
			}
		})
	}
	if err := (config.NATSAuth{Creds: missing}).Check(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Check of a missing file = %v, want it to wrap fs.ErrNotExist", err)
	}
}

// apply applies opts to fresh nats.Options as nats.Connect does.
func apply(t *testing.T, opts []nats.Option) nats.Options {
	t.Helper()
	o := nats.GetDefaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			t.Fatalf("option: %v", err)
		}
	}
	return o
}

// TestNATSAuthOptions: what each field makes of the nats.go options, and the files that do not
// parse, named by their flags.
func TestNATSAuthOptions(t *testing.T) {
	f := makeFiles(t)
	opts, err := config.NATSAuth{}.Options()
	if err != nil || len(opts) != 0 {
		t.Fatalf("zero NATSAuth: %d options, %v; want none", len(opts), err)
	}
	// Nothing set: a tls:// URL is verified against the system's roots (nats.go's default).
	if o := apply(t, opts); o.Secure || o.TLSConfig != nil || o.User != "" || o.Token != "" || o.Nkey != "" {
		t.Errorf("zero NATSAuth changed the options: %+v", o)
	}

	for _, tc := range []struct {
		name  string
		auth  config.NATSAuth
		check func(nats.Options) bool
	}{
		{"user", config.NATSAuth{User: "u", Password: "p"}, func(o nats.Options) bool { return o.User == "u" && o.Password == "p" && !o.Secure }},
		{"token", config.NATSAuth{Token: "t"}, func(o nats.Options) bool { return o.Token == "t" && o.User == "" }},
		{"nkey", config.NATSAuth{NKey: f.seed}, func(o nats.Options) bool { return o.Nkey == f.nkeyPub && o.SignatureCB != nil }},
		{"creds", config.NATSAuth{Creds: f.creds}, func(o nats.Options) bool { return o.UserJWT != nil && o.SignatureCB != nil }},
		{"CA", config.NATSAuth{TLSCA: f.CA}, func(o nats.Options) bool { return o.Secure && o.RootCAsCB != nil && o.TLSCertCB == nil }},
		{"client certificate", config.NATSAuth{TLSCert: f.ClientCert, TLSKey: f.ClientKey}, func(o nats.Options) bool {
			return o.Secure && o.TLSCertCB != nil && o.RootCAsCB == nil
		}},
	} {
		opts, err := tc.auth.Options()
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if o := apply(t, opts); !tc.check(o) {
			t.Errorf("%s: options %+v", tc.name, o)
		}
	}

	for _, tc := range []struct {
		name string
		auth config.NATSAuth
		want string
	}{
		{"CA not PEM", config.NATSAuth{TLSCA: f.junk}, "--nats-tls-ca: nats: failed to parse root certificate"},
		{"key of another certificate", config.NATSAuth{TLSCert: f.ClientCert, TLSKey: f.ServerKey}, "--nats-tls-cert, --nats-tls-key: nats: error loading client certificate"},
		{"key not PEM", config.NATSAuth{TLSCert: f.ClientCert, TLSKey: f.junk}, "--nats-tls-cert, --nats-tls-key:"},
		{"seed not a seed", config.NATSAuth{NKey: f.junk}, "--nats-nkey:"},
	} {
		if _, err := tc.auth.Options(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: Options = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// startServer runs a NATS server with opts on a random loopback port until the test ends.
func startServer(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port = "127.0.0.1", -1
	return testutil.StartNATSWith(t, opts)
}

// TestConnectNATSAuthenticates: ConnectNATS with a password, a token or an nkey gets into a
// server that wants it, and is refused with the wrong one.
func TestConnectNATSAuthenticates(t *testing.T) {
	f := makeFiles(t)
	other, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	otherSeed, _ := other.Seed()
	otherFile := filepath.Join(f.dir, "other.nk")
	if err := os.WriteFile(otherFile, otherSeed, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		server    *server.Options
		good, bad config.NATSAuth
	}{
		{"password", &server.Options{Username: "fleet", Password: "s3cret"}, config.NATSAuth{User: "fleet", Password: "s3cret"}, config.NATSAuth{User: "fleet", Password: "guess"}},
		{"token", &server.Options{Authorization: "tok3n"}, config.NATSAuth{Token: "tok3n"}, config.NATSAuth{Token: "guess"}},
		{"nkey", &server.Options{Nkeys: []*server.NkeyUser{{Nkey: f.nkeyPub}}}, config.NATSAuth{NKey: f.seed}, config.NATSAuth{NKey: otherFile}},
	} {
		url := startServer(t, tc.server).ClientURL()
		nc, closed, err := config.ConnectNATS(url, tc.good, "test", zerolog.Nop())
		if err != nil {
			t.Errorf("%s: ConnectNATS: %v", tc.name, err)
		} else {
			nc.Close()
			<-closed
		}
		if _, _, err := config.ConnectNATS(url, tc.bad, "test", zerolog.Nop()); !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("%s: ConnectNATS with the wrong secret = %v, want nats.ErrAuthorization", tc.name, err)
		}
		if _, _, err := config.ConnectNATS(url, config.NATSAuth{}, "test", zerolog.Nop()); !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("%s: ConnectNATS without a secret = %v, want nats.ErrAuthorization", tc.name, err)
		}
	}
	if _, _, err := config.ConnectNATS("nats://127.0.0.1:1", config.NATSAuth{User: "u"}, "test", zerolog.Nop()); err == nil ||
		!strings.Contains(err.Error(), "--nats-user needs --nats-password") {
		t.Errorf("ConnectNATS with bad options = %v, want Check's error before connecting", err)
	}
}
