package main

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// devServerOptions returns the options of `codefleet dev`'s embedded NATS server: the
// nats-server configuration file configFile when one is given (accounts, users and their
// permissions, TLS, limits: docs/security.md), else the defaults. dev's own flags win over the
// file: the server listens on host:port and keeps JetStream, always on, in storeDir; it neither
// logs (dev logs for itself) nor catches signals (dev does).
func devServerOptions(configFile, host string, port int, storeDir string) (*server.Options, error) {
	opts := &server.Options{}
	if configFile != "" {
		var err error
		if opts, err = server.ProcessConfigFile(configFile); err != nil {
			return nil, fmt.Errorf("--nats-config: %w", err)
		}
	}
	opts.Host, opts.Port = host, port
	opts.JetStream, opts.StoreDir = true, storeDir
	opts.NoSigs, opts.NoLog = true, true
	return opts, nil
}

// devConnectError explains why dev's worker or dispatcher (who) could not connect to the
// embedded server at url: a server configured with users wants dev's own to be given.
func devConnectError(who, url string, err error) error {
	err = fmt.Errorf("%s: connect to the embedded NATS server at %s: %w", who, url, err)
	if errors.Is(err, nats.ErrAuthorization) {
		err = fmt.Errorf("%w (with a --nats-config that has users, give dev's own: --nats-user and --nats-password, or --nats-creds, ...)", err)
	}
	return err
}
