package worker

import (
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
	if perr := w.checkSandboxOptions(run); perr != nil {
		w.reply(req, run.Language, protocol.ErrorResult(run.ID, perr))
		return
	}
	recreated := req.Headers().Get(protocol.HeaderRecreated) == "true"
	respond := func(res *protocol.RunResult) { w.reply(req, run.Language, res) }
	if perr := w.m.submit(tenant, conv, run, dedupe, recreated, respond); perr != nil {
		respond(protocol.ErrorResult(run.ID, perr))
	}
}

func (w *Worker) checkSandboxOptions(run *protocol.RunRequest) *protocol.Error {
	o := run.Sandbox
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

// reply sends the result of a run in lang, cutting the output further if the message would not
// fit in the connection's max payload, and counts it. Errors also travel as micro error
// headers, for `nats micro stats`.
func (w *Worker) reply(req micro.Request, lang string, res *protocol.RunResult) {
	w.m.metrics.answered(lang, res)
	body := fitPayload(res, int(w.nc.MaxPayload()))
	var opts []micro.RespondOpt
	if sb := res.Sandbox; sb != nil && sb.Created {
		opts = append(opts, micro.WithHeaders(micro.Headers{protocol.HeaderSandboxCreated: {sb.ID}}))
	}
	if err := reply.Send(req, body, res.Error, opts...); err != nil {
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
