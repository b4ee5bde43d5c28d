package protocol_test

import (
	"encoding/base64"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// b64 is the standard base64 of n bytes of x.
func b64(n int) string { return base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", n))) }

func TestDecodeFileRequestBad(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := []struct {
		name string
		body string
		msg  string // a substring of the message
	}{
		{"empty body", ``, "empty"},
		{"malformed", `{"op":`, "malformed JSON"},
		{"trailing garbage", `{"op":"list"} x`, "malformed JSON"},
		{"array", `[{"op":"list"}]`, "must be a JSON object, got array"},
		{"id not string", `{"id":7,"op":"list"}`, "field id: must be a string, got number"},
		{"id empty", `{"id":"","op":"list"}`, "id is empty"},
		{"id space", `{"id":"a b","op":"list"}`, `id "a b" must match`},
		{"id too long", `{"id":"` + strings.Repeat("i", 129) + `","op":"list"}`, "must match [A-Za-z0-9_-]{1,128}"},
		{"op missing", `{"path":"a"}`, `op "" is not one of put, get, list, delete`},
		{"op null", `{"op":null,"path":"a"}`, `op "" is not one of`},
		{"op unknown", `{"op":"move","path":"a"}`, `op "move" is not one of put, get, list, delete`},
		{"op case", `{"op":"PUT","path":"a"}`, `op "PUT"`},
		{"op not string", `{"op":["get"],"path":"a"}`, "field op: must be a string, got array"},
		{"path missing", `{"op":"get"}`, "path is missing: get needs"},
		{"path empty", `{"op":"put","path":""}`, "path is missing: put needs"},
		{"path null", `{"op":"delete","path":null}`, "path is missing: delete needs"},
		{"path not string", `{"op":"get","path":1}`, "field path: must be a string, got number"},
		{"path too long", `{"op":"get","path":"` + strings.Repeat("p", protocol.MaxPathBytes+1) + `"}`, "path is 4097 bytes, the limit is 4096"},
		{"path too many bytes", `{"op":"get","path":"` + strings.Repeat("é", protocol.MaxPathBytes/2+1) + `"}`, "path is 4098 bytes"},
		{"path NUL", `{"op":"get","path":"a\u0000b"}`, "path contains a NUL byte"},
		{"offset negative", `{"op":"get","path":"a","offset":-1}`, "offset, size and length must not be negative"},
		{"size negative", `{"op":"put","path":"a","size":-1}`, "size"},
		{"length negative", `{"op":"get","path":"a","length":-1}`, "length"},
		{"offset string", `{"op":"get","path":"a","offset":"1"}`, "field offset: must be an integer, got string"},
		{"offset fraction", `{"op":"get","path":"a","offset":0.5}`, "field offset: must be an integer, got 0.5"},
		{"size out of range", `{"op":"put","path":"a","size":1e19}`, "field size: 1e19 is out of range"},
		{"length bool", `{"op":"get","path":"a","length":true}`, "field length: must be an integer, got boolean"},
		{"more string", `{"op":"put","path":"a","upload":"u","more":"yes"}`, "field more: must be a boolean, got string"},
		{"recursive number", `{"op":"list","recursive":1}`, "field recursive: must be a boolean, got number"},
		{"data number", `{"op":"put","path":"a","data":1}`, "field data: must be a base64 string, got number"},
		{"data not base64", `{"op":"put","path":"a","data":"not base64!"}`, "field data: must be standard base64"},
		{"data unpadded", `{"op":"put","path":"a","data":"eA"}`, "field data: must be standard base64"},
		{"data url alphabet", `{"op":"put","path":"a","data":"-_8="}`, "field data: must be standard base64"},
		{"data oversized", `{"op":"put","path":"a","data":"` + b64(protocol.FileChunkBytes+4) + `"}`,
			fmt.Sprintf("over the %d bytes a piece may hold", protocol.FileChunkBytes)},
		{"data one byte over", `{"op":"put","path":"a","data":"` + b64(protocol.FileChunkBytes+1) + `"}`,
			fmt.Sprintf("data is %d bytes, a piece holds at most %d", protocol.FileChunkBytes+1, protocol.FileChunkBytes)},
		{"data huge", `{"op":"put","path":"a","data":"` + strings.Repeat("A", 4<<20) + `"}`, "data is 4194304 base64 characters"},
		{"upload space", `{"op":"put","path":"a","upload":"u 1"}`, `upload "u 1" must match [A-Za-z0-9_-]{1,128}`},
		{"upload too long", `{"op":"put","path":"a","upload":"` + strings.Repeat("u", 129) + `"}`, "upload"},
		{"upload not string", `{"op":"put","path":"a","upload":1}`, "field upload: must be a string"},
		{"pieces without upload", `{"op":"put","path":"a","data":"eA==","more":true}`, "more is true but upload is missing"},
		{"offset without upload", `{"op":"put","path":"a","data":"eA==","offset":7}`, "offset is 7 but upload is missing"},
		{"sha256 short", `{"op":"put","path":"a","sha256":"abc"}`, `sha256 "abc" must be 64 hex digits`},
		{"sha256 long", `{"op":"put","path":"a","sha256":"` + sum + `0"}`, "sha256"},
		{"sha256 not hex", `{"op":"put","path":"a","sha256":"` + strings.Repeat("g", 64) + `"}`, "must be 64 hex digits"},
		{"sha256 not string", `{"op":"put","path":"a","sha256":true}`, "field sha256: must be a string, got boolean"},
		{"mode too big", `{"op":"put","path":"a","mode":"1000"}`, `mode "1000" must be octal permission bits, 0 to 0777`},
		{"mode not octal", `{"op":"put","path":"a","mode":"0o644"}`, `mode "0o644"`},
		{"mode eight", `{"op":"put","path":"a","mode":"0648"}`, `mode "0648"`},
		{"mode negative", `{"op":"put","path":"a","mode":"-1"}`, "mode"},
		{"mode number", `{"op":"put","path":"a","mode":644}`, "field mode: must be a string, got number"},
		{"sandbox string", `{"op":"list","sandbox":"docker"}`, "field sandbox: must be an object, got string"},
		{"sandbox backend", `{"op":"list","sandbox":{"backend":"k8s"}}`, `sandbox.backend "k8s" is not one of docker, daytona`},
		{"sandbox env key", `{"op":"list","sandbox":{"env":{"A B":"1"}}}`, `sandbox.env key "A B"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, perr := protocol.DecodeFileRequest([]byte(tt.body))
			if perr == nil {
				t.Fatalf("got request %+v, want an error", r)
			}
			if r != nil {
				t.Errorf("got request %+v with error, want nil", r)
			}
			if perr.Code != protocol.CodeBadRequest {
				t.Errorf("got code %s (%q), want %s", perr.Code, perr.Message, protocol.CodeBadRequest)
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

func TestDecodeFileRequestGood(t *testing.T) {
	sum := strings.Repeat("0123456789abcdef", 4)
	chunk := []byte(strings.Repeat("x", protocol.FileChunkBytes))
	tests := []struct {
		name string
		body string
		want protocol.FileRequest
	}{
		{"list minimal", `{"op":"list"}`, protocol.FileRequest{Op: protocol.FileOpList}},
		{"put whole", `{"id":"f-1","op":"put","path":"notes/hello.txt","data":"aGVsbG8sIGZpbGVzCg==","sha256":"` + sum + `","mode":"0755"}`,
			protocol.FileRequest{ID: "f-1", Op: protocol.FileOpPut, Path: "notes/hello.txt", Data: []byte("hello, files\n"), SHA256: sum, Mode: "0755"}},
		{"put piece", `{"op":"put","path":"/workspace/t.csv","data":"aWQK","offset":14,"size":20,"upload":"u-1","more":true}`,
			protocol.FileRequest{Op: protocol.FileOpPut, Path: "/workspace/t.csv", Data: []byte("id\n"), Offset: 14, Size: 20, Upload: "u-1", More: true}},
		{"put of a whole piece", `{"op":"put","path":"a","upload":"u","data":"` + base64.StdEncoding.EncodeToString(chunk) + `"}`,
			protocol.FileRequest{Op: protocol.FileOpPut, Path: "a", Upload: "u", Data: chunk}},
		{"put, upper-case sha256 and long mode", `{"op":"put","path":"a","sha256":"` + strings.ToUpper(sum) + `","mode":"0000600"}`,
			protocol.FileRequest{Op: protocol.FileOpPut, Path: "a", SHA256: strings.ToUpper(sum), Mode: "0000600"}},
		{"get", `{"op":"get","path":"big.bin","offset":524288,"length":1e3}`,
			protocol.FileRequest{Op: protocol.FileOpGet, Path: "big.bin", Offset: 524288, Length: 1000}},
		{"put fields of a get are not checked", `{"op":"get","path":"a","upload":"not a token","sha256":"no","mode":"rwx"}`,
			protocol.FileRequest{Op: protocol.FileOpGet, Path: "a", Upload: "not a token", SHA256: "no", Mode: "rwx"}},
		{"where a path leads is the sandbox's to check", `{"op":"get","path":"../../etc/passwd"}`,
			protocol.FileRequest{Op: protocol.FileOpGet, Path: "../../etc/passwd"}},
		{"path of MaxPathBytes", `{"op":"delete","path":"` + strings.Repeat("p", protocol.MaxPathBytes) + `","recursive":true}`,
			protocol.FileRequest{Op: protocol.FileOpDelete, Path: strings.Repeat("p", protocol.MaxPathBytes), Recursive: true}},
		{"nulls are absent", `{"id":null,"op":"list","path":null,"data":null,"offset":null,"size":null,"upload":null,"more":null,"sha256":null,"mode":null,"length":null,"recursive":null,"sandbox":null}`,
			protocol.FileRequest{Op: protocol.FileOpList}},
		{"unknown fields ignored, names case-sensitive", `{"op":"list","Op":"put","PATH":1,"target":{"a":[1]}}`,
			protocol.FileRequest{Op: protocol.FileOpList}},
		{"line breaks in data are skipped", `{"op":"put","path":"a","data":"aGVs\nbG8=\r\n"}`,
			protocol.FileRequest{Op: protocol.FileOpPut, Path: "a", Data: []byte("hello")}},
		{"sandbox", `{"op":"list","recursive":true,"sandbox":{"backend":"docker","image":"python:3.12","env":{"A":"1"}}}`,
			protocol.FileRequest{Op: protocol.FileOpList, Recursive: true, Sandbox: &protocol.SandboxOptions{Backend: "docker", Image: "python:3.12", Env: map[string]string{"A": "1"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, perr := protocol.DecodeFileRequest([]byte(tt.body))
			if perr != nil {
				t.Fatalf("got error %v, want none", perr)
			}
			if !reflect.DeepEqual(*r, tt.want) {
				t.Errorf("got %s, want %s", protocol.Encode(r), protocol.Encode(tt.want))
			}
		})
	}
}

// TestFileRequestValidate checks the rules on a request built in Go, as a client builds it.
func TestFileRequestValidate(t *testing.T) {
	var nilReq *protocol.FileRequest
	if perr := nilReq.Validate(); perr == nil || perr.Code != protocol.CodeBadRequest {
		t.Errorf("nil request: got %v, want bad_request", perr)
	}
	ok := protocol.FileRequest{Op: protocol.FileOpPut, Path: "a", Data: make([]byte, protocol.FileChunkBytes)}
	if perr := ok.Validate(); perr != nil {
		t.Errorf("a piece of FileChunkBytes: got %v, want nil", perr)
	}
	over := ok
	over.Data = make([]byte, protocol.FileChunkBytes+1)
	if perr := over.Validate(); perr == nil || !strings.Contains(perr.Message, "data is 524289 bytes") {
		t.Errorf("a piece of FileChunkBytes+1: got %v, want data is 524289 bytes", perr)
	}
	long := protocol.FileRequest{Op: strings.Repeat("o", 1000)}
	if perr := long.Validate(); perr == nil || len(perr.Message) > 200 {
		t.Errorf("a long op: got %v, want an error quoting it shortened", perr)
	}
}

func TestParseMode(t *testing.T) {
	for s, want := range map[string]uint32{"": 0o644, "0644": 0o644, "755": 0o755, "0": 0, "0777": 0o777, "0000400": 0o400} {
		if got, perr := protocol.ParseMode(s); perr != nil || got != want {
			t.Errorf("ParseMode(%q): got %o, %v, want %o", s, got, perr, want)
		}
	}
	for _, s := range []string{"1000", "0o644", "0x1ff", "-1", "+644", "64 4", "rw-r--r--", "99999999999999999999"} {
		if _, perr := protocol.ParseMode(s); perr == nil || perr.Code != protocol.CodeBadRequest || !strings.Contains(perr.Message, "mode") {
			t.Errorf("ParseMode(%q): got %v, want bad_request naming mode", s, perr)
		}
	}
	for m, want := range map[uint32]string{0o644: "0644", 0o755: "0755", 0: "0000", 0o4755: "4755", 0o100644: "0644"} {
		if got := protocol.FormatMode(m); got != want {
			t.Errorf("FormatMode(%o): got %q, want %q", m, got, want)
		}
	}
}

func TestDecodeFileResult(t *testing.T) {
	mtime := time.Date(2026, 12, 7, 13, 7, 4, 242254135, time.UTC)
	fr := protocol.FileResult{
		ID: "f-5", Op: protocol.FileOpGet, Path: "data/table.csv", Size: 20, Data: []byte("id,name\n"), EOF: false,
		SHA256: strings.Repeat("25", 32), Mode: "0644", ModTime: &mtime,
		Sandbox: &protocol.SandboxInfo{ID: "sb", Backend: protocol.BackendDocker, Worker: "dev"},
	}
	got, err := protocol.DecodeFileResult(protocol.Encode(fr))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, fr) {
		t.Errorf("got %+v, want %+v", *got, fr)
	}
	if b := protocol.Encode(fr); !strings.Contains(string(b), `"data":"aWQsbmFtZQo="`) {
		t.Errorf("got %s, want data in standard base64", b)
	}
	list := protocol.FileResult{ID: "f-7", Op: protocol.FileOpList, Entries: []protocol.FileEntry{
		{Path: "leak.txt", Type: protocol.FileTypeSymlink, Size: 11, Mode: "0777", ModTime: mtime},
	}}
	gotList, err := protocol.DecodeFileResult(protocol.Encode(list))
	if err != nil || !reflect.DeepEqual(*gotList, list) {
		t.Errorf("got %+v, %v, want %+v", gotList, err, list)
	}
	e := protocol.FileErrorResult("f-8", protocol.FileOpGet, protocol.Errorf(protocol.CodePathRefused, "leak.txt is a symbolic link"))
	if got, want := string(protocol.Encode(e)), `{"id":"f-8","op":"get","size":0,"error":{"code":"path_refused","message":"leak.txt is a symbolic link"}}`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	for _, bad := range []string{`{`, `{"size":"1"}`, `{"id":"f","size":0,"data":"not base64!"}`} {
		if _, err := protocol.DecodeFileResult([]byte(bad)); err == nil {
			t.Errorf("DecodeFileResult(%s): got nil, want an error", bad)
		}
	}
}
