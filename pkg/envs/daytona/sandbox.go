package daytona

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codefleet/codefleet/internal/output"
	"github.com/codefleet/codefleet/pkg/envs"
)

// codeRunVersion is the first daemon version with /process/code-run and execute's envs.
const codeRunVersion = "0.167.0"

// sandbox is one Daytona sandbox, started and with a toolbox that answered.
type sandbox struct {
	env       *Env
	acct      *account
	info      envs.Info
	toolbox   Toolbox
	languages []string
	// legacy is set for a daemon older than v0.167 (from its version, or after a 404 on
	// /process/code-run): python goes through /process/execute, and the run's env is exported
	// by the supervisor since the daemon ignores envs.
	legacy atomic.Bool
	closed atomic.Bool

	fsMu sync.Mutex
	// workRoots are the workspace's paths when Config.Workdir does not say (files.go).
	workRoots []string
}

var _ envs.Sandbox = (*sandbox)(nil)

// attach asks a started sandbox's toolbox which interpreters it has, which also checks that it
// answers, and returns the sandbox ready to run code.
func (e *Env) attach(ctx context.Context, acct *account, sb Sandbox) (*sandbox, error) {
	s := &sandbox{env: e, acct: acct, info: infoOf(sb), toolbox: sb.Toolbox()}
	if sb.DaemonVersion != "" && versionLess(sb.DaemonVersion, codeRunVersion) {
		s.legacy.Store(true)
	}
	actx, cancel := e.short(ctx)
	defer cancel()
	res, err := acct.api.Execute(actx, s.toolbox, ExecuteRequest{Command: probeCommand, Timeout: uint32(e.cfg.APITimeout / time.Second)})
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: toolbox: %w", sb.ID, toolboxError(err))
	}
	s.languages = languagesFrom(res.Result)
	if len(s.languages) == 0 {
		return nil, fmt.Errorf("%w: daytona: sandbox %s has none of python3, bash, node (exit %d: %q)", envs.ErrSandboxFailed, sb.ID, res.ExitCode, res.Result)
	}
	return s, nil
}

// versionLess compares dotted versions ("0.150.2" < "0.167.0"); an unparsable part counts as 0.
func versionLess(a, b string) bool {
	pa, pb := strings.Split(strings.TrimPrefix(a, "v"), "."), strings.Split(strings.TrimPrefix(b, "v"), ".")
	for i := range max(len(pa), len(pb)) {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(strings.TrimFunc(pa[i], func(r rune) bool { return r < '0' || r > '9' }))
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(strings.TrimFunc(pb[i], func(r rune) bool { return r < '0' || r > '9' }))
		}
		if x != y {
			return x < y
		}
	}
	return false
}

// toolboxError wraps a toolbox call's error with the envs sentinel it stands for, when the
// management API was not asked (a probe or a kill; Run asks it first, see confirm). A toolbox 404
// or 410 means the sandbox is gone, a 400 or 409 that the toolbox refused this call.
func toolboxError(err error) error {
	var ae *APIError
	if errors.As(err, &ae) {
		switch s := ae.StatusCode; {
		case s == http.StatusNotFound || s == http.StatusGone:
			return fmt.Errorf("%w: daytona: the sandbox is gone: %w", envs.ErrSandboxGone, err)
		case s == http.StatusBadRequest || s == http.StatusConflict:
			// The toolbox refused this run (a sandbox stopping or not started, a request it
			// did not take): the sandbox is still there, and is kept.
			return fmt.Errorf("%w: daytona: %w", envs.ErrSandboxFailed, err)
		case s == http.StatusBadGateway && ae.Message == "" && ae.Body == "":
			return fmt.Errorf("%w: daytona: the toolbox proxy lost the sandbox's answer: %w", envs.ErrBackendUnavailable, err)
		}
	}
	return classify("toolbox", err)
}

// refused reports whether a toolbox answer may mean that the sandbox is not there or not
// running: Daytona's proxy answers 401 "Bearer token is invalid" for a sandbox it does not know
// (as for a wrong key), 400 or 404 while it still holds the token in its cache, 400 "Is the
// Sandbox started?" for one that is not started. Only the management API can tell (confirm).
func refused(err error) bool {
	switch statusOf(err) {
	case http.StatusUnauthorized, http.StatusBadRequest, http.StatusNotFound, http.StatusGone:
		return true
	}
	return false
}

// mayHaveRun reports whether a failed toolbox call that starts a run may have started it: it
// was answered by neither the proxy nor the daemon with a refusal (a 5xx, a broken connection).
func mayHaveRun(err error) bool {
	s := statusOf(err)
	return s == 0 && !notSent(err) || s >= 500
}

func (s *sandbox) Info() envs.Info     { return s.info }
func (s *sandbox) Languages() []string { return s.languages }

// Close detaches; the sandbox keeps running and can be opened again.
func (s *sandbox) Close() error {
	s.closed.Store(true)
	return nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// errOverdue: a run polled in a session did not end within its timeout and the graces.
var errOverdue = errors.New("the run did not end in time")

// Run runs one snippet through its supervisor and returns its result: with a timeout up to
// LongRun, in one blocking call (python with /process/code-run, the others with
// /process/execute); longer, through a session of the toolbox, polled until it ends (no blocking
// call survives the idle cut of the toolbox's load balancer). A streamed run (ex.Stream) always
// goes through a session, its output followed between the polls (stream.go). A timeout is the supervisor's:
// the output so far is kept, the exit code is 124. Should Daytona's own timeout fire first (the
// supervisor could not run), the result is still a timeout, without output, as Daytona discards
// it.
//
// A toolbox refusal (401, 400, 404) is confirmed with the management API: a sandbox it no longer
// has is envs.ErrSandboxGone, a key it refuses too is envs.ErrBackendUnavailable; a sandbox that
// is stopped, archived or paused (or on its way there) is started or resumed and the run sent
// again, once, when the toolbox had refused it before it could start.
func (s *sandbox) Run(ctx context.Context, ex envs.Exec) (envs.Result, error) {
	if ex.Stream == nil {
		return s.run(ctx, ex, nil)
	}
	live := newLiveOutput(ex.Stream)
	res, err := s.run(ctx, ex, live)
	res.Chunks, res.StreamDropped = live.close()
	return res, err
}

// run is Run, its output followed into live when it is streamed (stream.go).
func (s *sandbox) run(ctx context.Context, ex envs.Exec, live *liveOutput) (envs.Result, error) {
	if s.closed.Load() {
		return envs.Result{}, fmt.Errorf("%w: daytona: sandbox %s", envs.ErrClosed, s.info.ID)
	}
	if !slices.Contains(s.languages, ex.Language) {
		return envs.Result{}, fmt.Errorf("%w: %q: this Daytona sandbox runs %s", envs.ErrUnsupportedLanguage, ex.Language, strings.Join(s.languages, ", "))
	}
	for k := range ex.Env {
		if !envName.MatchString(k) {
			return envs.Result{}, fmt.Errorf("daytona: invalid environment variable name %q", k)
		}
	}
	timeout := ex.Timeout
	if timeout <= 0 {
		timeout = DefaultRunTimeout
	}
	plan := runPlan{language: ex.Language, code: ex.Code, timeout: timeout, max: s.env.cfg.MaxOutput, workdir: s.env.cfg.Workdir, stream: live != nil}
	// A streamed run is followed while it runs, which only a session allows.
	session := s.env.cfg.LongRun < 0 || timeout > s.env.cfg.LongRun || live != nil
	for try := 0; ; try++ {
		plan.nonce = newNonce()
		start := time.Now()
		var raw string
		var exit int
		var err error
		if session {
			raw, exit, err = s.viaSession(ctx, plan, ex.Env, live)
		} else {
			raw, exit, err = s.blocking(ctx, plan, ex.Env)
		}
		elapsed := time.Since(start)
		if err == nil {
			return s.result(raw, exit, plan.nonce, elapsed), nil
		}
		var nb notBegun
		begun := session && !errors.As(err, &nb) || !session && mayHaveRun(err)
		switch {
		case statusOf(err) == http.StatusRequestTimeout && !session:
			// Daytona killed its shell, not the snippet's own session: kill that too.
			s.kill(plan.nonce)
			return envs.Result{
				Output:   "[codefleet: the run outlived Daytona's timeout; Daytona discards the output of such runs]\n",
				ExitCode: 124, TimedOut: true, Duration: elapsed,
			}, nil
		case errors.Is(err, errOverdue) && ctx.Err() == nil:
			s.kill(plan.nonce)
			return envs.Result{
				Output:   "[codefleet: the run did not end within its timeout and a grace; its output is lost]\n",
				ExitCode: 124, TimedOut: true, Duration: elapsed,
			}, nil
		}
		if begun && (statusOf(err) == 0 || statusOf(err) >= 500) {
			// The run may still be going in the sandbox: kill it.
			s.kill(plan.nonce)
		}
		if ctx.Err() != nil {
			return envs.Result{}, fmt.Errorf("daytona: run in sandbox %s: %w", s.info.ID, ctx.Err())
		}
		if !refused(err) {
			return envs.Result{}, fmt.Errorf("run in sandbox %s: %w", s.info.ID, toolboxError(err))
		}
		again, err := s.confirm(ctx, err, begun, try == 0)
		if !again {
			return envs.Result{}, fmt.Errorf("run in sandbox %s: %w", s.info.ID, err)
		}
	}
}

// result turns a supervisor's output and exit code into the run's result.
func (s *sandbox) result(raw string, exit int, nonce string, elapsed time.Duration) envs.Result {
	out, tr, ok := parseTrailer(raw, nonce)
	if !ok {
		// The supervisor did not finish (it could not write its files, say): what the toolbox
		// reported is all there is.
		if exit == -1 {
			// The sandbox's own state (no pid or memory left, its working directory gone):
			// the run's result, as a shell that cannot start a command says.
			return envs.Result{
				Output:   fmt.Sprintf("codefleet: the sandbox could not start a shell for this run: %s\n", strings.TrimSpace(raw)),
				ExitCode: 126, Duration: elapsed,
			}
		}
		capped, truncated := output.Cap(raw, s.env.cfg.MaxOutput)
		return envs.Result{Output: capped, ExitCode: exit, Truncated: truncated, Duration: elapsed}
	}
	res := envs.Result{Output: out, ExitCode: tr.exit, TimedOut: tr.timedOut, Truncated: tr.truncated, Duration: tr.duration}
	if res.Duration == 0 {
		res.Duration = elapsed
	}
	return res
}

// confirm asks the management API what a toolbox refusal of a run means, and returns the run's
// error, or again when the sandbox was started (or resumed) for the run to be sent again: only
// when retry allows it and the run had not begun.
func (s *sandbox) confirm(ctx context.Context, cause error, begun, retry bool) (again bool, err error) {
	e, api, id := s.env, s.acct.api, s.info.ID
	actx, cancel := context.WithTimeout(ctx, e.cfg.APITimeout+e.cfg.MaxRetryWait)
	sb, gerr := api.Get(actx, id)
	cancel()
	switch {
	case statusOf(gerr) == http.StatusNotFound:
		return false, fmt.Errorf("%w: daytona: the sandbox is gone (deleted: the API does not know it; the toolbox answered %w)", envs.ErrSandboxGone, cause)
	case gerr != nil:
		// A key the API refuses too (401, 403), or an API that does not answer: not a sandbox
		// that is gone, which is kept.
		return false, fmt.Errorf("%w (the toolbox answered %w)", classify("get sandbox", gerr), cause)
	case sb.Deleted():
		return false, fmt.Errorf("%w: daytona: the sandbox is being deleted (state %s; the toolbox answered %w)", envs.ErrSandboxGone, sb.State, cause)
	case sb.State.Failed():
		return false, fmt.Errorf("%w: daytona: the sandbox is in state %s: %s (the toolbox answered %w)", envs.ErrSandboxGone, sb.State, cmp.Or(sb.ErrorReason, "no reason given"), cause)
	case sb.State == StateStarted && statusOf(cause) == http.StatusUnauthorized:
		return false, fmt.Errorf("%w: daytona: the toolbox proxy refused the credentials the API takes: %w", envs.ErrBackendUnavailable, cause)
	case sb.State == StateStarted:
		// The sandbox runs: the toolbox refused this run (or lost it), and the sandbox is kept.
		return false, fmt.Errorf("%w: daytona: %w", envs.ErrSandboxFailed, cause)
	case begun:
		// Stopped, paused or archived while the run went on: the run is lost. The worker opens
		// the sandbox again (which starts it), files and all.
		return false, fmt.Errorf("%w: daytona: the sandbox went %s during the run (the toolbox answered %w)", envs.ErrSandboxGone, sb.State, cause)
	case !retry:
		return false, fmt.Errorf("%w: daytona: the sandbox is %s again after it was started (the toolbox answered %w)", envs.ErrSandboxFailed, sb.State, cause)
	}
	e.log.Info().Str("sandbox_id", id).Str("state", string(sb.State)).Msg("sandbox not started; starting it for the run")
	sctx, scancel := context.WithTimeout(ctx, e.cfg.StartTimeout)
	defer scancel()
	if _, err := e.waitStarted(sctx, s.acct, sb, envs.ErrBackendUnavailable, true); err != nil {
		return false, fmt.Errorf("the sandbox was %s and was not started again: %w", sb.State, err)
	}
	return true, nil
}

// blocking sends the run to the toolbox in one call and returns the supervisor's output and exit
// code.
func (s *sandbox) blocking(ctx context.Context, plan runPlan, env map[string]string) (string, int, error) {
	timeout := apiTimeout(plan.timeout)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(timeout)*time.Second+httpGrace)
	defer cancel()
	api := s.acct.api
	if plan.language == "python" && !s.legacy.Load() {
		res, err := api.CodeRun(ctx, s.toolbox, CodeRunRequest{Code: pythonSupervisor(plan), Language: "python", Envs: env, Timeout: timeout})
		if statusOf(err) != http.StatusNotFound {
			return res.Result, res.ExitCode, err
		}
		// A daemon before v0.167: no code-run (nothing ran). Go the way the SDKs went then; if
		// the sandbox itself is gone, execute says so too.
		plan.exports = env
		res2, err := api.Execute(ctx, s.toolbox, ExecuteRequest{Command: legacyPythonCommand(plan), Cwd: s.env.cfg.Workdir, Timeout: timeout})
		if err == nil && !s.legacy.Swap(true) {
			s.env.log.Info().Str("sandbox_id", s.info.ID).Msg("the sandbox's daemon has no /process/code-run; using /process/execute")
		}
		return res2.Result, res2.ExitCode, err
	}
	req := ExecuteRequest{Cwd: s.env.cfg.Workdir, Envs: env, Timeout: timeout}
	if s.legacy.Load() {
		plan.exports, req.Envs = env, nil
	}
	if plan.language == "python" {
		req.Command = legacyPythonCommand(plan)
	} else {
		req.Command = viaSh(shellSupervisor(plan))
	}
	res, err := api.Execute(ctx, s.toolbox, req)
	return res.Result, res.ExitCode, err
}

// notBegun marks a session run's error from before its command was sent.
type notBegun struct{ error }

func (e notBegun) Unwrap() error { return e.error }

// Polling of a session's command: the first poll after pollFirst, each next one a quarter later
// again, up to pollMax apart (so a run that takes a second gets 14 polls, each minute after that
// 60). Against the fake (BenchmarkRun), a session costs a trivial run 3 to 7 ms more than one
// blocking call, and a run of about 100 ms 10 to 60 ms (mostly the polls' spacing); against the
// service, each of its calls (create, exec, polls, logs) is a round trip through the toolbox
// proxy.
const (
	pollFirst = 10 * time.Millisecond
	pollMax   = time.Second
)

// viaSession runs the supervisor as the command of a session of its own: the session is made,
// the command sent with runAsync, polled until it has an exit code (for the run's timeout and
// the graces at most, else errOverdue), its logs read, and the session deleted in the
// background (which kills whatever is left of the run). Sessions take no env: the supervisor
// exports the run's. A streamed run's live file is read between the polls (stream.go).
func (s *sandbox) viaSession(ctx context.Context, plan runPlan, env map[string]string, live *liveOutput) (string, int, error) {
	e, api, tb := s.env, s.acct.api, s.toolbox
	plan.exports = env
	command := viaSh(shellSupervisor(plan))
	if plan.language == "python" {
		command = legacyPythonCommand(plan)
	}
	id := "codefleet-" + plan.nonce
	// Every call is bounded by the run's own deadline (its timeout and the graces), within which
	// a Retry-After is waited out.
	pctx, pcancel := context.WithTimeout(ctx, plan.timeout+runGrace+httpGrace)
	defer pcancel()
	if err := api.CreateSession(pctx, tb, id); err != nil {
		return "", 0, notBegun{err}
	}
	defer s.dropSession(id)
	res, err := api.SessionExec(pctx, tb, id, SessionExecRequest{Command: command, RunAsync: true})
	if err != nil {
		if !mayHaveRun(err) {
			err = notBegun{err}
		}
		return "", 0, err
	}
	if live != nil {
		live.follow(plan.nonce)
	}
	delay := pollFirst
	var exit int
	for {
		t := time.NewTimer(delay)
		select {
		case <-pctx.Done():
			t.Stop()
			if ctx.Err() != nil {
				return "", 0, ctx.Err()
			}
			return "", 0, errOverdue
		case <-t.C:
		}
		switch {
		case live == nil:
			delay = min(delay+delay/4, pollMax)
		case s.pull(pctx, live):
			// Output came: the command still runs (or has just ended, which the next read
			// that finds nothing sees).
			delay = min(delay+delay/4, streamPoll)
			continue
		default:
			delay = min(delay+delay/4, streamPollIdle)
		}
		c, err := api.SessionCommand(pctx, tb, id, res.CmdID)
		if err != nil {
			if pctx.Err() != nil && ctx.Err() == nil {
				return "", 0, errOverdue
			}
			return "", 0, err
		}
		if c.ExitCode != nil {
			exit = *c.ExitCode
			break
		}
	}
	if live != nil {
		// The supervisor has ended: the file is whole. Its last part, then it goes.
		s.pull(ctx, live)
		s.dropRunDir(plan.nonce)
	}
	actx, cancel := e.short(ctx)
	logs, err := api.SessionCommandLogs(actx, tb, id, res.CmdID)
	cancel()
	if err != nil {
		return "", 0, err
	}
	out := logs.Output
	if logs.Split {
		out = logs.Stdout
		if !strings.Contains(out, "\n"+plan.nonce+" ") {
			out = stripLogMarkers(logs.Output) // the supervisor did not finish: all it said
		}
	}
	return out, exit, nil
}

// dropSession deletes a run's session in the background.
func (s *sandbox) dropSession(id string) {
	s.env.bg.Add(1)
	go func() {
		defer s.env.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
		defer cancel()
		if err := s.acct.api.DeleteSession(ctx, s.toolbox, id); err != nil && statusOf(err) != http.StatusNotFound {
			s.env.log.Debug().Err(err).Str("sandbox_id", s.info.ID).Str("session", id).Msg("delete a run's session")
		}
	}()
}

// kill kills the process group of an abandoned run, in the background.
func (s *sandbox) kill(nonce string) {
	s.env.bg.Add(1)
	go func() {
		defer s.env.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
		defer cancel()
		if _, err := s.acct.api.Execute(ctx, s.toolbox, ExecuteRequest{Command: viaSh(killScript(nonce)), Timeout: uint32(killTimeout / time.Second)}); err != nil {
			s.env.log.Warn().Err(err).Str("sandbox_id", s.info.ID).Msg("kill an abandoned run")
		}
	}()
}
