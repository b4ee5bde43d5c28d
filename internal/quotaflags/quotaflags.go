// Package quotaflags declares the tenants' quota flags of a dispatcher, which cmd/dispatcher and
// `codefleet dev` share, and turns them into quota.Limits.
//
//	var q quotaflags.Options
//	q.Register(fs)          // --tenant-max-sandboxes, --tenant-max-runs, --tenant-quotas
//	fs.Parse(args)
//	limits, err := q.Limits()
package quotaflags

import (
	"fmt"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/pkg/quota"
)

// Options are the quota flags.
type Options struct {
	maxSandboxes int    // --tenant-max-sandboxes
	maxRuns      int    // --tenant-max-runs
	tenants      string // --tenant-quotas
}

// Register declares the quota flags on fs. Their defaults limit nothing.
func (o *Options) Register(fs *config.FlagSet) {
	fs.IntVar(&o.maxSandboxes, "tenant-max-sandboxes", 0, "most sandboxes (conversations with a sandbox) a tenant holds at once across the fleet; 0: unlimited. --tenant-quotas overrides it per tenant")
	fs.IntVar(&o.maxRuns, "tenant-max-runs", 0, "most runs a tenant has in flight at once across the fleet; 0: unlimited. --tenant-quotas overrides it per tenant")
	fs.StringVar(&o.tenants, "tenant-quotas", "", `per-tenant quotas, JSON or @file: {"acme":{"max_sandboxes":10,"max_runs":4}}; a field left out is the flag's value, 0 is unlimited for that tenant`)
}

// Limits checks the flags and returns the quotas they set.
func (o *Options) Limits() (quota.Limits, error) {
	for _, f := range []struct {
		name string
		n    int
	}{{"tenant-max-sandboxes", o.maxSandboxes}, {"tenant-max-runs", o.maxRuns}} {
		if f.n < 0 || f.n > quota.MaxLimit {
			return quota.Limits{}, fmt.Errorf("--%s %d: want 0 (unlimited) to %d", f.name, f.n, quota.MaxLimit)
		}
	}
	def := quota.Limit{MaxSandboxes: o.maxSandboxes, MaxRuns: o.maxRuns}
	var overrides map[string]quota.Override
	what, err := config.DecodeJSONFlag("tenant-quotas", o.tenants, `a JSON object {"<tenant>": {"max_sandboxes": N, "max_runs": N}}`, &overrides)
	if err != nil {
		return quota.Limits{}, err
	}
	tenants, err := quota.Tenants(def, overrides)
	if err != nil {
		return quota.Limits{}, fmt.Errorf("%s: %w", what, err)
	}
	return quota.Limits{Default: def, Tenants: tenants}, nil
}
