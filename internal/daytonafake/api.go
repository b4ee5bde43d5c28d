package daytonafake

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// States of the service (SandboxState).
const (
	stateUnknown      = "unknown"
	statePendingBuild = "pending_build"
	stateBuilding     = "building_snapshot"
	stateCreating     = "creating"
	stateStarting     = "starting"
	stateStarted      = "started"
	stateStopping     = "stopping"
	stateStopped      = "stopped"
	stateArchiving    = "archiving"
	stateArchived     = "archived"
	stateRestoring    = "restoring"
	statePausing      = "pausing"
	statePaused       = "paused"
	stateResuming     = "resuming"
	stateResizing     = "resizing"
	stateSnapshotting = "snapshotting"
	stateForking      = "forking"
	stateDestroying   = "destroying"
	stateDestroyed    = "destroyed"
	stateError        = "error"
	stateBuildFailed  = "build_failed"
)

// Sandbox is the service's Sandbox object as this fake sends it.
type Sandbox struct {
	ID                  string            `json:"id"`
	OrganizationID      string            `json:"organizationId"`
	Name                string            `json:"name"`
	Snapshot            string            `json:"snapshot,omitempty"`
	User                string            `json:"user"`
	Env                 map[string]string `json:"env"`
	Labels              map[string]string `json:"labels"`
	Public              bool              `json:"public"`
	NetworkBlockAll     bool              `json:"networkBlockAll"`
	NetworkAllowList    string            `json:"networkAllowList,omitempty"`
	DomainAllowList     string            `json:"domainAllowList,omitempty"`
	Target              string            `json:"target"`
	CPU                 int               `json:"cpu"`
	GPU                 int               `json:"gpu"`
	Memory              int               `json:"memory"`
	Disk                int               `json:"disk"`
	State               string            `json:"state"`
	DesiredState        string            `json:"desiredState"`
	ErrorReason         string            `json:"errorReason,omitempty"`
	Recoverable         bool              `json:"recoverable"`
	BackupState         string            `json:"backupState"`
	AutoStopInterval    int               `json:"autoStopInterval"`
	AutoArchiveInterval int               `json:"autoArchiveInterval"`
	AutoDeleteInterval  int               `json:"autoDeleteInterval"`
	Volumes             []json.RawMessage `json:"volumes"`
	BuildInfo           *BuildInfo        `json:"buildInfo,omitempty"`
	CreatedAt           string            `json:"createdAt"`
	UpdatedAt           string            `json:"updatedAt"`
	LastActivityAt      string            `json:"lastActivityAt"`
	SandboxClass        string            `json:"sandboxClass"`
	DaemonVersion       string            `json:"daemonVersion,omitempty"`
	RunnerID            string            `json:"runnerId"`
	ToolboxProxyURL     string            `json:"toolboxProxyUrl"`
}

// BuildInfo is the build of an image-based sandbox.
type BuildInfo struct {
	DockerfileContent string   `json:"dockerfileContent"`
	ContextHashes     []string `json:"contextHashes,omitempty"`
	CreatedAt         string   `json:"createdAt"`
	UpdatedAt         string   `json:"updatedAt"`
	SnapshotRef       string   `json:"snapshotRef"`
}

// Deleted reports whether the sandbox's deletion was asked for (or is done).
func (sb Sandbox) Deleted() bool {
	return sb.DesiredState == stateDestroyed || sb.State == stateDestroying || sb.State == stateDestroyed
}

func (sb Sandbox) clone() Sandbox {
	c := sb
	c.Env = cloneMap(sb.Env)
	c.Labels = cloneMap(sb.Labels)
	return c
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// listItem is a SandboxListItem: the Sandbox without env, network lists, volumes, build info.
func listItem(sb Sandbox) map[string]any {
	b, _ := json.Marshal(sb)
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, k := range []string{"env", "networkBlockAll", "networkAllowList", "domainAllowList", "volumes", "buildInfo"} {
		delete(m, k)
	}
	return m
}

// sandbox is a sandbox and its private state. Fields are guarded by Server.mu.
type sandbox struct {
	Sandbox
	seq int
	dir string
	// pending is set while a lifecycle transition runs; lifecycle calls then get 409.
	pending bool
	// gen is bumped by every transition; a timer scheduled under an older gen does nothing.
	gen     int
	outcome outcome
	// changed is closed and replaced at every state change (create and start wait on it).
	changed chan struct{}
	// sessions are the toolbox's sessions (session.go); a stop, an error or a delete ends them.
	sessions map[string]*session
}

// setState changes the state. s.mu is held.
func (sb *sandbox) setState(state string) {
	sb.State = state
	sb.UpdatedAt = now()
	close(sb.changed)
	sb.changed = make(chan struct{})
}

// after runs f under s.mu after d, unless the sandbox moved on (gen changed) meanwhile.
func (s *Server) after(sb *sandbox, d time.Duration, f func()) {
	gen := sb.gen
	time.AfterFunc(d, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if sb.gen == gen && !s.closed {
			f()
		}
	})
}

// steps walks sb through states, one StepDelay each, then calls done. s.mu is held.
func (s *Server) steps(sb *sandbox, states []string, done func()) {
	if len(states) == 0 {
		done()
		return
	}
	s.after(sb, s.opts.StepDelay, func() {
		sb.setState(states[0])
		s.steps(sb, states[1:], done)
	})
}

// reachStarted ends a start: started (after a slow start's time in starting), or the outcome's
// failure. s.mu is held.
func (s *Server) reachStarted(sb *sandbox) {
	o := sb.outcome
	switch {
	case o.stuck != 0:
		sb.setState(stateCreating)
		if o.stuck > 0 {
			s.after(sb, o.stuck, func() { s.fail(sb, o.fail) })
		}
	case o.fail != "":
		s.fail(sb, o.fail)
	default:
		s.startedLocked(sb, "")
	}
}

// startedLocked ends a start: the sandbox is started, after the next slow start's time in
// from (starting when empty). s.mu is held.
func (s *Server) startedLocked(sb *sandbox, from string) {
	if len(s.slowStart) == 0 {
		sb.setState(stateStarted)
		sb.pending = false
		return
	}
	d := s.slowStart[0]
	s.slowStart = s.slowStart[1:]
	if from == "" {
		from = stateStarting
	}
	sb.setState(from)
	s.after(sb, d, func() {
		sb.setState(stateStarted)
		sb.pending = false
	})
}

// waitStartedLocked waits, s.mu held (it is released meanwhile), until sb is started, failed or
// d has passed, and reports whether it failed (with the reason); ok is false when the caller
// went away.
func (s *Server) waitStartedLocked(r *http.Request, sb *sandbox, d time.Duration) (failed bool, reason string, ok bool) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		switch sb.State {
		case stateStarted:
			return false, "", true
		case stateError, stateBuildFailed:
			return true, sb.ErrorReason, true
		}
		changed := sb.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			s.mu.Lock()
			return false, "", true
		case <-r.Context().Done():
			s.mu.Lock()
			return false, "", false
		}
		s.mu.Lock()
	}
}

func (s *Server) fail(sb *sandbox, reason string) {
	sb.ErrorReason = reason
	sb.pending = false
	if sb.BuildInfo != nil {
		sb.setState(stateBuildFailed)
	} else {
		sb.setState(stateError)
	}
}

// serveAPI routes the management API.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/api"), "/")
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	op := ""
	switch {
	case len(parts) == 1 && parts[0] == "sandbox" && r.Method == http.MethodPost:
		op = "create"
	case len(parts) == 1 && parts[0] == "sandbox" && r.Method == http.MethodGet:
		op = "list"
	case len(parts) == 2 && parts[0] == "sandbox" && r.Method == http.MethodGet:
		op = "get"
	case len(parts) == 2 && parts[0] == "sandbox" && r.Method == http.MethodDelete:
		op = "delete"
	case len(parts) == 3 && parts[0] == "sandbox" && parts[2] == "start" && r.Method == http.MethodPost:
		op = "start"
	case len(parts) == 3 && parts[0] == "sandbox" && parts[2] == "stop" && r.Method == http.MethodPost:
		op = "stop"
	case len(parts) == 3 && parts[0] == "sandbox" && parts[2] == "pause" && r.Method == http.MethodPost:
		op = "pause"
	case len(parts) == 3 && parts[0] == "sandbox" && parts[2] == "archive" && r.Method == http.MethodPost:
		op = "archive"
	case len(parts) == 3 && parts[0] == "sandbox" && parts[2] == "labels" && r.Method == http.MethodPut:
		op = "labels"
	default:
		apiError(w, r, http.StatusNotFound, "Cannot "+r.Method+" "+r.URL.Path)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+s.key() {
		s.fault(op) // counted
		apiError(w, r, http.StatusUnauthorized, "Invalid credentials")
		return
	}
	if s.throttled(w, r, op) {
		s.fault(op) // counted
		return
	}
	f := s.fault(op)
	if f != nil && !f.After {
		injected(w, r, op, f, false)
		return
	}
	if f != nil {
		w = &discard{ResponseWriter: w}
		defer injected(w.(*discard).ResponseWriter, r, op, f, false)
	}
	id := ""
	if len(parts) > 1 {
		id = parts[1]
	}
	switch op {
	case "create":
		s.create(w, r)
	case "list":
		s.list(w, r)
	case "get":
		s.get(w, r, id)
	case "delete":
		s.delete(w, r, id)
	case "start":
		s.start(w, r, id)
	case "stop":
		s.stop(w, r, id)
	case "pause":
		s.pause(w, r, id)
	case "archive":
		s.archive(w, r, id)
	case "labels":
		s.labels(w, r, id)
	}
}

// discard swallows the answer of a call whose fault is answered after it was handled.
type discard struct{ http.ResponseWriter }

func (d *discard) Header() http.Header         { return http.Header{} }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

// createRequest is the body of POST /sandbox (unknown fields are ignored, as by the service).
type createRequest struct {
	Name                *string           `json:"name"`
	Snapshot            *string           `json:"snapshot"`
	User                *string           `json:"user"`
	Env                 map[string]string `json:"env"`
	Labels              map[string]string `json:"labels"`
	Public              bool              `json:"public"`
	NetworkBlockAll     bool              `json:"networkBlockAll"`
	NetworkAllowList    string            `json:"networkAllowList"`
	DomainAllowList     string            `json:"domainAllowList"`
	Target              *string           `json:"target"`
	CPU                 *int              `json:"cpu"`
	GPU                 *int              `json:"gpu"`
	Memory              *int              `json:"memory"`
	Disk                *int              `json:"disk"`
	GPUType             json.RawMessage   `json:"gpuType"`
	AutoStopInterval    *int              `json:"autoStopInterval"`
	AutoArchiveInterval *int              `json:"autoArchiveInterval"`
	AutoDeleteInterval  *int              `json:"autoDeleteInterval"`
	Volumes             []json.RawMessage `json:"volumes"`
	BuildInfo           *struct {
		DockerfileContent string   `json:"dockerfileContent"`
		ContextHashes     []string `json:"contextHashes"`
	} `json:"buildInfo"`
}

func intOr(p *int, def int) int {
	if p == nil {
		return def
	}
	return *p
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		apiError(w, r, http.StatusBadRequest, "Invalid request body: "+err.Error())
		return
	}
	resources := req.CPU != nil || req.GPU != nil || req.Memory != nil || req.Disk != nil
	switch {
	case req.BuildInfo != nil && req.Snapshot != nil && *req.Snapshot != "":
		apiError(w, r, http.StatusBadRequest, "Cannot specify a snapshot when using a build info entry")
		return
	case req.BuildInfo == nil && resources:
		apiError(w, r, http.StatusBadRequest, "Cannot specify Sandbox resources when using a snapshot")
		return
	case req.BuildInfo == nil && len(req.GPUType) > 0 && string(req.GPUType) != "null":
		apiError(w, r, http.StatusBadRequest, "Cannot specify a GPU type when using a snapshot")
		return
	case req.BuildInfo != nil && strings.TrimSpace(req.BuildInfo.DockerfileContent) == "":
		apiError(w, r, http.StatusBadRequest, "buildInfo.dockerfileContent should not be empty")
		return
	case intOr(req.AutoStopInterval, 0) < 0 || intOr(req.AutoArchiveInterval, 0) < 0:
		apiError(w, r, http.StatusBadRequest, "autoStopInterval must not be less than 0, autoArchiveInterval must not be less than 0")
		return
	}
	snapshot := ""
	if req.BuildInfo == nil {
		snapshot = s.opts.Snapshots[0]
		if req.Snapshot != nil && *req.Snapshot != "" {
			snapshot = *req.Snapshot
		}
		if !slices.Contains(s.opts.Snapshots, snapshot) {
			apiError(w, r, http.StatusBadRequest, "Snapshot "+snapshot+" not found. Did you add it through the Daytona Dashboard?")
			return
		}
	}
	id := newUUID()
	name := id
	if req.Name != nil && *req.Name != "" {
		name = *req.Name
	}

	s.mu.Lock()
	for _, o := range s.sandboxes {
		if o.Name == name && o.State != stateDestroyed && o.DesiredState != stateDestroyed {
			s.mu.Unlock()
			apiError(w, r, http.StatusConflict, "Sandbox with name "+name+" already exists")
			return
		}
	}
	dir := filepath.Join(s.root, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.mu.Unlock()
		apiError(w, r, http.StatusInternalServerError, "An unexpected error occurred.")
		return
	}
	s.seq++
	t := now()
	user := "daytona"
	if req.User != nil && *req.User != "" {
		user = *req.User
	}
	target := s.opts.Target
	if req.Target != nil && *req.Target != "" {
		target = *req.Target
	}
	sb := &sandbox{seq: s.seq, dir: dir, pending: true, changed: make(chan struct{}), Sandbox: Sandbox{
		ID: id, OrganizationID: "org-fake", Name: name, Snapshot: snapshot, User: user,
		Env: cloneMap(req.Env), Labels: cloneMap(req.Labels), Public: req.Public,
		NetworkBlockAll: req.NetworkBlockAll, NetworkAllowList: req.NetworkAllowList, DomainAllowList: req.DomainAllowList,
		Target: target, CPU: 1, Memory: 1, Disk: 3, DesiredState: stateStarted, BackupState: "None",
		AutoStopInterval: intOr(req.AutoStopInterval, 15), AutoArchiveInterval: intOr(req.AutoArchiveInterval, 10080),
		AutoDeleteInterval: intOr(req.AutoDeleteInterval, -1), Volumes: req.Volumes,
		CreatedAt: t, UpdatedAt: t, LastActivityAt: t, SandboxClass: s.opts.SandboxClass,
		DaemonVersion: s.opts.DaemonVersion, RunnerID: "runner-fake",
		ToolboxProxyURL: "http://" + r.Host + "/toolbox",
	}}
	if sb.Volumes == nil {
		sb.Volumes = []json.RawMessage{}
	}
	if s.opts.HideDaemonVersion {
		sb.DaemonVersion = ""
	}
	if len(s.next) > 0 {
		sb.outcome, s.next = s.next[0], s.next[1:]
	}
	s.sandboxes[id] = sb
	if req.BuildInfo != nil {
		sb.CPU, sb.Memory, sb.Disk, sb.GPU = intOr(req.CPU, 1), intOr(req.Memory, 1), intOr(req.Disk, 3), intOr(req.GPU, 0)
		sb.BuildInfo = &BuildInfo{DockerfileContent: req.BuildInfo.DockerfileContent, ContextHashes: req.BuildInfo.ContextHashes, CreatedAt: t, UpdatedAt: t, SnapshotRef: "fake-build-" + id[:8]}
		content := req.BuildInfo.DockerfileContent
		if s.built[content] {
			// A runner has the image already: no build, as the service reuses it.
			sb.State = stateUnknown
			s.steps(sb, []string{stateCreating}, func() { s.reachStarted(sb) })
		} else {
			build := s.opts.BuildTime
			if len(s.slowBuild) > 0 {
				build, s.slowBuild = s.slowBuild[0], s.slowBuild[1:]
			}
			sb.State = statePendingBuild
			s.steps(sb, []string{stateBuilding}, func() {
				s.after(sb, build, func() {
					if sb.outcome == (outcome{}) {
						s.built[content] = true
					}
					sb.setState(stateCreating)
					s.reachStarted(sb)
				})
			})
		}
		before := sb.Sandbox.clone()
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, before) // image builds answer at once
		return
	}
	if s.opts.Warm && sb.outcome == (outcome{}) && len(s.slowStart) == 0 {
		sb.State, sb.pending = stateStarted, false
		before := sb.Sandbox.clone()
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, before)
		return
	}
	sb.State = stateUnknown
	s.steps(sb, []string{stateCreating}, func() { s.reachStarted(sb) })
	before := sb.Sandbox.clone()
	// The service waits (up to 30 s) for the sandbox to start, then answers with the sandbox as
	// it was before the wait (issue #2474), or 400 if it failed meanwhile.
	failed, reason, ok := s.waitStartedLocked(r, sb, s.opts.CreateWait)
	s.mu.Unlock()
	switch {
	case !ok:
	case failed:
		apiError(w, r, http.StatusBadRequest, "Sandbox failed to start: "+reason)
	default:
		writeJSON(w, http.StatusOK, before)
	}
}

// lookupLocked finds a visible sandbox by id, then by name. s.mu is held.
func (s *Server) lookupLocked(idOrName string) *sandbox {
	visible := func(sb *sandbox) bool {
		if sb.State == stateDestroyed {
			return false
		}
		// Errored sandboxes whose deletion was asked for are hidden.
		return !((sb.State == stateError || sb.State == stateBuildFailed) && sb.DesiredState == stateDestroyed)
	}
	if sb, ok := s.sandboxes[idOrName]; ok && visible(sb) {
		return sb
	}
	for _, sb := range s.sandboxes {
		if sb.Name == idOrName && visible(sb) {
			return sb
		}
	}
	return nil
}

// lockFound locks s.mu and returns the visible sandbox idOrName names; when there is none, it
// answers 404 and returns nil with s.mu unlocked.
func (s *Server) lockFound(w http.ResponseWriter, r *http.Request, idOrName string) *sandbox {
	s.mu.Lock()
	sb := s.lookupLocked(idOrName)
	if sb == nil {
		s.mu.Unlock()
		notFound(w, r, idOrName)
	}
	return sb
}

func notFound(w http.ResponseWriter, r *http.Request, idOrName string) {
	apiError(w, r, http.StatusNotFound, "Sandbox with ID or name "+idOrName+" not found")
}

func (s *Server) get(w http.ResponseWriter, r *http.Request, idOrName string) {
	sb := s.lockFound(w, r, idOrName)
	if sb == nil {
		return
	}
	out := sb.Sandbox.clone()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var match map[string]string
	if l := q.Get("labels"); l != "" {
		if err := json.Unmarshal([]byte(l), &match); err != nil {
			apiError(w, r, http.StatusBadRequest, "Invalid labels JSON format")
			return
		}
	}
	limit := 100
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 200 {
			apiError(w, r, http.StatusBadRequest, "limit must not be greater than 200, limit must not be less than 1")
			return
		}
		limit = n
	}
	after := 0 // the cursor: the seq of the last item of the previous page
	if c := q.Get("cursor"); c != "" && s.opts.List == ListCursor {
		b, err := base64.RawURLEncoding.DecodeString(c)
		n, err2 := strconv.Atoi(strings.TrimPrefix(string(b), "seq:"))
		if err != nil || err2 != nil {
			apiError(w, r, http.StatusBadRequest, "Invalid cursor")
			return
		}
		after = n
	}
	s.mu.Lock()
	var matched []*sandbox
next:
	for _, sb := range s.sortedLocked() {
		if s.lookupLocked(sb.ID) != sb {
			continue
		}
		for k, v := range match {
			if sb.Labels[k] != v {
				continue next
			}
		}
		matched = append(matched, sb)
	}
	if s.opts.List == ListArray {
		out := make([]Sandbox, 0, len(matched))
		for _, sb := range matched {
			out = append(out, sb.Sandbox.clone())
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
		return
	}
	items := []map[string]any{}
	var nextCursor *string
	for _, sb := range matched {
		if after > 0 && sb.seq >= after {
			continue
		}
		if len(items) == limit {
			c := base64.RawURLEncoding.EncodeToString([]byte("seq:" + strconv.Itoa(s.seqOf(items[len(items)-1]))))
			nextCursor = &c
			break
		}
		items = append(items, listItem(sb.Sandbox))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"items": items, "nextCursor": nextCursor})
}

// seqOf finds the seq of a listed item. s.mu is held.
func (s *Server) seqOf(item map[string]any) int {
	id, _ := item["id"].(string)
	if sb, ok := s.sandboxes[id]; ok {
		return sb.seq
	}
	return 0
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request, idOrName string) {
	sb := s.lockFound(w, r, idOrName)
	if sb == nil {
		return
	}
	if sb.pending && sb.State != statePendingBuild {
		s.mu.Unlock()
		apiError(w, r, http.StatusConflict, "Sandbox state change in progress")
		return
	}
	out := sb.Sandbox.clone() // the state is unchanged at this instant
	sb.gen++                  // a build in progress stops
	sb.DesiredState, sb.pending = stateDestroyed, true
	sb.Name = "DESTROYED_" + sb.Name + "_" + strconv.FormatInt(time.Now().UnixMilli(), 10)
	out.DesiredState, out.Name = sb.DesiredState, sb.Name
	s.steps(sb, []string{stateDestroying, stateDestroyed}, func() {
		sb.pending = false
		s.endSessionsLocked(sb)
		id, dir := sb.ID, sb.dir
		go func() {
			signalSandbox(id, syscall.SIGCONT)
			killSandboxProcesses(id)
			os.RemoveAll(dir)
		}()
	})
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// settledLocked finds a sandbox that is not changing state, or answers 404 or 409 and returns
// nil. s.mu is held.
func (s *Server) settledLocked(w http.ResponseWriter, r *http.Request, idOrName string) *sandbox {
	sb := s.lookupLocked(idOrName)
	switch {
	case sb == nil:
		notFound(w, r, idOrName)
		return nil
	case sb.pending:
		apiError(w, r, http.StatusConflict, "Sandbox state change in progress")
		return nil
	}
	return sb
}

// start starts a stopped sandbox, restores an archived one or resumes a paused one (VM classes
// only), as the service does; it holds its answer until the sandbox is started, for up to
// StartWait, except for an archived one, whose restore it does not wait for.
func (s *Server) start(w http.ResponseWriter, r *http.Request, idOrName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.lookupLocked(idOrName)
	switch {
	case sb == nil:
		notFound(w, r, idOrName)
		return
	case sb.State == stateStarted && sb.DesiredState == stateStarted:
		writeJSON(w, http.StatusOK, sb.Sandbox.clone())
		return
	case sb.State == stateError || sb.State == stateBuildFailed:
		apiError(w, r, http.StatusBadRequest, "Sandbox is in an errored state")
		return
	case sb.pending || sb.State != sb.DesiredState:
		apiError(w, r, http.StatusConflict, "Sandbox state change in progress")
		return
	case sb.State == statePaused && sb.SandboxClass == "container":
		apiError(w, r, http.StatusUnprocessableEntity, "Resuming is not supported for this sandbox")
		return
	}
	id := sb.ID
	switch sb.State {
	case stateStopped:
		sb.gen++
		sb.DesiredState, sb.pending = stateStarted, true
		sb.setState(stateStarting)
		s.after(sb, s.opts.StepDelay, func() { s.startedLocked(sb, stateStarting) })
	case statePaused:
		sb.gen++
		sb.DesiredState, sb.pending = stateStarted, true
		sb.setState(stateResuming)
		signalSandbox(id, syscall.SIGCONT) // a resumed VM's processes go on
		s.after(sb, s.opts.StepDelay, func() { s.startedLocked(sb, stateResuming) })
	case stateArchived:
		sb.gen++
		sb.DesiredState, sb.pending = stateStarted, true
		sb.setState(stateRestoring)
		s.steps(sb, []string{stateStarting}, func() { s.startedLocked(sb, stateStarting) })
		writeJSON(w, http.StatusOK, sb.Sandbox.clone()) // the restore is not waited for
		return
	default:
		apiError(w, r, http.StatusBadRequest, "Sandbox is not in valid state")
		return
	}
	failed, reason, ok := s.waitStartedLocked(r, sb, s.opts.StartWait)
	switch {
	case !ok:
	case failed:
		apiError(w, r, http.StatusBadRequest, "Sandbox failed to start: "+reason)
	default:
		writeJSON(w, http.StatusOK, sb.Sandbox.clone())
	}
}

func (s *Server) stop(w http.ResponseWriter, r *http.Request, idOrName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.settledLocked(w, r, idOrName)
	switch {
	case sb == nil:
		return
	case sb.State != stateStarted && sb.State != statePaused:
		apiError(w, r, http.StatusBadRequest, "Sandbox is not in a stoppable state")
		return
	}
	s.transitionLocked(sb, stateStopping, stateStopped, s.opts.StepDelay)
	writeJSON(w, http.StatusOK, sb.Sandbox.clone())
}

func (s *Server) pause(w http.ResponseWriter, r *http.Request, idOrName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.settledLocked(w, r, idOrName)
	switch {
	case sb == nil:
		return
	case sb.SandboxClass == "container":
		apiError(w, r, http.StatusUnprocessableEntity, "Pausing is not supported for this sandbox")
		return
	case sb.State != stateStarted:
		apiError(w, r, http.StatusBadRequest, "Sandbox is not started")
		return
	}
	s.transitionLocked(sb, statePausing, statePaused, s.opts.StepDelay)
	writeJSON(w, http.StatusOK, sb.Sandbox.clone())
}

func (s *Server) archive(w http.ResponseWriter, r *http.Request, idOrName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.settledLocked(w, r, idOrName)
	switch {
	case sb == nil:
		return
	case sb.State != stateStopped:
		apiError(w, r, http.StatusBadRequest, "Sandbox is not stopped")
		return
	}
	s.transitionLocked(sb, stateArchiving, stateArchived, s.opts.StepDelay)
	writeJSON(w, http.StatusOK, sb.Sandbox.clone())
}

// transitionLocked takes sb through the transitional state to settled after d: a stopped
// sandbox's processes and sessions end, a paused one's are frozen. s.mu is held.
func (s *Server) transitionLocked(sb *sandbox, state, settled string, d time.Duration) {
	sb.gen++
	sb.DesiredState, sb.pending = settled, true
	switch settled {
	case stateStopped, statePaused, stateArchived:
	default:
		sb.DesiredState = stateStarted
	}
	sb.setState(state)
	id := sb.ID
	s.after(sb, d, func() {
		sb.setState(settled)
		sb.pending = false
		switch settled {
		case stateStopped:
			// At once, under the lock: a start that follows must not find them, nor have its
			// own runs killed by a kill that came late.
			s.endSessionsLocked(sb)
			signalSandbox(id, syscall.SIGCONT)
			killSandboxProcesses(id)
		case statePaused:
			signalSandbox(id, syscall.SIGSTOP) // at once: a resume that follows must find them stopped
		}
	})
}

func (s *Server) labels(w http.ResponseWriter, r *http.Request, idOrName string) {
	var body struct {
		Labels map[string]string `json:"labels"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil || body.Labels == nil {
		apiError(w, r, http.StatusBadRequest, "labels must be an object")
		return
	}
	sb := s.lockFound(w, r, idOrName)
	if sb == nil {
		return
	}
	sb.Labels = cloneMap(body.Labels) // replaces them all
	sb.UpdatedAt = now()
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"labels": body.Labels})
}
