// Package jskv holds what codefleet's owners of JetStream KV state, the affinity store, the
// worker registry and the quota counts, share: the watch behind their caches (Watch: every key
// of a bucket, fed in order to one function, returning once the bucket's current values are
// applied) and the test for a lost compare-and-set (IsConflict).
package jskv

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Watch watches every key of kv and feeds the entries to apply from one goroutine, which
// closes done when the watch ends. It returns once the initial values are applied. The watch
// lives on a context of its own (a watch's context ending stops it), cancelled by the returned
// func; ctx only bounds the start.
func Watch(ctx context.Context, kv jetstream.KeyValue, done chan struct{}, apply func(jetstream.KeyValueEntry)) (jetstream.KeyWatcher, context.CancelFunc, error) {
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

// IsConflict reports whether err is a compare-and-set failure: Create of a key that exists,
// Update or Delete at a revision that is no longer the key's.
func IsConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
