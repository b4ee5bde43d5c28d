package client

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// Streamed runs. The worker publishes a streamed run's chunks on the stream subject itself,
// while the result comes back through a dispatcher: two routes, so the client subscribes before
// it sends, puts the chunks back in order, and, once it has the result (which says how many
// chunks were published), waits a bounded grace for the ones still on their way.

const (
	// gapWait is how long chunks that came after a missing one are held back, waiting for it,
	// before they are delivered and the missing one is given up. The chunks of a run come from
	// one worker connection, which NATS delivers in order: a gap is nearly always a chunk
	// dropped on the way (a slow consumer), not one overtaken, so the wait is short.
	gapWait = 500 * time.Millisecond
	// maxHeld bounds the chunks held back behind a gap (64 chunks are at most 1 MiB of output):
	// past it the gap is given up at once.
	maxHeld = 64
)

// StreamResult is the result of a streamed run: the run's result, and what the client received
// of its stream.
type StreamResult struct {
	*protocol.RunResult
	// Streamed says the fleet streamed the run. A fleet older than streaming ignores the
	// request's stream field and sends the result alone, and Streamed is false. Whenever no
	// chunk at all arrived (such a fleet, or a retry of a run already over, whose chunks were
	// published before it subscribed), the output function is called once with the result's
	// whole output instead.
	Streamed bool
	// Delivered counts the chunks given to the output function.
	Delivered int64
	// Lost counts the chunks the fleet published that the output function never saw: lost on
	// the way (a slow consumer), or still missing after the grace (WithStreamGrace). Their
	// output is in RunResult.Output, within its cap. Output the worker left out of the stream
	// because it came faster than the stream carries is not lost chunks: each chunk's Dropped
	// and RunResult.Stream.DroppedBytes count it.
	Lost int64
}

// RunStream runs code as Run does, and hands its output to output as it is produced: each
// chunk once, in order, from the calling goroutine, never after RunStream returns. The run's
// request id names its stream (one is generated when RunOptions.RequestID is empty); a retry
// with the same id, by RunStream or the caller, never runs the code twice, and chunks a retry
// receives again are not handed on twice. output may be nil (the chunks are then only counted).
//
// The error is as Run's; on a transport error the result is nil. The output function has been
// given every chunk that arrived in order before the error.
func (cv *Conversation) RunStream(ctx context.Context, code, language string, opts *RunOptions, output func(protocol.OutputChunk)) (*StreamResult, error) {
	req, perr := cv.runRequest(code, language, opts)
	if perr != nil {
		return &StreamResult{RunResult: protocol.ErrorResult(req.ID, perr)}, perr
	}
	req.Stream = true
	if output == nil {
		output = func(protocol.OutputChunk) {}
	}
	r := &reorder{id: req.ID, output: output, next: 1, held: map[int64]protocol.OutputChunk{}}

	// Subscribed before the request is sent: NATS gives a subscription only what is published
	// after it. The SUB and the request leave on one connection in that order, so the server
	// knows the interest before any worker can publish. The callback only passes messages on:
	// the output function runs on this goroutine, and a slow one makes the subscription's own
	// buffer grow (past its limits NATS drops chunks, counted as lost).
	msgs := make(chan *nats.Msg, 16)
	done := make(chan struct{})
	sub, err := cv.c.nc.Subscribe(cv.c.subjects.Stream(cv.c.tenant, cv.id, req.ID), func(m *nats.Msg) {
		select {
		case msgs <- m:
		case <-done: // RunStream has returned: nobody reads any more
		}
	})
	if err != nil {
		return nil, fmt.Errorf("run %s: subscribe to its stream: %w", req.ID, err)
	}
	defer sub.Unsubscribe()
	defer close(done) // first: unblocks a callback waiting on msgs

	type reply struct {
		res *protocol.RunResult
		err error
	}
	replies := make(chan reply, 1)
	go func() {
		res, err := cv.send(ctx, &req) // returns when ctx ends
		replies <- reply{res, err}
	}()
	var rep reply
receive:
	for {
		select {
		case m := <-msgs:
			r.add(m.Data)
		case <-r.gap:
			r.skip()
		case rep = <-replies:
			break receive
		}
	}
	if rep.res == nil { // transport error: no result, no count to wait for
		r.flush()
		return nil, rep.err
	}
	res := rep.res
	if res.Stream != nil && r.next <= res.Stream.Chunks {
		// Published but not here yet: the result may have overtaken them. Wait a little, never
		// for good (a chunk dropped on the way never comes).
		grace := time.NewTimer(cv.c.grace)
	wait:
		for r.next <= res.Stream.Chunks {
			select {
			case m := <-msgs:
				r.add(m.Data)
			case <-r.gap:
				r.skip()
			case <-grace.C:
				break wait
			case <-ctx.Done():
				break wait
			}
		}
		grace.Stop()
	}
	r.flush()
	out := &StreamResult{RunResult: res, Streamed: res.Stream != nil || r.delivered > 0, Delivered: r.delivered, Lost: r.skipped}
	if res.Stream != nil {
		out.Lost = max(res.Stream.Chunks-r.delivered, 0)
	}
	if r.delivered == 0 && res.Output != "" {
		// Nothing came: a fleet that does not stream, or the result of a run that was over
		// (a retry with its id), whose chunks went before this subscription. The output
		// function still sees the output, once, and no part of it is missing.
		output(protocol.OutputChunk{ID: res.ID, Seq: 1, Data: res.Output})
		out.Delivered, out.Lost = 1, 0
	}
	return out, rep.err
}

// reorder hands a run's chunks to output in Seq order, each once.
type reorder struct {
	id     string
	output func(protocol.OutputChunk)
	next   int64                          // the Seq output gets next
	held   map[int64]protocol.OutputChunk // arrived after a missing one
	gap    <-chan time.Time               // fires gapWait after chunks were first held; nil when none are

	delivered, skipped int64
}

// add takes a stream message. A chunk of another run (the subject names the run: only a
// misbehaving publisher sends one), or with a Seq already handed on or held (sent again for a
// retry), is ignored.
func (r *reorder) add(data []byte) {
	c, err := protocol.DecodeOutputChunk(data)
	if err != nil || (c.ID != "" && c.ID != r.id) || c.Seq < r.next {
		return
	}
	if _, ok := r.held[c.Seq]; ok {
		return
	}
	r.held[c.Seq] = *c
	r.drain()
	if len(r.held) > maxHeld {
		r.skip()
	}
}

// drain hands on the chunks that follow in order, and starts the gap's clock when some are
// left held.
func (r *reorder) drain() {
	for {
		c, ok := r.held[r.next]
		if !ok {
			break
		}
		delete(r.held, r.next)
		r.output(c)
		r.delivered++
		r.next++
	}
	switch {
	case len(r.held) == 0:
		r.gap = nil
	case r.gap == nil:
		r.gap = time.After(gapWait)
	}
}

// skip gives up the chunks missing before the first one held, and hands on what follows.
func (r *reorder) skip() {
	r.gap = nil
	if len(r.held) == 0 {
		return
	}
	first := int64(-1)
	for seq := range r.held {
		if first < 0 || seq < first {
			first = seq
		}
	}
	r.skipped += first - r.next
	r.next = first
	r.drain()
}

// flush hands on every chunk held, giving up the gaps before them.
func (r *reorder) flush() {
	for len(r.held) > 0 {
		r.skip()
	}
	r.gap = nil
}
