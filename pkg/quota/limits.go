package quota

import (
	"errors"
	"fmt"
	"sort"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// Kind is what a quota counts; it is the middle token of a slot's key.
type Kind string

// The two kinds of quota.
const (
	// Sandboxes counts a tenant's conversations with a sandbox: from the placement of a new
	// conversation until it is closed or its sandbox reaped.
	Sandboxes Kind = "sandboxes"
	// Runs counts a tenant's runs in flight: from a run's admission by a dispatcher until its
	// answer is relayed, queued behind its conversation's earlier runs included.
	Runs Kind = "runs"
)

// Kinds lists every kind of quota.
var Kinds = []Kind{Sandboxes, Runs}

// field returns the name of the kind's quota in --tenant-quotas and in error messages.
func (k Kind) field() string { return "max_" + string(k) }

// MaxLimit bounds one quota: deciding on a tenant at its quota looks at its slots in memory,
// and a tenant's slots are keys of one bucket.
const MaxLimit = 100_000

// ErrInvalidLimits wraps every error of Limits.Validate and Tenants.
var ErrInvalidLimits = errors.New("invalid quotas")

// Limit is one tenant's quotas. Zero means unlimited.
type Limit struct {
	// MaxSandboxes is the most sandboxes the tenant holds at once across the fleet.
	MaxSandboxes int
	// MaxRuns is the most runs the tenant has in flight at once across the fleet.
	MaxRuns int
}

// Of returns the quota of kind k (0: unlimited).
func (l Limit) Of(k Kind) int {
	if k == Sandboxes {
		return l.MaxSandboxes
	}
	return l.MaxRuns
}

// Limits are a fleet's quotas: Default for every tenant, Tenants in its place for the tenants it
// names. The zero value limits nothing.
type Limits struct {
	Default Limit
	Tenants map[string]Limit
}

// For returns the quotas of tenant.
func (l Limits) For(tenant string) Limit {
	if t, ok := l.Tenants[tenant]; ok {
		return t
	}
	return l.Default
}

// Enabled reports whether any tenant has any quota. Without one a dispatcher needs no quota
// bucket and does nothing more for a request than before quotas existed.
func (l Limits) Enabled() bool { return l.limits(Sandboxes) || l.limits(Runs) }

// limits reports whether any tenant has a quota of kind k.
func (l Limits) limits(k Kind) bool {
	if l.Default.Of(k) != 0 {
		return true
	}
	for _, t := range l.Tenants {
		if t.Of(k) != 0 {
			return true
		}
	}
	return false
}

// Validate checks every quota (0 to MaxLimit) and tenant id. Errors wrap ErrInvalidLimits.
func (l Limits) Validate() error {
	if err := l.Default.check("default"); err != nil {
		return err
	}
	for _, t := range sortedTenants(l.Tenants) {
		if !protocol.ValidID(t) {
			return fmt.Errorf("%w: tenant %q must match [A-Za-z0-9_-]{1,%d}", ErrInvalidLimits, t, protocol.MaxIDLen)
		}
		if err := l.Tenants[t].check("tenant " + t); err != nil {
			return err
		}
	}
	return nil
}

func (l Limit) check(whose string) error {
	for _, k := range Kinds {
		if n := l.Of(k); n < 0 || n > MaxLimit {
			return fmt.Errorf("%w: %s: %s %d: want 0 (unlimited) to %d", ErrInvalidLimits, whose, k.field(), n, MaxLimit)
		}
	}
	return nil
}

// Override is one tenant's entry in --tenant-quotas, {"max_sandboxes": 10, "max_runs": 4}: a
// field left out keeps the default quota, 0 makes that quota unlimited for the tenant.
type Override struct {
	MaxSandboxes *int `json:"max_sandboxes"`
	MaxRuns      *int `json:"max_runs"`
}

// Tenants applies overrides to the default quotas def and returns each named tenant's
// quotas, checked as Validate does.
func Tenants(def Limit, overrides map[string]Override) (map[string]Limit, error) {
	out := make(map[string]Limit, len(overrides))
	for t, o := range overrides {
		l := def
		if o.MaxSandboxes != nil {
			l.MaxSandboxes = *o.MaxSandboxes
		}
		if o.MaxRuns != nil {
			l.MaxRuns = *o.MaxRuns
		}
		out[t] = l
	}
	if err := (Limits{Default: def, Tenants: out}).Validate(); err != nil {
		return nil, err
	}
	return out, nil
}

// sortedTenants returns the tenants of m in order, so the first error found is always the same.
func sortedTenants(m map[string]Limit) []string {
	ts := make([]string, 0, len(m))
	for t := range m {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	return ts
}
