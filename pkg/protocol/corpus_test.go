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
		`{"id":"r-7","code":"x","language":"python","stream":true}`,
		`{"id":"r-7","code":"x","language":"python","stream":false}`,
		`{"id":"r-7","code":"x","language":"python","stream":null}`,
		`{"code":"x","language":"python","stream":false}`,
		`{"code":"x","language":"python","stream":true}`,
		`{"id":null,"code":"x","language":"python","stream":true}`,
		`{"id":"","code":"x","language":"python","stream":true}`,
		`{"id":"r-7","code":"x","language":"python","stream":"true"}`,
		`{"id":"r-7","code":"x","language":"python","stream":1}`,
	}
}

// fileRequestCorpus returns file request bodies, valid and not, shared by the fuzz seeds and
// the schema agreement test.
func fileRequestCorpus() []string {
	sum := strings.Repeat("0123456789abcdef", 4)
	return []string{
		`{"op":"list"}`,
		`{"op":"list","path":"","recursive":true}`,
		`{"id":"f-1","op":"put","path":"notes/hello.txt","data":"aGVsbG8sIGZpbGVzCg==","sha256":"` + sum + `","mode":"0644"}`,
		`{"op":"put","path":"/workspace/data/t.csv","data":"aWQsbmFtZQo=","offset":0,"size":20,"upload":"u-1","more":true}`,
		`{"op":"put","path":"data/t.csv","data":"Mixib2IK","offset":14,"size":20,"upload":"u-1","sha256":"` + strings.ToUpper(sum) + `"}`,
		`{"op":"put","path":"a","data":"","mode":"755"}`,
		`{"op":"put","path":"a","data":null,"upload":null,"more":null,"sha256":null,"mode":null,"offset":null,"size":null}`,
		`{"op":"put","path":"a","mode":"0"}`,
		`{"op":"put","path":"a","mode":"000000777"}`,
		`{"op":"get","path":"big.bin","offset":524288,"length":4096}`,
		`{"op":"get","path":"../../etc/passwd"}`,
		`{"op":"get","path":"a","upload":"not a token","mode":"xyz","sha256":"no"}`,
		`{"op":"get","path":"a","offset":1e3,"length":2.0E1}`,
		`{"op":"delete","path":"d","recursive":true,"sandbox":{"backend":"docker","env":{"A":"1"}}}`,
		`{"op":"list","sandbox":null,"extra":{"x":[1]},"Op":"get"}`,
		`{"op":"get","op":"list"}`,
		``,
		`{`,
		`[]`,
		`null`,
		`"list"`,
		`{"op":"list"} {}`,
		`{}`,
		`{"op":""}`,
		`{"op":null}`,
		`{"op":"PUT","path":"a"}`,
		`{"op":"move","path":"a"}`,
		`{"op":1}`,
		`{"id":"","op":"list"}`,
		`{"id":"a b","op":"list"}`,
		`{"id":7,"op":"list"}`,
		`{"op":"get"}`,
		`{"op":"get","path":""}`,
		`{"op":"delete","path":null}`,
		`{"op":"put","path":3}`,
		`{"op":"get","path":"a\u0000b"}`,
		`{"op":"get","path":"` + strings.Repeat("p", protocol.MaxPathBytes+1) + `"}`,
		`{"op":"get","path":"a","offset":-1}`,
		`{"op":"get","path":"a","length":-5}`,
		`{"op":"put","path":"a","size":-1}`,
		`{"op":"get","path":"a","offset":"1"}`,
		`{"op":"get","path":"a","offset":1.5}`,
		`{"op":"get","path":"a","offset":1e18}`,
		`{"op":"get","path":"a","offset":999999999999999999}`,
		`{"op":"put","path":"a","data":"not base64!"}`,
		`{"op":"put","path":"a","data":"eA"}`,
		`{"op":"put","path":"a","data":"eA=="}`,
		`{"op":"put","path":"a","data":"-_8="}`,
		`{"op":"put","path":"a","data":["eA=="]}`,
		`{"op":"put","path":"a","more":"yes","upload":"u"}`,
		`{"op":"list","recursive":1}`,
		`{"op":"put","path":"a","upload":"u 1"}`,
		`{"op":"put","path":"a","upload":"` + strings.Repeat("u", 129) + `"}`,
		`{"op":"put","path":"a","more":true}`,
		`{"op":"put","path":"a","upload":"","more":true}`,
		`{"op":"put","path":"a","offset":1}`,
		`{"op":"put","path":"a","offset":1,"upload":"u"}`,
		`{"op":"put","path":"a","sha256":"abc"}`,
		`{"op":"put","path":"a","sha256":"` + strings.Repeat("g", 64) + `"}`,
		`{"op":"put","path":"a","sha256":""}`,
		`{"op":"put","path":"a","mode":"1000"}`,
		`{"op":"put","path":"a","mode":"0o644"}`,
		`{"op":"put","path":"a","mode":"-1"}`,
		`{"op":"put","path":"a","mode":"+644"}`,
		`{"op":"put","path":"a","mode":"64 4"}`,
		`{"op":"list","sandbox":"docker"}`,
		`{"op":"list","sandbox":{"backend":"k8s"}}`,
		`{"op":"list","sandbox":{"image":"a b"}}`,
		`{"op":"list","sandbox":{"variables":{"k":"\u0000"}}}`,
		"{\"op\":\"get\",\"path\":\"\xff\xfe\"}",
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

// checkFileSchemaAgreement asserts that DecodeFileRequest and the file_request schema agree on
// a body that is one JSON value, but for what the schema cannot state: the decoder refuses a
// path over MaxPathBytes bytes of fewer characters, and accepts line breaks in data (Go's
// base64 decoder skips them), which the schema's standard base64 does not have.
func checkFileSchemaAgreement(t testing.TB, body []byte) {
	t.Helper()
	if bigExponent.Match(body) || !isOneJSONValue(body) {
		return
	}
	_, perr := protocol.DecodeFileRequest(body)
	schemaErr := validateJSON(t, "file_request", body)
	switch {
	case perr == nil && schemaErr != nil:
		var v struct {
			Data string `json:"data"`
		}
		if json.Unmarshal(body, &v) == nil && strings.ContainsAny(v.Data, "\r\n") {
			return
		}
		t.Errorf("%q: DecodeFileRequest accepts, the schema rejects: %v", trim(body), schemaErr)
	case perr != nil && schemaErr == nil:
		if strings.HasPrefix(perr.Message, "path is ") && strings.Contains(perr.Message, " bytes, the limit is ") {
			return
		}
		t.Errorf("%q: the schema accepts, DecodeFileRequest rejects: %v", trim(body), perr)
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
