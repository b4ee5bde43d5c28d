package envtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codefleet/codefleet/pkg/envs"
)

// The file and streaming cases: what a user moving files in and out of a sandbox, and watching
// a run's output as it comes, checks.

func (s *suite) fileCases(t *testing.T) {
	t.Run("StreamsOutputAsProduced", s.streams)
	t.Run("PutThenRunThenGet", s.putRunGet)
	t.Run("PutInPieces", s.putPieces)
	t.Run("GetInPieces", s.getPieces)
	t.Run("FilesBelongToTheSnippetsUser", s.fileOwner)
	t.Run("ListAndDelete", s.listDelete)
	t.Run("PathsStayInTheWorkspace", s.pathsConfined)
	t.Run("PlantedSymlinksAreNotFollowed", s.symlinks)
	t.Run("FileSizeLimit", s.fileLimit)
	t.Run("MissingFiles", s.missing)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16)})
	r.Read(b)
	return b
}

func hexSum(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func put(t *testing.T, sb envs.Sandbox, p envs.FilePut) envs.FileData {
	t.Helper()
	d, err := sb.PutFile(context.Background(), p)
	if err != nil {
		t.Fatalf("put %s: %v", p.Path, err)
	}
	return d
}

// getAll reads a whole file in pieces of n bytes, checking what each answer says.
func getAll(t *testing.T, sb envs.Sandbox, path string, n int64) ([]byte, string) {
	t.Helper()
	var out []byte
	sum := ""
	for {
		d, err := sb.GetFile(context.Background(), envs.FileGet{Path: path, Offset: int64(len(out)), Length: n, MaxSize: 1 << 30})
		if err != nil {
			t.Fatalf("get %s at %d: %v", path, len(out), err)
		}
		if len(out) == 0 {
			sum = d.SHA256
		}
		out = append(out, d.Data...)
		if d.EOF {
			if int64(len(out)) != d.Size {
				t.Fatalf("get %s: EOF after %d bytes, the file has %d", path, len(out), d.Size)
			}
			return out, sum
		}
		if len(d.Data) == 0 {
			t.Fatalf("get %s at %d: no data and no EOF (size %d)", path, len(out), d.Size)
		}
	}
}

func (s *suite) streams(t *testing.T) {
	sb := s.create(t)
	type got struct {
		c  envs.Chunk
		at time.Time
	}
	var mu sync.Mutex
	var chunks []got
	start := time.Now()
	code := "import time\nfor i in range(6):\n    print('tick', i, flush=True)\n    time.sleep(0.2)\n"
	res, err := sb.Run(context.Background(), envs.Exec{Code: code, Language: "python", Timeout: 30 * time.Second, Stream: func(c envs.Chunk) {
		mu.Lock()
		chunks = append(chunks, got{c, time.Now()})
		mu.Unlock()
	}})
	end := time.Now()
	if err != nil {
		t.Fatalf("streamed run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	var all strings.Builder
	for i, g := range chunks {
		if g.c.Seq != int64(i+1) {
			t.Fatalf("chunk %d has seq %d: chunks out of order or lost", i+1, g.c.Seq)
		}
		all.WriteString(g.c.Data)
	}
	want := "tick 0\ntick 1\ntick 2\ntick 3\ntick 4\ntick 5\n"
	if all.String() != want || res.Output != want || res.ExitCode != 0 {
		t.Fatalf("streamed %q, result %q exit %d; want %q twice and exit 0", all.String(), res.Output, res.ExitCode, want)
	}
	if res.Chunks != int64(len(chunks)) || res.StreamDropped != 0 {
		t.Fatalf("result says %d chunks (%d bytes dropped), %d were streamed", res.Chunks, res.StreamDropped, len(chunks))
	}
	// The first tick is printed at once and the run lasts about 1.2 s: the first chunk must
	// come long before the end, and the output must have come in several chunks.
	if lead := end.Sub(chunks[0].at); lead < 500*time.Millisecond || len(chunks) < 3 {
		t.Fatalf("first chunk %s after the start, %s before the end, %d chunks: the output was not streamed as produced", chunks[0].at.Sub(start), lead, len(chunks))
	}
	t.Logf("first chunk %s after the start, run %s, %d chunks", chunks[0].at.Sub(start).Round(time.Millisecond), end.Sub(start).Round(time.Millisecond), len(chunks))

	// A run without a stream is not streamed.
	res = run(t, sb, "bash", "echo quiet", 0)
	if res.Chunks != 0 {
		t.Fatalf("a run without a stream reports %d chunks", res.Chunks)
	}
}

func (s *suite) putRunGet(t *testing.T) {
	sb := s.create(t)
	data := randomBytes(1<<20 + 123)
	d := put(t, sb, envs.FilePut{Path: "in/data.bin", Data: data, SHA256: hexSum(data), MaxSize: 1 << 30})
	if d.Size != int64(len(data)) || d.SHA256 != hexSum(data) || d.Path != "in/data.bin" {
		t.Fatalf("put answered size %d sha %s path %q; want %d %s in/data.bin", d.Size, d.SHA256, d.Path, len(data), hexSum(data))
	}
	// The next snippet reads it, and writes a changed copy.
	res := run(t, sb, "python", "import hashlib\nb = open('in/data.bin','rb').read()\nprint(hashlib.sha256(b).hexdigest())\nopen('out.bin','wb').write(b[::-1])\n", 0)
	expect(t, res, hexSum(data)+"\n", 0)
	got, sum := getAll(t, sb, "out.bin", 0)
	slices.Reverse(data)
	if !bytes.Equal(got, data) || sum != hexSum(data) {
		t.Fatalf("got %d bytes (sha %s), want the %d reversed bytes (sha %s)", len(got), sum, len(data), hexSum(data))
	}
	// A put over an existing file replaces it, with the mode asked for.
	put(t, sb, envs.FilePut{Path: "run.sh", Data: []byte("#!/bin/sh\necho run by the sandbox\n"), Mode: 0o755, MaxSize: 1 << 20})
	expect(t, run(t, sb, "bash", "./run.sh", 0), "run by the sandbox\n", 0)
	put(t, sb, envs.FilePut{Path: "run.sh", Data: []byte("#!/bin/sh\necho replaced\n"), Mode: 0o755, MaxSize: 1 << 20})
	expect(t, run(t, sb, "bash", "./run.sh", 0), "replaced\n", 0)
}

func (s *suite) putPieces(t *testing.T) {
	sb := s.create(t)
	data := randomBytes(300 << 10)
	pieces := [][]byte{data[:100<<10], data[100<<10 : 200<<10], data[200<<10:]}
	off := int64(0)
	for i, p := range pieces[:2] {
		d := put(t, sb, envs.FilePut{Path: "big.bin", Upload: "up1", Offset: off, Data: p, More: true, MaxSize: 1 << 30})
		off += int64(len(p))
		if d.Size != off {
			t.Fatalf("piece %d: answered size %d, want %d", i, d.Size, off)
		}
		if i == 0 { // a piece sent again (a retry of a lost answer) is taken as it is
			put(t, sb, envs.FilePut{Path: "big.bin", Upload: "up1", Offset: 0, Data: p, More: true, MaxSize: 1 << 30})
		}
	}
	expect(t, run(t, sb, "bash", "test -e big.bin && echo visible || echo absent", 0), "absent\n", 0)
	last := envs.FilePut{Path: "big.bin", Upload: "up1", Offset: off, Data: pieces[2], SHA256: hexSum(data), MaxSize: 1 << 30}
	d := put(t, sb, last)
	if d.Size != int64(len(data)) || d.SHA256 != hexSum(data) {
		t.Fatalf("last piece: size %d sha %s, want %d %s", d.Size, d.SHA256, len(data), hexSum(data))
	}
	// The last piece sent again (its answer was lost) is answered as the first time.
	if again := put(t, sb, last); again.Size != d.Size || again.SHA256 != d.SHA256 {
		t.Fatalf("last piece sent again: size %d sha %s, want %d %s", again.Size, again.SHA256, d.Size, d.SHA256)
	}
	got, _ := getAll(t, sb, "big.bin", 0)
	if !bytes.Equal(got, data) {
		t.Fatalf("the file put in pieces differs (%d bytes, want %d)", len(got), len(data))
	}
	// A checksum that differs leaves nothing at the path.
	put(t, sb, envs.FilePut{Path: "bad.bin", Upload: "up2", Data: pieces[0], More: true, MaxSize: 1 << 30})
	_, err := sb.PutFile(context.Background(), envs.FilePut{Path: "bad.bin", Upload: "up2", Offset: int64(len(pieces[0])), Data: pieces[1], SHA256: hexSum(data), MaxSize: 1 << 30})
	if !errors.Is(err, envs.ErrFileFailed) || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("a put whose checksum differs: got %v, want ErrFileFailed naming the sha256", err)
	}
	expect(t, run(t, sb, "bash", "test -e bad.bin && echo visible || echo absent", 0), "absent\n", 0)

	// Pieces may come in any order (two dispatchers may pass them on in another order than
	// the client sent them): the answers say how many bytes came from offset 0 without a gap;
	// the last piece with bytes missing before it is refused, naming them, and lands once they
	// came.
	p0, p1, p2 := envs.FilePut{Path: "any.bin", Upload: "up3", Data: pieces[0], More: true, MaxSize: 1 << 30},
		envs.FilePut{Path: "any.bin", Upload: "up3", Offset: 100 << 10, Data: pieces[1], More: true, MaxSize: 1 << 30},
		envs.FilePut{Path: "any.bin", Upload: "up3", Offset: 200 << 10, Data: pieces[2], SHA256: hexSum(data), MaxSize: 1 << 30}
	if d := put(t, sb, p1); d.Size != 0 {
		t.Fatalf("the second piece first: answered size %d, want 0 (nothing from offset 0 yet)", d.Size)
	}
	_, err = sb.PutFile(context.Background(), p2)
	if !errors.Is(err, envs.ErrFileFailed) || !strings.Contains(err.Error(), "0 to 102400") {
		t.Fatalf("the last piece with the first missing: got %v, want ErrFileFailed naming bytes 0 to 102400", err)
	}
	expect(t, run(t, sb, "bash", "test -e any.bin && echo visible || echo absent", 0), "absent\n", 0)
	if d := put(t, sb, p0); d.Size != 300<<10 {
		t.Fatalf("the first piece last: answered size %d, want every byte (%d)", d.Size, 300<<10)
	}
	if d := put(t, sb, p2); d.SHA256 != hexSum(data) {
		t.Fatalf("the last piece again: sha %s, want %s", d.SHA256, hexSum(data))
	}
	if got, _ := getAll(t, sb, "any.bin", 0); !bytes.Equal(got, data) {
		t.Fatalf("the file put out of order differs (%d bytes)", len(got))
	}
}

func (s *suite) getPieces(t *testing.T) {
	sb := s.create(t)
	run(t, sb, "python", "open('counted.txt','w').write(''.join('%06d\\n' % i for i in range(5000)))", 0)
	var want strings.Builder
	for i := range 5000 {
		fmt.Fprintf(&want, "%06d\n", i)
	}
	got, sum := getAll(t, sb, "counted.txt", 7000)
	if string(got) != want.String() || sum != hexSum([]byte(want.String())) {
		t.Fatalf("got %d bytes in pieces of 7000 (sha %s), want %d", len(got), sum, want.Len())
	}
	// Past the end: no data, EOF.
	d, err := sb.GetFile(context.Background(), envs.FileGet{Path: "counted.txt", Offset: int64(want.Len()) + 10, MaxSize: 1 << 20})
	if err != nil || len(d.Data) != 0 || !d.EOF {
		t.Fatalf("get past the end: %d bytes eof %v err %v; want none, EOF", len(d.Data), d.EOF, err)
	}
}

func (s *suite) fileOwner(t *testing.T) {
	sb := s.create(t)
	put(t, sb, envs.FilePut{Path: "owned/by/me.txt", Data: []byte("mine"), MaxSize: 1 << 20})
	expect(t, run(t, sb, "bash", `[ "$(stat -c %u owned/by/me.txt)" = "$(id -u)" ] && [ "$(stat -c %u owned/by)" = "$(id -u)" ] && echo same || { id; ls -ln owned owned/by; }`, 0), "same\n", 0)
	// The snippet can change and remove what was put.
	expect(t, run(t, sb, "bash", "echo more >> owned/by/me.txt && cat owned/by/me.txt && rm -r owned && echo removed", 0), "minemore\nremoved\n", 0)
}

func (s *suite) listDelete(t *testing.T) {
	sb := s.create(t)
	run(t, sb, "bash", "mkdir -p d/e && echo 1 > d/one && echo 22 > d/e/two && ln -s /etc/passwd d/link", 0)
	entries, truncated, err := sb.ListFiles(context.Background(), "d", false, 100)
	if err != nil || truncated {
		t.Fatalf("list d: %v (truncated %v)", err, truncated)
	}
	got := map[string]envs.FileStat{}
	for _, e := range entries {
		got[e.Path] = e
	}
	if len(got) != 3 || got["d/one"].Type != "file" || got["d/one"].Size != 2 || got["d/e"].Type != "dir" || got["d/link"].Type != "symlink" || got["d/link"].Size != 0 {
		t.Fatalf("list d: %+v; want d/one (file, 2 bytes), d/e (dir), d/link (symlink, nothing told of its target)", entries)
	}
	entries, _, err = sb.ListFiles(context.Background(), "d", true, 100)
	if err != nil || len(entries) != 4 || !slices.ContainsFunc(entries, func(e envs.FileStat) bool { return e.Path == "d/e/two" && e.Size == 3 }) {
		t.Fatalf("list d recursively: %+v, %v; want 4 entries with d/e/two", entries, err)
	}
	if entries, truncated, err = sb.ListFiles(context.Background(), "d", true, 2); err != nil || !truncated || len(entries) != 2 {
		t.Fatalf("list of 4 entries with max 2: %d entries, truncated %v, %v", len(entries), truncated, err)
	}
	if entries, _, err = sb.ListFiles(context.Background(), "", false, 100); err != nil || !slices.ContainsFunc(entries, func(e envs.FileStat) bool { return e.Path == "d" && e.Type == "dir" }) {
		t.Fatalf("list of the workspace: %+v, %v; want d", entries, err)
	}
	// Deleting the link removes the link, not /etc/passwd.
	if ok, err := sb.DeleteFile(context.Background(), "d/link", false); !ok || err != nil {
		t.Fatalf("delete d/link: %v %v", ok, err)
	}
	expect(t, run(t, sb, "bash", "test -L d/link || echo gone; test -s /etc/passwd && echo kept", 0), "gone\nkept\n", 0)
	if ok, err := sb.DeleteFile(context.Background(), "d/one", false); !ok || err != nil {
		t.Fatalf("delete d/one: %v %v", ok, err)
	}
	if ok, err := sb.DeleteFile(context.Background(), "d/one", false); ok || err != nil {
		t.Fatalf("delete d/one again: %v %v; want false, nil", ok, err)
	}
	if _, err := sb.DeleteFile(context.Background(), "d", false); !errors.Is(err, envs.ErrFileFailed) {
		t.Fatalf("delete of a directory that is not empty, not recursive: %v; want ErrFileFailed", err)
	}
	if ok, err := sb.DeleteFile(context.Background(), "d", true); !ok || err != nil {
		t.Fatalf("delete d recursively: %v %v", ok, err)
	}
	expect(t, run(t, sb, "bash", "test -e d || echo gone", 0), "gone\n", 0)
}

func (s *suite) pathsConfined(t *testing.T) {
	sb := s.create(t)
	ctx := context.Background()
	for _, p := range []string{"../escape.txt", "a/../../escape.txt", "/etc/passwd", "/tmp/codefleet-envtest-x", "/"} {
		if _, err := sb.PutFile(ctx, envs.FilePut{Path: p, Data: []byte("x"), MaxSize: 1 << 20}); !errors.Is(err, envs.ErrPathRefused) {
			t.Errorf("put %q: %v; want ErrPathRefused", p, err)
		}
		d, err := sb.GetFile(ctx, envs.FileGet{Path: p, MaxSize: 1 << 20})
		if !errors.Is(err, envs.ErrPathRefused) || len(d.Data) != 0 {
			t.Errorf("get %q: %d bytes, %v; want ErrPathRefused and nothing", p, len(d.Data), err)
		}
		if _, _, err := sb.ListFiles(ctx, p, false, 10); !errors.Is(err, envs.ErrPathRefused) {
			t.Errorf("list %q: %v; want ErrPathRefused", p, err)
		}
		if _, err := sb.DeleteFile(ctx, p, true); !errors.Is(err, envs.ErrPathRefused) {
			t.Errorf("delete %q: %v; want ErrPathRefused", p, err)
		}
	}
	expect(t, run(t, sb, "bash", "test -e ../escape.txt || test -e /tmp/codefleet-envtest-x || echo nothing", 0), "nothing\n", 0)
}

func (s *suite) symlinks(t *testing.T) {
	sb := s.create(t)
	ctx := context.Background()
	// What a hostile snippet plants: a link to a file outside, a link to a directory outside,
	// a link inside a real directory, and a link to a file inside (refused too: never followed).
	run(t, sb, "bash", "mkdir -p real out && ln -s /etc/passwd leak.txt && ln -s /etc etc && ln -s /etc real/sub && echo inside > ok.txt && ln -s ok.txt alias.txt && ln -s /tmp out/tmp", 0)
	for _, p := range []string{"leak.txt", "etc/passwd", "real/sub/passwd", "alias.txt"} {
		d, err := sb.GetFile(ctx, envs.FileGet{Path: p, MaxSize: 1 << 20})
		if !errors.Is(err, envs.ErrPathRefused) {
			t.Errorf("get %q through a planted link: %v; want ErrPathRefused", p, err)
		}
		if len(d.Data) != 0 || d.Size != 0 || d.SHA256 != "" || (err != nil && strings.Contains(err.Error(), "root:")) {
			t.Errorf("get %q through a planted link disclosed something: %d bytes, size %d, sha %q, error %v", p, len(d.Data), d.Size, d.SHA256, err)
		}
		if _, _, err := sb.ListFiles(ctx, p, false, 10); !errors.Is(err, envs.ErrPathRefused) && !errors.Is(err, envs.ErrFileFailed) {
			t.Errorf("list %q: %v; want it refused", p, err)
		}
	}
	for _, p := range []string{"etc/codefleet-evil", "real/sub/codefleet-evil", "out/tmp/codefleet-evil", "leak.txt"} {
		if _, err := sb.PutFile(ctx, envs.FilePut{Path: p, Data: []byte("evil\n"), MaxSize: 1 << 20}); !errors.Is(err, envs.ErrPathRefused) {
			t.Errorf("put %q through a planted link: %v; want ErrPathRefused", p, err)
		}
	}
	if _, _, err := sb.ListFiles(ctx, "etc", false, 10); !errors.Is(err, envs.ErrPathRefused) {
		t.Errorf("list of a linked directory: %v; want ErrPathRefused", err)
	}
	if _, err := sb.DeleteFile(ctx, "etc/passwd", false); !errors.Is(err, envs.ErrPathRefused) {
		t.Errorf("delete through a linked directory: %v; want ErrPathRefused", err)
	}
	expect(t, run(t, sb, "bash", "test -e /etc/codefleet-evil || test -e /tmp/codefleet-evil || echo untouched; test -L leak.txt && test -s /etc/passwd && echo link-and-target-kept", 0), "untouched\nlink-and-target-kept\n", 0)
}

func (s *suite) fileLimit(t *testing.T) {
	sb := s.create(t)
	ctx := context.Background()
	const limit = 200 << 10
	data := randomBytes(limit + 1)
	_, err := sb.PutFile(ctx, envs.FilePut{Path: "over.bin", Data: data, MaxSize: limit})
	if !errors.Is(err, envs.ErrFileTooLarge) {
		t.Fatalf("put of the limit plus one byte: %v; want ErrFileTooLarge", err)
	}
	_, err = sb.PutFile(ctx, envs.FilePut{Path: "over.bin", Upload: "u", Data: data[:1000], More: true, DeclaredSize: limit + 1, MaxSize: limit})
	if !errors.Is(err, envs.ErrFileTooLarge) {
		t.Fatalf("put declaring the limit plus one byte: %v; want ErrFileTooLarge", err)
	}
	put(t, sb, envs.FilePut{Path: "over.bin", Upload: "v", Data: data[:limit/2], More: true, MaxSize: limit})
	_, err = sb.PutFile(ctx, envs.FilePut{Path: "over.bin", Upload: "v", Offset: limit / 2, Data: data[limit/2:], MaxSize: limit})
	if !errors.Is(err, envs.ErrFileTooLarge) {
		t.Fatalf("a last piece passing the limit by one byte: %v; want ErrFileTooLarge", err)
	}
	expect(t, run(t, sb, "bash", "test -e over.bin && echo visible || echo absent", 0), "absent\n", 0)
	d := put(t, sb, envs.FilePut{Path: "exact.bin", Data: data[:limit], MaxSize: limit})
	if d.Size != limit {
		t.Fatalf("a file of the limit: size %d", d.Size)
	}
	run(t, sb, "bash", "head -c 204801 /dev/zero > big.bin", 0)
	if _, err := sb.GetFile(ctx, envs.FileGet{Path: "big.bin", MaxSize: limit}); !errors.Is(err, envs.ErrFileTooLarge) {
		t.Fatalf("get of a file of the limit plus one byte: %v; want ErrFileTooLarge", err)
	}
}

func (s *suite) missing(t *testing.T) {
	sb := s.create(t)
	ctx := context.Background()
	if _, err := sb.GetFile(ctx, envs.FileGet{Path: "nope.txt", MaxSize: 1 << 20}); !errors.Is(err, envs.ErrFileNotFound) {
		t.Errorf("get of a missing file: %v; want ErrFileNotFound", err)
	}
	if _, _, err := sb.ListFiles(ctx, "nope", false, 10); !errors.Is(err, envs.ErrFileNotFound) {
		t.Errorf("list of a missing directory: %v; want ErrFileNotFound", err)
	}
	run(t, sb, "bash", "mkdir adir", 0)
	if _, err := sb.GetFile(ctx, envs.FileGet{Path: "adir", MaxSize: 1 << 20}); !errors.Is(err, envs.ErrFileFailed) {
		t.Errorf("get of a directory: %v; want ErrFileFailed", err)
	}
	if _, err := sb.PutFile(ctx, envs.FilePut{Path: "adir", Data: []byte("x"), MaxSize: 1 << 20}); !errors.Is(err, envs.ErrFileFailed) {
		t.Errorf("put onto a directory: %v; want ErrFileFailed", err)
	}
}
