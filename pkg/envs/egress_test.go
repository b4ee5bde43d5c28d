package envs_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/codefleet/codefleet/pkg/envs"
)

func TestParseAllowlist(t *testing.T) {
	a, err := envs.ParseAllowlist([]string{" PyPI.org.:443 ", "*.example.org:443", "10.1.2.3:5432", "10.8.0.0/16:*", "[fd00::5]:80", "[fd00:1::/32]:8080", "", "files.pythonhosted.org:*"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range a {
		got = append(got, r.String())
	}
	if want := "pypi.org:443 *.example.org:443 10.1.2.3:5432 10.8.0.0/16:* [fd00::5]:80 [fd00:1::/32]:8080 files.pythonhosted.org:*"; strings.Join(got, " ") != want {
		t.Fatalf("parsed %q, want %q", strings.Join(got, " "), want)
	}
	for _, c := range []struct{ entry, want string }{
		{"pypi.org", "a port is required"},
		{"pypi.org:0", "want a number from 1 to 65535"},
		{"pypi.org:https", "want a number from 1 to 65535"},
		{"pypi.org:65536", "want a number from 1 to 65535"},
		{"fd00::5:80", "want host:port"},
		{"169.254.169.254:80", "169.254.169.254 is a link-local address (cloud metadata), which no sandbox may reach"},
		{"[::ffff:169.254.169.254]:80", "169.254.169.254 is a link-local address"},
		{"169.254.169.254/32:80", "is a link-local address"},
		{"[fe80::1%eth0]:80", "an address with a zone"},
		{"0.0.0.0:80", "an unspecified address"},
		{"224.0.0.1:80", "a multicast address"},
		{"bad_name!:80", "is not allowed in a name"},
		{"-lead.example:80", "bad label"},
		{"a..b:80", "bad label"},
		{"127.1:80", "its last label is numeric"},
		{"2130706433:80", "its last label is numeric"},
		{"*.:80", "host name"},
		{"10.0.0.0/33:80", "not a CIDR"},
	} {
		if _, err := envs.ParseAllowlist([]string{c.entry}); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.entry) {
			t.Errorf("%q: %v, want an error naming the entry and saying %q", c.entry, err, c.want)
		}
	}
}

func TestAllowlistMatches(t *testing.T) {
	a, err := envs.ParseAllowlist([]string{"pypi.org:443", "*.example.org:443", "10.1.2.3:5432", "10.8.0.0/16:*", "[fd00::5]:80", "any.example:*"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		port uint16
		want bool
	}{
		{"pypi.org", 443, true},
		{"pypi.org", 80, false},
		{"www.pypi.org", 443, false},
		{"files.example.org", 443, true},
		{"a.b.example.org", 443, true},
		{"example.org", 443, false}, // a wildcard is the names under the domain
		{"badexample.org", 443, false},
		{"files.example.org", 80, false},
		{"any.example", 1, true},
		{"any.example", 65535, true},
		{"10.1.2.3", 5432, false}, // a name rule never matches an address's text
	} {
		if got := a.AllowsName(c.name, c.port); got != c.want {
			t.Errorf("AllowsName(%s, %d) = %v, want %v", c.name, c.port, got, c.want)
		}
	}
	for _, c := range []struct {
		addr string
		port uint16
		want bool
	}{
		{"10.1.2.3", 5432, true},
		{"10.1.2.3", 5433, false},
		{"::ffff:10.1.2.3", 5432, true},
		{"10.8.200.1", 22, true},
		{"10.9.0.1", 22, false},
		{"fd00::5", 80, true},
		{"fd00::6", 80, false},
		{"127.0.0.1", 443, false},
	} {
		if got := a.AllowsAddr(netip.MustParseAddr(c.addr), c.port); got != c.want {
			t.Errorf("AllowsAddr(%s, %d) = %v, want %v", c.addr, c.port, got, c.want)
		}
	}
	var none envs.Allowlist
	if none.AllowsName("pypi.org", 443) || none.AllowsAddr(netip.MustParseAddr("10.1.2.3"), 5432) {
		t.Error("the empty allowlist allows something")
	}
}

func TestForbiddenAddr(t *testing.T) {
	for addr, want := range map[string]string{
		"169.254.169.254":         "a link-local address (cloud metadata)",
		"169.254.0.1":             "a link-local address (cloud metadata)",
		"::ffff:169.254.169.254":  "a link-local address (cloud metadata)",
		"fe80::1":                 "a link-local address (cloud metadata)",
		"fd00:ec2::254":           "the cloud metadata address",
		"64:ff9b::a9fe:a9fe":      "a NAT64 address of a link-local address (cloud metadata)",
		"0.0.0.0":                 "an unspecified address",
		"::":                      "an unspecified address",
		"239.1.1.1":               "a multicast address",
		"ff02::1":                 "a multicast address",
		"255.255.255.255":         "the broadcast address",
		"127.0.0.1":               "",
		"10.0.0.1":                "",
		"8.8.8.8":                 "",
		"2001:db8::1":             "",
		"64:ff9b::808:808":        "",
		"::ffff:8.8.8.8":          "",
		"169.253.255.255":         "",
		"169.255.0.0":             "",
		"fd00:ec2::253":           "",
		"fec0::1":                 "",
		"100.100.100.200":         "",
		"192.0.0.170":             "",
		"2001:4860:4860::8888":    "",
		"64:ff9b::ffff:ffff":      "a NAT64 address of the broadcast address",
		"64:ff9b::e000:1":         "a NAT64 address of a multicast address",
		"64:ff9b::0":              "a NAT64 address of an unspecified address",
		"::ffff:255.255.255.255":  "the broadcast address",
		"::ffff:0.0.0.0":          "an unspecified address",
		"::ffff:224.0.0.1":        "a multicast address",
		"::ffff:127.0.0.1":        "",
		"::ffff:169.254.1.1":      "a link-local address (cloud metadata)",
		"fe80::ffff:a9fe:a9fe":    "a link-local address (cloud metadata)",
		"febf:ffff:ffff:ffff::1":  "a link-local address (cloud metadata)",
		"fec0:0000:0000:0000::1":  "",
		"2002:a9fe:a9fe::1":       "",
		"::169.254.169.254":       "",
		"64:ff9b:1::a9fe:a9fe":    "",
		"64:ff9b::1:a9fe:a9fe":    "",
		"64:ff9b::ffff:a9fe:a9fe": "",
	} {
		if got := envs.ForbiddenAddr(netip.MustParseAddr(addr)); got != want {
			t.Errorf("ForbiddenAddr(%s) = %q, want %q", addr, got, want)
		}
	}
}

func TestEgressFor(t *testing.T) {
	worker, _ := envs.ParseAllowlist([]string{"pypi.org:443"})
	acme, _ := envs.ParseAllowlist([]string{"registry.npmjs.org:443"})
	e := envs.Egress{Allow: worker, Tenants: map[string]envs.Allowlist{"acme": acme, "locked": {}}}
	if got := e.For("other"); len(got) != 1 || got[0].Name != "pypi.org" {
		t.Errorf("a tenant not named: %v, want the worker's list", got)
	}
	if got := e.For("acme"); len(got) != 1 || got[0].Name != "registry.npmjs.org" {
		t.Errorf("acme: %v, want its own list only (it replaces the worker's)", got)
	}
	if got := e.For("locked"); len(got) != 0 {
		t.Errorf("a tenant with an empty list: %v, want nothing", got)
	}
	if !e.Enabled() || (envs.Egress{Tenants: map[string]envs.Allowlist{"locked": {}}}).Enabled() || (envs.Egress{}).Enabled() {
		t.Error("Enabled is wrong")
	}
	if !(envs.Egress{Tenants: map[string]envs.Allowlist{"acme": acme}}).Enabled() {
		t.Error("a tenant's list alone does not enable egress")
	}
}
