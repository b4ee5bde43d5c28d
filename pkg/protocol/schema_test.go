package protocol_test

import (
	"bytes"
	"encoding/base64"
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
	for _, name := range resultSchemas {
		got := stringList(t, at(t, schemaDoc(t, name), "$defs", "error", "properties", "code", "enum"))
		if !reflect.DeepEqual(got, codes) {
			t.Errorf("%s error code enum: got %v, want %v", name, got, codes)
		}
		got = stringList(t, at(t, schemaDoc(t, name), "$defs", "sandbox", "properties", "backend", "enum"))
		if !reflect.DeepEqual(got, protocol.Backends) {
			t.Errorf("%s sandbox backend enum: got %v, want %v", name, got, protocol.Backends)
		}
		// The result schemas carry the same definitions.
		if a, b := at(t, schemaDoc(t, "run_result"), "$defs"), at(t, schemaDoc(t, name), "$defs"); !reflect.DeepEqual(a, b) {
			t.Errorf("run_result and %s $defs differ:\n%v\n%v", name, a, b)
		}
	}
	for _, name := range []string{"file_request", "file_result"} {
		if got := stringList(t, at(t, schemaDoc(t, name), "properties", "op", "enum")); !reflect.DeepEqual(got, protocol.FileOps) {
			t.Errorf("%s op enum: got %v, want %v", name, got, protocol.FileOps)
		}
	}
	types := []string{protocol.FileTypeFile, protocol.FileTypeDir, protocol.FileTypeSymlink, protocol.FileTypeOther}
	if got := stringList(t, at(t, schemaDoc(t, "file_result"), "properties", "entries", "items", "properties", "type", "enum")); !reflect.DeepEqual(got, types) {
		t.Errorf("file_result entry type enum: got %v, want %v", got, types)
	}
	// The requests share the sandbox options and their definitions.
	if a, b := at(t, schemaDoc(t, "run_request"), "properties", "sandbox"), at(t, schemaDoc(t, "file_request"), "properties", "sandbox"); !reflect.DeepEqual(a, b) {
		t.Errorf("run_request and file_request sandbox differ:\n%v\n%v", a, b)
	}
	if a, b := at(t, schemaDoc(t, "run_request"), "$defs"), at(t, schemaDoc(t, "file_request"), "$defs"); !reflect.DeepEqual(a, b) {
		t.Errorf("run_request and file_request $defs differ:\n%v\n%v", a, b)
	}
}

// resultSchemas are the schemas of the replies: each carries the error and sandbox definitions.
var resultSchemas = []string{"run_result", "close_result", "file_result"}

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
		{"run_result", "stream", reflect.TypeOf(protocol.StreamInfo{})},
		{"close_result", "", reflect.TypeOf(protocol.CloseResult{})},
		{"output_chunk", "", reflect.TypeOf(protocol.OutputChunk{})},
		{"file_request", "", reflect.TypeOf(protocol.FileRequest{})},
		{"file_request", "sandbox", reflect.TypeOf(protocol.SandboxOptions{})},
		{"file_result", "", reflect.TypeOf(protocol.FileResult{})},
		{"file_result", "entries/items", reflect.TypeOf(protocol.FileEntry{})},
		{"file_result", "$defs/sandbox", reflect.TypeOf(protocol.SandboxInfo{})},
		{"file_result", "$defs/error", reflect.TypeOf(protocol.Error{})},
		{"worker_info", "", reflect.TypeOf(protocol.WorkerInfo{})},
	}
	for _, tt := range tests {
		var node any = schemaDoc(t, tt.name)
		if tt.path != "" {
			// "$defs/x" is a definition, "a/items" the items of property a, "a" property a.
			parts := strings.Split(tt.path, "/")
			if parts[0] != "$defs" {
				parts = append([]string{"properties"}, parts...)
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
		switch tt.typ {
		case reflect.TypeOf(protocol.RunRequest{}), reflect.TypeOf(protocol.FileRequest{}), reflect.TypeOf(protocol.SandboxOptions{}):
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
	now := time.Now().UTC()
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
		{"run request streamed", "run_request", protocol.RunRequest{ID: "r-7", Code: "print(1)", Language: protocol.LangPython, Stream: true}},
		{"run result streamed", "run_result", protocol.RunResult{ID: "r-7", Output: "1\n", DurationMS: 3, Sandbox: sb,
			Stream: &protocol.StreamInfo{Subject: "codefleet.stream.default.c.r-7", Chunks: 1}}},
		{"run result streamed with drops", "run_result", protocol.RunResult{ID: "r-8", Truncated: true,
			Stream: &protocol.StreamInfo{Subject: "codefleet.stream.default.c.r-8", Chunks: 5, DroppedBytes: 1915167}}},
		{"run result streamed, no output", "run_result", protocol.RunResult{ID: "r-9", Stream: &protocol.StreamInfo{Subject: "s"}}},
		{"chunk", "output_chunk", protocol.OutputChunk{ID: "r-7", Seq: 1, Data: "fetching\n"}},
		{"chunk at its limit", "output_chunk", protocol.OutputChunk{ID: "r-7", Seq: 2, Data: strings.Repeat("é", protocol.StreamChunkBytes/2)}},
		{"chunk after drops", "output_chunk", protocol.OutputChunk{ID: "r-8", Seq: 2, Data: "1861\n", Dropped: 1915167}},
		{"last chunk, only drops", "output_chunk", protocol.OutputChunk{ID: "r-8", Seq: 6, Dropped: 10}},
		{"file list minimal", "file_request", protocol.FileRequest{Op: protocol.FileOpList}},
		{"file put", "file_request", protocol.FileRequest{ID: "f-1", Op: protocol.FileOpPut, Path: "notes/a.txt", Data: []byte("hello"),
			SHA256: strings.Repeat("ab", 32), Mode: "0755"}},
		{"file put piece", "file_request", protocol.FileRequest{Op: protocol.FileOpPut, Path: "/workspace/big.bin", Upload: "u-1", Offset: 1 << 20,
			Size: 3 << 20, More: true, Data: make([]byte, 1000)}},
		{"file get", "file_request", protocol.FileRequest{Op: protocol.FileOpGet, Path: "big.bin", Offset: 1 << 20, Length: 4096}},
		{"file delete", "file_request", protocol.FileRequest{Op: protocol.FileOpDelete, Path: "tmp", Recursive: true,
			Sandbox: &protocol.SandboxOptions{Backend: protocol.BackendDocker, Env: map[string]string{"A": "1"}}}},
		{"file result put", "file_result", protocol.FileResult{ID: "f-1", Op: protocol.FileOpPut, Path: "a.txt", Size: 5,
			SHA256: strings.Repeat("0f", 32), Mode: "0644", ModTime: &now, Sandbox: sb}},
		{"file result get", "file_result", protocol.FileResult{ID: "f-2", Op: protocol.FileOpGet, Path: "a.txt", Size: 1 << 30,
			Data: make([]byte, protocol.FileChunkBytes), Offset: 1 << 20, Mode: "4755", ModTime: &now}},
		{"file result get, empty file", "file_result", protocol.FileResult{ID: "f-3", Op: protocol.FileOpGet, Path: "empty", EOF: true,
			SHA256: strings.Repeat("e3", 32), Mode: "0600", ModTime: &now}},
		{"file result list", "file_result", protocol.FileResult{ID: "f-4", Op: protocol.FileOpList, Truncated: true, Entries: []protocol.FileEntry{
			{Path: "d", Type: protocol.FileTypeDir, Size: 4096, Mode: "0755", ModTime: now},
			{Path: "d/l", Type: protocol.FileTypeSymlink, Mode: "0777", ModTime: now},
			{Path: "d/f", Type: protocol.FileTypeFile, Size: 3, Mode: "0644", ModTime: now},
			{Path: "d/p", Type: protocol.FileTypeOther, Mode: "0600", ModTime: now},
		}}},
		{"file result delete", "file_result", protocol.FileResult{ID: "f-5", Op: protocol.FileOpDelete, Path: "d", Deleted: true}},
		{"file result zero", "file_result", protocol.FileResult{}},
		{"file result error", "file_result", protocol.FileErrorResult("f-6", protocol.FileOpGet, protocol.Errorf(protocol.CodePathRefused, "leak.txt is a symbolic link"))},
		{"file result undecodable", "file_result", protocol.FileErrorResult("x", "", protocol.Errorf(protocol.CodeBadRequest, "malformed JSON"))},
	}
	for _, c := range protocol.Codes {
		for _, name := range resultSchemas {
			var msg any = protocol.ErrorResult("", &protocol.Error{Code: c, Message: "m"})
			switch name {
			case "close_result":
				msg = protocol.CloseResult{Error: &protocol.Error{Code: c, Message: "m"}}
			case "file_result":
				msg = protocol.FileErrorResult("", "", &protocol.Error{Code: c, Message: "m"})
			}
			tests = append(tests, struct {
				name   string
				schema string
				msg    any
			}{name + " error " + string(c), name, msg})
		}
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
		{"request stream without id", "run_request", `{"code":"x","language":"python","stream":true}`},
		{"request stream with a null id", "run_request", `{"id":null,"code":"x","language":"python","stream":true}`},
		{"request stream string", "run_request", `{"id":"r","code":"x","language":"python","stream":"true"}`},
		{"result stream without chunks", "run_result", `{"id":"r","output":"","exit_code":0,"timed_out":false,"truncated":false,"duration_ms":1,"stream":{"subject":"s"}}`},
		{"result stream negative drops", "run_result", `{"id":"r","output":"","exit_code":0,"timed_out":false,"truncated":false,"duration_ms":1,"stream":{"subject":"s","chunks":1,"dropped_bytes":-1}}`},
		{"result stream unknown field", "run_result", `{"id":"r","output":"","exit_code":0,"timed_out":false,"truncated":false,"duration_ms":1,"stream":{"subject":"s","chunks":1,"lost":0}}`},
		{"chunk seq 0", "output_chunk", `{"id":"r","seq":0,"data":"x"}`},
		{"chunk without data", "output_chunk", `{"id":"r","seq":1}`},
		{"chunk without id", "output_chunk", `{"seq":1,"data":"x"}`},
		{"chunk bad id", "output_chunk", `{"id":"r 1","seq":1,"data":"x"}`},
		{"chunk too long", "output_chunk", `{"id":"r","seq":1,"data":"` + strings.Repeat("x", protocol.StreamChunkBytes+1) + `"}`},
		{"chunk unknown field", "output_chunk", `{"id":"r","seq":1,"data":"x","stderr":true}`},
		{"file request missing op", "file_request", `{"path":"a"}`},
		{"file request bad op", "file_request", `{"op":"move","path":"a"}`},
		{"file get without path", "file_request", `{"op":"get"}`},
		{"file delete empty path", "file_request", `{"op":"delete","path":""}`},
		{"file put null path", "file_request", `{"op":"put","path":null,"data":"eA=="}`},
		{"file path NUL", "file_request", `{"op":"get","path":"a\u0000b"}`},
		{"file path too long", "file_request", `{"op":"get","path":"` + strings.Repeat("p", protocol.MaxPathBytes+1) + `"}`},
		{"file data not base64", "file_request", `{"op":"put","path":"a","data":"not base64!"}`},
		{"file data unpadded", "file_request", `{"op":"put","path":"a","data":"eA"}`},
		{"file data url alphabet", "file_request", `{"op":"put","path":"a","data":"-_8="}`},
		{"file data number", "file_request", `{"op":"put","path":"a","data":1}`},
		{"file negative offset", "file_request", `{"op":"get","path":"a","offset":-1}`},
		{"file fractional length", "file_request", `{"op":"get","path":"a","length":1.5}`},
		{"file huge size", "file_request", `{"op":"put","path":"a","size":1000000000000000000}`},
		{"file more string", "file_request", `{"op":"put","path":"a","upload":"u","more":"yes"}`},
		{"file put bad upload", "file_request", `{"op":"put","path":"a","upload":"u 1"}`},
		{"file put in pieces without upload", "file_request", `{"op":"put","path":"a","more":true}`},
		{"file put at an offset without upload", "file_request", `{"op":"put","path":"a","offset":5}`},
		{"file put with an empty upload", "file_request", `{"op":"put","path":"a","upload":"","more":true}`},
		{"file put short sha256", "file_request", `{"op":"put","path":"a","sha256":"abc"}`},
		{"file put mode too big", "file_request", `{"op":"put","path":"a","mode":"1000"}`},
		{"file put mode not octal", "file_request", `{"op":"put","path":"a","mode":"0o644"}`},
		{"file request bad sandbox", "file_request", `{"op":"list","sandbox":{"backend":"k8s"}}`},
		{"file result missing size", "file_result", `{"id":"f"}`},
		{"file result bad op", "file_result", `{"id":"f","size":0,"op":"move"}`},
		{"file result bad mode", "file_result", `{"id":"f","size":0,"mode":"644"}`},
		{"file result upper-case sha256", "file_result", `{"id":"f","size":0,"sha256":"` + strings.Repeat("AB", 32) + `"}`},
		{"file result data not base64", "file_result", `{"id":"f","size":0,"data":"eA"}`},
		{"file result negative size", "file_result", `{"id":"f","size":-1}`},
		{"file result entry bad type", "file_result", `{"id":"f","size":0,"entries":[{"path":"a","type":"link","size":0,"mode":"0777","mtime":"2026-01-01T00:00:00Z"}]}`},
		{"file result entry without mode", "file_result", `{"id":"f","size":0,"entries":[{"path":"a","type":"file","size":0,"mtime":"2026-01-01T00:00:00Z"}]}`},
		{"file result unknown field", "file_result", `{"id":"f","size":0,"target":"/etc/passwd"}`},
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

// TestFileSchemaAgreesWithDecode runs file request bodies through both DecodeFileRequest and
// the file_request schema: they must agree (see checkFileSchemaAgreement).
func TestFileSchemaAgreesWithDecode(t *testing.T) {
	for _, body := range fileRequestCorpus() {
		checkFileSchemaAgreement(t, []byte(body))
	}
}

// TestSchemaFileDataBound checks the schema's bound on a put's base64 data against the
// decoder's at FileChunkBytes, where the base64 text is 699052 characters with or without
// padding (each validation of half a megabyte takes a while: a few cases only; the syntax of
// base64 is checked on short texts by the agreement test and the fuzzer).
func TestSchemaFileDataBound(t *testing.T) {
	enc := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	max := protocol.FileChunkBytes
	tests := []struct {
		name string
		data string
		ok   bool
	}{
		{"max-1 bytes, ==", enc(max - 1), true},
		{"max bytes, =", enc(max), true},
		{"max+1 bytes, as long as max", enc(max + 1), false},
		{"max+2 bytes", enc(max + 2), false},
	}
	for _, tt := range tests {
		body := []byte(`{"op":"put","path":"a","data":"` + tt.data + `"}`)
		if _, perr := protocol.DecodeFileRequest(body); (perr == nil) != tt.ok {
			t.Errorf("%s (%d characters): got %v from DecodeFileRequest, want ok=%v", tt.name, len(tt.data), perr, tt.ok)
		}
		if err := validateJSON(t, "file_request", body); (err == nil) != tt.ok {
			t.Errorf("%s (%d characters): got %v from the schema, want ok=%v", tt.name, len(tt.data), err, tt.ok)
		}
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
