package daytona_test

import (
	"strings"
	"testing"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
)

func allowlist(t *testing.T, entries ...string) envs.Allowlist {
	t.Helper()
	a, err := envs.ParseAllowlist(entries)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestEgressRefusedWhereDaytonaCannot: host names, ports and long lists cannot be Daytona's
// network allow list; the backend refuses them, naming the setting and the entry.
func TestEgressRefusedWhereDaytonaCannot(t *testing.T) {
	for _, c := range []struct {
		egress   envs.Egress
		blockAll bool
		want     string
	}{
		{envs.Egress{Allow: allowlist(t, "10.0.0.0/8:*", "pypi.org:443")}, false,
			"daytona: config: --egress-allow: pypi.org:443: Daytona's network allow list takes IPv4 addresses and CIDRs for every port (10.0.0.0/8:*), not host names or ports"},
		{envs.Egress{Allow: allowlist(t, "10.0.0.5:443")}, false, "--egress-allow: 10.0.0.5:443: Daytona's network allow list takes IPv4 addresses"},
		{envs.Egress{Allow: allowlist(t, "[fd00::/64]:*")}, false, "--egress-allow: [fd00::/64]:*: Daytona's"},
		{envs.Egress{Tenants: map[string]envs.Allowlist{"acme": allowlist(t, "*.example.org:443")}}, false,
			"daytona: config: --egress-tenants: tenant acme: *.example.org:443: Daytona's"},
		{envs.Egress{Allow: allowlist(t, strings.Split("1.0.0.0/8:*,2.0.0.0/8:*,3.0.0.0/8:*,4.0.0.0/8:*,5.0.0.0/8:*,6.0.0.0/8:*,7.0.0.0/8:*,8.0.0.0/8:*,9.0.0.0/8:*,10.0.0.0/8:*,11.0.0.0/8:*", ",")...)}, false,
			"--egress-allow: 11 entries: Daytona's network allow list takes at most 10"},
		{envs.Egress{Allow: allowlist(t, "10.0.0.0/8:*")}, true, "an egress allowlist (--egress-allow, --egress-tenants) and --daytona-network-block-all exclude each other"},
	} {
		cfg := daytona.Config{Account: daytona.Account{APIKey: "dtn_x"}, Egress: c.egress, NetworkBlockAll: c.blockAll}
		if err := cfg.CheckEgress(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CheckEgress: %v, want %q", err, c.want)
		}
		if _, err := daytona.New(cfg, testutil.Logger(t)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New: %v, want %q", err, c.want)
		}
	}
}

// TestEgressNetworkAllowList: IPv4 CIDRs for every port become the sandbox's networkAllowList;
// a tenant's list replaces the worker's, and a tenant with an empty one gets no network.
func TestEgressNetworkAllowList(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, func(c *daytona.Config) {
		c.Egress = envs.Egress{
			Allow:   allowlist(t, "10.0.0.0/8:*", "192.168.1.5:*"),
			Tenants: map[string]envs.Allowlist{"acme": allowlist(t, "172.16.0.0/12:*"), "locked": {}},
		}
	})
	for _, c := range []struct {
		tenant, allowList string
		blockAll          bool
	}{
		{"faults", "10.0.0.0/8,192.168.1.5/32", false},
		{"acme", "172.16.0.0/12", false},
		{"locked", "", true},
	} {
		s := spec("egress-" + c.tenant)
		s.Tenant = c.tenant
		sb := mustCreate(t, env, s)
		got, _ := fake.Get(sb.Info().ID)
		if got.NetworkAllowList != c.allowList || got.NetworkBlockAll != c.blockAll {
			t.Errorf("tenant %s: networkAllowList %q networkBlockAll %v, want %q %v", c.tenant, got.NetworkAllowList, got.NetworkBlockAll, c.allowList, c.blockAll)
		}
	}
}
