package jskv

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Follower keeps a watch of every key of a bucket going until Stop. A watch ends without
// being stopped when its stream goes away: a bucket kept in memory does not survive a NATS
// server's restart, an operator may delete one, and the ordered consumer behind a watch gives
// up once its stream is missing. A cache fed by such a watch would then go stale for good while
// the process looks healthy, so the Follower watches anew, making the bucket again first when
// asked to (ensure), every retry apart (100 ms doubling to 2 s) until it succeeds.
type Follower struct {
	kv       jetstream.KeyValue
	ensure   func(ctx context.Context) error
	reset    func()
	apply    func(jetstream.KeyValueEntry)
	quit     chan struct{}
	done     chan struct{}
	once     sync.Once
	watching atomic.Bool

	// mu guards w and cancel, the watch in progress.
	mu     sync.Mutex
	w      jetstream.KeyWatcher
	cancel context.CancelFunc
}

// Follow starts watching every key of kv, feeding the entries in order to apply (from one
// goroutine at a time, never two at once), and returns once the bucket's current values are
// applied; ctx bounds that start only. When a watch ends, ensure (if not nil) is called to make
// the bucket again should it be gone, then reset (if not nil) to forget what the ended watch
// fed (keys deleted meanwhile are not delivered again), and a new watch applies the current
// values again.
func Follow(ctx context.Context, kv jetstream.KeyValue, ensure func(context.Context) error, reset func(), apply func(jetstream.KeyValueEntry)) (*Follower, error) {
	f := &Follower{kv: kv, ensure: ensure, reset: reset, apply: apply, quit: make(chan struct{}), done: make(chan struct{})}
	ended, err := f.start(ctx)
	if err != nil {
		return nil, err
	}
	go f.loop(ended)
	return f, nil
}

func (f *Follower) start(ctx context.Context) (ended chan struct{}, err error) {
	ended = make(chan struct{})
	w, cancel, err := Watch(ctx, f.kv, ended, f.apply)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.w, f.cancel = w, cancel
	f.mu.Unlock()
	f.watching.Store(true)
	return ended, nil
}

func (f *Follower) loop(ended chan struct{}) {
	defer close(f.done)
	for {
		select {
		case <-f.quit:
			f.mu.Lock()
			f.cancel()
			_ = f.w.Stop()
			f.mu.Unlock()
			<-ended
			return
		case <-ended:
		}
		f.watching.Store(false)
		for delay := 100 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
			select {
			case <-f.quit:
				return
			case <-time.After(delay):
			}
			var err error
			ended, err = f.restart()
			if err == nil {
				break
			}
		}
	}
}

func (f *Follower) restart() (chan struct{}, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if f.ensure != nil {
		if err := f.ensure(ctx); err != nil {
			return nil, err
		}
	}
	if f.reset != nil {
		f.reset()
	}
	return f.start(ctx)
}

// Restart ends the watch in progress, if any, so that a new one starts as when a watch ends by
// itself: for a caller that found the watch stalled (its consumer died with a NATS node and
// nats.go has not recreated it yet), since a stalled watch does not end.
func (f *Follower) Restart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.watching.Load() {
		f.cancel()
		_ = f.w.Stop()
	}
}

// Watching reports whether a watch is running with the bucket's current values applied: false
// between a watch's end and the next one's start, and after Stop.
func (f *Follower) Watching() bool { return f.watching.Load() }

// Stop stops watching and waits for the watch to end; apply is not called afterwards.
func (f *Follower) Stop() {
	f.once.Do(func() {
		close(f.quit)
		<-f.done
		f.watching.Store(false)
	})
}

// Done is closed once Stop has stopped the Follower.
func (f *Follower) Done() <-chan struct{} { return f.done }
