// Package client is the Go client of codefleet: what an agent framework calls to run code in a
// conversation's sandbox over NATS.
//
//	c, err := client.New(nc, client.WithTenant("acme"))
//	if err != nil { ... }
//	conv := c.Conversation("chat-42")
//	res, err := conv.Run(ctx, "print(40+2)", "python", nil)
//	// res.Output is "42\n"; err is a *protocol.Error when the fleet could not run the code
//
// Run retries transport failures (no dispatcher answered, a dispatcher died) with the same
// request id, so a retried run never runs twice: the worker answers a repeated id with the first
// run's result. A request the contract refuses (empty code, an unknown language, a bad id) is
// refused before anything is sent, with the *protocol.Error a dispatcher would answer.
//
// RunStream is Run with the output handed to a function as it is produced (stream.go):
//
//	res, err := conv.RunStream(ctx, code, "python", nil, func(c protocol.OutputChunk) {
//		os.Stdout.WriteString(c.Data)
//	})
//	// res.Lost counts chunks that never arrived; their output is in res.Output (within its cap)
//
// Files move in and out of the conversation's workspace with PutFile, GetFile, ListFiles and
// DeleteFile (files.go): in pieces of protocol.FileChunkBytes, each checked with a SHA-256 of
// the whole file, each piece retried as a run is.
package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// Defaults of the client.
const (
	// DefaultAttempts is how many times Run sends a request before giving up on the transport.
	DefaultAttempts = 3
	// DefaultOverhead is added to a run's timeout to get the time one attempt may take: room for
	// creating the sandbox and the trip over NATS.
	DefaultOverhead = 30 * time.Second
	// DefaultStreamGrace is how long RunStream waits, once it has the result, for chunks the
	// result says were published and that have not arrived yet.
	DefaultStreamGrace = time.Second
)

// Client sends run and close requests for one tenant.
type Client struct {
	nc       *nats.Conn
	subjects protocol.Subjects
	tenant   string
	attempts int
	overhead time.Duration
	grace    time.Duration // DefaultStreamGrace unless WithStreamGrace
}

// Option configures a Client.
type Option func(*Client) error

// WithTenant sets the tenant (default "default").
func WithTenant(tenant string) Option {
	return func(c *Client) error {
		if !protocol.ValidID(tenant) {
			return fmt.Errorf("client: tenant %q must match [A-Za-z0-9_-]{1,128}", tenant)
		}
		c.tenant = tenant
		return nil
	}
}

// WithPrefix sets the subject prefix (default "codefleet"): one token of [A-Za-z0-9_-].
func WithPrefix(prefix string) Option {
	return func(c *Client) error {
		if err := protocol.CheckPrefix(prefix); err != nil {
			return fmt.Errorf("client: %w", err)
		}
		c.subjects.Prefix = prefix
		return nil
	}
}

// WithAttempts sets how many times a request is sent when the transport fails (default 3).
func WithAttempts(n int) Option {
	return func(c *Client) error {
		if n < 1 {
			return errors.New("client: attempts must be at least 1")
		}
		c.attempts = n
		return nil
	}
}

// WithOverhead sets the time allowed on top of a run's timeout for one attempt (default 30 s).
func WithOverhead(d time.Duration) Option {
	return func(c *Client) error { c.overhead = d; return nil }
}

// WithStreamGrace sets how long a streamed run waits, after its result, for chunks still on
// their way (default 1 s); chunks still missing then are counted as lost.
func WithStreamGrace(d time.Duration) Option {
	return func(c *Client) error {
		if d < 0 {
			return errors.New("client: stream grace must not be negative")
		}
		c.grace = d
		return nil
	}
}

// New returns a client on an open NATS connection.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	c := &Client{nc: nc, tenant: protocol.DefaultTenant, attempts: DefaultAttempts, overhead: DefaultOverhead, grace: DefaultStreamGrace}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Conversation returns the handle of one conversation. Its sandbox is created by its first run.
// The id must match [A-Za-z0-9_-]{1,128}; Run and Close refuse another with CodeBadRequest.
func (c *Client) Conversation(id string) *Conversation { return &Conversation{c: c, id: id} }

// Conversation is one conversation's handle. It is safe for concurrent use; runs of one
// conversation execute one at a time, in the order the worker receives them.
type Conversation struct {
	c  *Client
	id string
}

// ID returns the conversation's id.
func (cv *Conversation) ID() string { return cv.id }

// check refuses a conversation id that is not one subject token (it would make another
// subject, which no dispatcher listens on).
func (cv *Conversation) check() *protocol.Error {
	if !protocol.ValidID(cv.id) {
		return protocol.Errorf(protocol.CodeBadRequest, "conversation %q must match [A-Za-z0-9_-]{1,%d}", cv.id, protocol.MaxIDLen)
	}
	return nil
}

// RunOptions are the optional fields of a run.
type RunOptions struct {
	// RequestID identifies the run for retries; generated when empty. Reuse it to retry a run
	// whose result you did not get: it will not run twice.
	RequestID string
	// Timeout of the run; 0 means the server's default (60 s).
	Timeout time.Duration
	// Env holds environment variables for this run only.
	Env map[string]string
	// Sandbox applies when this run creates the conversation's sandbox.
	Sandbox *protocol.SandboxOptions
}

// Run runs code in the conversation's sandbox and returns its result. A snippet that fails is a
// result with its exit code, not an error. The error is a *protocol.Error when the server could
// not run the code (the result is returned too), or a transport error.
func (cv *Conversation) Run(ctx context.Context, code, language string, opts *RunOptions) (*protocol.RunResult, error) {
	req, perr := cv.runRequest(code, language, opts)
	if perr != nil {
		return protocol.ErrorResult(req.ID, perr), perr
	}
	return cv.send(ctx, &req)
}

// runRequest builds a run's request from Run's arguments and checks it against the contract,
// as a dispatcher would: what it refuses is never sent.
func (cv *Conversation) runRequest(code, language string, opts *RunOptions) (protocol.RunRequest, *protocol.Error) {
	if opts == nil {
		opts = &RunOptions{}
	}
	req := protocol.RunRequest{ID: opts.RequestID, Code: code, Language: language, Env: opts.Env, Sandbox: opts.Sandbox}
	if req.ID == "" {
		req.ID = nuid.Next()
	}
	if opts.Timeout > 0 {
		req.TimeoutMS = max(opts.Timeout.Milliseconds(), 1)
	}
	perr := cv.check()
	if perr == nil {
		perr = req.Validate()
	}
	return req, perr
}

// send sends a checked run request (retrying the transport) and decodes its result.
func (cv *Conversation) send(ctx context.Context, req *protocol.RunRequest) (*protocol.RunResult, error) {
	data, err := cv.c.request(ctx, cv.c.subjects.Run(cv.c.tenant, cv.id), protocol.Encode(req), req.Timeout()+cv.c.overhead)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", req.ID, err)
	}
	res, err := protocol.DecodeRunResult(data)
	if err != nil {
		return nil, err
	}
	if res.Error != nil {
		return res, res.Error
	}
	return res, nil
}

// Close destroys the conversation's sandbox. Closing a conversation without one is not an error.
func (cv *Conversation) Close(ctx context.Context) (*protocol.CloseResult, error) {
	if perr := cv.check(); perr != nil {
		return &protocol.CloseResult{Error: perr}, perr
	}
	data, err := cv.c.request(ctx, cv.c.subjects.Close(cv.c.tenant, cv.id), []byte("{}"), cv.c.overhead)
	if err != nil {
		return nil, fmt.Errorf("close %s: %w", cv.id, err)
	}
	res, err := protocol.DecodeCloseResult(data)
	if err != nil {
		return nil, err
	}
	if res.Error != nil {
		return res, res.Error
	}
	return res, nil
}

// request sends a request, retrying transport failures with the same payload.
func (c *Client) request(ctx context.Context, subject string, data []byte, perAttempt time.Duration) ([]byte, error) {
	var last error
	for attempt := 1; attempt <= c.attempts; attempt++ {
		actx, cancel := context.WithTimeout(ctx, perAttempt)
		msg, err := c.nc.RequestWithContext(actx, subject, data)
		cancel()
		if err == nil {
			return msg.Data, nil
		}
		last = err
		if ctx.Err() != nil {
			return nil, errors.Join(ctx.Err(), last)
		}
		if !retryable(err) {
			return nil, err
		}
		if attempt == c.attempts {
			break // no pause after the last attempt
		}
		// Back off a little: no dispatcher may be up yet, or one is being replaced.
		backoff := time.Duration(attempt) * 100 * time.Millisecond
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), last)
		}
	}
	return nil, fmt.Errorf("after %d attempts: %w", c.attempts, last)
}

// retryable reports whether a request may be sent again: nobody answered, or the answer was
// lost with a dispatcher or the connection. The same request id makes a resend safe.
func retryable(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionReconnecting)
}

// ForModel renders a result the way AG2 shows it to the model: the output alone on exit 0,
// otherwise the output followed by a line "[exit code: N]".
func ForModel(res *protocol.RunResult) string {
	if res.Error != nil {
		return fmt.Sprintf("[error %s: %s]", res.Error.Code, res.Error.Message)
	}
	if res.ExitCode == 0 {
		return res.Output
	}
	out := res.Output
	if out != "" && out[len(out)-1] != '\n' {
		out += "\n"
	}
	return out + fmt.Sprintf("[exit code: %d]", res.ExitCode)
}
