package envs

// The egress policy: what a sandbox may reach besides nothing. Both backends read it (Docker
// enforces it with a proxy in the worker, Daytona maps what it can onto the service's own
// allow list), so it lives here rather than in either.

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// EgressRule is one entry of an Allowlist: a host name, a wildcard over a domain's names, an IP
// address or a CIDR, and a port (or any port).
type EgressRule struct {
	// Name is a lower-case DNS name without a trailing dot; empty for an address rule. With
	// Wildcard it is a domain, and the rule matches the names under it, not the domain itself.
	Name     string
	Wildcard bool
	// Prefix is an address rule's network: one address (a /32 or /128) or a CIDR. It matches
	// IP literals a client asks for, never the addresses a name resolves to.
	Prefix netip.Prefix
	// Port is the port the rule allows; 0 allows any (written "*").
	Port uint16
}

// Allowlist is an egress policy: the destinations a sandbox may reach through the worker's
// proxy, and nothing else. The empty Allowlist allows nothing.
type Allowlist []EgressRule

// Egress is the egress policy of a worker: its allowlist, and tenants' own.
type Egress struct {
	// Allow applies to every tenant that Tenants does not name.
	Allow Allowlist
	// Tenants replaces Allow for the tenants it names (it does not extend it: a tenant's list
	// is the whole of what its sandboxes reach, and an empty one gives a tenant no egress).
	Tenants map[string]Allowlist
}

// For returns the allowlist of tenant's sandboxes.
func (e Egress) For(tenant string) Allowlist {
	if a, ok := e.Tenants[tenant]; ok {
		return a
	}
	return e.Allow
}

// Enabled reports whether any tenant's sandboxes may reach anything.
func (e Egress) Enabled() bool {
	if len(e.Allow) > 0 {
		return true
	}
	for _, a := range e.Tenants {
		if len(a) > 0 {
			return true
		}
	}
	return false
}

// ParseAllowlist parses entries of the form host:port: host a DNS name ("pypi.org"), a
// wildcard ("*.example.org": the names under example.org), an IP address ("10.0.0.5",
// "[fd00::5]") or a CIDR ("10.0.0.0/24", "[fd00::/64]"); port a number or "*" for any. A port
// is required. Addresses that no sandbox may ever reach (ForbiddenAddr) are refused.
func ParseAllowlist(entries []string) (Allowlist, error) {
	var out Allowlist
	for _, s := range entries {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		r, err := ParseEgressRule(s)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// ParseEgressRule parses one entry of an allowlist (see ParseAllowlist).
func ParseEgressRule(s string) (EgressRule, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return EgressRule{}, fmt.Errorf("%q: want host:port (a port is required; * for any): %v", s, err)
	}
	var r EgressRule
	if port != "*" {
		if r.Port, err = ParsePort(port); err != nil {
			return EgressRule{}, fmt.Errorf("%q: %w", s, err)
		}
	}
	switch {
	case strings.Contains(host, "/"):
		p, err := netip.ParsePrefix(host)
		if err != nil {
			return EgressRule{}, fmt.Errorf("%q: not a CIDR: %v", s, err)
		}
		if p.Addr().Is4In6() {
			return EgressRule{}, fmt.Errorf("%q: write an IPv4 CIDR as such", s)
		}
		r.Prefix = p.Masked()
		if why := ForbiddenAddr(r.Prefix.Addr()); why != "" && r.Prefix.IsSingleIP() {
			return EgressRule{}, fmt.Errorf("%q: %s is %s, which no sandbox may reach", s, r.Prefix.Addr(), why)
		}
	case strings.HasPrefix(host, "*."):
		name, err := CanonicalName(host[2:])
		if err != nil {
			return EgressRule{}, fmt.Errorf("%q: %w", s, err)
		}
		r.Name, r.Wildcard = name, true
	default:
		if addr, err := netip.ParseAddr(host); err == nil {
			if addr.Zone() != "" {
				return EgressRule{}, fmt.Errorf("%q: an address with a zone is not allowed", s)
			}
			addr = addr.Unmap()
			if why := ForbiddenAddr(addr); why != "" {
				return EgressRule{}, fmt.Errorf("%q: %s is %s, which no sandbox may reach", s, addr, why)
			}
			r.Prefix = netip.PrefixFrom(addr, addr.BitLen())
			break
		}
		name, err := CanonicalName(host)
		if err != nil {
			return EgressRule{}, fmt.Errorf("%q: %w", s, err)
		}
		r.Name = name
	}
	return r, nil
}

// ParsePort parses a TCP port, 1 to 65535.
func ParsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want a number from 1 to 65535", s)
	}
	return uint16(n), nil
}

// CanonicalName returns name in lower case without a trailing dot, or an error when it is not a
// DNS host name (letters, digits, '-' and '_' in labels of 1 to 63 characters, 253 at most in
// all). A name whose last label is numeric is refused: C resolvers read "127.1" or
// "2130706433" as addresses, which would slip an address past a rule for names.
func CanonicalName(name string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	if n == "" || len(n) > 253 {
		return "", fmt.Errorf("host name %q: want 1 to 253 characters", name)
	}
	labels := strings.Split(n, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("host name %q: bad label %q", name, l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("host name %q: %q is not allowed in a name", name, c)
			}
		}
	}
	if last := labels[len(labels)-1]; strings.Trim(last, "0123456789") == "" || strings.HasPrefix(last, "0x") {
		return "", fmt.Errorf("host name %q: its last label is numeric, as an address's", name)
	}
	return n, nil
}

// AllowsName reports whether a lists name (canonical, see CanonicalName) at port.
func (a Allowlist) AllowsName(name string, port uint16) bool {
	for _, r := range a {
		if r.Name == "" || r.Port != 0 && r.Port != port {
			continue
		}
		if r.Wildcard && strings.HasSuffix(name, "."+r.Name) || !r.Wildcard && name == r.Name {
			return true
		}
	}
	return false
}

// AllowsAddr reports whether a lists the IP literal addr at port.
func (a Allowlist) AllowsAddr(addr netip.Addr, port uint16) bool {
	addr = addr.Unmap()
	for _, r := range a {
		if r.Prefix.IsValid() && (r.Port == 0 || r.Port == port) && r.Prefix.Contains(addr) {
			return true
		}
	}
	return false
}

// String returns the rule as ParseEgressRule reads it.
func (r EgressRule) String() string {
	host := r.Name
	switch {
	case r.Wildcard:
		host = "*." + r.Name
	case r.Prefix.IsSingleIP():
		host = r.Prefix.Addr().String()
	case r.Prefix.IsValid():
		host = r.Prefix.String()
	}
	port := "*"
	if r.Port != 0 {
		port = strconv.Itoa(int(r.Port))
	}
	return net.JoinHostPort(host, port)
}

// metadataV6 is the cloud metadata service's IPv6 address on AWS (a unique local address, not a
// link-local one).
var metadataV6 = netip.MustParseAddr("fd00:ec2::254")

// nat64 is the well-known NAT64 prefix (RFC 6052): its addresses carry an IPv4 address in their
// last 32 bits, and reach it where a NAT64 gateway is.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// ForbiddenAddr says why no sandbox may ever reach addr, whatever an allowlist says, or returns
// "" when it may: link-local addresses (169.254.0.0/16, where cloud metadata services answer,
// and fe80::/10), AWS's IPv6 metadata address, unspecified, multicast and broadcast addresses,
// and NAT64 addresses of any of those.
func ForbiddenAddr(addr netip.Addr) string {
	addr = addr.Unmap()
	if nat64.Contains(addr) {
		b := addr.As16()
		if why := ForbiddenAddr(netip.AddrFrom4([4]byte(b[12:]))); why != "" {
			return "a NAT64 address of " + why
		}
	}
	switch {
	case addr.IsLinkLocalUnicast():
		return "a link-local address (cloud metadata)"
	case addr == metadataV6:
		return "the cloud metadata address"
	case addr.IsUnspecified():
		return "an unspecified address"
	case addr.IsMulticast():
		return "a multicast address"
	case addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	return ""
}
