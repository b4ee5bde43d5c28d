package config

import (
	"regexp"
	"strings"
)

// semVer is the SemVer 2.0.0 grammar, as NATS services (micro) require of their version.
var semVer = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

// SemVer turns a build's version string into a SemVer one, as NATS service discovery requires:
// "v1.2.3" → "1.2.3", "v0.1.0-3-gabc123-dirty" (git describe) stays as it is without the v,
// anything else becomes a pre-release of 0.0.0: "dev" → "0.0.0-dev",
// "c5970c7-dirty" → "0.0.0-c5970c7-dirty".
func SemVer(v string) string {
	v = strings.TrimSpace(v)
	if s := strings.TrimPrefix(v, "v"); semVer.MatchString(s) {
		return s
	}
	id := []byte(v)
	digits := true
	for i, c := range id {
		switch {
		case c >= '0' && c <= '9':
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-':
			digits = false
		default:
			id[i] = '-'
			digits = false
		}
	}
	switch {
	case len(id) == 0:
		return "0.0.0-dev"
	case digits:
		return "0.0.0-v" + string(id) // a numeric identifier may not have a leading zero
	}
	return "0.0.0-" + string(id)
}
