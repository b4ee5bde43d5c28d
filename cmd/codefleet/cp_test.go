package main

import (
	"crypto/rand"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/worker"
)

// startFakeFleet starts an in-process fleet on the fake backend (snippets run as local
// processes: no Docker) and returns its NATS URL.
func startFakeFleet(t *testing.T) string {
	t.Helper()
	ns := testutil.StartNATS(t)
	testutil.StartWorker(t, ns, worker.Config{ID: "w-" + strings.ToLower(t.Name())}, fake.New())
	d := testutil.StartDispatcher(t, ns, dispatcher.Config{})
	testutil.WaitWorkers(t, 1, d)
	return ns.ClientURL()
}

// file is a local file as a tree holds it.
type file struct {
	data string
	mode fs.FileMode
}

// readTree returns the regular files under dir by slash path, and its directories.
func readTree(t *testing.T, dir string) (map[string]file, []string) {
	t.Helper()
	files := map[string]file{}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			dirs = append(dirs, rel)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			files[rel] = file{string(data), info.Mode().Perm()}
		default:
			files[rel] = file{"not a regular file", d.Type()}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files, dirs
}

func writeTree(t *testing.T, dir string, files map[string]file) {
	t.Helper()
	for p, f := range files {
		p = filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
}

// diffTrees fails the test when got and want differ.
func diffTrees(t *testing.T, what string, got, want map[string]file) {
	t.Helper()
	if !maps.Equal(got, want) {
		names := func(m map[string]file) []string { return slices.Sorted(maps.Keys(m)) }
		for _, p := range names(want) {
			if g, ok := got[p]; !ok || g != want[p] {
				t.Errorf("%s: %s is %d bytes, mode %v (present %v); want %d bytes, mode %v", what, p, len(g.data), g.mode, ok, len(want[p].data), want[p].mode)
			}
		}
		t.Fatalf("%s: files %v, want %v", what, names(got), names(want))
	}
}

// TestCpRoundTrip: `codefleet cp` puts a file, stdin and a directory tree (sub-directories, an
// empty file, an executable, a file of several pieces) into a conversation's workspace, where
// snippets see them, and brings them back byte for byte with their modes. A symbolic link in
// the tree that stays inside it is copied as its file; one that leads out is not followed.
func TestCpRoundTrip(t *testing.T) {
	testutil.ClearEnv(t)
	url := startFakeFleet(t)
	dir := t.TempDir()
	big := make([]byte, protocol.FileChunkBytes*2+99)
	rand.Read(big)
	tree := map[string]file{
		"a.txt":              {"alpha\n", 0o644},
		"empty":              {"", 0o600},
		"bin/run.sh":         {"#!/bin/sh\necho ran\n", 0o755},
		"deep/er/still/x.md": {"# deep\n", 0o644},
		"deep/big.bin":       {string(big), 0o640},
	}
	src := filepath.Join(dir, "src")
	writeTree(t, src, tree)
	if err := os.Symlink("a.txt", filepath.Join(src, "alias.txt")); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "secret.txt")
	writeTree(t, dir, map[string]file{"secret.txt": {"outside the source\n", 0o600}})
	if err := os.Symlink(secret, filepath.Join(src, "leak.txt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../secret.txt", filepath.Join(src, "deep", "leak2.txt")); err != nil {
		t.Fatal(err)
	}
	cp := func(stdin string, args ...string) (string, string) {
		t.Helper()
		code, out, errOut := cli(stdin, append([]string{"cp", "--nats-url", url}, args...)...)
		if code != 0 {
			t.Fatalf("codefleet cp %q: exit %d, stderr %q", args, code, errOut)
		}
		return out, errOut
	}

	// A directory to a path that does not exist: it becomes that directory.
	_, errOut := cp("", src, "demo:up")
	for _, link := range []string{filepath.Join(src, "leak.txt"), filepath.Join(src, "deep", "leak2.txt")} {
		if !strings.Contains(errOut, "skipped "+link+": a symbolic link, not followed") {
			t.Errorf("no warning about the link %s out of the source: %q", link, errOut)
		}
	}
	if strings.Contains(errOut, "alias.txt") {
		t.Errorf("a warning about the link inside the source: %q", errOut)
	}
	code, out, errOut := cli("", "run", "--nats-url", url, "--conversation", "demo", "--language", "bash",
		"cat up/a.txt up/alias.txt; ./up/bin/run.sh; LC_ALL=C ls up; test -e up/leak.txt || echo no leak")
	if code != 0 || out != "alpha\nalpha\nran\na.txt\nalias.txt\nbin\ndeep\nempty\nno leak\n" {
		t.Fatalf("a snippet sees exit %d, %q (stderr %q)", code, out, errOut)
	}

	// Back, to a new directory and into an existing one.
	want := maps.Clone(tree)
	want["alias.txt"] = tree["a.txt"]
	cp("", "demo:up", filepath.Join(dir, "back"))
	got, dirs := readTree(t, filepath.Join(dir, "back"))
	diffTrees(t, "demo:up to back", got, want)
	if !slices.Equal(dirs, []string{".", "bin", "deep", "deep/er", "deep/er/still"}) {
		t.Errorf("directories %v", dirs)
	}
	if err := os.Mkdir(filepath.Join(dir, "into"), 0o755); err != nil {
		t.Fatal(err)
	}
	cp("", "demo:up/", filepath.Join(dir, "into"))
	got, _ = readTree(t, filepath.Join(dir, "into", "up"))
	diffTrees(t, "demo:up/ into an existing directory", got, want)

	// One file, into a directory of the workspace and back to a file and to stdout.
	cp("", filepath.Join(src, "deep", "big.bin"), "demo:up/deep/er")
	cp("", "demo:up/deep/er/big.bin", filepath.Join(dir, "big.copy"))
	if got, _ := readTree(t, dir); got["big.copy"] != tree["deep/big.bin"] {
		t.Errorf("big.copy: %d bytes mode %v, want %d bytes", len(got["big.copy"].data), got["big.copy"].mode, len(big))
	}
	if out, _ := cp("", "demo:up/a.txt", "-"); out != "alpha\n" {
		t.Errorf("cp to stdout: %q", out)
	}
	// stdin to a file, and back.
	cp("piped in\n", "-", "demo:notes/stdin.txt")
	if out, _ := cp("", "demo:notes/stdin.txt", "-"); out != "piped in\n" {
		t.Errorf("stdin round trip: %q", out)
	}
	// A link named on the command line is followed, as cp does: the user chose it.
	named := filepath.Join(dir, "named.txt")
	if err := os.Symlink(secret, named); err != nil {
		t.Fatal(err)
	}
	cp("", named, "demo:notes/")
	if out, _ := cp("", "demo:notes/named.txt", "-"); out != "outside the source\n" {
		t.Errorf("a link given as the source: %q", out)
	}
	// The whole workspace ("demo:") into an existing directory: its entries, not a directory of it.
	all := filepath.Join(dir, "all")
	if err := os.Mkdir(all, 0o755); err != nil {
		t.Fatal(err)
	}
	cp("", "demo:", all)
	if got, _ := readTree(t, all); got["notes/stdin.txt"].data != "piped in\n" || got["up/deep/er/big.bin"].data != string(big) {
		t.Errorf("the workspace copied to %s: %v", all, slices.Sorted(maps.Keys(got)))
	}
}

// TestCpRefused: a path outside the workspace is refused with the fleet's reason and exit 125,
// and nothing is written; so are command lines that are not a copy.
func TestCpRefused(t *testing.T) {
	testutil.ClearEnv(t)
	url := startFakeFleet(t)
	dir := t.TempDir()
	local := filepath.Join(dir, "f.txt")
	writeTree(t, dir, map[string]file{"f.txt": {"x\n", 0o644}})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"get with ..", []string{"demo:../../etc/passwd", filepath.Join(dir, "passwd")}, "path_refused"},
		{"get of an absolute path outside", []string{"demo:/etc/passwd", "-"}, "path_refused"},
		{"put with ..", []string{local, "demo:../escape.txt"}, "path_refused"},
		{"put to an absolute path outside", []string{local, "demo:/etc/evil"}, "path_refused"},
		{"missing file", []string{"demo:nothing-here", filepath.Join(dir, "nothing")}, "file_not_found"},
		{"two local paths", []string{local, filepath.Join(dir, "g.txt")}, "one of them must be CONVERSATION:PATH"},
		{"two conversations", []string{"a:x", "b:y"}, "copy through a local directory"},
		{"one argument", []string{local}, "cp takes two arguments"},
		{"stdin to a directory", []string{"-", "demo:"}, "needs a file name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := cli("", append([]string{"cp", "--nats-url", url}, tc.args...)...)
			if code != exitFleetError || out != "" || !strings.Contains(errOut, tc.want) {
				t.Errorf("codefleet cp %q: exit %d, stdout %q, stderr %q; want exit %d and %q", tc.args, code, out, errOut, exitFleetError, tc.want)
			}
		})
	}
	got, _ := readTree(t, dir)
	if len(got) != 1 {
		t.Errorf("refused copies left files: %v", slices.Sorted(maps.Keys(got)))
	}
	if code, out, _ := cli("", "run", "--nats-url", url, "--conversation", "demo", "--language", "bash", "ls -A; test -e ../escape.txt && echo escaped; true"); code != 0 || out != "" {
		t.Errorf("the workspace after refused copies: exit %d, %q", code, out)
	}
}
