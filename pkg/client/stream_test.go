package client_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// publishChunks publishes chunks of run id on its stream subject (tenant default), as a worker
// does, in the order given; the data of chunk n is "n;".
func publishChunks(t *testing.T, nc *nats.Conn, id string, seqs ...int64) {
	t.Helper()
	for _, seq := range seqs {
		data := protocol.Encode(&protocol.OutputChunk{ID: id, Seq: seq, Data: fmt.Sprintf("%d;", seq)})
		if err := nc.Publish(protocol.Subjects{}.Stream(protocol.DefaultTenant, "chat-1", id), data); err != nil {
			t.Error(err)
		}
	}
}

// streamResult is the result of a streamed run that published chunks chunks.
func streamResult(id, output string, chunks int64) []byte {
	return protocol.Encode(&protocol.RunResult{ID: id, Output: output, Stream: &protocol.StreamInfo{
		Subject: protocol.Subjects{}.Stream(protocol.DefaultTenant, "chat-1", id), Chunks: chunks}})
}

// seqs collects what an output function is given.
type seqs struct{ got []protocol.OutputChunk }

func (s *seqs) output(c protocol.OutputChunk) { s.got = append(s.got, c) }

func (s *seqs) seqs() []int64 {
	var out []int64
	for _, c := range s.got {
		out = append(out, c.Seq)
	}
	return out
}

func (s *seqs) data() string {
	var b strings.Builder
	for _, c := range s.got {
		b.WriteString(c.Data)
	}
	return b.String()
}

// TestStreamSendsAndDelivers: a streamed run asks for a stream with an id, subscribes first
// (the chunks are published before the answer), ignores another run's chunk, and hands every
// chunk on once, in order, even when they were published out of order.
func TestStreamSendsAndDelivers(t *testing.T) {
	_, nc, c := setup(t)
	r := respond(t, nc, "codefleet.run.default.chat-1", func(_ int, m *nats.Msg) []byte {
		req, _ := protocol.DecodeRunRequest(m.Data)
		// A stranger on the subject: ignored.
		nc.Publish(protocol.Subjects{}.Stream(protocol.DefaultTenant, "chat-1", req.ID), protocol.Encode(&protocol.OutputChunk{ID: "other-run", Seq: 1, Data: "x"}))
		publishChunks(t, nc, req.ID, 2, 3, 1, 2, 4)
		return streamResult(req.ID, "1;2;3;4;", 4)
	})
	var out seqs
	res, err := c.Conversation("chat-1").RunStream(context.Background(), "x", protocol.LangBash, &client.RunOptions{RequestID: "run-1"}, out.output)
	if err != nil || res.Output != "1;2;3;4;" || !res.Streamed || res.Delivered != 4 || res.Lost != 0 {
		t.Fatalf("RunStream = %+v, %v", res, err)
	}
	if !slices.Equal(out.seqs(), []int64{1, 2, 3, 4}) || out.data() != "1;2;3;4;" {
		t.Errorf("output got seqs %v (%q), want 1 2 3 4 once each", out.seqs(), out.data())
	}
	if reqs := r.requests(t); len(reqs) != 1 || !reqs[0].Stream || reqs[0].ID != "run-1" {
		t.Errorf("requests %+v, want one with stream and the id", reqs)
	}
}

// TestStreamResultFirst: chunks published after the answer (it took the faster route) are
// still handed on: the client waits for as many as the result says.
func TestStreamResultFirst(t *testing.T) {
	_, nc, c := setup(t)
	respond(t, nc, "codefleet.run.default.chat-1", func(_ int, m *nats.Msg) []byte {
		req, _ := protocol.DecodeRunRequest(m.Data)
		m.Respond(streamResult(req.ID, "1;2;3;", 3))
		publishChunks(t, nc, req.ID, 1, 2, 3)
		return nil
	})
	var out seqs
	res, err := c.Conversation("chat-1").RunStream(context.Background(), "x", protocol.LangBash, nil, out.output)
	if err != nil || res.Delivered != 3 || res.Lost != 0 || out.data() != "1;2;3;" {
		t.Fatalf("RunStream = %+v, %v; output %q", res, err, out.data())
	}
}

// TestStreamLostChunks: chunks that never come are counted as lost after a bounded grace, and
// the others are handed on in order; Run never hangs for a missing chunk.
func TestStreamLostChunks(t *testing.T) {
	_, nc, c := setup(t, client.WithStreamGrace(200*time.Millisecond))
	respond(t, nc, "codefleet.run.default.chat-1", func(_ int, m *nats.Msg) []byte {
		req, _ := protocol.DecodeRunRequest(m.Data)
		publishChunks(t, nc, req.ID, 1, 3, 4) // 2 and 5 were dropped on the way
		return streamResult(req.ID, "1;2;3;4;5;", 5)
	})
	var out seqs
	start := time.Now()
	res, err := c.Conversation("chat-1").RunStream(context.Background(), "x", protocol.LangBash, nil, out.output)
	if err != nil || res.Delivered != 3 || res.Lost != 2 || !res.Streamed {
		t.Fatalf("RunStream = %+v, %v; want 3 delivered, 2 lost", res, err)
	}
	if !slices.Equal(out.seqs(), []int64{1, 3, 4}) {
		t.Errorf("output got seqs %v, want 1 3 4", out.seqs())
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %s: the grace is 200ms", took)
	}
}

// TestStreamGapGivenUp: chunks held behind a missing one are handed on while the run goes on,
// once the missing one has been waited for a moment, not at the end.
func TestStreamGapGivenUp(t *testing.T) {
	_, nc, c := setup(t)
	seen := make(chan int64, 10)
	answer := make(chan struct{})
	respond(t, nc, "codefleet.run.default.chat-1", func(_ int, m *nats.Msg) []byte {
		req, _ := protocol.DecodeRunRequest(m.Data)
		publishChunks(t, nc, req.ID, 1, 3)
		go func() {
			<-answer // the run "goes on" until chunk 3 was handed on
			m.Respond(streamResult(req.ID, "1;2;3;", 3))
		}()
		return nil
	})
	done := make(chan *client.StreamResult, 1)
	go func() {
		res, err := c.Conversation("chat-1").RunStream(context.Background(), "x", protocol.LangBash, nil, func(ch protocol.OutputChunk) { seen <- ch.Seq })
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	for _, want := range []int64{1, 3} {
		select {
		case got := <-seen:
			if got != want {
				t.Fatalf("chunk %d handed on, want %d", got, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("chunk %d was not handed on while the run went on", want)
		}
	}
	close(answer)
	select {
	case res := <-done:
		if res.Delivered != 2 || res.Lost != 1 {
			t.Errorf("result %+v, want 2 delivered, 1 lost", res)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("RunStream did not return")
	}
}

// TestStreamRetryNoDuplicates: a retry (the first attempt's answer was lost) keeps the id and
// the stream; chunks the retry brings again are not handed on twice.
func TestStreamRetryNoDuplicates(t *testing.T) {
	_, nc, c := setup(t, client.WithOverhead(300*time.Millisecond))
	r := respond(t, nc, "codefleet.run.default.chat-1", func(n int, m *nats.Msg) []byte {
		req, _ := protocol.DecodeRunRequest(m.Data)
		if n == 1 {
			publishChunks(t, nc, req.ID, 1, 2)
			return nil // lost answer
		}
		publishChunks(t, nc, req.ID, 1, 2, 3)
		return streamResult(req.ID, "1;2;3;", 3)
	})
	var out seqs
	res, err := c.Conversation("chat-1").RunStream(context.Background(), "x", protocol.LangBash, &client.RunOptions{Timeout: time.Millisecond}, out.output)
	if err != nil || res.Delivered != 3 || res.Lost != 0 {
		t.Fatalf("RunStream = %+v, %v", res, err)
	}
	if !slices.Equal(out.seqs(), []int64{1, 2, 3}) {
		t.Errorf("output got seqs %v, want 1 2 3 once each", out.seqs())
	}
	reqs := r.requests(t)
	if len(reqs) != 2 || reqs[0].ID != reqs[1].ID || !reqs[1].Stream {
		t.Errorf("requests %+v, want two attempts with one id, streamed", reqs)
	}
}

// TestStreamWithoutChunks: a fleet older than streaming answers without a stream, and a retry
// of a run already over gets its result without the chunks: the output function is given the
// whole output at once, and nothing counts as lost.
func TestStreamWithoutChunks(t *testing.T) {
	_, nc, c := setup(t, client.WithStreamGrace(100*time.Millisecond))
	respond(t, nc, "codefleet.run.default.*", func(_ int, m *nats.Msg) []byte {
		req, _ := protocol.DecodeRunRequest(m.Data)
		if strings.HasSuffix(m.Subject, ".old") {
			return protocol.Encode(&protocol.RunResult{ID: req.ID, Output: "whole\n"})
		}
		return streamResult(req.ID, "replayed\n", 2)
	})
	for conv, want := range map[string]bool{"old": false, "chat-1": true} {
		var out seqs
		res, err := c.Conversation(conv).RunStream(context.Background(), "x", protocol.LangBash, nil, out.output)
		if err != nil || res.Streamed != want || res.Delivered != 1 || res.Lost != 0 || len(out.got) != 1 || out.got[0].Data != res.Output {
			t.Errorf("%s: RunStream = %+v, %v; output %+v", conv, res, err, out.got)
		}
	}
}

// TestStreamErrors: a refused request is not sent; a fleet's error comes with its result; a
// transport failure has no result.
func TestStreamErrors(t *testing.T) {
	_, nc, c := setup(t, client.WithAttempts(1))
	r := respond(t, nc, "codefleet.run.default.chat-1", func(_ int, m *nats.Msg) []byte {
		req, _ := protocol.DecodeRunRequest(m.Data)
		return protocol.Encode(protocol.ErrorResult(req.ID, protocol.Errorf(protocol.CodeBusy, "queue full")))
	})
	ctx := context.Background()
	res, err := c.Conversation("chat-1").RunStream(ctx, "", protocol.LangBash, nil, nil)
	if !errors.Is(err, &protocol.Error{Code: protocol.CodeBadRequest}) || res == nil || res.Error == nil {
		t.Errorf("empty code: %+v, %v", res, err)
	}
	res, err = c.Conversation("chat-1").RunStream(ctx, "x", protocol.LangBash, nil, nil)
	if !errors.Is(err, &protocol.Error{Code: protocol.CodeBusy}) || res == nil || res.Error == nil || res.Streamed {
		t.Errorf("busy: %+v, %v", res, err)
	}
	if n := r.count(); n != 1 {
		t.Errorf("%d requests sent, want 1", n)
	}
	if res, err := c.Conversation("nobody").RunStream(ctx, "x", protocol.LangBash, nil, nil); res != nil || !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("no responders: %+v, %v", res, err)
	}
}

// TestStreamFleet: a real fleet streams a run's output as it is produced: the first line
// arrives long before the run ends, every line once, the same as the result's output.
func TestStreamFleet(t *testing.T) {
	c := fakeFleet(t, "stream", fake.New())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out seqs
	var first time.Time
	res, err := c.Conversation("chat-stream").RunStream(ctx, "for i in 1 2 3 4 5; do echo tick $i; sleep 0.2; done; exit 3", protocol.LangBash, nil, func(ch protocol.OutputChunk) {
		if first.IsZero() {
			first = time.Now()
		}
		out.output(ch)
	})
	end := time.Now()
	want := "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n"
	if err != nil || res.Output != want || res.ExitCode != 3 || !res.Streamed || res.Lost != 0 || res.Stream == nil || res.Delivered != res.Stream.Chunks {
		t.Fatalf("RunStream = %+v (stream %+v), %v", res, res.Stream, err)
	}
	if out.data() != want {
		t.Fatalf("streamed %q, want %q", out.data(), want)
	}
	// Four sleeps of 200 ms follow the first line: it must have come at least two of them
	// before the end (a lower bound a slow machine cannot break: sleeps are never shorter).
	if lead := end.Sub(first); lead < 400*time.Millisecond || len(out.got) < 3 {
		t.Fatalf("first chunk %s before the end, %d chunks: not streamed as produced", lead, len(out.got))
	}
}
