// Package reply answers the NATS micro requests of codefleet's services (dispatcher and worker)
// with an encoded result: one whose error is set also carries micro's error headers
// (Nats-Service-Error-Code, Nats-Service-Error), so `nats micro stats` counts it and a client
// can read the code without decoding the body.
package reply

import (
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
