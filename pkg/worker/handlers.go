package worker

import (
	"cmp"
	"encoding/json"

	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"

	"github.com/codefleet/codefleet/internal/output"
	"github.com/codefleet/codefleet/internal/reply"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// handleRun takes a run request. Validation and queueing happen here, in the subscription's
// order, so runs of one conversation keep the order they were sent in; the session's goroutine
// answers.
func (w *Worker) handleRun(req micro.Request) {
	tenant, conv := req.Headers().Get(protocol.HeaderTenant), req.Headers().Get(protocol.HeaderConversation)
	if !protocol.ValidID(tenant) || !protocol.ValidID(conv) {
		w.reply(req, "", protocol.ErrorResult(nuid.Next(), protocol.Errorf(protocol.CodeBadRequest,
			"headers %s and %s must name the conversation ([A-Za-z0-9_-]{1,128})", protocol.HeaderTenant, protocol.HeaderConversation)))
		return
	}
	run, perr := protocol.DecodeRunRequest(req.Data())
	if perr != nil {
		w.reply(req, "", protocol.ErrorResult(nuid.Next(), perr))
		return
	}
	dedupe := run.ID != ""
	if !dedupe {
		run.ID = nuid.Next()
	}
	if perr := w.checkSandboxOptions(run.Sandbox); perr != nil {
		w.reply(req, run.Language, protocol.ErrorResult(run.ID, perr))
		return
	}
	j := &job{req: run, recreated: req.Headers().Get(protocol.HeaderRecreated) == "true"}
	// Answered from the session's goroutine, after the handler returned (see reply.SendLater).
	j.respond = func(res *protocol.RunResult) { w.replyLater(req, run.Language, res) }
	if run.Stream { // validated: a streamed run has a client's id
		j.stream = &streamer{nc: w.nc, chunks: w.m.metrics.streamChunks, subject: w.subjects.Stream(tenant, conv, run.ID), id: run.ID}
	}
	if perr := w.m.submit(tenant, conv, j, dedupe); perr != nil {
		w.reply(req, run.Language, protocol.ErrorResult(run.ID, perr))
	}
}

// handleFiles takes a file request: validated here, then queued behind the conversation's
// earlier requests, as a run is.
func (w *Worker) handleFiles(req micro.Request) {
	tenant, conv := req.Headers().Get(protocol.HeaderTenant), req.Headers().Get(protocol.HeaderConversation)
	if !protocol.ValidID(tenant) || !protocol.ValidID(conv) {
		w.replyFile(req, protocol.FileErrorResult(nuid.Next(), "", protocol.Errorf(protocol.CodeBadRequest,
			"headers %s and %s must name the conversation ([A-Za-z0-9_-]{1,128})", protocol.HeaderTenant, protocol.HeaderConversation)), false)
		return
	}
	fr, perr := protocol.DecodeFileRequest(req.Data())
	if perr != nil {
		w.replyFile(req, protocol.FileErrorResult(nuid.Next(), "", perr), false)
		return
	}
	if fr.ID == "" {
		fr.ID = nuid.Next()
	}
	if perr := w.checkSandboxOptions(fr.Sandbox); perr != nil {
		w.replyFile(req, protocol.FileErrorResult(fr.ID, fr.Op, perr), false)
		return
	}
	// A get's answer carries its data in base64 within the connection's max payload.
	fr.Length = min(cmp.Or(fr.Length, protocol.FileChunkBytes), protocol.FileChunkBytes)
	if mp := w.nc.MaxPayload(); mp > 0 {
		fr.Length = max(min(fr.Length, (mp-8<<10)/4*3), 1)
	}
	j := &job{file: fr, recreated: req.Headers().Get(protocol.HeaderRecreated) == "true"}
	j.respondFile = func(res *protocol.FileResult) { w.replyFile(req, res, true) }
	if perr := w.m.submit(tenant, conv, j, false); perr != nil {
		w.m.metrics.fileAnswered(fr.Op, perr)
		w.replyFile(req, protocol.FileErrorResult(fr.ID, fr.Op, perr), false)
	}
}

func (w *Worker) checkSandboxOptions(o *protocol.SandboxOptions) *protocol.Error {
	if o == nil {
		return nil
	}
	if o.Backend != "" && o.Backend != w.env.Name() {
		return protocol.Errorf(protocol.CodeBadRequest, "worker %s runs %s sandboxes, not %s", w.cfg.ID, w.env.Name(), o.Backend)
	}
	if !w.cfg.imageAllowed(o.Image) {
		return protocol.Errorf(protocol.CodeImageNotAllowed, "image %q is not allowed on worker %s", o.Image, w.cfg.ID)
	}
	return nil
}

func (w *Worker) handleClose(req micro.Request) {
	tenant, conv := req.Headers().Get(protocol.HeaderTenant), req.Headers().Get(protocol.HeaderConversation)
	if !protocol.ValidID(tenant) || !protocol.ValidID(conv) {
		w.replyClose(req, &protocol.CloseResult{Error: protocol.Errorf(protocol.CodeBadRequest,
			"headers %s and %s must name the conversation", protocol.HeaderTenant, protocol.HeaderConversation)})
		return
	}
	go func() {
		closed, info := w.m.close(tenant, conv)
		w.log.Debug().Str("conversation_id", conv).Bool("closed", closed).Msg("close")
		w.replyClose(req, &protocol.CloseResult{Closed: closed, Sandbox: info})
	}()
}

// reply sends the result of a run in lang from its handler, cutting the output further if the
// message would not fit in the connection's max payload, and counts it. Errors also travel as
// micro error headers, for `nats micro stats`. replyLater does from any other goroutine: the
// session's (see reply.SendLater).
func (w *Worker) reply(req micro.Request, lang string, res *protocol.RunResult) {
	w.sendRun(req, lang, res, reply.Send)
}

func (w *Worker) replyLater(req micro.Request, lang string, res *protocol.RunResult) {
	w.sendRun(req, lang, res, reply.SendLater)
}

func (w *Worker) sendRun(req micro.Request, lang string, res *protocol.RunResult, send func(micro.Request, []byte, *protocol.Error, ...micro.RespondOpt) error) {
	w.m.metrics.answered(lang, res)
	body := fitPayload(res, int(w.nc.MaxPayload()))
	if err := send(req, body, res.Error, createdHeader(res.Sandbox)...); err != nil {
		w.log.Warn().Err(err).Str("request_id", res.ID).Msg("reply")
	}
}

// createdHeader tells the dispatcher the id of the sandbox a request created
// (protocol.HeaderSandboxCreated), for the conversation's ownership.
func createdHeader(sb *protocol.SandboxInfo) []micro.RespondOpt {
	if sb == nil || !sb.Created {
		return nil
	}
	return []micro.RespondOpt{micro.WithHeaders(micro.Headers{protocol.HeaderSandboxCreated: {sb.ID}})}
}

// replyFile sends a file request's answer, its errors as micro error headers too; later when
// sent after the handler returned.
func (w *Worker) replyFile(req micro.Request, res *protocol.FileResult, later bool) {
	send := reply.Send
	if later {
		send = reply.SendLater
	}
	if err := send(req, protocol.Encode(res), res.Error, createdHeader(res.Sandbox)...); err != nil {
		w.log.Warn().Err(err).Str("request_id", res.ID).Msg("reply")
	}
}

func (w *Worker) replyClose(req micro.Request, res *protocol.CloseResult) {
	if err := reply.Send(req, protocol.Encode(res), res.Error); err != nil {
		w.log.Warn().Err(err).Msg("reply")
	}
}

// fitPayload encodes res, trimming the middle of its output until it fits in limit bytes
// (JSON escaping can make output grow up to six-fold).
func fitPayload(res *protocol.RunResult, limit int) []byte {
	b, _ := json.Marshal(res)
	if limit <= 0 || len(b) <= limit-512 {
		return b
	}
	for keep := len(res.Output) / 2; keep > 0 && len(b) > limit-512; keep /= 2 {
		trimmed := *res
		trimmed.Output, _ = output.Cap(res.Output, keep)
		trimmed.Truncated = true
		b, _ = json.Marshal(&trimmed)
	}
	return b
}
