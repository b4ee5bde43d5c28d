package daytona

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/pkg/envs"
)

// Name is the backend's name.
const Name = "daytona"

// Env is the Daytona backend: one Daytona sandbox per conversation, reached through the API
// wherever the worker runs, so that a conversation that moves to another worker goes on in the
// same sandbox (it implements envs.Reattacher). It is safe for concurrent use.
type Env struct {
	cfg Config
	log zerolog.Logger

	mu sync.Mutex
	// accounts are the accounts in use, by their filled-in fields: the static ones (made in
	// New) and those a request's variables made. List looks in every one.
	accounts map[string]*account
	// held maps the sandboxes this Env made, opened or listed to their account and to the
	// worker label they had when this Env took them (see Destroy).
	held map[string]holding

	bg sync.WaitGroup // best-effort kills of abandoned runs
}

type account struct {
	Account
	api API
}

type holding struct {
	acct   *account
	worker string
}

var (
	_ envs.Env        = (*Env)(nil)
	_ envs.Reattacher = (*Env)(nil)
	_ envs.Pinger     = (*Env)(nil)
)

// New returns a Daytona backend. It does no I/O.
func New(cfg Config, log zerolog.Logger) (*Env, error) {
	cfg.setDefaults()
	e := &Env{cfg: cfg, log: log.With().Str("component", "envs.daytona").Logger(), accounts: map[string]*account{}, held: map[string]holding{}}
	if cfg.APIKey == "" && len(cfg.Tenants) == 0 {
		return nil, errors.New("daytona: config: an API key is required (DAYTONA_API_KEY, or per tenant)")
	}
	if err := cfg.CheckEgress(); err != nil {
		return nil, err
	}
	// Accounts without placeholders are made now, so that List sees their sandboxes from the
	// start (a restarted worker re-adopts them).
	if !hasPlaceholder(cfg.Account) && cfg.APIKey != "" {
		if _, err := e.accountFor("", nil); err != nil {
			return nil, err
		}
	}
	for tenant, a := range cfg.Tenants {
		if !hasPlaceholder(a) && !hasPlaceholder(cfg.merged(tenant)) && cfg.merged(tenant).APIKey != "" {
			if _, err := e.accountFor(tenant, nil); err != nil {
				return nil, fmt.Errorf("daytona: config: tenant %s: %w", tenant, err)
			}
		}
	}
	return e, nil
}

// Name returns "daytona".
func (e *Env) Name() string { return Name }

// Ping lists one sandbox of every account in use: it answers when the Daytona API does and
// takes each key.
func (e *Env) Ping(ctx context.Context) error {
	for _, acct := range e.allAccounts() {
		if _, err := acct.api.List(ctx, ListQuery{Labels: map[string]string{envs.LabelManagedBy: envs.ManagedByValue}, Limit: 1}); err != nil {
			return fmt.Errorf("daytona: %s: %w", acct.APIURL, err)
		}
	}
	return nil
}

// Config returns the effective configuration (defaults filled in).
func (e *Env) Config() Config { return e.cfg }

// Close waits for pending kills of abandoned runs and closes idle connections; sandboxes are
// left as they are.
func (e *Env) Close() error {
	e.bg.Wait()
	for _, a := range e.allAccounts() {
		if c, ok := a.api.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
	return nil
}

func (e *Env) hold(id string, h holding) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if old, ok := e.held[id]; ok && h.worker == "" {
		h.worker = old.worker // a listing does not forget who took the sandbox
	}
	e.held[id] = h
}

func (e *Env) holdingOf(id string) (holding, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	h, ok := e.held[id]
	return h, ok
}

func (e *Env) forget(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.held, id)
}

// classify wraps an API error with the envs sentinel it stands for; op names the call for
// transport errors (an *APIError names its own).
func classify(op string, err error) error {
	var ae *APIError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae):
		switch s := ae.StatusCode; {
		case s == http.StatusNotFound:
			return fmt.Errorf("%w: daytona: %w", envs.ErrNotFound, err)
		case s == http.StatusUnauthorized || s == http.StatusForbidden:
			return fmt.Errorf("%w: daytona: the service refused the credentials: %w", envs.ErrBackendUnavailable, err)
		case s == http.StatusTooManyRequests:
			return fmt.Errorf("%w: daytona: rate limited: %w", envs.ErrBackendUnavailable, err)
		case s >= 500:
			return fmt.Errorf("%w: daytona: %w", envs.ErrBackendUnavailable, err)
		default:
			return fmt.Errorf("%w: daytona: %w", envs.ErrSandboxFailed, err)
		}
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: daytona: %s: no answer in time: %w", envs.ErrBackendUnavailable, op, err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("daytona: %s: %w", op, err)
	default:
		return fmt.Errorf("%w: daytona: %s: the service cannot be reached: %w", envs.ErrBackendUnavailable, op, err)
	}
}

// short bounds one management call.
func (e *Env) short(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.cfg.APITimeout)
}

// sandboxName is a readable, unique name, so that a create whose answer was lost can be found
// (and deleted) by name.
func sandboxName(spec envs.Spec) string {
	var b [4]byte
	rand.Read(b[:])
	base := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			return r
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return '-'
	}, "codefleet-"+spec.Tenant+"-"+spec.Conversation)
	if len(base) > 50 {
		base = base[:50]
	}
	return base + "-" + hex.EncodeToString(b[:])
}

// labelsFor returns the labels of a new sandbox.
func (e *Env) labelsFor(spec envs.Spec) map[string]string {
	labels := envs.SandboxLabels(e.cfg.Labels, spec)
	labels[LabelLanguage] = "python" // what the SDKs would read for their code runs
	return labels
}

// Create makes a sandbox, waits until it is started and checks its toolbox answers. On any
// failure the sandbox is deleted before Create returns (a sandbox stuck in a transition is
// waited for, up to CleanupTimeout).
func (e *Env) Create(ctx context.Context, spec envs.Spec) (envs.Sandbox, error) {
	acct, err := e.accountFor(spec.Tenant, spec.Variables)
	if err != nil {
		return nil, err
	}
	auto := e.cfg.AutoStopInterval
	blockAll, allowList := e.cfg.network(spec.Tenant)
	req := CreateSandboxRequest{
		Name:             sandboxName(spec),
		Env:              map[string]string{},
		Labels:           e.labelsFor(spec),
		Target:           acct.Target,
		NetworkBlockAll:  blockAll,
		NetworkAllowList: allowList,
		AutoStopInterval: &auto,
	}
	for k, v := range spec.Env {
		req.Env[k] = v
	}
	img := spec.Image
	if img == "" {
		img = e.cfg.Image
	}
	if snap, ok := strings.CutPrefix(img, SnapshotPrefix); ok {
		req.Snapshot = snap
	} else if img != "" {
		req.BuildInfo = &BuildInfo{DockerfileContent: "FROM " + img}
		req.Disk = e.cfg.DiskGiB
	}
	log := e.log.With().Str("tenant", spec.Tenant).Str("conversation_id", spec.Conversation).Logger()

	// The create call may wait out a rate limit, and the service holds it for up to ServerWait
	// while a snapshot sandbox starts; it gets no shorter deadline than that, as a create
	// abandoned early would be deleted as possibly made. Once the service has the sandbox, it
	// has the start budget (the build budget for an image, which Daytona builds first) to start.
	budget, what := e.cfg.StartTimeout, "start"
	if req.BuildInfo != nil {
		budget, what = e.cfg.BuildTimeout, "be built and start"
	}
	cctx, ccancel := context.WithTimeout(ctx, e.cfg.APITimeout+ServerWait+e.cfg.MaxRetryWait)
	sb, err := acct.api.Create(cctx, req)
	ccancel()
	if err != nil {
		created := maybeCreated(err)
		err = classify("create sandbox", err)
		if created {
			// The request may have reached the service: delete what it made, found by name.
			if cerr := e.cleanup(acct, req.Name); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
		return nil, err
	}
	log = log.With().Str("sandbox_id", sb.ID).Logger()
	fail := func(err error) (envs.Sandbox, error) {
		if cerr := e.cleanup(acct, sb.ID); cerr != nil {
			log.Error().Err(cerr).Msg("delete the sandbox that failed to start")
			err = errors.Join(err, cerr)
		}
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	// A new sandbox that does not start in time failed to be created (and is deleted). The
	// create's answer shows the sandbox as it was before the service's wait: look at once.
	sb, err = e.waitStarted(ctx, acct, sb, envs.ErrSandboxFailed, false)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (a new sandbox may take %s to %s)", err, budget, what)
		}
		return fail(err)
	}
	s, err := e.attach(ctx, acct, sb)
	if err != nil {
		return fail(err)
	}
	e.hold(sb.ID, holding{acct: acct, worker: sb.Labels[envs.LabelWorker]})
	log.Debug().Str("image", img).Strs("languages", s.languages).Msg("sandbox created")
	return s, nil
}

// maybeCreated reports whether a failed create may have left a sandbox behind. Only failures
// that certainly made nothing are excluded: the request never left, or the service refused it
// before doing anything (401, 403, 429, and 409, a name clash, where deleting by name would hit
// another sandbox). Anything else is followed by a delete by name, which finds nothing (404) when
// nothing was made: an answer lost to a proxy or a timeout, a 5xx, and also a 400, as the service
// answers 400 "Sandbox failed to start: <reason>" for a sandbox it made and that failed while it
// waited for it, leaving it in error.
func maybeCreated(err error) bool {
	switch statusOf(err) {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests, http.StatusConflict:
		return false
	case 0:
		return !notSent(err)
	}
	return true
}

// Polling of a sandbox's state while it is made, built or started: the first GET at once when
// the state in hand may be stale (a create's answer shows the sandbox as it was before the
// service's wait), the next after statePollFirst, each next one half as late again, up to
// statePollMax apart: 13 GETs in the first 30 s, then 12 a minute, all counted against the API's
// authenticated rate-limit bucket (10,000 a minute per organisation on tier 1).
const (
	statePollFirst = 200 * time.Millisecond
	statePollMax   = 5 * time.Second
)

// waitStarted brings a sandbox to started and returns it. It polls the sandbox with the backoff
// above; it starts it when it is stopped or archived, and resumes it when it is paused (POST
// /start, which the service holds while the sandbox starts, given ServerWait more than a short
// call); it waits out the transitions on the way (stopping, archiving, pausing, resizing,
// snapshotting, forking, restoring, resuming, building, ...) and states it does not know. It
// fails at once on error or build_failed, or when the sandbox is deleted or cannot be resumed
// (a paused container); when ctx ends first, the error wraps slow. fresh says whether sb is
// current (else it is looked at once first).
func (e *Env) waitStarted(ctx context.Context, acct *account, sb Sandbox, slow error, fresh bool) (Sandbox, error) {
	start := time.Now()
	delay := time.Duration(0)
	if fresh {
		delay = statePollFirst
	}
	unknownLogged := false
	var lastStart error // the last start's refusal
	for {
		switch {
		case sb.State == StateStarted:
			return sb, nil
		case sb.State.Failed():
			return sb, fmt.Errorf("%w: daytona: sandbox %s is in state %s: %s", envs.ErrSandboxFailed, sb.ID, sb.State, cmp.Or(sb.ErrorReason, "no reason given"))
		case sb.Deleted():
			return sb, fmt.Errorf("%w: daytona: sandbox %s was deleted while starting", envs.ErrSandboxFailed, sb.ID)
		case sb.State.Startable() && sb.DesiredState != StateStarted:
			// Stopped, archived or paused, and no start under way: ask for one.
			e.log.Info().Str("sandbox_id", sb.ID).Str("state", string(sb.State)).Msg("starting sandbox")
			actx, cancel := context.WithTimeout(ctx, e.cfg.APITimeout+ServerWait+e.cfg.MaxRetryWait)
			started, err := acct.api.Start(actx, sb.ID)
			cancel()
			switch {
			case err == nil:
				sb = started
				delay = max(delay, statePollFirst) // the answer is current
				continue
			case statusOf(err) == http.StatusConflict, errors.Is(err, context.DeadlineExceeded):
				// A state change in progress, or a start whose answer did not come: look again
				// later (a start under way shows as desiredState started).
			case statusOf(err) == http.StatusUnprocessableEntity:
				return sb, fmt.Errorf("%w: daytona: sandbox %s is %s and the service cannot resume it: %w", envs.ErrSandboxFailed, sb.ID, sb.State, err)
			case statusOf(err) == http.StatusNotFound:
				return sb, fmt.Errorf("%w: daytona: sandbox %s disappeared while starting", envs.ErrSandboxFailed, sb.ID)
			case statusOf(err) == http.StatusBadRequest:
				// "Sandbox failed to start: <reason>" (the sandbox is in error now, which the
				// next look shows) or a state that changed meanwhile: look again.
				lastStart = err
			case ctx.Err() != nil:
			default:
				return sb, classify("start sandbox", err)
			}
		case !sb.State.Known() && !unknownLogged:
			unknownLogged = true
			e.log.Warn().Str("sandbox_id", sb.ID).Str("state", string(sb.State)).Msg("sandbox in a state this backend does not know; waiting for it to start")
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			err := fmt.Errorf("%w: daytona: sandbox %s still %s after %s (%v)", slow, sb.ID, sb.State,
				time.Since(start).Round(time.Millisecond), ctx.Err())
			if lastStart != nil {
				err = fmt.Errorf("%w; the last start was refused: %w", err, lastStart)
			}
			return sb, err
		case <-t.C:
		}
		delay = min(max(delay+delay/2, statePollFirst), statePollMax)
		// Bounded by the wait's own deadline, not a short call's: the GETs are the ones a
		// rate limit hits, and a Retry-After within the budget is waited out.
		next, err := acct.api.Get(ctx, sb.ID)
		switch {
		case statusOf(err) == http.StatusNotFound:
			return sb, fmt.Errorf("%w: daytona: sandbox %s disappeared while starting", envs.ErrSandboxFailed, sb.ID)
		case err != nil && ctx.Err() != nil:
			continue // reported as stuck above
		case err != nil:
			return sb, classify("get sandbox", err)
		}
		sb = next
	}
}

// cleanup deletes a sandbox that failed to come up (by id or by name), waiting out a pending
// transition; it returns nil once the delete is accepted or the sandbox is gone.
func (e *Env) cleanup(acct *account, idOrName string) error {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.CleanupTimeout)
	defer cancel()
	err := e.delete(ctx, acct, idOrName)
	e.forget(idOrName)
	return err
}

// delete deletes a sandbox, retrying while the service answers 409 (a state change in
// progress) until ctx ends. An unknown sandbox, or one already being deleted, is fine.
func (e *Env) delete(ctx context.Context, acct *account, idOrName string) error {
	backoff := 100 * time.Millisecond
	for {
		_, err := acct.api.Delete(ctx, idOrName) // ctx is the cleanup's budget: a Retry-After within it is waited out
		switch statusOf(err) {
		case 0:
			if err == nil {
				return nil
			}
			return fmt.Errorf("delete sandbox %s: %w", idOrName, classify("delete sandbox", err))
		case http.StatusNotFound:
			return nil
		case http.StatusConflict:
			// Already being deleted, or in a transition that must settle first.
			sb, gerr := acct.api.Get(ctx, idOrName)
			if statusOf(gerr) == http.StatusNotFound || gerr == nil && sb.Deleted() {
				return nil
			}
		default:
			return fmt.Errorf("delete sandbox %s: %w", idOrName, classify("delete sandbox", err))
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: daytona: delete sandbox %s: still in a state change when giving up (%v)", envs.ErrSandboxFailed, idOrName, ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// Open re-attaches to a sandbox by id, starting it again if it was stopped.
func (e *Env) Open(ctx context.Context, id string) (envs.Sandbox, error) {
	var accts []*account
	if h, ok := e.holdingOf(id); ok {
		accts = []*account{h.acct}
	} else {
		accts = e.allAccounts()
	}
	var lastErr error = fmt.Errorf("%w: daytona: sandbox %s (no account to look in)", envs.ErrNotFound, id)
	for _, acct := range accts {
		actx, cancel := e.short(ctx)
		sb, err := acct.api.Get(actx, id)
		cancel()
		if err != nil {
			lastErr = classify("get sandbox", err)
			if errors.Is(lastErr, envs.ErrNotFound) {
				continue
			}
			return nil, lastErr
		}
		s, err := e.open(ctx, acct, sb)
		if err != nil {
			return nil, err
		}
		e.hold(sb.ID, holding{acct: acct, worker: sb.Labels[envs.LabelWorker]})
		return s, nil
	}
	return nil, lastErr
}

// open makes an existing sandbox ready to run code.
func (e *Env) open(ctx context.Context, acct *account, sb Sandbox) (*sandbox, error) {
	switch {
	case sb.Labels[envs.LabelManagedBy] != envs.ManagedByValue:
		return nil, fmt.Errorf("%w: daytona: sandbox %s is not managed by codefleet", envs.ErrNotFound, sb.ID)
	case sb.Deleted():
		return nil, fmt.Errorf("%w: daytona: sandbox %s is being deleted", envs.ErrNotFound, sb.ID)
	case sb.State.Failed():
		return nil, fmt.Errorf("%w: daytona: sandbox %s is in state %s: %s", envs.ErrSandboxFailed, sb.ID, sb.State, sb.ErrorReason)
	}
	budget := e.cfg.StartTimeout
	if sb.State == StatePendingBuild || sb.State == StateBuildingSnap {
		budget = e.cfg.BuildTimeout // still being built
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	// A sandbox stopped, archived or paused (auto-stop, auto-pause, the dashboard) is started
	// again, or resumed, files and all. An existing sandbox that is slow to start may start
	// yet: not a failure, which would delete it.
	sb, err := e.waitStarted(ctx, acct, sb, envs.ErrBackendUnavailable, true)
	if err != nil {
		return nil, err
	}
	return e.attach(ctx, acct, sb)
}

// Reattach implements envs.Reattacher: it finds the conversation's sandbox by its labels, takes
// it over for spec.Labels' worker and opens it.
func (e *Env) Reattach(ctx context.Context, spec envs.Spec) (envs.Sandbox, error) {
	acct, err := e.accountFor(spec.Tenant, spec.Variables)
	if err != nil {
		return nil, err
	}
	all, err := e.list(ctx, acct, map[string]string{envs.LabelTenant: spec.Tenant, envs.LabelConversation: spec.Conversation})
	if err != nil {
		return nil, err
	}
	// Another fleet sharing the account may have a conversation of the same id.
	var found []Sandbox
	for _, sb := range all {
		if envs.InFleet(sb.Labels, spec.Labels[envs.LabelFleet]) {
			found = append(found, sb)
		}
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("%w: daytona: conversation %s/%s has no sandbox", envs.ErrNotFound, spec.Tenant, spec.Conversation)
	}
	sort.Slice(found, func(i, j int) bool { return found[i].Created().After(found[j].Created()) })
	sb := found[0] // the newest, should there be two
	log := e.log.With().Str("sandbox_id", sb.ID).Str("tenant", spec.Tenant).Str("conversation_id", spec.Conversation).Logger()

	// Take it over first, so that the worker that had it stops counting it as its own.
	labels := map[string]string{}
	for k, v := range sb.Labels {
		labels[k] = v
	}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	actx, cancel := e.short(ctx)
	err = acct.api.SetLabels(actx, sb.ID, labels)
	cancel()
	if err != nil {
		return nil, classify("set sandbox labels", err)
	}
	sb.Labels = labels
	s, err := e.open(ctx, acct, sb)
	if err != nil {
		if errors.Is(err, envs.ErrSandboxFailed) {
			log.Warn().Err(err).Msg("the conversation's sandbox cannot run; deleting it")
			if cerr := e.cleanup(acct, sb.ID); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
		return nil, err
	}
	e.hold(sb.ID, holding{acct: acct, worker: labels[envs.LabelWorker]})
	log.Info().Str("from_worker", found[0].Labels[envs.LabelWorker]).Msg("sandbox re-attached")
	return s, nil
}

// List returns the managed sandboxes, in every account in use, whose labels include match.
// Sandboxes being deleted are left out.
func (e *Env) List(ctx context.Context, match map[string]string) ([]envs.Info, error) {
	var out []envs.Info
	seen := map[string]bool{}
	for _, acct := range e.allAccounts() {
		list, err := e.list(ctx, acct, match)
		if err != nil {
			return out, err
		}
		for _, sb := range list {
			if seen[sb.ID] {
				continue
			}
			seen[sb.ID] = true
			e.hold(sb.ID, holding{acct: acct})
			out = append(out, infoOf(sb))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// list pages through one account's managed sandboxes matching labels.
func (e *Env) list(ctx context.Context, acct *account, match map[string]string) ([]Sandbox, error) {
	q := ListQuery{Labels: map[string]string{envs.LabelManagedBy: envs.ManagedByValue}, Limit: 100}
	for k, v := range match {
		q.Labels[k] = v
	}
	var out []Sandbox
	for pages := 0; ; pages++ {
		actx, cancel := e.short(ctx)
		page, err := acct.api.List(actx, q)
		cancel()
		if err != nil {
			return nil, classify("list sandboxes", err)
		}
		for _, sb := range page.Items {
			if !sb.Deleted() && hasLabels(sb.Labels, q.Labels) {
				out = append(out, sb)
			}
		}
		if page.NextCursor == "" || page.NextCursor == q.Cursor || pages > 1000 {
			return out, nil
		}
		q.Cursor = page.NextCursor
	}
}

func hasLabels(labels, match map[string]string) bool {
	for k, v := range match {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func infoOf(sb Sandbox) envs.Info {
	img := sb.Snapshot
	if sb.BuildInfo != nil {
		img = strings.TrimSpace(strings.TrimPrefix(sb.BuildInfo.DockerfileContent, "FROM "))
	} else if img != "" {
		img = SnapshotPrefix + img
	}
	return envs.Info{
		ID: sb.ID, Backend: Name, Tenant: sb.Labels[envs.LabelTenant], Conversation: sb.Labels[envs.LabelConversation],
		Image: img, Labels: sb.Labels, Created: sb.Created(),
	}
}

// Destroy deletes a sandbox; an unknown one, or one already being deleted, is fine. Deletion
// completes asynchronously on the service's side.
//
// A sandbox that this Env took for a worker and that another worker has taken over since (its
// worker label changed: the conversation moved while this worker was cut off) is not deleted:
// the reaper of a worker that lost its conversations must not delete their sandboxes.
func (e *Env) Destroy(ctx context.Context, id string) error {
	acct := (*account)(nil)
	h, ok := e.holdingOf(id)
	if ok {
		acct = h.acct
	} else if accts := e.allAccounts(); len(accts) == 1 {
		acct = accts[0]
	} else {
		// Look for it in every account. It is gone only if every account says so.
		var lookupErrs []error
		for _, a := range accts {
			actx, cancel := e.short(ctx)
			_, err := a.api.Get(actx, id)
			cancel()
			if err == nil {
				acct = a
				break
			}
			if statusOf(err) != http.StatusNotFound {
				lookupErrs = append(lookupErrs, err)
			}
		}
		if acct == nil {
			if len(lookupErrs) > 0 {
				return classify("find sandbox to delete", errors.Join(lookupErrs...))
			}
			return nil
		}
	}
	if ok && h.worker != "" {
		actx, cancel := e.short(ctx)
		sb, err := acct.api.Get(actx, id)
		cancel()
		switch {
		case statusOf(err) == http.StatusNotFound:
			e.forget(id)
			return nil
		case err != nil:
			return fmt.Errorf("destroy sandbox %s: %w", id, classify("get sandbox", err))
		case sb.Labels[envs.LabelWorker] != h.worker:
			e.log.Info().Str("sandbox_id", id).Str("worker", sb.Labels[envs.LabelWorker]).Msg("sandbox taken over by another worker; not deleting it")
			e.forget(id)
			return nil
		}
	}
	if _, has := ctx.Deadline(); !has {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.cfg.CleanupTimeout)
		defer cancel()
	}
	if err := e.delete(ctx, acct, id); err != nil {
		return err
	}
	e.forget(id)
	return nil
}
