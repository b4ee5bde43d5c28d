// Package reply answers the NATS micro requests of codefleet's services (dispatcher and worker)
// with an encoded result: one whose error is set also carries micro's error headers
// (Nats-Service-Error-Code, Nats-Service-Error), so `nats micro stats` counts it and a client
// can read the code without decoding the body.
package reply

import (
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// Send answers req with body, as an error reply when perr is not nil.
func Send(req micro.Request, body []byte, perr *protocol.Error, opts ...micro.RespondOpt) error {
	if perr != nil {
		return req.Error(string(perr.Code), perr.Message, body, opts...)
	}
	return req.Respond(body, opts...)
}

// SendLater is Send for an answer sent after the handler has returned, from another goroutine.
// micro's Request.Error records the error in the request for the service's statistics, which
// micro reads as soon as the handler returns: an error answer from another goroutine would
// race with that read. SendLater sets the same error headers itself instead (as a worker's
// error does when a dispatcher relays it), and `nats micro stats` leaves the answer out of the
// endpoint's error count.
// Headers given in opts are kept beside the error headers.
func SendLater(req micro.Request, body []byte, perr *protocol.Error, opts ...micro.RespondOpt) error {
	if perr == nil {
		return req.Respond(body, opts...)
	}
	return req.Respond(body, append(opts, addHeaders(micro.Headers{
		micro.ErrorHeader: {perr.Message}, micro.ErrorCodeHeader: {string(perr.Code)},
	}))...)
}

// addHeaders adds h to a response's headers (micro.WithHeaders replaces them).
func addHeaders(h micro.Headers) micro.RespondOpt {
	return func(m *nats.Msg) {
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		for k, v := range h {
			m.Header[k] = v
		}
	}
}
