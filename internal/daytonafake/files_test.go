package daytonafake_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
)

// fileCall sends a files API request to a sandbox's toolbox: query on path, an optional body of
// type ctype, optional headers.
func (s *tserver) fileCall(sb map[string]any, method, path string, q url.Values, ctype string, body []byte, h http.Header) answer {
	s.t.Helper()
	u := sb["toolboxProxyUrl"].(string) + "/" + sb["id"].(string) + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, _ := http.NewRequest(method, u, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer dtn_fake")
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	return do(s.t, req)
}

// multipartBody builds a multipart form of (name, filename, data) parts in order; a part
// without a filename is a text field.
func multipartBody(t *testing.T, parts ...[3]string) (string, []byte) {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, p := range parts {
		var err error
		if p[1] == "" {
			err = mw.WriteField(p[0], p[2])
		} else {
			var w interface{ Write([]byte) (int, error) }
			w, err = mw.CreateFormFile(p[0], p[1])
			if err == nil {
				_, err = w.Write([]byte(p[2]))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	mw.Close()
	return mw.FormDataContentType(), b.Bytes()
}

// TestFiles pins the files API to the daemon's (apps/daemon/pkg/toolbox/fs, v0.190): paths
// relative to its working directory or absolute, uploads that make the parents, ranged
// downloads, the handlers' empty-bodied errors, and links followed everywhere, as the daemon
// follows them.
func TestFiles(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true})
	sb := s.create(nil)
	defer s.api("DELETE", "/sandbox/"+sb["id"].(string), nil)
	dir := s.Dir(sb["id"].(string))
	q := func(kv ...string) url.Values {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	empty := func(what string, a answer, status int) {
		t.Helper()
		if a.status != status || len(a.body) != 0 {
			t.Errorf("%s: %d %q, want %d and no body", what, a.status, a.body, status)
		}
	}

	// bulk-upload: the path part before the file part; parents made 0755; a relative path is
	// the working directory's.
	ct, body := multipartBody(t, [3]string{"files[0].path", "", "in/a.txt"}, [3]string{"files[0].file", "a.txt", "hello"})
	a := s.fileCall(sb, "POST", "/files/bulk-upload", nil, ct, body, nil)
	if a.status != 200 || string(a.body) != `{"files":[{"path":"in/a.txt","bytes":5}]}` {
		t.Errorf("bulk-upload: %d %s", a.status, a.body)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "in/a.txt")); err != nil || string(b) != "hello" {
		t.Errorf("uploaded file: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "in")); err != nil || fi.Mode().Perm() != 0o755&^umask() {
		t.Errorf("parent made by bulk-upload: %v %v", fi.Mode(), err)
	}
	ct, body = multipartBody(t, [3]string{"files[0].file", "x", "orphan"})
	if a := s.fileCall(sb, "POST", "/files/bulk-upload", nil, ct, body, nil); a.status != 400 || !strings.Contains(string(a.body), "missing .path metadata") {
		t.Errorf("bulk-upload of a file part without its path: %d %s", a.status, a.body)
	}
	// upload: the "file" part to ?path=, absolute here; an answer without a body.
	ct, body = multipartBody(t, [3]string{"file", "b.txt", "0123456789"})
	empty("upload", s.fileCall(sb, "POST", "/files/upload", q("path", filepath.Join(dir, "up/b.txt")), ct, body, nil), 200)
	empty("upload without a path", s.fileCall(sb, "POST", "/files/upload", nil, ct, body, nil), 400)

	// download, whole and in ranges.
	a = s.fileCall(sb, "GET", "/files/download", q("path", "up/b.txt"), "", nil, nil)
	if a.status != 200 || string(a.body) != "0123456789" || !strings.Contains(a.header.Get("Content-Disposition"), `filename="b.txt"`) {
		t.Errorf("download: %d %q %v", a.status, a.body, a.header)
	}
	a = s.fileCall(sb, "GET", "/files/download", q("path", "up/b.txt"), "", nil, http.Header{"Range": {"bytes=3-5"}})
	if a.status != 206 || string(a.body) != "345" || a.header.Get("Content-Range") != "bytes 3-5/10" {
		t.Errorf("download of a range: %d %q %v", a.status, a.body, a.header)
	}
	a = s.fileCall(sb, "GET", "/files/download", q("path", "up/b.txt"), "", nil, http.Header{"Range": {"bytes=10-20"}})
	if a.status != 416 || a.header.Get("Content-Range") != "bytes */10" {
		t.Errorf("download past the end: %d %q %v", a.status, a.body, a.header)
	}
	empty("download of nothing", s.fileCall(sb, "GET", "/files/download", q("path", "nope"), "", nil, nil), 404)
	empty("download of a directory", s.fileCall(sb, "GET", "/files/download", q("path", "up"), "", nil, nil), 400)
	empty("download without a path", s.fileCall(sb, "GET", "/files/download", nil, "", nil, nil), 400)

	// Links are followed, as the daemon's os.Stat and open follow them.
	outside := t.TempDir()
	os.Chmod(outside, 0o700)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("outside"), 0o600)
	for _, l := range [][2]string{{filepath.Join(outside, "secret"), "leak"}, {outside, "out"}, {"/nonexistent", "dangling"}} {
		if err := os.Symlink(l[0], filepath.Join(dir, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	if a := s.fileCall(sb, "GET", "/files/download", q("path", "leak"), "", nil, nil); a.status != 200 || string(a.body) != "outside" {
		t.Errorf("download through a link: %d %q (the daemon follows it)", a.status, a.body)
	}
	a = s.fileCall(sb, "GET", "/files", q("path", "."), "", nil, nil)
	var names []string
	for _, e := range a.jsonArray() {
		names = append(names, fmt.Sprintf("%s:%s", e["name"], e["mode"]))
	}
	if got := strings.Join(names, " "); a.status != 200 || got != "in:drwxr-xr-x leak:-rw------- out:drwx------ up:drwxr-x---" {
		t.Errorf("list: %d %s; want the links as what they point to and the dangling one left out", a.status, got)
	}
	if a := s.fileCall(sb, "GET", "/files", q("path", "out"), "", nil, nil); a.status != 200 || len(a.jsonArray()) != 1 || a.jsonArray()[0]["name"] != "secret" {
		t.Errorf("list of a linked directory: %d %s", a.status, a.body)
	}
	empty("list of nothing", s.fileCall(sb, "GET", "/files", q("path", "nope"), "", nil, nil), 404)
	a = s.fileCall(sb, "GET", "/files/info", q("path", "leak"), "", nil, nil)
	if m := a.json(); a.status != 200 || m["name"] != "leak" || m["size"] != 7.0 || m["isDir"] != false || m["permissions"] != "0600" || m["owner"] != fmt.Sprint(os.Getuid()) {
		t.Errorf("info of a link: %d %s", a.status, a.body)
	}
	// Through a linked directory, an upload writes outside.
	ct, body = multipartBody(t, [3]string{"files[0].path", "", "out/planted"}, [3]string{"files[0].file", "p", "x"})
	if a := s.fileCall(sb, "POST", "/files/bulk-upload", nil, ct, body, nil); a.status != 200 {
		t.Errorf("bulk-upload through a linked directory: %d %s", a.status, a.body)
	}
	if _, err := os.Stat(filepath.Join(outside, "planted")); err != nil {
		t.Errorf("the upload through the link did not land where it points: %v", err)
	}

	// delete and folder.
	empty("delete of a directory without recursive", s.fileCall(sb, "DELETE", "/files", q("path", "in"), "", nil, nil), 400)
	empty("delete", s.fileCall(sb, "DELETE", "/files", q("path", "in/a.txt"), "", nil, nil), 204)
	empty("delete of nothing", s.fileCall(sb, "DELETE", "/files", q("path", "in/a.txt"), "", nil, nil), 404)
	empty("delete of a tree", s.fileCall(sb, "DELETE", "/files", q("path", "up", "recursive", "true"), "", nil, nil), 204)
	empty("delete of a link to a directory without recursive (it stats the target)", s.fileCall(sb, "DELETE", "/files", q("path", "out"), "", nil, nil), 400)
	empty("folder", s.fileCall(sb, "POST", "/files/folder", q("path", "f/g", "mode", "0700"), "", nil, nil), 201)
	if fi, err := os.Stat(filepath.Join(dir, "f/g")); err != nil || fi.Mode().Perm() != 0o700&^umask() {
		t.Errorf("folder: %v %v", fi.Mode(), err)
	}
	empty("folder with a bad mode", s.fileCall(sb, "POST", "/files/folder", q("path", "h", "mode", "9"), "", nil, nil), 400)

	for _, p := range []string{"/work-dir", "/user-home-dir"} {
		if a := s.fileCall(sb, "GET", p, nil, "", nil, nil); a.status != 200 || a.json()["dir"] != dir {
			t.Errorf("%s: %d %s", p, a.status, a.body)
		}
	}
	if s.Count("files-download") == 0 || s.Count("files-bulk-upload") == 0 {
		t.Errorf("counts: download %d, bulk-upload %d", s.Count("files-download"), s.Count("files-bulk-upload"))
	}
}

// TestSessionLogsGrow: a running command's logs hold each line it wrote as soon as it wrote it
// (a line at a time, as the daemon's labellers write them), before it ends.
func TestSessionLogsGrow(t *testing.T) {
	s := start(t, daytonafake.Options{Warm: true})
	sb := s.create(nil)
	defer s.api("DELETE", "/sandbox/"+sb["id"].(string), nil)
	s.toolbox(sb, "/process/session", map[string]any{"sessionId": "g"})
	a := s.toolbox(sb, "/process/session/g/exec", map[string]any{"command": "echo one; printf 'part'; sleep 30", "runAsync": true})
	id, _ := a.json()["cmdId"].(string)
	testutil.Eventually(t, 10*time.Second, func() error {
		m := s.toolboxGet(sb, "GET", "/process/session/g/command/"+id+"/logs", "0.190.0").json()
		if m["stdout"] != "one\n" {
			return fmt.Errorf("logs of the running command: %v", m)
		}
		return nil
	})
	if m := s.toolboxGet(sb, "GET", "/process/session/g/command/"+id, "").json(); m["exitCode"] != nil {
		t.Errorf("the command ended: %v", m)
	}
}

func (a answer) jsonArray() []map[string]any {
	var out []map[string]any
	json.Unmarshal(a.body, &out)
	return out
}

// umask returns the process's umask, which the fake's mkdir gets as the daemon's does.
func umask() os.FileMode {
	m := syscall.Umask(0)
	syscall.Umask(m)
	return os.FileMode(m)
}
