package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// DecodeJSONFlag decodes the value of a flag that holds a JSON document, or @file naming a
// file that holds one (--daytona-tenants, --tenant-quotas), into v. Decoding is strict: an
// unknown field or anything after the document is refused, so a misspelt key fails at start
// instead of being ignored. Errors name the flag, and the file when there is one; want says
// what the document should look like. It returns where the document came from, for the
// caller's own checks of the values ("--flag" or "--flag file NAME"); an empty value leaves v
// alone and returns "".
func DecodeJSONFlag(flag, value, want string, v any) (source string, err error) {
	src := strings.TrimSpace(value)
	if src == "" {
		return "", nil
	}
	what := "--" + flag
	if name, ok := strings.CutPrefix(src, "@"); ok {
		b, err := os.ReadFile(name)
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		src, what = string(b), what+" file "+name
	}
	dec := json.NewDecoder(strings.NewReader(src))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return "", fmt.Errorf("%s: want %s: %w", what, want, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("%s: want %s, and nothing after it", what, want)
	}
	return what, nil
}
