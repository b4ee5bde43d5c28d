// Package kvwatch starts the KV watch behind codefleet's two caches of JetStream KV state, the
// affinity store and the worker registry: every key of a bucket, fed in order to one function,
// returning once the bucket's current values are applied.
package kvwatch

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Start watches every key of kv and feeds the entries to apply from one goroutine, which
// closes done when the watch ends. It returns once the initial values are applied. The watch
// lives on a context of its own (a watch's context ending stops it), cancelled by the returned
// func; ctx only bounds the start.
func Start(ctx context.Context, kv jetstream.KeyValue, done chan struct{}, apply func(jetstream.KeyValueEntry)) (jetstream.KeyWatcher, context.CancelFunc, error) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	unhook := context.AfterFunc(ctx, cancel)
	w, err := kv.WatchAll(wctx)
	if err != nil {
		unhook()
		cancel()
		return nil, nil, err
	}
	ready := make(chan struct{})
	go func() {
		defer close(done)
		initial := true
		for e := range w.Updates() {
			if e == nil {
				if initial {
					initial = false
					close(ready)
				}
				continue
			}
			apply(e)
		}
	}()
	select {
	case <-ready:
		if unhook() {
			return w, cancel, nil
		}
		// ctx ended just now and cancelled the watch.
	case <-done:
	case <-ctx.Done():
	}
	cancel()
	_ = w.Stop()
	<-done
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("initial values: %w", err)
	}
	return nil, nil, errors.New("the watch ended before the initial values were loaded")
}
