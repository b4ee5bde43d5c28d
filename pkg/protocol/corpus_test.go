package protocol_test

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// requestCorpus returns request bodies, valid and not, shared by the fuzz seeds and the
// schema agreement test.
func requestCorpus() []string {
	return []string{
		`{"code":"print(1)","language":"python"}`,
		`{"id":"r-1","code":"echo $A","language":"bash","timeout_ms":5000,"env":{"A":"1"},"sandbox":{"backend":"docker","image":"python:3.12","env":{"B":"2"},"variables":{"k.v":"x"}}}`,
		`{"code":"console.log(1)","language":"javascript","timeout_ms":6e4,"sandbox":{}}`,
		`{"code":"let x: number = 1","language":"typescript","id":null,"env":null,"sandbox":null}`,
		`{"code":"x","language":"python","sandbox":{"backend":"","image":""}}`,
		`{"code":"x","language":"python","timeout_ms":60000.0,"extra":[1,2,{"a":null}]}`,
		`{"code":"x","language":"python","Code":1}`,
		`{"code":1,"code":"x","language":"bash"}`,
		``,
		`{`,
		`[]`,
		`null`,
		`"x"`,
		`{"code":"x","language":"python"} {}`,
		`{"code":"","language":"python"}`,
		`{"code":null,"language":"python"}`,
		`{"language":"python"}`,
		`{"code":"x"}`,
		`{"code":"x","language":"cobol"}`,
		`{"code":"x","language":"Python"}`,
		`{"id":"","code":"x","language":"python"}`,
		`{"id":"a b","code":"x","language":"python"}`,
		`{"id":"` + strings.Repeat("a", 129) + `","code":"x","language":"python"}`,
		`{"code":"x","language":"python","timeout_ms":-1}`,
		`{"code":"x","language":"python","timeout_ms":1.5}`,
		`{"code":"x","language":"python","timeout_ms":86400001}`,
		`{"code":"x","language":"python","timeout_ms":"1"}`,
		`{"code":"x","language":"python","env":{"1A":"x"}}`,
		`{"code":"x","language":"python","env":{"A":"\u0000"}}`,
		`{"code":"x","language":"python","env":{"A":1}}`,
		`{"code":"x","language":"python","env":[]}`,
		`{"code":"x","language":"python","sandbox":"docker"}`,
		`{"code":"x","language":"python","sandbox":{"backend":"k8s"}}`,
		`{"code":"x","language":"python","sandbox":{"backend":null,"image":null,"env":null,"variables":null}}`,
		`{"code":"x","language":"python","sandbox":{"image":"a\tb"}}`,
		`{"code":"x","language":"python","sandbox":{"image":"` + strings.Repeat("i", 513) + `"}}`,
		`{"code":"x","language":"python","sandbox":{"env":{"A B":"x"}}}`,
		`{"code":"x","language":"python","sandbox":{"variables":{"a b":"x"}}}`,
		`{"code":"x","language":"python","sandbox":{"variables":{"k":"\u0000"}}}`,
		`{"code":"x","language":"python","sandbox":{"variables":{"k":5}}}`,
		"{\"code\":\"\xff\xfe\",\"language\":\"python\",\"env\":{\"A\":\"\xc3\"}}",
	}
}

// bigExponent matches number literals with an exponent the schema validator, which parses
// numbers exactly, would take too long on.
var bigExponent = regexp.MustCompile(`[eE][+-]?0*[0-9]{4,}`)

// checkSchemaAgreement asserts that DecodeRunRequest and the run_request schema agree on a
// body that is one JSON value. DecodeRunRequest may reject what the schema accepts only for
// the byte limits a schema cannot express (code bytes, env total bytes).
func checkSchemaAgreement(t testing.TB, body []byte) {
	t.Helper()
	if bigExponent.Match(body) || !isOneJSONValue(body) {
		return
	}
	_, perr := protocol.DecodeRunRequest(body)
	schemaErr := validateJSON(t, "run_request", body)
	switch {
	case perr == nil && schemaErr != nil:
		t.Errorf("%q: DecodeRunRequest accepts, the schema rejects: %v", trim(body), schemaErr)
	case perr != nil && schemaErr == nil:
		if strings.HasPrefix(perr.Message, "code is ") && strings.Contains(perr.Message, " bytes, the limit is ") ||
			strings.Contains(perr.Message, "bytes (keys and values)") {
			return
		}
		t.Errorf("%q: the schema accepts, DecodeRunRequest rejects: %v", trim(body), perr)
	}
}

func isOneJSONValue(b []byte) bool {
	return len(bytes.TrimSpace(b)) > 0 && json.Valid(b)
}

func trim(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
