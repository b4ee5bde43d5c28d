package daytona

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/codefleet/codefleet/pkg/envs"
)

// TestFileScriptsParse checks every file script with the host's shells (sh -n), for awkward
// path elements.
func TestFileScriptsParse(t *testing.T) {
	elems := []string{"it's", "-x", "a b\nc", "$(x)", "`y`", "*"}
	vars := map[string]string{"MAX": "10", "LEN": "5", "SUM": "1", "U": "/tmp/u", "S": "/tmp/u/s", "PARTS": "p0-1 p1-2", "SIZE": "2",
		"MODE": "644", "WANT": "-", "HAVE": "-", "DONE": "1", "REC": "1", "DEPTH": "", "LISTER": lister}
	for _, body := range []string{getBody, prepareBody, finishBody, deleteBody, listBody, rootScript} {
		f := fsScript{nonce: "cf0", workdir: "/tmp/it's", elems: elems, enter: len(elems) - 1, vars: vars, body: body}
		for _, sh := range []string{"sh", "dash", "bash"} {
			if _, err := exec.LookPath(sh); err != nil {
				continue
			}
			if out, err := exec.Command(sh, "-n", "-c", f.text()).CombinedOutput(); err != nil {
				t.Errorf("%s -n: %v\n%s\n%s", sh, err, out, f.text())
			}
		}
	}
	if _, err := exec.LookPath("python3"); err == nil {
		cmd := exec.Command("python3", "-c", "import sys; compile(sys.stdin.read(), 'lister', 'exec')")
		cmd.Stdin = strings.NewReader(lister)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("the lister does not compile: %v\n%s", err, out)
		}
	}
}

// runScript runs a file script with sh in dir, as the toolbox would.
func runScript(t *testing.T, dir string, f fsScript) string {
	t.Helper()
	cmd := exec.Command("sh", "-c", f.text())
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("script: %v\n%s", err, out)
	}
	return string(out)
}

// TestListers: the GNU find and the Python listers give the same records: links listed, not
// followed (a dangling one too), names with spaces and newlines, sizes of files only.
func TestListers(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "d/e"), 0o755)
	os.WriteFile(filepath.Join(dir, "d/one"), []byte("1\n"), 0o640)
	os.WriteFile(filepath.Join(dir, "d/e/two words\nlines"), []byte("22\n"), 0o644)
	os.Symlink("/etc", filepath.Join(dir, "d/link"))
	os.Symlink("/nonexistent", filepath.Join(dir, "d/dangling"))
	mtime := time.Unix(1700000000, 123456789)
	os.Chtimes(filepath.Join(dir, "d/one"), mtime, mtime)

	f := fsScript{nonce: "cf1", workdir: dir, elems: []string{"d"}, enter: 1,
		vars: map[string]string{"MAX": "100", "REC": "1", "DEPTH": "", "LISTER": lister}, body: listBody}
	out := runScript(t, dir, f)
	st, ok := parseStatus(out, "cf1")
	if !ok || st.word != "ok" {
		t.Fatalf("list: %q", out)
	}
	byFind, err := parseRecords(out, "cf1", "d")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("python3", "-c", lister, "1", "100")
	cmd.Dir = filepath.Join(dir, "d")
	py, err := cmd.Output()
	if err != nil {
		t.Fatalf("python lister: %v", err)
	}
	byPython, err := parseRecords("cf1 entries\n"+string(py)+"\ncf1 ok\n", "cf1", "d")
	if err != nil {
		t.Fatal(err)
	}
	sortStats := func(s []envs.FileStat) {
		slices.SortFunc(s, func(a, b envs.FileStat) int { return strings.Compare(a.Path, b.Path) })
	}
	sortStats(byFind)
	sortStats(byPython)
	want := []envs.FileStat{
		{Path: "d/dangling", Type: "symlink", Mode: 0o777},
		{Path: "d/e", Type: "dir", Mode: 0o755},
		{Path: "d/e/two words\nlines", Type: "file", Size: 3, Mode: 0o644},
		{Path: "d/link", Type: "symlink", Mode: 0o777},
		{Path: "d/one", Type: "file", Size: 2, Mode: 0o640, ModTime: mtime.UTC()},
	}
	for _, got := range [][]envs.FileStat{byFind, byPython} {
		if len(got) != len(want) {
			t.Fatalf("entries %+v, want %+v", got, want)
		}
		for i := range want {
			g := got[i]
			if want[i].ModTime.IsZero() {
				g.ModTime = time.Time{}
			}
			if g.Path != want[i].Path || g.Type != want[i].Type || g.Size != want[i].Size || g.Mode&^umaskOf(t) != want[i].Mode&^umaskOf(t) || !g.ModTime.Equal(want[i].ModTime) {
				t.Errorf("entry %d: %+v, want %+v", i, g, want[i])
			}
		}
	}
}

func umaskOf(t *testing.T) uint32 {
	out, err := exec.Command("sh", "-c", "umask").Output()
	if err != nil {
		t.Fatal(err)
	}
	var m uint32
	for _, c := range strings.TrimSpace(string(out)) {
		m = m*8 + uint32(c-'0')
	}
	return m
}

// TestScriptsWalk runs the scripts on the host: a link anywhere in the path is refused, a
// directory swapped for a link after the walk entered it is caught by the physical path.
func TestScriptsWalk(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "real/sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "real/sub/f"), []byte("f"), 0o644)
	os.Symlink(filepath.Join(dir, "real"), filepath.Join(dir, "alias"))
	get := func(elems ...string) fsStatus {
		f := fsScript{nonce: "cf2", workdir: dir, elems: elems, enter: len(elems) - 1,
			vars: map[string]string{"MAX": "100", "LEN": "1", "SUM": "1"}, body: getBody}
		st, ok := parseStatus(runScript(t, dir, f), "cf2")
		if !ok {
			t.Fatalf("get %v: no status", elems)
		}
		return st
	}
	if st := get("real", "sub", "f"); st.word != "ok" || !strings.HasPrefix(st.rest, "1 644 ") {
		t.Errorf("get real/sub/f: %+v", st)
	}
	if st := get("alias", "sub", "f"); st.word != "refused" || st.element(1, []string{"alias", "sub", "f"}) != "alias" {
		t.Errorf("get alias/sub/f: %+v", st)
	}
	if st := get("real", "sub", "nope"); st.word != "absent" || st.fields[0] != "3" {
		t.Errorf("get real/sub/nope: %+v", st)
	}
	if st := get("real", "sub"); st.word != "isdir" {
		t.Errorf("get real/sub: %+v", st)
	}
	// The walk's check of where it stands: the workspace given through a link is taken as
	// its physical path, but an entered directory that is not under it is refused.
	f := fsScript{nonce: "cf3", workdir: filepath.Join(dir, "alias"), elems: []string{"sub", "f"}, enter: 1,
		vars: map[string]string{"MAX": "100", "LEN": "1", "SUM": "0"}, body: getBody}
	if st, _ := parseStatus(runScript(t, dir, f), "cf3"); st.word != "ok" {
		t.Errorf("get through a linked workspace: %+v", st)
	}
	f = fsScript{nonce: "cf4", workdir: dir, elems: []string{"real", "sub", "f"}, enter: 2,
		vars: map[string]string{"MAX": "100", "LEN": "1", "SUM": "0"}, body: strings.Replace(getBody, `enter "$@"`, `P=/elsewhere; enter "$@"`, 1)}
	if st, _ := parseStatus(runScript(t, dir, f), "cf4"); st.word != "refused" || st.fields[0] != "moved" {
		t.Errorf("a walk that ends elsewhere than expected: %+v", st)
	}
}

func TestParseStatus(t *testing.T) {
	for _, tc := range []struct {
		out    string
		word   string
		fields []string
		msg    string
		ok     bool
	}{
		{"noise\ncfz ok 1 2\n", "ok", []string{"1", "2"}, "", true},
		{"cfz ok 9\n\ncfz failed rm 3 rm: cannot remove: Permission denied\nmore\n", "failed", []string{"rm", "3"}, "rm: cannot remove: Permission denied\nmore", true},
		{"\ncfz refused link 2\n", "refused", []string{"link", "2"}, "", true},
		{"\ncfz absent\n", "", nil, "", false},
		{"\ncfz weird 1\n", "", nil, "", false},
		{"no status", "", nil, "", false},
	} {
		st, ok := parseStatus(tc.out, "cfz")
		if ok != tc.ok || st.word != tc.word || !slices.Equal(st.fields, tc.fields) || st.msg != tc.msg {
			t.Errorf("%q: %+v %v", tc.out, st, ok)
		}
	}
}

func TestContentRange(t *testing.T) {
	for _, tc := range []struct {
		v                  string
		first, last, total int64
		ok                 bool
	}{
		{"bytes 0-99/100", 0, 99, 100, true},
		{"bytes */5", 0, -1, 5, true},
		{"bytes 5-1/10", 0, 0, 0, false},
		{"items 0-1/2", 0, 0, 0, false},
		{"bytes 0-1/*", 0, 0, 0, false},
	} {
		a, b, n, ok := contentRange(tc.v)
		if ok != tc.ok || ok && (a != tc.first || b != tc.last || n != tc.total) {
			t.Errorf("%q: %d %d %d %v", tc.v, a, b, n, ok)
		}
	}
}

// TestSupervisorsLeaveTheLiveFile: a streamed run's supervisor, either one, writes the output to
// the live file as well as to its own, leaves that file (and nothing a late kill could use,
// the pid) for the backend's last read, and prints the same result as without a stream.
func TestSupervisorsLeaveTheLiveFile(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is needed (the python supervisor)")
	}
	for _, lang := range []string{"bash", "python"} {
		t.Run(lang, func(t *testing.T) {
			p := runPlan{nonce: fmt.Sprintf("cflive%d%s", os.Getpid(), lang), language: lang, max: 1000, stream: true,
				code: "echo one; echo two >&2"}
			if lang == "python" {
				p.code = "import sys\nprint('one', flush=True)\nsys.stderr.write('two\\n')"
			}
			d := runDir(p.nonce)
			t.Cleanup(func() { os.RemoveAll(d) })
			var cmd *exec.Cmd
			if lang == "python" {
				cmd = exec.Command("python3", "-u", "-")
				cmd.Stdin = strings.NewReader(pythonSupervisor(p))
			} else {
				cmd = exec.Command("sh", "-c", shellSupervisor(p))
			}
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("supervisor: %v\n%s", err, out)
			}
			res, tr, ok := parseTrailer(string(out), p.nonce)
			if !ok || res != "one\ntwo\n" || tr.exit != 0 {
				t.Fatalf("supervisor's output %q (%+v %v)", out, tr, ok)
			}
			live, err := os.ReadFile(liveFile(p.nonce))
			if err != nil || string(live) != "one\ntwo\n" {
				t.Fatalf("live file: %q %v", live, err)
			}
			if _, err := os.Stat(filepath.Join(d, "pid")); !os.IsNotExist(err) {
				t.Errorf("the pid was left for a late kill: %v", err)
			}
		})
	}
}
