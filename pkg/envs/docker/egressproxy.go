package docker

// The egress proxy: the worker's end of a sandbox's egress (egress.go). Each connection on the
// sandbox's egress socket is one connection a snippet opened to the agent's egress port, and
// speaks to an HTTP proxy: CONNECT host:port (HTTPS, or anything over a tunnel), or a plain
// HTTP request with an absolute URI. The proxy decides (envs.Allowlist, envs.ForbiddenAddr),
// resolves the name itself, dials the addresses it checked (never the name again, which could
// resolve elsewhere the second time), and answers 200 and splices, or forwards the request and
// its answer. A refusal is a 403 whose status line and body say why; a destination that cannot
// be reached a 502. Redirects are the client's business: an answer is passed on as it is.

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/pkg/envs"
)

const (
	// egressMaxHeader bounds a proxy request's head (request line and headers).
	egressMaxHeader = 64 << 10
	// egressRefusers bounds the connections over the limit being answered at once; beyond it
	// they are closed without a word.
	egressRefusers = 8
	// egressRefuseWait bounds answering a connection over the limit.
	egressRefuseWait = time.Second
)

// Refusal reasons, the values of codefleet_worker_egress_refused_total's reason label.
const (
	refusedNotListed = "not_listed"        // a name and port the allowlist does not name
	refusedIPLiteral = "ip_literal"        // an address the allowlist does not name as such
	refusedForbidden = "forbidden_address" // link-local (metadata), unspecified, multicast, ...
	refusedBad       = "bad_request"       // not a proxy request
	refusedLimit     = "limit"             // over the sandbox's concurrent connections
)

// egressError is a proxy request that is not carried out: its status (403, 400, 502, 503),
// the metric reason of a refusal ("" for a destination that could not be reached) and what
// the client is told.
type egressError struct {
	status int
	reason string
	msg    string
}

// egressProxy serves one sandbox's egress socket. It is safe for concurrent use.
type egressProxy struct {
	// allow is the sandbox's allowlist: its tenant's, set again when a pool sandbox is claimed.
	allow atomic.Pointer[envs.Allowlist]
	lim   EgressLimits
	m     *egressMetrics
	log   zerolog.Logger
	ln    net.Listener
	// ctx ends with Close: it cuts resolutions and dials short.
	ctx    context.Context
	cancel context.CancelFunc
	// slots holds one token per connection served (lim.MaxConns); refusers one per connection
	// over the limit being answered.
	slots, refusers chan struct{}

	mu    sync.Mutex
	conns map[net.Conn]struct{} // both ends of every connection, closed by Close; nil once closed
	wg    sync.WaitGroup        // the accept loop and every connection's goroutine
}

// newEgressProxy serves ln with the allowlist allow until Close.
func newEgressProxy(ln net.Listener, allow envs.Allowlist, lim EgressLimits, m *egressMetrics, log zerolog.Logger) *egressProxy {
	ctx, cancel := context.WithCancel(context.Background())
	p := &egressProxy{
		lim: lim, m: m, log: log, ln: ln, ctx: ctx, cancel: cancel,
		slots: make(chan struct{}, lim.MaxConns), refusers: make(chan struct{}, egressRefusers),
		conns: map[net.Conn]struct{}{},
	}
	p.setAllow(allow)
	p.wg.Add(1)
	go p.serve()
	return p
}

// setAllow replaces the allowlist; connections already made stay.
func (p *egressProxy) setAllow(a envs.Allowlist) { p.allow.Store(&a) }

// Close stops the proxy: the listener, every connection it carries, and waits for them.
func (p *egressProxy) Close() error {
	p.cancel()
	err := p.ln.Close()
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for c := range conns {
		c.Close()
	}
	p.wg.Wait()
	return err
}

func (p *egressProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			// Out of descriptors, say: the connection waits in the backlog meanwhile.
			p.log.Debug().Err(err).Msg("egress: accept")
			select {
			case <-time.After(10 * time.Millisecond):
			case <-p.ctx.Done():
				return
			}
			continue
		}
		if !p.track(c) {
			c.Close()
			return
		}
		select {
		case p.slots <- struct{}{}:
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer func() { <-p.slots }()
				defer p.untrack(c)
				p.handle(c)
			}()
		default:
			p.overLimit(c)
		}
	}
}

// overLimit answers a connection beyond the sandbox's concurrent connections with a 503, or
// closes it when too many are being answered already.
func (p *egressProxy) overLimit(c net.Conn) {
	p.m.refused(refusedLimit)
	select {
	case p.refusers <- struct{}{}:
	default:
		p.untrack(c)
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() { <-p.refusers }()
		defer p.untrack(c)
		c.SetDeadline(time.Now().Add(egressRefuseWait))
		writeEgressError(c, &egressError{status: http.StatusServiceUnavailable, reason: refusedLimit,
			msg: fmt.Sprintf("this sandbox has %d connections open through the proxy, the most it may", p.lim.MaxConns)})
		// The request is read (and dropped) before the close, which would otherwise reset the
		// connection, and the client might not read the answer.
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		io.Copy(io.Discard, io.LimitReader(c, egressMaxHeader))
	}()
}

func (p *egressProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *egressProxy) untrack(c net.Conn) {
	p.mu.Lock()
	if p.conns != nil {
		delete(p.conns, c)
	}
	p.mu.Unlock()
	c.Close()
}

// handle serves the proxy requests of one connection: CONNECT, or plain HTTP requests, one
// after the other while the client keeps the connection.
func (p *egressProxy) handle(raw net.Conn) {
	p.m.open.Inc()
	defer p.m.open.Dec()
	act := &activity{idle: p.lim.IdleTimeout}
	act.touch()
	c := &idleConn{Conn: raw, act: act}
	// The head of a request is read through lr, which bounds it; a body is not bounded.
	lr := &io.LimitedReader{R: c, N: egressMaxHeader}
	br := bufio.NewReader(lr)
	for first := true; ; first = false {
		lr.N = egressMaxHeader
		req, err := http.ReadRequest(br)
		if err != nil {
			if first && !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed) {
				p.fail(c, &egressError{status: http.StatusBadRequest, reason: refusedBad, msg: "not an HTTP proxy request"})
			}
			return
		}
		lr.N = math.MaxInt64
		if req.Method == http.MethodConnect {
			p.tunnel(c, br, req)
			return
		}
		if !p.forward(c, br, req) {
			return
		}
	}
}

// tunnel serves CONNECT host:port: the destination is dialled, the client told 200, and the
// bytes spliced both ways.
func (p *egressProxy) tunnel(c *idleConn, br *bufio.Reader, req *http.Request) {
	host, ports, err := net.SplitHostPort(req.URL.Host)
	port, perr := envs.ParsePort(ports)
	if err != nil || perr != nil {
		p.fail(c, &egressError{status: http.StatusBadRequest, reason: refusedBad, msg: "CONNECT wants host:port, a port from 1 to 65535"})
		return
	}
	up, eerr := p.dial(host, port)
	if eerr != nil {
		p.fail(c, eerr)
		return
	}
	defer p.untrack(up)
	p.m.proxied.Inc()
	p.log.Debug().Str("target", req.URL.Host).Msg("egress: tunnel")
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	upc := &idleConn{Conn: up, act: c.act}
	done := make(chan struct{})
	go func() {
		defer close(done)
		half(upc, br, c) // what the client sent after its CONNECT is in br
	}()
	half(c, upc, upc)
	<-done
}

// half copies src to dst until src ends, then shuts dst's writing half so that its far end
// sees the end and may still answer; a failure either way (or the idle timeout) closes both.
func half(dst *idleConn, src io.Reader, srcConn *idleConn) {
	_, err := io.Copy(dst, src)
	if err == nil {
		err = dst.CloseWrite()
	}
	if err != nil {
		dst.Close()
		srcConn.Close()
	}
}

// forward serves one plain HTTP request (an absolute URI): it is sent on a connection of its
// own (Connection: close), without the hop-by-hop headers, and the answer passed back. It
// returns whether the client's connection may carry another request.
func (p *egressProxy) forward(c *idleConn, br *bufio.Reader, req *http.Request) bool {
	if !strings.EqualFold(req.URL.Scheme, "http") || req.URL.Host == "" {
		p.fail(c, &egressError{status: http.StatusBadRequest, reason: refusedBad,
			msg: "want CONNECT host:port, or a request for an absolute http:// URI (https goes through CONNECT)"})
		return false
	}
	port, err := envs.ParsePort(cmp.Or(req.URL.Port(), "80"))
	if err != nil {
		p.fail(c, &egressError{status: http.StatusBadRequest, reason: refusedBad, msg: err.Error()})
		return false
	}
	up, eerr := p.dial(req.URL.Hostname(), port)
	if eerr != nil {
		p.fail(c, eerr)
		return false
	}
	defer p.untrack(up)
	upc := &idleConn{Conn: up, act: c.act}
	p.m.proxied.Inc()
	p.log.Debug().Str("target", req.URL.Host).Str("method", req.Method).Msg("egress: request")

	keep := !req.Close && req.ProtoAtLeast(1, 1)
	removeHopHeaders(req.Header)
	req.Close = true // one request per connection upstream: it may be to another host next
	if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		// The client waits for this before it sends the body, which Write reads.
		req.Header.Del("Expect")
		if _, err := io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			return false
		}
	}
	sent := make(chan error, 1)
	go func() { sent <- req.Write(upc) }()
	ubr := bufio.NewReader(upc)
	var resp *http.Response
	for {
		resp, err = http.ReadResponse(ubr, req)
		if err != nil {
			upc.Close()
			<-sent
			p.fail(c, &egressError{status: http.StatusBadGateway, msg: fmt.Sprintf("%s: no answer: %v", req.URL.Host, err)})
			return false
		}
		if resp.StatusCode >= 200 {
			break
		}
		resp.Body.Close() // an informational answer (103 Early Hints): dropped
	}
	removeHopHeaders(resp.Header)
	if resp.ContentLength < 0 && !slices.Contains(resp.TransferEncoding, "chunked") {
		keep = false // the body ends where the connection does: Write says Connection: close
	}
	resp.Close = !keep
	werr := resp.Write(c)
	resp.Body.Close()
	upc.Close()
	serr := <-sent // done or failed now that upstream is closed, once the client's body is read
	return keep && !resp.Close && werr == nil && serr == nil
}

// dial checks host:port against the policy, resolves a name and checks its addresses, and
// connects to the first address that answers.
func (p *egressProxy) dial(host string, port uint16) (net.Conn, *egressError) {
	allow := *p.allow.Load()
	target := net.JoinHostPort(host, strconv.Itoa(int(port)))
	var addrs []netip.Addr
	if addr, err := netip.ParseAddr(host); err == nil {
		addr = addr.Unmap()
		switch {
		case addr.Zone() != "":
			return nil, &egressError{status: http.StatusBadRequest, reason: refusedBad, msg: "an address with a zone"}
		case envs.ForbiddenAddr(addr) != "":
			return nil, &egressError{status: http.StatusForbidden, reason: refusedForbidden, msg: fmt.Sprintf("%s is %s", addr, envs.ForbiddenAddr(addr))}
		case !allow.AllowsAddr(addr, port):
			return nil, &egressError{status: http.StatusForbidden, reason: refusedIPLiteral,
				msg: target + " is not in the egress allowlist (an address is allowed only where the allowlist names it)"}
		}
		addrs = []netip.Addr{addr}
	} else {
		name, err := envs.CanonicalName(host)
		if err != nil {
			return nil, &egressError{status: http.StatusBadRequest, reason: refusedBad, msg: "not a host name"}
		}
		target = net.JoinHostPort(name, strconv.Itoa(int(port)))
		if !allow.AllowsName(name, port) {
			return nil, &egressError{status: http.StatusForbidden, reason: refusedNotListed, msg: target + " is not in the egress allowlist"}
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.lim.DialTimeout)
		defer cancel()
		found, err := net.DefaultResolver.LookupNetIP(ctx, "ip", name)
		if err != nil {
			return nil, &egressError{status: http.StatusBadGateway, msg: fmt.Sprintf("resolve %s: %v", name, err)}
		}
		for _, a := range found {
			a = a.Unmap()
			if why := envs.ForbiddenAddr(a); why != "" {
				return nil, &egressError{status: http.StatusForbidden, reason: refusedForbidden, msg: fmt.Sprintf("%s resolves to %s, %s", name, a, why)}
			}
			addrs = append(addrs, a)
		}
	}
	ctx, cancel := context.WithTimeout(p.ctx, p.lim.DialTimeout)
	defer cancel()
	var d net.Dialer
	var errs []error
	for _, a := range addrs {
		up, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(a, port).String())
		if err == nil {
			if !p.track(up) {
				up.Close()
				return nil, &egressError{status: http.StatusServiceUnavailable, msg: "the sandbox's proxy is closing"}
			}
			return up, nil
		}
		errs = append(errs, err)
	}
	return nil, &egressError{status: http.StatusBadGateway, msg: fmt.Sprintf("%s: %v", target, errors.Join(errs...))}
}

// fail tells the client why its request is not carried out, and counts it.
func (p *egressProxy) fail(w io.Writer, e *egressError) {
	if e.reason != "" {
		p.m.refused(e.reason)
	} else {
		p.m.upstreamErrors.Inc()
	}
	p.log.Debug().Int("status", e.status).Str("reason", e.reason).Str("why", e.msg).Msg("egress: request not carried out")
	writeEgressError(w, e)
}

// writeEgressError writes e as an HTTP answer that ends the connection. The reason is in the
// status line too: for a CONNECT that is all most clients show ("Tunnel connection failed:
// 403 ...").
func writeEgressError(w io.Writer, e *egressError) {
	msg := strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, e.msg)
	if len(msg) > 300 {
		msg = msg[:300]
	}
	body := "codefleet egress: " + msg + "\n"
	fmt.Fprintf(w, "HTTP/1.1 %d %s: codefleet egress: %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		e.status, http.StatusText(e.status), msg, len(body), body)
}

// hopHeaders are the headers of one connection, not of the request or answer (RFC 9110 7.6.1).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// removeHopHeaders removes the hop-by-hop headers, those Connection names among them.
func removeHopHeaders(h http.Header) {
	for _, v := range h.Values("Connection") {
		for _, name := range strings.Split(v, ",") {
			h.Del(strings.TrimSpace(name))
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// activity is when either end of a proxied connection last moved bytes.
type activity struct {
	last atomic.Int64 // UnixNano
	idle time.Duration
}

func (a *activity) touch() { a.last.Store(time.Now().UnixNano()) }

// quiet reports whether neither end moved for the idle timeout.
func (a *activity) quiet() bool { return time.Since(time.Unix(0, a.last.Load())) >= a.idle }

// idleConn is one end of a proxied connection, closed (its reads and writes fail) once both ends
// were quiet for the idle timeout: a download keeps its quiet upload side open.
type idleConn struct {
	net.Conn
	act *activity
}

func (c *idleConn) Read(b []byte) (int, error) {
	for {
		c.Conn.SetReadDeadline(time.Now().Add(c.act.idle))
		n, err := c.Conn.Read(b)
		if n > 0 {
			c.act.touch()
		}
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && !c.act.quiet() {
			continue // the other end moved meanwhile
		}
		return n, err
	}
}

func (c *idleConn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.act.idle))
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.act.touch()
	}
	return n, err
}

// CloseWrite shuts the connection's writing half (TCP and unix connections have one).
func (c *idleConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
