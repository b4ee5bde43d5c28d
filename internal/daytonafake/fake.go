// Package daytonafake is a local stand-in for Daytona's service, written from what Daytona's
// public sources say the API does (its OpenAPI specs, API server and toolbox daemon, v0.190 to
// v0.205), to test codefleet's Daytona backend without an account. It serves both HTTP surfaces
// on one listener:
//
//   - the management API under /api: create (snapshot or buildInfo, validated as the service
//     does, answering with the state from before its wait), get by id or name, list with label
//     filters and cursor pages (or the old bare-array answer), delete, start, stop and labels,
//     behind bearer-token auth, with lifecycles that advance through the service's states on
//     timers (409 "Sandbox state change in progress" while one is pending);
//   - the toolbox under /toolbox/{sandboxId} (the sandboxes' toolboxProxyUrl points there):
//     /process/execute and /process/code-run, run as real local processes in a temporary
//     directory per sandbox, with the daemon's semantics (the command fed to a shell's stdin in a
//     new process group, stdout and stderr in one buffer, timeouts in seconds answered 408 with
//     the output discarded, code-run's base64 pipelines, envs validated; daemons older than
//     v0.167 have no code-run and ignore envs), the sessions of /process/session (see
//     session.go; a command's logs grow a line at a time while it runs), and the files API
//     of /files (see files.go: upload, bulk-upload, ranged download, list, info, delete,
//     folder, and /work-dir) on the host's paths, which follows symbolic links wherever the
//     daemon's does (its stat, its reads and writes): a client that must not follow them
//     checks paths itself, and the fake does not hide that. All of it sits behind what the
//     service puts in front of the daemon: the proxy's bearer check, which answers 401 "Bearer
//     token is invalid" for a sandbox it does not know as for a wrong key (400 or 404 while it
//     still holds the token in its cache: AnswerGone), and the load balancer's idle cut, a
//     bare 502 with an empty body for a call that has not answered within
//     Options.IdleTimeout (60 s) while its command goes on in the sandbox.
//
// The service's own waits and limits are reproduced: create (snapshot) and start hold their
// answer until the sandbox is started, for up to 30 s; image builds answer pending_build at once
// and take Options.BuildTime (a later sandbox of the same image reuses the build); the
// throttler buckets of Options.RateLimits answer 429 with Retry-After-<bucket> of up to a
// minute; VM-class sandboxes can be paused and resumed.
//
// Faults are injected per call (Inject: 429 with Retry-After-<bucket>, a bare 502, any status,
// before or after the call is handled), per sandbox (the next create ends in error, or stays
// creating, or starts slowly; the next build is slow; a sandbox is stopped, paused, archived or
// held in a transition), and for the whole service (SetAPIKey revokes the key in use).
//
// The processes run on the host, as the test's user, with no isolation at all: this is a test
// double, never something to expose. Every process started for a sandbox carries the variable
// DAYTONAFAKE_SANDBOX=<id>, by which the fake finds and kills what a sandbox left running when it
// is stopped or deleted, or when the server closes (Linux only).
package daytonafake

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ListShape is the answer of GET /sandbox.
type ListShape int

const (
	// ListCursor answers {items, nextCursor} (service v0.180 and later).
	ListCursor ListShape = iota
	// ListArray answers a bare array of every matching sandbox (before v0.180).
	ListArray
)

// Options configure a Server. The zero value of each field means its default.
type Options struct {
	// APIKey is the bearer token accepted; default "dtn_fake".
	APIKey string
	// StepDelay is how long each lifecycle step takes (unknown → creating → started, ...);
	// default 20ms.
	StepDelay time.Duration
	// CreateWait bounds how long POST /sandbox waits for a snapshot sandbox to start before
	// answering (the service waits up to 30 s, its default here).
	CreateWait time.Duration
	// Warm makes snapshot creates answer started at once, as a warm-pool hit does.
	Warm bool
	// DaemonVersion is the toolbox daemon's version; default "0.190.0". Before "0.167.0" there
	// is no /process/code-run and execute ignores envs.
	DaemonVersion string
	// HideDaemonVersion leaves daemonVersion out of the sandboxes, as older services do.
	HideDaemonVersion bool
	// List is the shape of GET /sandbox answers.
	List ListShape
	// Target is the region of sandboxes created without one; default "us".
	Target string
	// Shell is the toolbox's shell; default the first of zsh, bash, $SHELL, sh found.
	Shell string
	// Snapshots are the snapshots that exist; default daytona-small, -medium, -large.
	Snapshots []string
	// StartWait bounds how long POST /sandbox/{id}/start waits for the sandbox to start before
	// answering with it (the service waits up to 30 s, its default here).
	StartWait time.Duration
	// BuildTime is how long building an image takes (the sandbox is building_snapshot
	// meanwhile); default StepDelay. A later sandbox of an image built before skips the build,
	// as the service reuses it.
	BuildTime time.Duration
	// IdleTimeout is the idle cut of the load balancer in front of the toolbox proxy: a toolbox
	// call that has not answered within it gets a bare 502 with an empty body, while what it
	// started goes on in the sandbox (daytonaio/daytona#4545). Default 60 s; negative: none.
	IdleTimeout time.Duration
	// SandboxClass is the class of new sandboxes: "container" (the default) or "linux-vm", whose
	// sandboxes can be paused and resumed (POST /start answers 422 for a paused container).
	SandboxClass string
	// RateLimits are how many requests each throttler bucket (authenticated, sandbox-create,
	// sandbox-lifecycle) takes per RateWindow; past it the API answers 429 with
	// Retry-After-<bucket>, the seconds left in the window. No limit by default.
	RateLimits map[string]int
	// RateWindow is the limiter's window; default a minute, as the service's.
	RateWindow time.Duration
}

// Fault makes calls fail. Op is one of create, get, list, delete, start, stop, pause, archive,
// labels (the API), execute, code-run, session-create, session-get, session-list,
// session-delete, session-exec, session-command, session-logs, files-list, files-info,
// files-download, files-upload, files-bulk-upload, files-delete, files-folder, work-dir,
// user-home-dir (the toolbox).
type Fault struct {
	Op string
	// Status is the HTTP status answered.
	Status int
	// Times is how many calls fail; default 1.
	Times int
	// RetryAfter is sent as Retry-After-<bucket> (seconds) with a 429.
	RetryAfter int
	// After: the call is handled first, then answered with Status and an empty body, as when a
	// proxy gives up on an answer that was coming.
	After bool
}

// Server is a fake Daytona service. Its methods are safe for concurrent use.
type Server struct {
	// URL is the management API's base URL (DAYTONA_API_URL), e.g. http://127.0.0.1:PORT/api.
	URL string

	opts  Options
	hs    *http.Server
	ln    net.Listener
	root  string
	shell string

	mu        sync.Mutex
	apiKey    string // the key accepted (SetAPIKey changes it)
	sandboxes map[string]*sandbox
	seq       int
	faults    []*Fault
	next      []outcome       // outcomes of the next creates
	slowStart []time.Duration // how long the next starts take
	slowBuild []time.Duration // how long the next builds take
	built     map[string]bool // images built, by Dockerfile
	gone      int             // toolbox status for a sandbox it does not know
	windows   map[string]*window
	counts    map[string]int
	closed    bool
	running   sync.WaitGroup // toolbox commands in progress
	inflight  atomic.Int64   // how many
}

// outcome is how a created sandbox ends its start.
type outcome struct {
	fail  string        // error reason
	stuck time.Duration // stays creating this long (forever when negative), then error
}

// window is one throttler bucket's current window.
type window struct {
	start time.Time
	n     int
}

// Start runs a fake service on a loopback port.
func Start(opts Options) (*Server, error) {
	if opts.APIKey == "" {
		opts.APIKey = "dtn_fake"
	}
	if opts.StepDelay == 0 {
		opts.StepDelay = 20 * time.Millisecond
	}
	if opts.CreateWait == 0 {
		opts.CreateWait = 30 * time.Second
	}
	if opts.DaemonVersion == "" {
		opts.DaemonVersion = "0.190.0"
	}
	if opts.Target == "" {
		opts.Target = "us"
	}
	if len(opts.Snapshots) == 0 {
		opts.Snapshots = []string{"daytona-small", "daytona-medium", "daytona-large"}
	}
	if opts.StartWait == 0 {
		opts.StartWait = 30 * time.Second
	}
	if opts.BuildTime == 0 {
		opts.BuildTime = opts.StepDelay
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 60 * time.Second
	}
	if opts.SandboxClass == "" {
		opts.SandboxClass = "container"
	}
	if opts.RateWindow == 0 {
		opts.RateWindow = time.Minute
	}
	s := &Server{opts: opts, apiKey: opts.APIKey, sandboxes: map[string]*sandbox{}, counts: map[string]int{},
		built: map[string]bool{}, gone: http.StatusUnauthorized, windows: map[string]*window{}}
	s.shell = opts.Shell
	if s.shell == "" {
		s.shell = pickShell()
	}
	root, err := os.MkdirTemp("", "daytonafake-")
	if err != nil {
		return nil, err
	}
	s.root = root
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(root)
		return nil, err
	}
	s.ln = ln
	s.URL = "http://" + ln.Addr().String() + "/api"
	mux := http.NewServeMux()
	mux.HandleFunc("/api/", s.serveAPI)
	mux.HandleFunc("/toolbox/", s.serveToolbox)
	s.hs = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go s.hs.Serve(ln)
	return s, nil
}

// pickShell chooses the toolbox shell as the daemon does: zsh, bash, $SHELL, sh.
func pickShell() string {
	for _, name := range []string{"zsh", "bash", os.Getenv("SHELL"), "sh"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return "/bin/sh"
}

// Close stops the server, kills every sandbox's processes and removes their files.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var ids []string
	for id, sb := range s.sandboxes {
		ids = append(ids, id)
		sb.gen++ // pending transitions do nothing
		s.endSessionsLocked(sb)
	}
	s.mu.Unlock()
	err := s.hs.Close()
	for _, id := range ids {
		signalSandbox(id, syscall.SIGCONT) // a paused sandbox's processes, so that they can die
		killSandboxProcesses(id)
	}
	s.running.Wait()
	os.RemoveAll(s.root)
	return err
}

// Inject adds a fault.
func (s *Server) Inject(f Fault) {
	if f.Times == 0 {
		f.Times = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, &f)
}

// FailNextCreate makes the next created sandbox end in error (build_failed for a build) with
// reason as its errorReason.
func (s *Server) FailNextCreate(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next = append(s.next, outcome{fail: reason})
}

// StickNextCreate makes the next created sandbox stay creating for d (forever when d < 0), then
// end in error; meanwhile it cannot be deleted (409), as a sandbox stuck in a transition.
func (s *Server) StickNextCreate(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next = append(s.next, outcome{stuck: d, fail: "the sandbox did not start in time"})
}

// SlowNextStart makes the next sandbox to start (a new one, or one started again) take d in
// starting; create and start hold their answer meanwhile, up to CreateWait and StartWait.
func (s *Server) SlowNextStart(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slowStart = append(s.slowStart, d)
}

// SlowNextBuild makes the next image build take d (the sandbox is building_snapshot meanwhile).
func (s *Server) SlowNextBuild(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slowBuild = append(s.slowBuild, d)
}

// AnswerGone sets how the toolbox answers a call for a sandbox that does not exist (deleted,
// or never made): 401 "Bearer token is invalid" (the default: the proxy checks the token
// against the sandbox, as for a wrong key); 400 "failed to get runner info" (the proxy still
// holds the token in its cache, but finds no runner for the sandbox); 404 "sandbox container not
// found" (it still knows the runner too, whose container is gone).
func (s *Server) AnswerGone(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone = status
}

// SetAPIKey makes key the only API key the service accepts, as when the one in use is revoked
// or rotated: both the API and the toolbox refuse the old one (401).
func (s *Server) SetAPIKey(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiKey = key
}

func (s *Server) key() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.apiKey
}

// Count returns how many calls of op were received (failed ones included).
func (s *Server) Count(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[op]
}

// Sandboxes returns every sandbox not destroyed yet (being deleted included), oldest first.
func (s *Server) Sandboxes() []Sandbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Sandbox
	all := s.sortedLocked()
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].State != stateDestroyed {
			out = append(out, all[i].Sandbox.clone())
		}
	}
	return out
}

// Live returns how many sandboxes exist whose deletion was not asked for: what a client leaked.
func (s *Server) Live() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, sb := range s.sandboxes {
		if sb.DesiredState != stateDestroyed && sb.State != stateDestroyed {
			n++
		}
	}
	return n
}

// Stop stops a started sandbox, as POST /sandbox/{id}/stop does (its processes die, its files
// stay).
func (s *Server) Stop(id string) error {
	return s.Transition(id, stateStopping, s.opts.StepDelay)
}

// Pause pauses a started VM-class sandbox, as auto-pause does (its processes are frozen, its
// files stay): pausing, then paused. POST /start resumes it.
func (s *Server) Pause(id string) error {
	return s.Transition(id, statePausing, s.opts.StepDelay)
}

// Archive archives a stopped sandbox, as auto-archive does: archiving, then archived. POST
// /start restores it.
func (s *Server) Archive(id string) error {
	return s.Transition(id, stateArchiving, s.opts.StepDelay)
}

// Transition holds a sandbox in a transitional state for d (lifecycle calls get 409
// meanwhile, the toolbox 400), then settles it where that state leads: stopping to stopped (from
// started; its processes die), pausing to paused (from started, VM class only; its processes
// are frozen), archiving to archived (from stopped), and resizing, snapshotting or forking back
// to started (from started).
func (s *Server) Transition(id, state string, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.lookupLocked(id)
	from, to := stateStarted, stateStarted
	switch state {
	case stateStopping:
		to = stateStopped
	case statePausing:
		to = statePaused
	case stateArchiving:
		from, to = stateStopped, stateArchived
	case stateResizing, stateSnapshotting, stateForking:
	default:
		return fmt.Errorf("daytonafake: %s is not a transition this fake makes", state)
	}
	switch {
	case sb == nil || sb.pending || sb.State != from:
		return fmt.Errorf("daytonafake: sandbox %s cannot go %s (it is %v)", id, state, sb)
	case state == statePausing && sb.SandboxClass == "container":
		return fmt.Errorf("daytonafake: sandbox %s is of class container, which cannot be paused", id)
	}
	s.transitionLocked(sb, state, to, d)
	return nil
}

// Break puts a sandbox in error with reason, as when its runner fails.
func (s *Server) Break(id, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sb := s.sandboxes[id]; sb != nil {
		sb.gen++
		s.fail(sb, reason)
		s.endSessionsLocked(sb)
		go func() {
			signalSandbox(id, syscall.SIGCONT)
			killSandboxProcesses(id)
		}()
	}
}

// Running returns how many toolbox commands are in progress.
func (s *Server) Running() int { return int(s.inflight.Load()) }

// Get returns a sandbox by id, destroyed ones included.
func (s *Server) Get(id string) (Sandbox, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb, ok := s.sandboxes[id]
	if !ok {
		return Sandbox{}, false
	}
	return sb.Sandbox.clone(), true
}

// Dir returns a sandbox's directory (its working directory) on the host.
func (s *Server) Dir(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sb, ok := s.sandboxes[id]; ok {
		return sb.dir
	}
	return ""
}

// fault takes the fault for op, if one is pending.
func (s *Server) fault(op string) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[op]++
	for i, f := range s.faults {
		if f.Op != op {
			continue
		}
		f.Times--
		if f.Times <= 0 {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
		}
		c := *f
		return &c
	}
	return nil
}

func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func now() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z") }

// writeJSON answers v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b)
}

// apiError answers the management API's error object (NestJS' exception filter).
func apiError(w http.ResponseWriter, r *http.Request, status int, message string) {
	writeJSON(w, status, map[string]any{
		"statusCode": status, "error": http.StatusText(status), "message": message,
		"path": r.URL.RequestURI(), "timestamp": now(),
	})
}

// toolboxError answers the daemon's error object.
func toolboxError(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	writeJSON(w, status, map[string]any{
		"statusCode": status, "message": message, "code": code, "timestamp": time.Now().UTC().Format(time.RFC3339),
		"path": r.URL.Path, "method": r.Method,
	})
}

// bucket is the rate-limit throttler of an op.
func bucket(op string) string {
	switch op {
	case "create":
		return "sandbox-create"
	case "delete", "start", "stop", "pause", "archive":
		return "sandbox-lifecycle"
	}
	return "authenticated"
}

// throttled counts a call against its bucket's window and, past Options.RateLimits, answers
// 429 with the seconds left in the window, as the service's throttler does.
func (s *Server) throttled(w http.ResponseWriter, r *http.Request, op string) bool {
	b := bucket(op)
	limit, ok := s.opts.RateLimits[b]
	if !ok {
		return false
	}
	s.mu.Lock()
	win := s.windows[b]
	now := time.Now()
	if win == nil || now.Sub(win.start) >= s.opts.RateWindow {
		win = &window{start: now}
		s.windows[b] = win
	}
	win.n++
	n := win.n
	left := s.opts.RateWindow - now.Sub(win.start)
	s.mu.Unlock()
	reset := strconv.Itoa(int(math.Ceil(left.Seconds())))
	w.Header().Set("X-RateLimit-Limit-"+b, strconv.Itoa(limit))
	w.Header().Set("X-RateLimit-Remaining-"+b, strconv.Itoa(max(limit-n, 0)))
	w.Header().Set("X-RateLimit-Reset-"+b, reset)
	if n <= limit {
		return false
	}
	w.Header().Set("Retry-After-"+b, reset)
	apiError(w, r, http.StatusTooManyRequests, "ThrottlerException: Too Many Requests")
	return true
}

// injected answers a fault taken before handling; After faults are answered by the caller.
func injected(w http.ResponseWriter, r *http.Request, op string, f *Fault, toolbox bool) {
	switch {
	case f.Status == http.StatusTooManyRequests:
		b := bucket(op)
		w.Header().Set("X-RateLimit-Limit-"+b, "300")
		w.Header().Set("X-RateLimit-Remaining-"+b, "0")
		w.Header().Set("X-RateLimit-Reset-"+b, strconv.Itoa(max(f.RetryAfter, 1)))
		if f.RetryAfter > 0 {
			w.Header().Set("Retry-After-"+b, strconv.Itoa(f.RetryAfter))
		}
		apiError(w, r, f.Status, "ThrottlerException: Too Many Requests")
	case f.Status == http.StatusBadGateway, f.After:
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(f.Status)
	case toolbox:
		toolboxError(w, r, f.Status, strings.ToUpper(strings.ReplaceAll(http.StatusText(f.Status), " ", "_")), strings.ToLower(http.StatusText(f.Status)))
	default:
		apiError(w, r, f.Status, "An unexpected error occurred.")
	}
}

// b64 is used by code-run pipelines.
func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// versionLess compares dotted versions.
func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(pa), len(pb)) {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// sortedLocked returns the sandboxes newest first (the list's default order).
func (s *Server) sortedLocked() []*sandbox {
	out := make([]*sandbox, 0, len(s.sandboxes))
	for _, sb := range s.sandboxes {
		out = append(out, sb)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq > out[j].seq })
	return out
}

// String describes the server for test logs.
func (s *Server) String() string { return fmt.Sprintf("daytonafake at %s", s.URL) }
