package daytona

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
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

// toolboxError wraps a toolbox call's error with the envs sentinel it stands for. Unlike the
// management API's, a toolbox 404 or 400 means the sandbox itself is gone or not running.
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

func (s *sandbox) Info() envs.Info     { return s.info }
func (s *sandbox) Languages() []string { return s.languages }

// Close detaches; the sandbox keeps running and can be opened again.
func (s *sandbox) Close() error {
	s.closed.Store(true)
	return nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Run runs one snippet through its supervisor (python with /process/code-run, the others with
// /process/execute) and returns its result. A timeout is the supervisor's: the output so far is
// kept, the exit code is 124. Should Daytona's own timeout fire first (the supervisor could not
// run), the result is still a timeout, without output, as Daytona discards it.
func (s *sandbox) Run(ctx context.Context, ex envs.Exec) (envs.Result, error) {
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
	plan := runPlan{nonce: newNonce(), language: ex.Language, code: ex.Code, timeout: timeout, max: s.env.cfg.MaxOutput, workdir: s.env.cfg.Workdir}
	api := apiTimeout(timeout)
	hctx, cancel := context.WithTimeout(ctx, time.Duration(api)*time.Second+httpGrace)
	defer cancel()

	start := time.Now()
	raw, exit, err := s.exec(hctx, plan, ex.Env, api)
	elapsed := time.Since(start)
	if err != nil {
		if statusOf(err) == http.StatusRequestTimeout {
			// Daytona killed its shell, not the snippet's own session: kill that too.
			s.kill(plan.nonce)
			return envs.Result{
				Output:   "[codefleet: the run outlived Daytona's timeout; Daytona discards the output of such runs]\n",
				ExitCode: 124, TimedOut: true, Duration: elapsed,
			}, nil
		}
		if statusOf(err) == 0 || statusOf(err) >= 500 {
			// The run may still be going in the sandbox: kill it.
			s.kill(plan.nonce)
		}
		if ctx.Err() != nil {
			return envs.Result{}, fmt.Errorf("daytona: run in sandbox %s: %w", s.info.ID, ctx.Err())
		}
		return envs.Result{}, fmt.Errorf("run in sandbox %s: %w", s.info.ID, toolboxError(err))
	}
	out, tr, ok := parseTrailer(raw, plan.nonce)
	if !ok {
		// The supervisor did not finish (it could not write its files, say): what the toolbox
		// reported is all there is.
		if exit == -1 {
			// The sandbox's own state (no pid or memory left, its working directory gone):
			// the run's result, as a shell that cannot start a command says.
			return envs.Result{
				Output:   fmt.Sprintf("codefleet: the sandbox could not start a shell for this run: %s\n", strings.TrimSpace(raw)),
				ExitCode: 126, Duration: elapsed,
			}, nil
		}
		capped, truncated := output.Cap(raw, s.env.cfg.MaxOutput)
		return envs.Result{Output: capped, ExitCode: exit, Truncated: truncated, Duration: elapsed}, nil
	}
	res := envs.Result{Output: out, ExitCode: tr.exit, TimedOut: tr.timedOut, Truncated: tr.truncated, Duration: tr.duration}
	if res.Duration == 0 {
		res.Duration = elapsed
	}
	return res, nil
}

// exec sends the run to the toolbox and returns the supervisor's output and exit code.
func (s *sandbox) exec(ctx context.Context, plan runPlan, env map[string]string, timeout uint32) (string, int, error) {
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
