package daytona

// Egress on Daytona: the service cuts a sandbox's network off (networkBlockAll) or lets it
// reach a list of at most ten IPv4 CIDRs (networkAllowList), on every port. So an allowlist
// (Config.Egress) maps onto it only when each entry is an IPv4 address or CIDR with any port
// ("10.0.0.0/8:*"); a host name or a port cannot be expressed, and such a configuration is
// refused when the backend is made, naming the setting and the entry, rather than letting the
// sandboxes reach more or less than the list says. (The service's domainAllowList takes names
// but no ports, and its semantics are not documented: it is not used.)
//
// With egress configured, a tenant whose allowlist is empty gets networkBlockAll, as a Docker
// sandbox gets no network; without, every sandbox gets NetworkBlockAll as configured.

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/codefleet/codefleet/pkg/envs"
)

// maxNetworkAllowList is the most CIDRs the service takes in networkAllowList.
const maxNetworkAllowList = 10

// CheckEgress reports whether Daytona can enforce the egress allowlists as they are written,
// with an error naming the setting and the entry it cannot.
func (c *Config) CheckEgress() error {
	if !c.Egress.Enabled() {
		return nil
	}
	if c.NetworkBlockAll {
		return errors.New("daytona: config: an egress allowlist (--egress-allow, --egress-tenants) and --daytona-network-block-all exclude each other: with an allowlist, sandboxes reach what it lists and nothing else")
	}
	if _, err := networkAllowList(c.Egress.Allow); err != nil {
		return fmt.Errorf("daytona: config: --egress-allow: %w", err)
	}
	tenants := make([]string, 0, len(c.Egress.Tenants))
	for t := range c.Egress.Tenants {
		tenants = append(tenants, t)
	}
	sort.Strings(tenants)
	for _, t := range tenants {
		if _, err := networkAllowList(c.Egress.Tenants[t]); err != nil {
			return fmt.Errorf("daytona: config: --egress-tenants: tenant %s: %w", t, err)
		}
	}
	return nil
}

// network returns the network settings of a new sandbox of tenant. The allowlists were checked
// by CheckEgress.
func (c *Config) network(tenant string) (blockAll bool, allowList string) {
	if !c.Egress.Enabled() {
		return c.NetworkBlockAll, ""
	}
	list, _ := networkAllowList(c.Egress.For(tenant))
	return list == "", list
}

// networkAllowList writes a as the service's networkAllowList: comma-separated IPv4 CIDRs.
func networkAllowList(a envs.Allowlist) (string, error) {
	if len(a) > maxNetworkAllowList {
		return "", fmt.Errorf("%d entries: Daytona's network allow list takes at most %d", len(a), maxNetworkAllowList)
	}
	cidrs := make([]string, 0, len(a))
	for _, r := range a {
		if !r.Prefix.IsValid() || !r.Prefix.Addr().Is4() || r.Port != 0 {
			return "", fmt.Errorf("%s: Daytona's network allow list takes IPv4 addresses and CIDRs for every port (10.0.0.0/8:*), not host names or ports", r)
		}
		cidrs = append(cidrs, r.Prefix.String())
	}
	return strings.Join(cidrs, ","), nil
}
