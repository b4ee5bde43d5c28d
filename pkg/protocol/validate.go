package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits of the sandbox options, beyond those of protocol.go.
const (
	// MaxImageLen bounds sandbox.image, in characters.
	MaxImageLen = 512
	// MaxEnvKeyLen bounds the name of one environment variable.
	MaxEnvKeyLen = 256
)

// Backends lists every sandbox backend of the contract.
var Backends = []string{BackendDocker, BackendDaytona}

// DecodeRunRequest decodes a RunRequest from JSON and validates it (see RunRequest.Validate).
// Unknown fields are ignored; field names match exactly (case-sensitively), as in the JSON
// Schema. A null field counts as absent. timeout_ms may be written in any JSON number form
// that denotes an integer (60000, 6e4, 60000.0).
//
// Every problem is reported as an *Error: malformed JSON, a body that is not one JSON object,
// a field of the wrong type and every rule of Validate are CodeBadRequest, an unknown language
// is CodeUnsupportedLanguage. DecodeRunRequest never panics.
func DecodeRunRequest(data []byte) (*RunRequest, *Error) {
	obj, perr := decodeRequestObject(data)
	if perr != nil {
		return nil, perr
	}
	r := &RunRequest{}
	var present bool
	if r.ID, present, perr = decodeOptString(obj, "id", "id"); perr != nil {
		return nil, perr
	}
	if present && r.ID == "" {
		return nil, Errorf(CodeBadRequest, "id is empty: omit it or give one matching [A-Za-z0-9_-]{1,%d}", MaxIDLen)
	}
	if r.Code, _, perr = decodeOptString(obj, "code", "code"); perr != nil {
		return nil, perr
	}
	if r.Language, _, perr = decodeOptString(obj, "language", "language"); perr != nil {
		return nil, perr
	}
	if raw, ok := obj["timeout_ms"]; ok {
		if r.TimeoutMS, perr = decodeInt(raw, "timeout_ms"); perr != nil {
			return nil, perr
		}
	}
	if r.Env, perr = decodeStringMap(obj["env"], "env"); perr != nil {
		return nil, perr
	}
	if raw, ok := obj["sandbox"]; ok && jsonKind(raw) != "null" {
		if r.Sandbox, perr = decodeSandboxOptions(raw); perr != nil {
			return nil, perr
		}
	}
	if r.Stream, perr = decodeOptBool(obj, "stream", "stream"); perr != nil {
		return nil, perr
	}
	if perr := r.Validate(); perr != nil {
		return nil, perr
	}
	return r, nil
}

func decodeSandboxOptions(raw json.RawMessage) (*SandboxOptions, *Error) {
	if k := jsonKind(raw); k != "object" {
		return nil, Errorf(CodeBadRequest, "field sandbox: must be an object, got %s", k)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, Errorf(CodeBadRequest, "field sandbox: %s", err.Error())
	}
	var perr *Error
	s := &SandboxOptions{}
	if s.Backend, _, perr = decodeOptString(obj, "backend", "sandbox.backend"); perr != nil {
		return nil, perr
	}
	if s.Image, _, perr = decodeOptString(obj, "image", "sandbox.image"); perr != nil {
		return nil, perr
	}
	if s.Env, perr = decodeStringMap(obj["env"], "sandbox.env"); perr != nil {
		return nil, perr
	}
	if s.Variables, perr = decodeStringMap(obj["variables"], "sandbox.variables"); perr != nil {
		return nil, perr
	}
	return s, nil
}

// DecodeRunResult decodes a RunResult, as a client does with a reply. It does not validate.
func DecodeRunResult(data []byte) (*RunResult, error) {
	var r RunResult
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("protocol: decode run result: %w", err)
	}
	return &r, nil
}

// DecodeCloseResult decodes a CloseResult, as a client does with a reply. It does not validate.
func DecodeCloseResult(data []byte) (*CloseResult, error) {
	var r CloseResult
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("protocol: decode close result: %w", err)
	}
	return &r, nil
}

// Validate checks a request against the contract and returns the first problem found, or nil.
// Fields are checked in the order id, code, language, timeout_ms, env, sandbox, stream. An unknown
// language is CodeUnsupportedLanguage; every other problem is CodeBadRequest. The messages name
// the field and quote the offending value (shortened).
//
// The rules: id, when set, matches [A-Za-z0-9_-]{1,128}; code is non-empty and at most
// MaxCodeBytes bytes; language is one of Languages; timeout_ms is in [0, MaxTimeout]; env and
// sandbox.env have at most MaxEnvVars entries of at most MaxEnvBytes in all, POSIX names
// ([A-Za-z_][A-Za-z0-9_]*, at most MaxEnvKeyLen bytes) and values without NUL;
// sandbox.backend, when set, is one of Backends; sandbox.image, when set, has at most
// MaxImageLen characters and no whitespace or control character; sandbox.variables has at most
// MaxEnvVars entries, names matching [A-Za-z0-9_.-]{1,128} and values without NUL; stream
// needs an id.
func (r *RunRequest) Validate() *Error {
	if r == nil {
		return Errorf(CodeBadRequest, "request is missing")
	}
	if r.ID != "" && !isToken(r.ID) {
		return Errorf(CodeBadRequest, "id %q must match [A-Za-z0-9_-]{1,%d}", trimForMessage(r.ID), MaxIDLen)
	}
	if r.Code == "" {
		return Errorf(CodeBadRequest, "code is empty")
	}
	if len(r.Code) > MaxCodeBytes {
		return Errorf(CodeBadRequest, "code is %d bytes, the limit is %d", len(r.Code), MaxCodeBytes)
	}
	if r.Language == "" {
		return Errorf(CodeBadRequest, "language is missing; supported: %s", strings.Join(Languages, ", "))
	}
	if !knownLanguage(r.Language) {
		return Errorf(CodeUnsupportedLanguage, "language %q is not supported; supported: %s",
			trimForMessage(r.Language), strings.Join(Languages, ", "))
	}
	if r.TimeoutMS < 0 {
		return Errorf(CodeBadRequest, "timeout_ms is %d, it must not be negative", r.TimeoutMS)
	}
	if r.TimeoutMS > MaxTimeout.Milliseconds() {
		return Errorf(CodeBadRequest, "timeout_ms is %d, the limit is %d (%s)", r.TimeoutMS, MaxTimeout.Milliseconds(), MaxTimeout)
	}
	if perr := validateEnv(r.Env, "env"); perr != nil {
		return perr
	}
	if r.Sandbox != nil {
		if perr := r.Sandbox.validate(); perr != nil {
			return perr
		}
	}
	if r.Stream && r.ID == "" {
		return Errorf(CodeBadRequest, "stream is true but id is missing: the chunks go to <prefix>.stream.<tenant>.<conversation>.<id>, which the client subscribes to before it sends")
	}
	return nil
}

func (s *SandboxOptions) validate() *Error {
	if s.Backend != "" && !slices.Contains(Backends, s.Backend) {
		return Errorf(CodeBadRequest, "sandbox.backend %q is not one of %s", trimForMessage(s.Backend), strings.Join(Backends, ", "))
	}
	if s.Image != "" {
		if n := utf8.RuneCountInString(s.Image); n > MaxImageLen {
			return Errorf(CodeBadRequest, "sandbox.image is %d characters, the limit is %d", n, MaxImageLen)
		}
		if i := strings.IndexFunc(s.Image, badImageRune); i >= 0 {
			return Errorf(CodeBadRequest, "sandbox.image %q contains whitespace or a control character at byte %d", trimForMessage(s.Image), i)
		}
	}
	if perr := validateEnv(s.Env, "sandbox.env"); perr != nil {
		return perr
	}
	if len(s.Variables) > MaxEnvVars {
		return Errorf(CodeBadRequest, "sandbox.variables has %d entries, the limit is %d", len(s.Variables), MaxEnvVars)
	}
	for _, k := range sortedKeys(s.Variables) {
		if !isVariableName(k) {
			return Errorf(CodeBadRequest, "sandbox.variables key %q must match [A-Za-z0-9_.-]{1,%d}", trimForMessage(k), MaxIDLen)
		}
		if strings.IndexByte(s.Variables[k], 0) >= 0 {
			return Errorf(CodeBadRequest, "sandbox.variables[%q] contains a NUL byte", trimForMessage(k))
		}
	}
	return nil
}

// validateEnv checks an environment map; field is "env" or "sandbox.env".
func validateEnv(env map[string]string, field string) *Error {
	if len(env) > MaxEnvVars {
		return Errorf(CodeBadRequest, "%s has %d entries, the limit is %d", field, len(env), MaxEnvVars)
	}
	total := 0
	for _, k := range sortedKeys(env) {
		v := env[k]
		if !isEnvName(k) {
			return Errorf(CodeBadRequest, "%s key %q must match [A-Za-z_][A-Za-z0-9_]* (at most %d bytes)", field, trimForMessage(k), MaxEnvKeyLen)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return Errorf(CodeBadRequest, "%s[%q] contains a NUL byte", field, trimForMessage(k))
		}
		total += len(k) + len(v)
	}
	if total > MaxEnvBytes {
		return Errorf(CodeBadRequest, "%s is %d bytes (keys and values), the limit is %d", field, total, MaxEnvBytes)
	}
	return nil
}

// isEnvName reports whether s is a POSIX environment variable name of at most MaxEnvKeyLen bytes.
func isEnvName(s string) bool {
	return matches(s, MaxEnvKeyLen, func(i int, c byte) bool {
		return isAlnum(c) && !(i == 0 && c >= '0' && c <= '9') || c == '_'
	})
}

// isVariableName reports whether s matches [A-Za-z0-9_.-]{1,128}.
func isVariableName(s string) bool {
	return matches(s, MaxIDLen, func(_ int, c byte) bool { return isAlnum(c) || c == '_' || c == '-' || c == '.' })
}

// badImageRune reports the runes an image reference may not contain: Unicode white space and
// control characters. The JSON Schema spells the same set out as a character class.
func badImageRune(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }

func sortedKeys(m map[string]string) []string {
	if len(m) == 0 {
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// decodeRequestObject parses a request body as one JSON object.
func decodeRequestObject(data []byte) (map[string]json.RawMessage, *Error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, Errorf(CodeBadRequest, "request body is empty, want a JSON object")
	}
	// One decoding into the map when the body is an object (a file request's piece is half a
	// megabyte: every pass over it counts); anything else is decoded whole for its error.
	var obj map[string]json.RawMessage
	err := json.Unmarshal(data, &obj)
	if err == nil && obj != nil {
		return obj, nil
	}
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, Errorf(CodeBadRequest, "malformed JSON: %s (at byte %d)", se.Error(), se.Offset)
		}
		return nil, Errorf(CodeBadRequest, "malformed JSON: %s", err.Error())
	}
	return nil, Errorf(CodeBadRequest, "request must be a JSON object, got %s", jsonKind(raw))
}

// jsonKind names the kind of a syntactically valid JSON value.
func jsonKind(raw json.RawMessage) string {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// decodeOptString decodes obj[key] as a string; a missing or null field is "", false.
func decodeOptString(obj map[string]json.RawMessage, key, field string) (string, bool, *Error) {
	raw, ok := obj[key]
	if !ok {
		return "", false, nil
	}
	return decodeString(raw, field)
}

// decodeString decodes a string field; null is "", false.
func decodeString(raw json.RawMessage, field string) (string, bool, *Error) {
	switch k := jsonKind(raw); k {
	case "null":
		return "", false, nil
	case "string":
	default:
		return "", false, Errorf(CodeBadRequest, "field %s: must be a string, got %s", field, k)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false, Errorf(CodeBadRequest, "field %s: %s", field, err.Error())
	}
	return s, true, nil
}

// decodeStringMap decodes an object of strings; a missing, null or empty object is nil.
func decodeStringMap(raw json.RawMessage, field string) (map[string]string, *Error) {
	if raw == nil || jsonKind(raw) == "null" {
		return nil, nil
	}
	if k := jsonKind(raw); k != "object" {
		return nil, Errorf(CodeBadRequest, "field %s: must be an object of strings, got %s", field, k)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, Errorf(CodeBadRequest, "field %s: %s", field, err.Error())
	}
	if len(obj) == 0 {
		return nil, nil
	}
	if len(obj) > MaxEnvVars {
		// Checked here too, so a huge map is not decoded value by value for nothing.
		return nil, Errorf(CodeBadRequest, "%s has %d entries, the limit is %d", field, len(obj), MaxEnvVars)
	}
	m := make(map[string]string, len(obj))
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		raw := obj[k]
		if kind := jsonKind(raw); kind != "string" {
			return nil, Errorf(CodeBadRequest, "field %s[%q]: must be a string, got %s", field, trimForMessage(k), kind)
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, Errorf(CodeBadRequest, "field %s[%q]: %s", field, trimForMessage(k), err.Error())
		}
		m[k] = s
	}
	return m, nil
}

// decodeInt decodes an integer field. Any JSON number that denotes an integer is accepted
// (60000, 6e4, 60000.0), as JSON Schema's "integer" does; the value must fit in an int64.
// null is 0.
func decodeInt(raw json.RawMessage, field string) (int64, *Error) {
	switch k := jsonKind(raw); k {
	case "null":
		return 0, nil
	case "number":
	default:
		return 0, Errorf(CodeBadRequest, "field %s: must be an integer, got %s", field, k)
	}
	lit := string(bytes.TrimSpace(raw))
	n, ok, inRange := parseJSONInt(lit)
	if !ok {
		return 0, Errorf(CodeBadRequest, "field %s: must be an integer, got %s", field, trimForMessage(lit))
	}
	if !inRange {
		return 0, Errorf(CodeBadRequest, "field %s: %s is out of range", field, trimForMessage(lit))
	}
	return n, nil
}

// parseJSONInt parses a valid JSON number literal exactly. ok is false when it does not denote
// an integer; inRange is false when it does but |n| >= 10^18.
func parseJSONInt(lit string) (n int64, ok, inRange bool) {
	neg := strings.HasPrefix(lit, "-")
	if neg {
		lit = lit[1:]
	}
	mant, exp := lit, ""
	if i := strings.IndexAny(lit, "eE"); i >= 0 {
		mant, exp = lit[:i], lit[i+1:]
	}
	intPart, frac := mant, ""
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		intPart, frac = mant[:i], mant[i+1:]
	}
	digits := strings.TrimLeft(intPart+frac, "0")
	if digits == "" {
		return 0, true, true // zero, whatever the exponent
	}
	// value = digits × 10^e
	e := -int64(len(frac))
	trimmed := strings.TrimRight(digits, "0")
	e += int64(len(digits) - len(trimmed))
	digits = trimmed
	if exp != "" {
		expNeg := false
		switch exp[0] {
		case '-':
			expNeg = true
			exp = exp[1:]
		case '+':
			exp = exp[1:]
		}
		exp = strings.TrimLeft(exp, "0")
		if len(exp) > 15 {
			// |exponent| ≥ 10^15, far beyond the number of digits any input has: the value
			// is either huge or not an integer.
			return 0, !expNeg, false
		}
		x, _ := strconv.ParseInt("0"+exp, 10, 64)
		if expNeg {
			x = -x
		}
		e += x
	}
	if e < 0 {
		return 0, false, false
	}
	if int64(len(digits))+e > 18 {
		return 0, true, false
	}
	v, err := strconv.ParseInt(digits+strings.Repeat("0", int(e)), 10, 64)
	if err != nil {
		return 0, true, false
	}
	if neg {
		v = -v
	}
	return v, true, true
}
