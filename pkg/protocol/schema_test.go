package protocol_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

var (
	schemasOnce sync.Once
	schemas     map[string]*jsonschema.Schema
	schemasErr  error
)

// compiledSchemas compiles every embedded schema once.
func compiledSchemas(t testing.TB) map[string]*jsonschema.Schema {
	t.Helper()
	schemasOnce.Do(func() {
		schemas = map[string]*jsonschema.Schema{}
		for _, name := range protocol.SchemaNames {
			b, err := protocol.Schema(name)
			if err != nil {
				schemasErr = err
				return
			}
			doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
			if err != nil {
				schemasErr = err
				return
			}
			c := jsonschema.NewCompiler()
			url := protocol.SchemaBaseURL + name + ".json"
			if err := c.AddResource(url, doc); err != nil {
				schemasErr = err
				return
			}
			sch, err := c.Compile(url)
			if err != nil {
				schemasErr = err
				return
			}
			schemas[name] = sch
		}
	})
	if schemasErr != nil {
		t.Fatalf("compile schemas: %v", schemasErr)
	}
	return schemas
}

// validateJSON validates a JSON document against a named schema.
func validateJSON(t testing.TB, name string, data []byte) error {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("parse %s: %v", data, err)
	}
	return compiledSchemas(t)[name].Validate(doc)
}

// schemaDoc returns a schema as a generic JSON value.
func schemaDoc(t *testing.T, name string) map[string]any {
	t.Helper()
	b, err := protocol.Schema(name)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// at walks a path of object keys through a JSON value.
func at(t *testing.T, v any, path ...string) any {
	t.Helper()
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("at %v: got %T, want an object", path, v)
		}
		if v, ok = m[p]; !ok {
			t.Fatalf("at %v: no key %q", path, p)
		}
	}
	return v
}

func stringList(t *testing.T, v any) []string {
	t.Helper()
	var out []string
	for _, e := range v.([]any) {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

func TestSchemaLookup(t *testing.T) {
	compiledSchemas(t)
	for _, name := range protocol.SchemaNames {
		a, err := protocol.Schema(name)
		if err != nil {
			t.Fatal(err)
		}
		b, err := protocol.Schema(name + ".json")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("Schema(%q) and Schema(%q) differ", name, name+".json")
		}
		if got, want := at(t, schemaDoc(t, name), "$id"), protocol.SchemaBaseURL+name+".json"; got != want {
			t.Errorf("%s: got $id %v, want %s", name, got, want)
		}
		if got, want := at(t, schemaDoc(t, name), "$schema"), "https://json-schema.org/draft/2020-12/schema"; got != want {
			t.Errorf("%s: got $schema %v, want %s", name, got, want)
		}
	}
	for _, name := range []string{"nope", "", "../protocol.go", "schema/run_request.json"} {
		if _, err := protocol.Schema(name); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Schema(%q): got %v, want fs.ErrNotExist", name, err)
		}
	}
}

// TestSchemaEnums keeps the schemas' enums equal to the Go lists.
func TestSchemaEnums(t *testing.T) {
	var codes []string
	for _, c := range protocol.Codes {
		codes = append(codes, string(c))
	}
	langs := stringList(t, at(t, schemaDoc(t, "run_request"), "properties", "language", "enum"))
	if !reflect.DeepEqual(langs, protocol.Languages) {
		t.Errorf("run_request language enum: got %v, want %v", langs, protocol.Languages)
	}
	backends := stringList(t, at(t, schemaDoc(t, "run_request"), "properties", "sandbox", "properties", "backend", "enum"))
	if want := append(append([]string{}, protocol.Backends...), ""); !reflect.DeepEqual(backends, want) {
		t.Errorf("run_request sandbox.backend enum: got %q, want %q", backends, want)
	}
	for _, name := range []string{"run_result", "close_result"} {
		got := stringList(t, at(t, schemaDoc(t, name), "$defs", "error", "properties", "code", "enum"))
		if !reflect.DeepEqual(got, codes) {
			t.Errorf("%s error code enum: got %v, want %v", name, got, codes)
		}
		got = stringList(t, at(t, schemaDoc(t, name), "$defs", "sandbox", "properties", "backend", "enum"))
		if !reflect.DeepEqual(got, protocol.Backends) {
			t.Errorf("%s sandbox backend enum: got %v, want %v", name, got, protocol.Backends)
		}
	}
	// The result schemas carry the same definitions.
	a, b := at(t, schemaDoc(t, "run_result"), "$defs"), at(t, schemaDoc(t, "close_result"), "$defs")
	if !reflect.DeepEqual(a, b) {
		t.Errorf("run_result and close_result $defs differ:\n%v\n%v", a, b)
	}
}

// TestSchemaFields keeps each schema's properties equal to the JSON fields of its Go type, and
// its required list equal to the fields without omitempty.
func TestSchemaFields(t *testing.T) {
	tests := []struct {
		name, path string
		typ        reflect.Type
	}{
		{"run_request", "", reflect.TypeOf(protocol.RunRequest{})},
		{"run_request", "sandbox", reflect.TypeOf(protocol.SandboxOptions{})},
		{"run_result", "", reflect.TypeOf(protocol.RunResult{})},
		{"run_result", "$defs/sandbox", reflect.TypeOf(protocol.SandboxInfo{})},
		{"run_result", "$defs/error", reflect.TypeOf(protocol.Error{})},
		{"close_result", "", reflect.TypeOf(protocol.CloseResult{})},
		{"worker_info", "", reflect.TypeOf(protocol.WorkerInfo{})},
	}
	for _, tt := range tests {
		var node any = schemaDoc(t, tt.name)
		if tt.path != "" {
			parts := strings.Split(tt.path, "/")
			if parts[0] != "$defs" {
				parts = []string{"properties", parts[0]}
			}
			node = at(t, node, parts...)
		}
		var fields, required []string
		for i := 0; i < tt.typ.NumField(); i++ {
			tag := tt.typ.Field(i).Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			fields = append(fields, name)
			if opts != "omitempty" {
				required = append(required, name)
			}
		}
		var props []string
		for k := range at(t, node, "properties").(map[string]any) {
			props = append(props, k)
		}
		sort.Strings(fields)
		sort.Strings(props)
		if !reflect.DeepEqual(props, fields) {
			t.Errorf("%s %s: got properties %v, want %v", tt.name, tt.path, props, fields)
		}
		if tt.typ == reflect.TypeOf(protocol.RunRequest{}) || tt.typ == reflect.TypeOf(protocol.SandboxOptions{}) {
			continue // requests: required fields follow the rules, not omitempty
		}
		got := stringList(t, at(t, node, "required"))
		sort.Strings(got)
		sort.Strings(required)
		if !reflect.DeepEqual(got, required) {
			t.Errorf("%s %s: got required %v, want %v", tt.name, tt.path, got, required)
		}
	}
}

func TestSchemaValidMessages(t *testing.T) {
	sb := &protocol.SandboxInfo{ID: "sb-1", Backend: protocol.BackendDocker, Worker: "w-1", Created: true}
	tests := []struct {
		name   string
		schema string
		msg    any
	}{
		{"run request minimal", "run_request", protocol.RunRequest{Code: "print(1)", Language: protocol.LangPython}},
		{"run request full", "run_request", protocol.RunRequest{
			ID: "r-1", Code: "echo hi", Language: protocol.LangBash, TimeoutMS: 1000,
			Env: map[string]string{"A": "1"},
			Sandbox: &protocol.SandboxOptions{
				Backend: protocol.BackendDaytona, Image: "python:3.12-slim",
				Env: map[string]string{"_X": "y"}, Variables: map[string]string{"api.key": "k"},
			},
		}},
		{"run result", "run_result", protocol.RunResult{ID: "r-1", Output: "1\n", DurationMS: 20, Sandbox: sb}},
		{"run result zero", "run_result", protocol.RunResult{}},
		{"worker info", "worker_info", protocol.WorkerInfo{ID: "w-1", Backends: []string{protocol.BackendDocker}, Languages: protocol.Languages,
			Capacity: 32, Load: 3, Running: 1, PoolFree: 4, Version: "1.0.0", Started: time.Now(), Updated: time.Now()}},
		{"worker info without a pool", "worker_info", protocol.WorkerInfo{ID: "w-1", Backends: []string{protocol.BackendDaytona}, Languages: []string{}, Started: time.Now(), Updated: time.Now()}},
		{"run result timed out", "run_result", protocol.RunResult{ID: "r", ExitCode: 124, TimedOut: true, Truncated: true, DurationMS: 5}},
		{"run result with error", "run_result", protocol.ErrorResult("r-2", protocol.Errorf(protocol.CodeCapacity, "no worker has room"))},
		{"run result recreated", "run_result", protocol.RunResult{ID: "r", Sandbox: &protocol.SandboxInfo{ID: "s", Backend: protocol.BackendDaytona, Worker: "w", Created: true, Recreated: true}}},
		{"close result closed", "close_result", protocol.CloseResult{Closed: true, Sandbox: sb}},
		{"close result unknown", "close_result", protocol.CloseResult{}},
		{"close result error", "close_result", protocol.CloseResult{Error: protocol.Errorf(protocol.CodeBackendUnavailable, "docker is down")}},
	}
	for _, c := range protocol.Codes {
		tests = append(tests, struct {
			name   string
			schema string
			msg    any
		}{"error " + string(c), "run_result", protocol.ErrorResult("", &protocol.Error{Code: c, Message: "m"})})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := protocol.Encode(tt.msg)
			if err := validateJSON(t, tt.schema, data); err != nil {
				t.Errorf("%s: got %v, want valid", data, err)
			}
		})
	}
}

func TestSchemaInvalidMessages(t *testing.T) {
	tests := []struct {
		name, schema, doc string
	}{
		{"request missing code", "run_request", `{"language":"python"}`},
		{"request missing language", "run_request", `{"code":"x"}`},
		{"request empty code", "run_request", `{"code":"","language":"python"}`},
		{"request bad language", "run_request", `{"code":"x","language":"cobol"}`},
		{"request bad id", "run_request", `{"id":"a b","code":"x","language":"python"}`},
		{"request empty id", "run_request", `{"id":"","code":"x","language":"python"}`},
		{"request negative timeout", "run_request", `{"code":"x","language":"python","timeout_ms":-1}`},
		{"request fractional timeout", "run_request", `{"code":"x","language":"python","timeout_ms":1.5}`},
		{"request string timeout", "run_request", `{"code":"x","language":"python","timeout_ms":"5"}`},
		{"request bad env key", "run_request", `{"code":"x","language":"python","env":{"1A":"x"}}`},
		{"request NUL env value", "run_request", `{"code":"x","language":"python","env":{"A":"\u0000"}}`},
		{"request bad backend", "run_request", `{"code":"x","language":"python","sandbox":{"backend":"k8s"}}`},
		{"request bad image", "run_request", `{"code":"x","language":"python","sandbox":{"image":"a b"}}`},
		{"request bad variables key", "run_request", `{"code":"x","language":"python","sandbox":{"variables":{"a b":"x"}}}`},
		{"request not an object", "run_request", `["x"]`},
		{"result exit_code string", "run_result", `{"id":"r","output":"","exit_code":"0","timed_out":false,"truncated":false,"duration_ms":1}`},
		{"result missing output", "run_result", `{"id":"r","exit_code":0,"timed_out":false,"truncated":false,"duration_ms":1}`},
		{"result unknown field", "run_result", `{"id":"r","output":"","exit_code":0,"timed_out":false,"truncated":false,"duration_ms":1,"extra":1}`},
		{"result unknown error code", "run_result", `{"id":"r","output":"","exit_code":0,"timed_out":false,"truncated":false,"duration_ms":1,"error":{"code":"oops","message":"m"}}`},
		{"result error without message", "run_result", `{"id":"r","output":"","exit_code":0,"timed_out":false,"truncated":false,"duration_ms":1,"error":{"code":"busy"}}`},
		{"result sandbox missing worker", "run_result", `{"id":"r","output":"","exit_code":0,"timed_out":false,"truncated":false,"duration_ms":1,"sandbox":{"id":"s","backend":"docker","created":true,"recreated":false}}`},
		{"close missing closed", "close_result", `{"error":{"code":"internal","message":"m"}}`},
		{"close closed string", "close_result", `{"closed":"true"}`},
		{"worker info pool_free string", "worker_info", `{"id":"w","backends":["docker"],"languages":[],"capacity":1,"load":0,"running":0,"draining":false,"pool_free":"2","started":"2025-01-01T00:00:00Z","updated":"2025-01-01T00:00:00Z"}`},
		{"worker info missing load", "worker_info", `{"id":"w","backends":["docker"],"languages":[],"capacity":1,"running":0,"draining":false,"started":"2025-01-01T00:00:00Z","updated":"2025-01-01T00:00:00Z"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := validateJSON(t, tt.schema, []byte(tt.doc)); err == nil {
				t.Errorf("%s: got valid, want rejected", tt.doc)
			}
		})
	}
}

// TestSchemaAgreesWithDecode runs request bodies through both DecodeRunRequest and the
// run_request schema: they must agree, except on the byte limits the schema cannot express.
func TestSchemaAgreesWithDecode(t *testing.T) {
	for _, body := range requestCorpus() {
		checkSchemaAgreement(t, []byte(body))
	}
}

// TestSchemaImageCharacters checks that the schema's character class for sandbox.image is the
// set Validate rejects.
func TestSchemaImageCharacters(t *testing.T) {
	var runes []rune
	for r := rune(0); r < 0x3100; r++ {
		runes = append(runes, r)
	}
	runes = append(runes, 0xFEFF, 0xFFFD, 0xFFFF, 0x1F600, 0x10FFFF)
	for _, r := range runes {
		if r >= 0xD800 && r <= 0xDFFF {
			continue // surrogates cannot be in a Go string
		}
		rq := protocol.RunRequest{Code: "x", Language: protocol.LangPython,
			Sandbox: &protocol.SandboxOptions{Image: "img" + string(r) + ":1"}}
		goOK := rq.Validate() == nil
		schemaErr := validateJSON(t, "run_request", protocol.Encode(rq))
		if goOK != (schemaErr == nil) {
			t.Errorf("image with %U: got Validate ok=%v, schema ok=%v (%v), want them equal", r, goOK, schemaErr == nil, schemaErr)
		}
	}
}
