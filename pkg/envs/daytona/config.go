package daytona

import (
	"cmp"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/codefleet/codefleet/pkg/envs"
)

// Defaults of Config.
const (
	DefaultMaxOutput = 256 << 10
	// DefaultAPITimeout bounds each management call (get, list, delete, labels) and each short
	// toolbox call. Create and start get ServerWait more, as the service holds them.
	DefaultAPITimeout = 30 * time.Second
	// ServerWait is how long the service holds a create (from a snapshot) or a start while the
	// sandbox starts, before it answers.
	ServerWait = 30 * time.Second
	// DefaultStartTimeout bounds the wait for a sandbox to be started: a new one from a snapshot,
	// counted from the create's answer (the service held the create for up to ServerWait first),
	// or one started again or resumed, counted from the start.
	DefaultStartTimeout = 60 * time.Second
	// DefaultBuildTimeout bounds the wait for a new sandbox made from an image: Daytona builds
	// the image first (pending_build, building_snapshot), which takes minutes for a large one;
	// a later sandbox of the same image reuses the build.
	DefaultBuildTimeout = 10 * time.Minute
	// DefaultLongRun: runs whose timeout is longer go through a session of the toolbox, polled
	// until they end, instead of one blocking call, which the load balancer in front of
	// Daytona's toolbox proxy cuts after about 60 s of silence (a bare 502).
	DefaultLongRun = 45 * time.Second
	// DefaultCleanupTimeout bounds the deletion of a sandbox that failed to be created, which
	// may have to wait for a pending transition to settle (409 until then).
	DefaultCleanupTimeout = time.Minute
	// DefaultRunTimeout applies to a run without a timeout.
	DefaultRunTimeout = 60 * time.Second
	// SnapshotPrefix marks an image name that is a Daytona snapshot: "snapshot:daytona-small".
	// Any other name is an image, built with buildInfo "FROM <image>".
	SnapshotPrefix = "snapshot:"

	// runGrace: Daytona's own timeout of a run fires this long after the supervisor's.
	runGrace = 5 * time.Second
	// httpGrace: the HTTP deadline of a run is this long after Daytona's timeout (the Python
	// SDK uses 5 s; proxies add latency).
	httpGrace = 10 * time.Second
	// killTimeout bounds the command that kills a run the caller gave up on.
	killTimeout = 10 * time.Second
)

// Account is a place to make sandboxes in: a Daytona organisation (its API key), the API's URL
// and a target region. Each field may hold ${name} placeholders, filled from the variables of the
// request that creates a conversation's sandbox (protocol sandbox.variables), as AG2's Variable
// markers are: APIKey "${daytona_api_key}" lets every tenant bring its own key.
type Account struct {
	// APIKey authenticates to the API and the toolbox proxy (DAYTONA_API_KEY).
	APIKey string `json:"api_key,omitempty"`
	// APIURL is the management API; default DefaultAPIURL (DAYTONA_API_URL).
	APIURL string `json:"api_url,omitempty"`
	// Target is the region sandboxes are made in; empty means the organisation's default
	// (DAYTONA_TARGET).
	Target string `json:"target,omitempty"`
}

// Config configures the Daytona backend. The zero value of each optional field means its default.
type Config struct {
	// Account is the default account: DAYTONA_API_KEY, DAYTONA_API_URL, DAYTONA_TARGET.
	Account
	// Tenants overrides the default account per tenant: a field left empty is the default's.
	Tenants map[string]Account
	// Image is the default of Spec.Image: "snapshot:<name>" for a snapshot, else an image built
	// with buildInfo; empty means the service's default snapshot.
	Image string
	// Workdir is where runs execute; empty means the sandbox's (its image's WORKDIR or home).
	// It is the workspace of the file requests.
	Workdir string
	// UploadDir is where, inside a sandbox, the files put are staged before they are moved into
	// place (the pieces of an upload accumulate there); default DefaultUploadDir, under /tmp.
	// Set it where the sandboxes' images have room when their /tmp is a small tmpfs.
	UploadDir string
	// NetworkBlockAll cuts the sandboxes' network off.
	NetworkBlockAll bool
	// DiskGiB is the disk of a sandbox built from an image, in GiB (0: Daytona's default, 3).
	// Daytona takes resources only with a build: a snapshot's sandboxes have the snapshot's disk.
	DiskGiB int
	// Egress is what the sandboxes may reach, mapped onto the service's network allow list
	// where it can be (egress.go); New refuses an allowlist that cannot.
	Egress envs.Egress
	// AutoStopInterval stops a sandbox after this many idle minutes. 0 (the default) disables
	// auto-stop, as AG2 does: a long run makes no toolbox traffic and would be stopped; the
	// worker's idle TTL ends sandboxes instead. Stopped sandboxes are started again on use.
	AutoStopInterval int
	// MaxOutput caps the output of one run (head and tail kept).
	MaxOutput int
	// Labels are put on every sandbox.
	Labels map[string]string
	// APITimeout, StartTimeout, BuildTimeout and CleanupTimeout: see the Default* constants.
	APITimeout     time.Duration
	StartTimeout   time.Duration
	BuildTimeout   time.Duration
	CleanupTimeout time.Duration
	// MaxRetryWait caps the Retry-After a call waits out (a rate limit); a call asked to wait
	// longer, or past its own deadline, fails at once. Default DefaultMaxRetryWait.
	MaxRetryWait time.Duration
	// LongRun: a run whose timeout is longer than this goes through a toolbox session; a shorter
	// one is one blocking call (see DefaultLongRun). Negative: every run goes through a session.
	LongRun time.Duration
	// NewAPI makes the API of an account (its placeholders filled); default NewClient. Tests
	// and an SDK adapter substitute it.
	NewAPI func(Account) (API, error)
}

func (c *Config) setDefaults() {
	c.MaxOutput = cmp.Or(c.MaxOutput, DefaultMaxOutput)
	c.APITimeout = cmp.Or(c.APITimeout, DefaultAPITimeout)
	c.StartTimeout = cmp.Or(c.StartTimeout, DefaultStartTimeout)
	c.BuildTimeout = cmp.Or(c.BuildTimeout, DefaultBuildTimeout)
	c.CleanupTimeout = cmp.Or(c.CleanupTimeout, DefaultCleanupTimeout)
	c.MaxRetryWait = cmp.Or(c.MaxRetryWait, DefaultMaxRetryWait)
	c.LongRun = cmp.Or(c.LongRun, DefaultLongRun)
	if c.NewAPI == nil {
		wait := c.MaxRetryWait
		c.NewAPI = func(a Account) (API, error) {
			return NewClient(ClientConfig{APIURL: a.APIURL, APIKey: a.APIKey, MaxRetryWait: wait})
		}
	}
}

// merged is the tenant's account before placeholders are filled.
func (c *Config) merged(tenant string) Account {
	a := c.Account
	if t, ok := c.Tenants[tenant]; ok {
		if t.APIKey != "" {
			a.APIKey = t.APIKey
		}
		if t.APIURL != "" {
			a.APIURL = t.APIURL
		}
		if t.Target != "" {
			a.Target = t.Target
		}
	}
	return a
}

var placeholder = regexp.MustCompile(`\$\{([A-Za-z0-9_.-]+)\}`)

func hasPlaceholder(a Account) bool {
	return placeholder.MatchString(a.APIKey + a.APIURL + a.Target)
}

// fill replaces the ${name} placeholders of s with vars; field names the setting in errors.
func fill(s, field, tenant string, vars map[string]string) (string, error) {
	var missing []string
	out := placeholder.ReplaceAllStringFunc(s, func(m string) string {
		name := m[2 : len(m)-1]
		v, ok := vars[name]
		if !ok {
			missing = append(missing, "sandbox.variables."+name)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("%w: daytona: tenant %q: the Daytona %s needs %s, which the request does not give",
			envs.ErrSandboxFailed, tenant, field, strings.Join(missing, " and "))
	}
	return out, nil
}

// accountFor returns the account of a tenant, its placeholders filled with vars.
func (e *Env) accountFor(tenant string, vars map[string]string) (*account, error) {
	m := e.cfg.merged(tenant)
	var a Account
	var err error
	if a.APIKey, err = fill(m.APIKey, "API key", tenant, vars); err != nil {
		return nil, err
	}
	if a.APIURL, err = fill(m.APIURL, "API URL", tenant, vars); err != nil {
		return nil, err
	}
	if a.Target, err = fill(m.Target, "target", tenant, vars); err != nil {
		return nil, err
	}
	if a.APIKey == "" {
		return nil, fmt.Errorf("%w: daytona: tenant %q has no Daytona API key (set DAYTONA_API_KEY or the tenant's api_key)", envs.ErrSandboxFailed, tenant)
	}
	if a.APIURL == "" {
		a.APIURL = DefaultAPIURL
	}
	key := a.APIURL + "\x00" + a.APIKey + "\x00" + a.Target
	e.mu.Lock()
	defer e.mu.Unlock()
	if acct := e.accounts[key]; acct != nil {
		return acct, nil
	}
	api, err := e.cfg.NewAPI(a)
	if err != nil {
		return nil, fmt.Errorf("%w: daytona: %v", envs.ErrBackendUnavailable, err)
	}
	acct := &account{Account: a, api: api}
	e.accounts[key] = acct
	return acct, nil
}

func (e *Env) allAccounts() []*account {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*account, 0, len(e.accounts))
	for _, a := range e.accounts {
		out = append(out, a)
	}
	return out
}
