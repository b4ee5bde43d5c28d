package config

import (
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// ConnectNATS opens a long-lived service connection: reconnecting forever, with disconnects,
// reconnects and asynchronous errors logged. closed is closed once the connection is closed for
// good (after Drain, say). creds is an optional .creds file.
func ConnectNATS(url, creds, name string, log zerolog.Logger) (nc *nats.Conn, closed <-chan struct{}, err error) {
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
	if creds != "" {
		if _, err := os.Stat(creds); err != nil {
			return nil, nil, fmt.Errorf("--nats-creds: %w", err)
		}
		opts = append(opts, nats.UserCredentials(creds))
	}
	nc, err = nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("NATS connected")
	return nc, done, nil
}
