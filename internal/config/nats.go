package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// NATSAuth secures a NATS connection: how the client authenticates (at most one of a
// credentials file, an nkey seed, a user and password, a token) and its TLS (a CA that verifies
// the server, a client certificate for mutual TLS). The zero value connects with neither; a
// tls:// URL then still verifies the server, against the system's roots. Every binary declares
// the same flags (Register), also read from CODEFLEET_NATS_* and from the nats CLI's variables.
type NATSAuth struct {
	Creds    string // --nats-creds: a .creds file (a user JWT and its nkey seed)
	NKey     string // --nats-nkey: a file holding an nkey seed (SU...)
	User     string // --nats-user, with Password
	Password string // --nats-password
	Token    string // --nats-token
	TLSCA    string // --nats-tls-ca: PEM CA certificate(s) that verify the server
	TLSCert  string // --nats-tls-cert: PEM client certificate, with TLSKey
	TLSKey   string // --nats-tls-key
}

// Register declares the flags of a on fs. Besides CODEFLEET_<FLAG>, the variables of the nats
// CLI set them (NATS_CREDS, NATS_NKEY, NATS_USER, NATS_PASSWORD, NATS_CA, NATS_CERT, NATS_KEY;
// it has no token variable), so one environment serves both.
func (a *NATSAuth) Register(fs *FlagSet) {
	fs.StringVar(&a.Creds, "nats-creds", "", "NATS credentials file (.creds: a user JWT and its nkey seed) to connect with")
	fs.Alias("nats-creds", "NATS_CREDS")
	fs.StringVar(&a.NKey, "nats-nkey", "", "file holding the NATS nkey seed (SU...) to connect with")
	fs.Alias("nats-nkey", "NATS_NKEY")
	fs.StringVar(&a.User, "nats-user", "", "NATS user to connect as, with --nats-password")
	fs.Alias("nats-user", "NATS_USER")
	fs.StringVar(&a.Password, "nats-password", "", "password of --nats-user (prefer the variable to the flag, which shows in ps)")
	fs.Alias("nats-password", "NATS_PASSWORD")
	fs.StringVar(&a.Token, "nats-token", "", "NATS authentication token (prefer the variable to the flag, which shows in ps)")
	fs.StringVar(&a.TLSCA, "nats-tls-ca", "", "CA certificate file (PEM) that verifies the NATS server; makes TLS required (without it a tls:// URL is verified against the system's roots)")
	fs.Alias("nats-tls-ca", "NATS_CA")
	fs.StringVar(&a.TLSCert, "nats-tls-cert", "", "client certificate file (PEM) for mutual TLS, with --nats-tls-key")
	fs.Alias("nats-tls-cert", "NATS_CERT")
	fs.StringVar(&a.TLSKey, "nats-tls-key", "", "private key file (PEM) of --nats-tls-cert")
	fs.Alias("nats-tls-key", "NATS_KEY")
}

// Check validates a without connecting: at most one way to authenticate, a user with its
// password and a certificate with its key, and every file given readable. The errors name the
// flags.
func (a NATSAuth) Check() error {
	var ways []string
	for _, w := range []struct{ flag, value string }{
		{"--nats-creds", a.Creds}, {"--nats-nkey", a.NKey}, {"--nats-user", a.User + a.Password}, {"--nats-token", a.Token},
	} {
		if w.value != "" {
			ways = append(ways, w.flag)
		}
	}
	var errs []error
	if len(ways) > 1 {
		errs = append(errs, fmt.Errorf("%s: give one way to authenticate to NATS, not %d", strings.Join(ways, ", "), len(ways)))
	}
	switch {
	case a.User != "" && a.Password == "":
		errs = append(errs, errors.New("--nats-user needs --nats-password (a token alone goes in --nats-token)"))
	case a.User == "" && a.Password != "":
		errs = append(errs, errors.New("--nats-password needs --nats-user"))
	}
	switch {
	case a.TLSCert != "" && a.TLSKey == "":
		errs = append(errs, errors.New("--nats-tls-cert needs --nats-tls-key"))
	case a.TLSCert == "" && a.TLSKey != "":
		errs = append(errs, errors.New("--nats-tls-key needs --nats-tls-cert"))
	}
	for _, f := range []struct{ flag, path string }{
		{"--nats-creds", a.Creds}, {"--nats-nkey", a.NKey}, {"--nats-tls-ca", a.TLSCA}, {"--nats-tls-cert", a.TLSCert}, {"--nats-tls-key", a.TLSKey},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.ReadFile(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.flag, err))
		}
	}
	return errors.Join(errs...)
}

// Options returns the nats.go options of a, after Check: nats.UserCredentials,
// nats.NkeyOptionFromSeed, nats.UserInfo or nats.Token, and nats.RootCAs and nats.ClientCert
// (which read their files again on every reconnect, so renewed certificates are picked up).
// The files are loaded once here, so that a seed, a CA or a key pair that does not parse is an
// error naming its flag rather than a failure of the connection.
func (a NATSAuth) Options() ([]nats.Option, error) {
	if err := a.Check(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	switch {
	case a.Creds != "":
		opts = append(opts, nats.UserCredentials(a.Creds))
	case a.NKey != "":
		opt, err := nats.NkeyOptionFromSeed(a.NKey)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey: %w", err)
		}
		opts = append(opts, opt)
	case a.User != "":
		opts = append(opts, nats.UserInfo(a.User, a.Password))
	case a.Token != "":
		opts = append(opts, nats.Token(a.Token))
	}
	var tlsOpts []nats.Option
	if a.TLSCA != "" {
		tlsOpts = append(tlsOpts, flagOption("--nats-tls-ca", nats.RootCAs(a.TLSCA)))
	}
	if a.TLSCert != "" {
		tlsOpts = append(tlsOpts, flagOption("--nats-tls-cert, --nats-tls-key", nats.ClientCert(a.TLSCert, a.TLSKey)))
	}
	for _, opt := range tlsOpts {
		if err := opt(&nats.Options{}); err != nil { // loads and parses the files
			return nil, err
		}
	}
	return append(opts, tlsOpts...), nil
}

// flagOption names flag in the error of opt.
func flagOption(flag string, opt nats.Option) nats.Option {
	return func(o *nats.Options) error {
		if err := opt(o); err != nil {
			return fmt.Errorf("%s: %w", flag, err)
		}
		return nil
	}
}

// ConnectNATS opens a long-lived service connection secured by auth: reconnecting forever,
// with disconnects, reconnects and asynchronous errors (a permissions violation among them)
// logged. closed is closed once the connection is closed for good (after Drain, say).
func ConnectNATS(url string, auth NATSAuth, name string, log zerolog.Logger) (nc *nats.Conn, closed <-chan struct{}, err error) {
	secure, err := auth.Options()
	if err != nil {
		return nil, nil, err
	}
	done := make(chan struct{})
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// A connection cut without a reset (a partition) is found dead after 2 missed pings.
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if !c.IsClosed() { // closing is not news
				log.Warn().Err(err).Msg("NATS disconnected; reconnecting")
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info().Str("url", c.ConnectedUrlRedacted()).Msg("NATS reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Warn().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("NATS error")
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(done) }),
	}
	nc, err = nats.Connect(url, append(opts, secure...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("NATS connected")
	return nc, done, nil
}
