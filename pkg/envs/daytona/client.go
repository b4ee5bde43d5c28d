package daytona

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Defaults of ClientConfig.
const (
	// DefaultAPIURL is Daytona's public management API, as in both SDKs.
	DefaultAPIURL = "https://app.daytona.io/api"
	// SDKVersion is sent as X-Daytona-SDK-Version: the API surface this client was written
	// against (the toolbox uses it to choose response formats).
	SDKVersion = "0.190.0"
	// DefaultMaxRetries bounds the retries of one call (rate limits, transient failures).
	DefaultMaxRetries = 4
	// DefaultRetryBase is the first backoff when the service gives no Retry-After; it doubles
	// (1, 2, 4, 8 s as Daytona's docs recommend).
	DefaultRetryBase = time.Second
	// DefaultMaxRetryWait is the longest wait before a retry; a call asked to wait longer by
	// the service's Retry-After fails instead. The API's throttlers count per minute, so a
	// Retry-After-<bucket> may say up to 60 s; the cap stays above that.
	DefaultMaxRetryWait = 90 * time.Second
	// DefaultMaxResponse bounds the body of one answer (a run's output is capped well below it
	// inside the sandbox).
	DefaultMaxResponse = 64 << 20
)

// ClientConfig configures a Client. The zero value of each optional field means its default.
type ClientConfig struct {
	// APIURL is the management API's base URL; default DefaultAPIURL.
	APIURL string
	// APIKey is sent as a bearer token to the API and to the toolbox proxy. Required.
	APIKey string
	// HTTPClient sends the requests; default a client of its own with no overall timeout (each
	// call's context bounds it).
	HTTPClient *http.Client
	// MaxRetries, RetryBase and MaxRetryWait shape retries; see the Default* constants.
	MaxRetries   int
	RetryBase    time.Duration
	MaxRetryWait time.Duration
	// MaxResponse bounds a response body.
	MaxResponse int64
}

// Client is a small, typed client of Daytona's REST API: the management calls on sandboxes and
// the toolbox calls that run code. It implements API and is safe for concurrent use.
//
// Retries: a 429 is retried on any call after the Retry-After-<bucket> (or Retry-After) the
// service sends, up to MaxRetryWait, else after an exponential backoff, unless the caller's
// context would end first;
// a request that never left (connection refused) is retried on any call; 502, 503, 504 and
// broken connections are retried only on calls that are safe to repeat (GET, DELETE, PUT, start).
// Creating a sandbox and running code are never repeated after they may have reached the service.
type Client struct {
	cfg  ClientConfig
	base string
	http *http.Client
}

var _ API = (*Client)(nil)

// NewClient returns a client. It does no I/O.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.APIKey == "" {
		return nil, errors.New("daytona: client: an API key is required")
	}
	cfg.APIURL = cmp.Or(cfg.APIURL, DefaultAPIURL)
	u, err := url.Parse(cfg.APIURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("daytona: client: API URL %q: want http(s)://host[/path]", cfg.APIURL)
	}
	cfg.MaxRetries = cmp.Or(cfg.MaxRetries, DefaultMaxRetries)
	cfg.RetryBase = cmp.Or(cfg.RetryBase, DefaultRetryBase)
	cfg.MaxRetryWait = cmp.Or(cfg.MaxRetryWait, DefaultMaxRetryWait)
	cfg.MaxResponse = cmp.Or(cfg.MaxResponse, DefaultMaxResponse)
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 64 // many sandboxes share one toolbox proxy host
		hc = &http.Client{Transport: tr}
	}
	return &Client{cfg: cfg, base: strings.TrimRight(cfg.APIURL, "/"), http: hc}, nil
}

// CloseIdleConnections closes the client's idle keep-alive connections.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// Create implements API.
func (c *Client) Create(ctx context.Context, req CreateSandboxRequest) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, call{op: "create sandbox", method: http.MethodPost, url: c.base + "/sandbox", body: req, out: &sb})
	return sb, err
}

// Get implements API.
func (c *Client) Get(ctx context.Context, idOrName string) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, call{op: "get sandbox", method: http.MethodGet, url: c.sandboxURL(idOrName, ""), idempotent: true, out: &sb})
	return sb, err
}

// Delete implements API.
func (c *Client) Delete(ctx context.Context, idOrName string) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, call{op: "delete sandbox", method: http.MethodDelete, url: c.sandboxURL(idOrName, ""), idempotent: true, out: &sb})
	return sb, err
}

// Start implements API.
func (c *Client) Start(ctx context.Context, idOrName string) (Sandbox, error) {
	var sb Sandbox
	err := c.do(ctx, call{op: "start sandbox", method: http.MethodPost, url: c.sandboxURL(idOrName, "/start"), idempotent: true, out: &sb})
	return sb, err
}

// SetLabels implements API.
func (c *Client) SetLabels(ctx context.Context, idOrName string, labels map[string]string) error {
	body := struct {
		Labels map[string]string `json:"labels"`
	}{labels}
	return c.do(ctx, call{op: "set sandbox labels", method: http.MethodPut, url: c.sandboxURL(idOrName, "/labels"), idempotent: true, body: body})
}

// List implements API. It accepts both answers of GET /sandbox: {items, nextCursor} (v0.180 and
// later) and a bare array of sandboxes (before).
func (c *Client) List(ctx context.Context, q ListQuery) (ListPage, error) {
	v := url.Values{}
	if len(q.Labels) > 0 {
		b, err := json.Marshal(q.Labels)
		if err != nil {
			return ListPage{}, fmt.Errorf("list sandboxes: encode labels: %w", err)
		}
		v.Set("labels", string(b))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Cursor != "" {
		v.Set("cursor", q.Cursor)
	}
	u := c.base + "/sandbox"
	if len(v) > 0 {
		u += "?" + v.Encode()
	}
	var raw json.RawMessage
	if err := c.do(ctx, call{op: "list sandboxes", method: http.MethodGet, url: u, idempotent: true, out: &raw}); err != nil {
		return ListPage{}, err
	}
	var page ListPage
	switch first := firstByte(raw); first {
	case '[':
		if err := json.Unmarshal(raw, &page.Items); err != nil {
			return ListPage{}, fmt.Errorf("list sandboxes: decode array: %w", err)
		}
	case '{':
		var p struct {
			Items      []Sandbox `json:"items"`
			NextCursor *string   `json:"nextCursor"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return ListPage{}, fmt.Errorf("list sandboxes: decode page: %w", err)
		}
		page.Items = p.Items
		if p.NextCursor != nil {
			page.NextCursor = *p.NextCursor
		}
	default:
		return ListPage{}, fmt.Errorf("list sandboxes: unexpected answer starting %q", first)
	}
	return page, nil
}

// Execute implements API.
func (c *Client) Execute(ctx context.Context, tb Toolbox, req ExecuteRequest) (ExecuteResponse, error) {
	// Daemons before v0.113 named the exit code "code"; read either.
	var out struct {
		ExitCode *int   `json:"exitCode"`
		Code     *int   `json:"code"`
		Result   string `json:"result"`
	}
	err := c.do(ctx, call{op: "execute", method: http.MethodPost, url: toolboxURL(tb, "/process/execute"), body: req, out: &out})
	if err != nil {
		return ExecuteResponse{}, err
	}
	res := ExecuteResponse{Result: out.Result}
	switch {
	case out.ExitCode != nil:
		res.ExitCode = *out.ExitCode
	case out.Code != nil:
		res.ExitCode = *out.Code
	}
	return res, nil
}

// CodeRun implements API.
func (c *Client) CodeRun(ctx context.Context, tb Toolbox, req CodeRunRequest) (CodeRunResponse, error) {
	var out CodeRunResponse
	err := c.do(ctx, call{op: "code run", method: http.MethodPost, url: toolboxURL(tb, "/process/code-run"), body: req, out: &out})
	return out, err
}

// CreateSession implements API. It is repeated after a failure that may have reached the
// service: a 409 then means the first attempt made the session, and is success.
func (c *Client) CreateSession(ctx context.Context, tb Toolbox, sessionID string) error {
	body := struct {
		SessionID string `json:"sessionId"`
	}{sessionID}
	err := c.do(ctx, call{op: "create session", method: http.MethodPost, url: toolboxURL(tb, "/process/session"), body: body, idempotent: true})
	var ae *APIError
	if errors.As(err, &ae) && ae.StatusCode == http.StatusConflict && ae.attempt > 0 {
		return nil
	}
	return err
}

// SessionExec implements API. It is never repeated once it may have reached the service.
func (c *Client) SessionExec(ctx context.Context, tb Toolbox, sessionID string, req SessionExecRequest) (SessionExecResponse, error) {
	var out SessionExecResponse
	err := c.do(ctx, call{op: "session exec", method: http.MethodPost, url: toolboxURL(tb, sessionPath(sessionID, "/exec")), body: req, out: &out})
	return out, err
}

// SessionCommand implements API.
func (c *Client) SessionCommand(ctx context.Context, tb Toolbox, sessionID, cmdID string) (SessionCommand, error) {
	var out SessionCommand
	err := c.do(ctx, call{op: "session command", method: http.MethodGet, url: toolboxURL(tb, sessionPath(sessionID, "/command/"+url.PathEscape(cmdID))), idempotent: true, out: &out})
	return out, err
}

// SessionCommandLogs implements API. It reads both answers: JSON {output, stdout, stderr}, and
// the text of older daemons (taken as Output, the markers stripped).
func (c *Client) SessionCommandLogs(ctx context.Context, tb Toolbox, sessionID, cmdID string) (SessionLogs, error) {
	var raw []byte
	var header http.Header
	err := c.do(ctx, call{op: "session command logs", method: http.MethodGet, url: toolboxURL(tb, sessionPath(sessionID, "/command/"+url.PathEscape(cmdID)+"/logs")), idempotent: true, raw: &raw, header: &header})
	if err != nil {
		return SessionLogs{}, err
	}
	if strings.HasPrefix(header.Get("Content-Type"), "application/json") {
		var logs SessionLogs
		if err := json.Unmarshal(raw, &logs); err != nil {
			return SessionLogs{}, fmt.Errorf("session command logs: decode answer: %w", err)
		}
		logs.Split = true
		return logs, nil
	}
	return SessionLogs{Output: stripLogMarkers(string(raw))}, nil
}

// DeleteSession implements API.
func (c *Client) DeleteSession(ctx context.Context, tb Toolbox, sessionID string) error {
	return c.do(ctx, call{op: "delete session", method: http.MethodDelete, url: toolboxURL(tb, sessionPath(sessionID, "")), idempotent: true})
}

func sessionPath(sessionID, suffix string) string {
	return "/process/session/" + url.PathEscape(sessionID) + suffix
}

// stripLogMarkers removes the stdout (01 01 01) and stderr (02 02 02) line markers of a
// session log.
func stripLogMarkers(log string) string {
	return strings.NewReplacer("\x01\x01\x01", "", "\x02\x02\x02", "").Replace(log)
}

func (c *Client) sandboxURL(idOrName, suffix string) string {
	return c.base + "/sandbox/" + url.PathEscape(idOrName) + suffix
}

// toolboxURL is {proxy}/{sandboxId}{path}, the proxy's trailing slash trimmed as the SDKs do.
func toolboxURL(tb Toolbox, path string) string {
	return strings.TrimRight(tb.ProxyURL, "/") + "/" + url.PathEscape(tb.SandboxID) + path
}

func firstByte(b []byte) byte {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return c
		}
	}
	return 0
}

// call is one API call.
type call struct {
	op, method, url string
	body            any
	out             any
	// idempotent calls may be repeated after a 5xx or a broken connection.
	idempotent bool
	// raw, when set, receives the 2xx body as it is (out is then unused), header its headers
	// and status its status.
	raw    *[]byte
	header *http.Header
	status *int
	// payload, when set, is the body as it is (body is then unused), of type contentType.
	payload     []byte
	contentType string
	// reqHeader holds headers of this call, set over the client's own.
	reqHeader http.Header
}

// do sends a call, retrying as the Client's doc says, and decodes a 2xx body into c.out.
func (c *Client) do(ctx context.Context, cl call) error {
	body := cl.payload
	if cl.body != nil && body == nil {
		var err error
		if body, err = json.Marshal(cl.body); err != nil {
			return fmt.Errorf("%s: encode request: %w", cl.op, err)
		}
	}
	for attempt := 0; ; attempt++ {
		err := c.once(ctx, cl, body)
		if err == nil {
			return nil
		}
		var ae *APIError
		if errors.As(err, &ae) {
			ae.attempt = attempt
		}
		wait, retry := c.retryAfter(cl, err, attempt)
		if !retry {
			return err
		}
		if wait > c.cfg.MaxRetryWait {
			return fmt.Errorf("%w (not retried: the service asks to wait %s, more than %s)", err, wait, c.cfg.MaxRetryWait)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return fmt.Errorf("%w (not retried: the wait of %s would outlast the deadline)", err, wait.Round(time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (retry abandoned: %w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// retryAfter says whether a failed attempt is retried, and after how long.
func (c *Client) retryAfter(cl call, err error, attempt int) (time.Duration, bool) {
	if attempt >= c.cfg.MaxRetries {
		return 0, false
	}
	backoff := c.cfg.RetryBase << attempt
	backoff += time.Duration(rand.Int64N(int64(backoff)/4 + 1)) // jitter: a fleet's retries spread out
	var ae *APIError
	switch {
	case errors.As(err, &ae):
		switch ae.StatusCode {
		case http.StatusTooManyRequests:
			if d, ok := retryAfterHeader(ae.Header); ok {
				return d, true // honoured as it is: retrying sooner would only be throttled again
			}
			return min(backoff, c.cfg.MaxRetryWait), true
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return min(backoff, c.cfg.MaxRetryWait), cl.idempotent
		}
		return 0, false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return 0, false
	case notSent(err):
		return min(backoff, c.cfg.MaxRetryWait), true
	default:
		// A connection broken mid-call: the request may have been processed.
		return min(backoff, c.cfg.MaxRetryWait), cl.idempotent
	}
}

// notSent reports whether a transport error happened before the request could reach the server.
func notSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

// retryAfterHeader reads Retry-After-<bucket> (the API's throttlers: sandbox-create,
// sandbox-lifecycle, authenticated) or a plain Retry-After, in seconds; the longest wins.
func retryAfterHeader(h http.Header) (time.Duration, bool) {
	var best time.Duration
	found := false
	for k, vs := range h {
		if !strings.HasPrefix(strings.ToLower(k), "retry-after") || len(vs) == 0 {
			continue
		}
		v := strings.TrimSpace(vs[0])
		var d time.Duration
		if n, err := strconv.ParseFloat(v, 64); err == nil && n >= 0 {
			d = time.Duration(n * float64(time.Second))
		} else if t, err := http.ParseTime(v); err == nil {
			d = max(time.Until(t), 0)
		} else {
			continue
		}
		if !found || d > best {
			best, found = d, true
		}
	}
	return best, found
}

// once sends one attempt of a call.
func (c *Client) once(ctx context.Context, cl call, body []byte) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, cl.url, rd)
	if err != nil {
		return fmt.Errorf("%s: %w", cl.op, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.cfg.APIKey)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("X-Daytona-Source", "codefleet")
	req.Header.Set("X-Daytona-SDK-Version", SDKVersion)
	if body != nil {
		req.Header.Set("Content-Type", cmp.Or(cl.contentType, "application/json"))
	}
	for k, v := range cl.reqHeader {
		req.Header[k] = v
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", cl.op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return decodeError(cl.op, resp, b)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxResponse+1))
	if err != nil {
		return fmt.Errorf("%s: read answer: %w", cl.op, err)
	}
	if int64(len(b)) > c.cfg.MaxResponse {
		return fmt.Errorf("%s: answer over %d bytes", cl.op, c.cfg.MaxResponse)
	}
	if cl.header != nil {
		*cl.header = resp.Header
	}
	if cl.status != nil {
		*cl.status = resp.StatusCode
	}
	if cl.raw != nil {
		*cl.raw = b
		return nil
	}
	if cl.out == nil || len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, cl.out); err != nil {
		return fmt.Errorf("%s: decode answer: %w", cl.op, err)
	}
	return nil
}

// decodeError turns a non-2xx answer into an *APIError, whatever its body: the management API's
// {statusCode, error, message}, the toolbox's {statusCode, message, code}, other text, or nothing.
func decodeError(op string, resp *http.Response, b []byte) *APIError {
	ae := &APIError{Op: op, StatusCode: resp.StatusCode, Header: resp.Header}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return ae
	}
	var e struct {
		Message json.RawMessage `json:"message"`
		Error   string          `json:"error"`
		Code    string          `json:"code"`
	}
	if firstByte(b) == '{' && json.Unmarshal(b, &e) == nil {
		ae.Code = e.Code
		var s string
		var list []string
		switch {
		case json.Unmarshal(e.Message, &s) == nil && s != "":
			ae.Message = s
		case json.Unmarshal(e.Message, &list) == nil && len(list) > 0:
			ae.Message = strings.Join(list, ", ")
		default:
			ae.Message = e.Error
		}
		if ae.Message != "" {
			return ae
		}
	}
	if len(b) > 512 {
		b = append(b[:512:512], "..."...)
	}
	ae.Body = strings.ToValidUTF8(string(b), "?")
	return ae
}
