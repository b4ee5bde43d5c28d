package protocol_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// req builds a request body from a valid minimal one, with fields replaced or added.
func req(extra string) string {
	if extra == "" {
		return `{"code":"print(1)","language":"python"}`
	}
	return `{"code":"print(1)","language":"python",` + extra + `}`
}

// envJSON returns a JSON object of n variables V0..Vn-1, each with a value of size bytes.
func envJSON(n, size int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"V%d":%q`, i, strings.Repeat("x", size))
	}
	b.WriteString("}")
	return b.String()
}

func TestDecodeRunRequestBad(t *testing.T) {
	bad := protocol.CodeBadRequest
	tests := []struct {
		name string
		body string
		code protocol.Code
		msg  string // a substring of the message
	}{
		{"empty body", ``, bad, "empty"},
		{"blank body", " \n\t", bad, "empty"},
		{"malformed", `{"code":`, bad, "malformed JSON"},
		{"malformed token", `{code:"x"}`, bad, "malformed JSON"},
		{"trailing garbage", req("") + ` x`, bad, "malformed JSON"},
		{"two objects", req("") + req(""), bad, "malformed JSON"},
		{"array", `[{"code":"x","language":"python"}]`, bad, "must be a JSON object, got array"},
		{"string", `"print(1)"`, bad, "must be a JSON object, got string"},
		{"null", `null`, bad, "must be a JSON object, got null"},
		{"number", `42`, bad, "must be a JSON object, got number"},
		{"boolean", `true`, bad, "must be a JSON object, got boolean"},
		{"code not string", `{"code":1,"language":"python"}`, bad, "field code: must be a string, got number"},
		{"language not string", `{"code":"x","language":["python"]}`, bad, "field language: must be a string, got array"},
		{"id not string", req(`"id":7`), bad, "field id: must be a string"},
		{"timeout string", req(`"timeout_ms":"10"`), bad, "field timeout_ms: must be an integer, got string"},
		{"timeout fraction", req(`"timeout_ms":1.5`), bad, "field timeout_ms: must be an integer, got 1.5"},
		{"timeout tiny", req(`"timeout_ms":1e-3`), bad, "must be an integer"},
		{"timeout overflow", req(`"timeout_ms":1e30`), bad, "out of range"},
		{"timeout huge exponent", req(`"timeout_ms":1e999999999999999999999`), bad, "out of range"},
		{"timeout negative", req(`"timeout_ms":-1`), bad, "must not be negative"},
		{"timeout over max", req(`"timeout_ms":86400001`), bad, "the limit is 86400000"},
		{"env array", req(`"env":["A=1"]`), bad, "field env: must be an object of strings, got array"},
		{"env value number", req(`"env":{"A":1}`), bad, `field env["A"]: must be a string, got number`},
		{"env value null", req(`"env":{"A":null}`), bad, `field env["A"]: must be a string, got null`},
		{"sandbox string", req(`"sandbox":"docker"`), bad, "field sandbox: must be an object, got string"},
		{"sandbox backend number", req(`"sandbox":{"backend":1}`), bad, "field sandbox.backend: must be a string"},
		{"sandbox env bool", req(`"sandbox":{"env":{"A":true}}`), bad, `field sandbox.env["A"]: must be a string, got boolean`},
		{"variables array", req(`"sandbox":{"variables":[]}`), bad, "field sandbox.variables: must be an object"},
		{"id empty", req(`"id":""`), bad, "id is empty"},
		{"id space", req(`"id":"a b"`), bad, `id "a b" must match`},
		{"id dot", req(`"id":"a.b"`), bad, "must match"},
		{"id non-ascii", req(`"id":"é"`), bad, "must match"},
		{"id too long", req(`"id":"` + strings.Repeat("a", 129) + `"`), bad, "must match"},
		{"code missing", `{"language":"python"}`, bad, "code is empty"},
		{"code empty", `{"code":"","language":"python"}`, bad, "code is empty"},
		{"code null", `{"code":null,"language":"python"}`, bad, "code is empty"},
		{"code oversized", `{"code":"` + strings.Repeat("x", protocol.MaxCodeBytes+1) + `","language":"python"}`, bad,
			fmt.Sprintf("code is %d bytes, the limit is %d", protocol.MaxCodeBytes+1, protocol.MaxCodeBytes)},
		{"language missing", `{"code":"x"}`, bad, "language is missing"},
		{"language empty", `{"code":"x","language":""}`, bad, "language is missing"},
		{"language unknown", `{"code":"x","language":"cobol"}`, protocol.CodeUnsupportedLanguage, `"cobol" is not supported; supported: python, bash, javascript, typescript`},
		{"language case", `{"code":"x","language":"Python"}`, protocol.CodeUnsupportedLanguage, "not supported"},
		{"env key digit first", req(`"env":{"1A":"x"}`), bad, `env key "1A" must match`},
		{"env key dash", req(`"env":{"A-B":"x"}`), bad, `env key "A-B"`},
		{"env key equals", req(`"env":{"A=B":"x"}`), bad, `env key "A=B"`},
		{"env key empty", req(`"env":{"":"x"}`), bad, `env key ""`},
		{"env key too long", req(`"env":{"` + strings.Repeat("A", 257) + `":"x"}`), bad, "env key"},
		{"env NUL value", req(`"env":{"A":"x\u0000y"}`), bad, `env["A"] contains a NUL byte`},
		{"env too many", req(`"env":` + envJSON(protocol.MaxEnvVars+1, 1)), bad, "env has 257 entries, the limit is 256"},
		{"env too big", req(`"env":` + envJSON(2, 40<<10)), bad, "env is 81924 bytes"},
		{"backend unknown", req(`"sandbox":{"backend":"k8s"}`), bad, `sandbox.backend "k8s" is not one of docker, daytona`},
		{"backend case", req(`"sandbox":{"backend":"Docker"}`), bad, "sandbox.backend"},
		{"image space", req(`"sandbox":{"image":"python:3 12"}`), bad, "sandbox.image"},
		{"image newline", req(`"sandbox":{"image":"python\n"}`), bad, "sandbox.image"},
		{"image nbsp", req(`"sandbox":{"image":"python\u00a0"}`), bad, "sandbox.image"},
		{"image too long", req(`"sandbox":{"image":"` + strings.Repeat("i", 513) + `"}`), bad, "sandbox.image is 513 characters, the limit is 512"},
		{"sandbox env key", req(`"sandbox":{"env":{"A B":"x"}}`), bad, `sandbox.env key "A B"`},
		{"sandbox env NUL", req(`"sandbox":{"env":{"A":"\u0000"}}`), bad, `sandbox.env["A"] contains a NUL byte`},
		{"sandbox env too many", req(`"sandbox":{"env":` + envJSON(protocol.MaxEnvVars+1, 1) + `}`), bad, "sandbox.env has 257 entries"},
		{"variables key space", req(`"sandbox":{"variables":{"a b":"x"}}`), bad, `sandbox.variables key "a b" must match`},
		{"variables key empty", req(`"sandbox":{"variables":{"":"x"}}`), bad, "sandbox.variables key"},
		{"variables key too long", req(`"sandbox":{"variables":{"` + strings.Repeat("k", 129) + `":"x"}}`), bad, "sandbox.variables key"},
		{"variables NUL", req(`"sandbox":{"variables":{"k":"\u0000"}}`), bad, `sandbox.variables["k"] contains a NUL byte`},
		{"variables too many", req(`"sandbox":{"variables":` + envJSON(protocol.MaxEnvVars+1, 1) + `}`), bad, "sandbox.variables has 257 entries"},
		{"stream string", req(`"id":"r","stream":"true"`), bad, "field stream: must be a boolean, got string"},
		{"stream number", req(`"id":"r","stream":1`), bad, "field stream: must be a boolean, got number"},
		{"stream without id", req(`"stream":true`), bad, "stream is true but id is missing"},
		{"stream with a null id", req(`"id":null,"stream":true`), bad, "stream is true but id is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, perr := protocol.DecodeRunRequest([]byte(tt.body))
			if perr == nil {
				t.Fatalf("got request %+v, want error %s", r, tt.code)
			}
			if r != nil {
				t.Errorf("got request %+v with error, want nil", r)
			}
			if perr.Code != tt.code {
				t.Errorf("got code %s (%q), want %s", perr.Code, perr.Message, tt.code)
			}
			if !strings.Contains(perr.Message, tt.msg) {
				t.Errorf("got message %q, want it to contain %q", perr.Message, tt.msg)
			}
			if len(perr.Message) > 300 {
				t.Errorf("got a %d-byte message, want user values shortened: %q", len(perr.Message), perr.Message)
			}
		})
	}
}

func TestDecodeRunRequestGood(t *testing.T) {
	tests := []struct {
		name string
		body string
		want protocol.RunRequest
	}{
		{"minimal", `{"code":"print(1)","language":"python"}`,
			protocol.RunRequest{Code: "print(1)", Language: "python"}},
		{"full", `{
			"id": "req-1_A",
			"code": "echo $A",
			"language": "bash",
			"timeout_ms": 5000,
			"env": {"A": "1", "_b2": ""},
			"sandbox": {
				"backend": "daytona",
				"image": "ghcr.io/codefleet/python:3.12@sha256:abc",
				"env": {"PATH": "/usr/bin"},
				"variables": {"daytona.api_key": "k-1"}
			}
		}`, protocol.RunRequest{
			ID: "req-1_A", Code: "echo $A", Language: "bash", TimeoutMS: 5000,
			Env: map[string]string{"A": "1", "_b2": ""},
			Sandbox: &protocol.SandboxOptions{
				Backend:   "daytona",
				Image:     "ghcr.io/codefleet/python:3.12@sha256:abc",
				Env:       map[string]string{"PATH": "/usr/bin"},
				Variables: map[string]string{"daytona.api_key": "k-1"},
			},
		}},
		{"unknown fields ignored, names case-sensitive",
			`{"code":"x","language":"javascript","Code":5,"LANGUAGE":"cobol","extra":{"a":[1]}}`,
			protocol.RunRequest{Code: "x", Language: "javascript"}},
		{"nulls are absent",
			`{"id":null,"code":"x","language":"typescript","timeout_ms":null,"env":null,"sandbox":null}`,
			protocol.RunRequest{Code: "x", Language: "typescript"}},
		{"empty objects", `{"code":"x","language":"python","env":{},"sandbox":{"env":{},"variables":{}}}`,
			protocol.RunRequest{Code: "x", Language: "python", Sandbox: &protocol.SandboxOptions{}}},
		{"empty backend and image", `{"code":"x","language":"python","sandbox":{"backend":"","image":""}}`,
			protocol.RunRequest{Code: "x", Language: "python", Sandbox: &protocol.SandboxOptions{}}},
		{"timeout exponent", req(`"timeout_ms":6e4`),
			protocol.RunRequest{Code: "print(1)", Language: "python", TimeoutMS: 60000}},
		{"timeout decimal", req(`"timeout_ms":60000.000`),
			protocol.RunRequest{Code: "print(1)", Language: "python", TimeoutMS: 60000}},
		{"timeout max", req(`"timeout_ms":86400000`),
			protocol.RunRequest{Code: "print(1)", Language: "python", TimeoutMS: 86400000}},
		{"timeout zero", req(`"timeout_ms":-0.0e7`),
			protocol.RunRequest{Code: "print(1)", Language: "python"}},
		{"id max length", req(`"id":"` + strings.Repeat("z", 128) + `"`),
			protocol.RunRequest{ID: strings.Repeat("z", 128), Code: "print(1)", Language: "python"}},
		{"code max size", `{"code":"` + strings.Repeat("x", protocol.MaxCodeBytes) + `","language":"python"}`,
			protocol.RunRequest{Code: strings.Repeat("x", protocol.MaxCodeBytes), Language: "python"}},
		{"env at limits", req(`"env":` + envJSON(protocol.MaxEnvVars, 200)),
			protocol.RunRequest{Code: "print(1)", Language: "python", Env: envMap(protocol.MaxEnvVars, 200)}},
		{"duplicate key, last wins", `{"code":1,"code":"y","language":"bash"}`,
			protocol.RunRequest{Code: "y", Language: "bash"}},
		{"whitespace around", " \n" + req("") + "\n ",
			protocol.RunRequest{Code: "print(1)", Language: "python"}},
		{"streamed", req(`"id":"r-7","stream":true`),
			protocol.RunRequest{ID: "r-7", Code: "print(1)", Language: "python", Stream: true}},
		{"stream false or null needs no id", req(`"stream":false,"Stream":true`),
			protocol.RunRequest{Code: "print(1)", Language: "python"}},
		{"stream null", req(`"stream":null`),
			protocol.RunRequest{Code: "print(1)", Language: "python"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, perr := protocol.DecodeRunRequest([]byte(tt.body))
			if perr != nil {
				t.Fatalf("got error %v, want none", perr)
			}
			if !reflect.DeepEqual(*r, tt.want) {
				t.Errorf("got %s, want %s", protocol.Encode(r), protocol.Encode(tt.want))
			}
		})
	}
}

func envMap(n, size int) map[string]string {
	m := make(map[string]string, n)
	for i := 0; i < n; i++ {
		m[fmt.Sprintf("V%d", i)] = strings.Repeat("x", size)
	}
	return m
}

func TestValidateStruct(t *testing.T) {
	ok := protocol.RunRequest{Code: "x", Language: protocol.LangPython}
	if perr := ok.Validate(); perr != nil {
		t.Fatalf("got %v, want nil", perr)
	}
	var nilReq *protocol.RunRequest
	if perr := nilReq.Validate(); perr == nil || perr.Code != protocol.CodeBadRequest {
		t.Errorf("nil request: got %v, want bad_request", perr)
	}
	tooBig := ok
	tooBig.Env = map[string]string{"A": strings.Repeat("v", protocol.MaxEnvBytes)}
	if perr := tooBig.Validate(); perr == nil || !strings.Contains(perr.Message, "env is 65537 bytes") {
		t.Errorf("oversized env: got %v, want env is 65537 bytes", perr)
	}
	exact := ok
	exact.Env = map[string]string{"A": strings.Repeat("v", protocol.MaxEnvBytes-1)}
	if perr := exact.Validate(); perr != nil {
		t.Errorf("env of exactly MaxEnvBytes: got %v, want nil", perr)
	}
	longValue := ok
	longValue.Language = strings.Repeat("l", 1000)
	perr := longValue.Validate()
	if perr == nil || perr.Code != protocol.CodeUnsupportedLanguage {
		t.Fatalf("got %v, want unsupported_language", perr)
	}
	if len(perr.Message) > 200 {
		t.Errorf("got a %d-byte message, want the value shortened", len(perr.Message))
	}
}

func TestDecodeResults(t *testing.T) {
	rr := protocol.RunResult{
		ID: "r1", Output: "hi\n", ExitCode: 124, TimedOut: true, Truncated: true, DurationMS: 12,
		Sandbox: &protocol.SandboxInfo{ID: "sb", Backend: protocol.BackendDocker, Worker: "w1", Created: true},
		Stream:  &protocol.StreamInfo{Subject: "codefleet.stream.default.c.r1", Chunks: 3, DroppedBytes: 7},
		Error:   &protocol.Error{Code: protocol.CodeBusy, Message: "queue full"},
	}
	got, err := protocol.DecodeRunResult(protocol.Encode(rr))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, rr) {
		t.Errorf("got %+v, want %+v", *got, rr)
	}
	cr := protocol.CloseResult{Closed: true, Sandbox: &protocol.SandboxInfo{ID: "sb", Backend: protocol.BackendDaytona, Worker: "w2"}}
	gotC, err := protocol.DecodeCloseResult(protocol.Encode(cr))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*gotC, cr) {
		t.Errorf("got %+v, want %+v", *gotC, cr)
	}
	chunk := protocol.OutputChunk{ID: "r1", Seq: 2, Data: "é\n", Dropped: 1915167}
	gotChunk, err := protocol.DecodeOutputChunk(protocol.Encode(chunk))
	if err != nil || !reflect.DeepEqual(*gotChunk, chunk) {
		t.Errorf("got %+v, %v, want %+v", gotChunk, err, chunk)
	}
	if got, want := string(protocol.Encode(protocol.OutputChunk{ID: "r1", Seq: 1, Data: "x"})), `{"id":"r1","seq":1,"data":"x"}`; got != want {
		t.Errorf("got %s, want %s (dropped left out when 0)", got, want)
	}
	if _, err := protocol.DecodeOutputChunk([]byte(`{"id":"r1","seq":"1"}`)); err == nil {
		t.Errorf("got nil, want an error")
	}
	var se *json.SyntaxError
	if _, err := protocol.DecodeRunResult([]byte("{")); err == nil || !errors.As(err, &se) {
		t.Errorf("got %v, want a wrapped *json.SyntaxError", err)
	}
	if _, err := protocol.DecodeCloseResult([]byte(`{"closed":"yes"}`)); err == nil {
		t.Errorf("got nil, want an error")
	}
}
