package daytona_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/daytona"
)

// Streaming and files beyond the conformance suite: what the Daytona backend's own ways (a
// live file read in ranges, scripts that check paths, stages of uploads) must get right.

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// collect returns a Stream func and what it got.
func collect() (func(envs.Chunk), func() []envs.Chunk) {
	var mu sync.Mutex
	var got []envs.Chunk
	return func(c envs.Chunk) {
			mu.Lock()
			got = append(got, c)
			mu.Unlock()
		}, func() []envs.Chunk {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(got)
		}
}

// TestStreamLatency measures the time from a print in the sandbox to its chunk in the worker:
// a python snippet prints its clock every 50 ms for 3 s (the fake's sandbox is the host, so
// the clocks agree). The numbers go to doc.go.
func TestStreamLatency(t *testing.T) {
	fake := startFake(t, daytonafake.Options{Warm: true})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("stream-latency"))
	var mu sync.Mutex
	var lat []time.Duration
	var pending string
	code := "import time\nfor i in range(60):\n    print(repr(time.time()), flush=True)\n    time.sleep(0.05)\n"
	res, err := sb.Run(context.Background(), envs.Exec{Language: "python", Code: code, Timeout: time.Minute, Stream: func(c envs.Chunk) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		pending += c.Data
		for {
			line, rest, ok := strings.Cut(pending, "\n")
			if !ok {
				return
			}
			pending = rest
			if f, err := strconv.ParseFloat(line, 64); err == nil {
				lat = append(lat, now.Sub(time.Unix(0, int64(f*1e9))))
			}
		}
	}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("run: %+v %v", res, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lat) != 60 {
		t.Fatalf("%d lines streamed, want 60", len(lat))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))].Round(time.Millisecond) }
	t.Logf("print to chunk: p50 %s, p90 %s, max %s (%d chunks)", p(0.5), p(0.9), p(1), res.Chunks)
	// Loose: the bound is the polling (100 ms) plus a read; under a loaded machine, more.
	if p(0.5) > time.Second {
		t.Errorf("median latency %s: the output is not streamed as produced", p(0.5))
	}
}

// TestStreamAccounting: a run that prints faster than a stream carries has its result capped
// as without a stream, and what was streamed plus what the result says was dropped is all it
// printed; the run's directory (its live file) is removed afterwards.
func TestStreamAccounting(t *testing.T) {
	fake := startFake(t, daytonafake.Options{Warm: true})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("stream-accounting"))
	const total = 3 << 20
	code := fmt.Sprintf("import sys\nsys.stdout.write('x' * %d)\n", total)
	emit, got := collect()
	res, err := sb.Run(context.Background(), envs.Exec{Language: "python", Code: code, Stream: emit})
	if err != nil || res.ExitCode != 0 || !res.Truncated {
		t.Fatalf("run: exit %d truncated %v %v", res.ExitCode, res.Truncated, err)
	}
	plain, err := sb.Run(context.Background(), envs.Exec{Language: "python", Code: code})
	if err != nil || plain.Output != res.Output {
		t.Fatalf("the streamed run's output (%d bytes) differs from the same run's without a stream (%d bytes): %v", len(res.Output), len(plain.Output), err)
	}
	var streamed, dropped int64
	for i, c := range got() {
		if c.Seq != int64(i+1) {
			t.Fatalf("chunk %d has seq %d", i+1, c.Seq)
		}
		streamed += int64(len(c.Data))
		dropped += c.Dropped
	}
	if streamed+res.StreamDropped != total || res.StreamDropped < dropped || res.Chunks != int64(len(got())) {
		t.Fatalf("streamed %d bytes in %d chunks (%d dropped in chunks), result says %d chunks and %d dropped: want %d bytes accounted for",
			streamed, len(got()), dropped, res.Chunks, res.StreamDropped, total)
	}
	t.Logf("%d bytes streamed, %d dropped (%d told in chunks)", streamed, res.StreamDropped, dropped)
	testutil.Eventually(t, 10*time.Second, func() error {
		if n := fake.Count("files-delete"); n < 1 {
			return fmt.Errorf("the run's directory was not removed (%d deletes)", n)
		}
		return nil
	})
}

// TestStreamedResultsAsWithout: streaming changes nothing in a run's result: exit codes,
// stderr, a timeout (its output so far streamed and kept), a line without a newline.
func TestStreamedResultsAsWithout(t *testing.T) {
	fake := startFake(t, daytonafake.Options{Warm: true})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("stream-results"))
	for _, ex := range []envs.Exec{
		{Language: "bash", Code: "echo out; echo err >&2; printf 'no newline'; exit 3"},
		{Language: "python", Code: "import sys\nprint('a')\nsys.stderr.write('b\\n')\nraise SystemExit(7)"},
		{Language: "bash", Code: "echo before; sleep 30", Timeout: 1500 * time.Millisecond},
		{Language: "bash", Code: "kill -9 $$"},
	} {
		plain, err := sb.Run(context.Background(), ex)
		if err != nil {
			t.Fatalf("%q: %v", ex.Code, err)
		}
		emit, got := collect()
		ex.Stream = emit
		res, err := sb.Run(context.Background(), ex)
		if err != nil {
			t.Fatalf("%q streamed: %v", ex.Code, err)
		}
		var all strings.Builder
		for _, c := range got() {
			all.WriteString(c.Data)
		}
		if res.Output != plain.Output || res.ExitCode != plain.ExitCode || res.TimedOut != plain.TimedOut || all.String() != res.Output {
			t.Errorf("%q: streamed %q, result %q exit %d timed out %v; without a stream %q exit %d timed out %v",
				ex.Code, all.String(), res.Output, res.ExitCode, res.TimedOut, plain.Output, plain.ExitCode, plain.TimedOut)
		}
	}
}

// TestPutPiecesAcrossWorkers: an upload's pieces may reach different workers (a conversation
// that moved): the stage is in the sandbox, found by any of them. A last piece sent again
// after it landed (its answer lost) is answered as it was; a new upload of the same id starts
// afresh.
func TestPutPiecesAcrossWorkers(t *testing.T) {
	fake := startFake(t, daytonafake.Options{Warm: true})
	stage := t.TempDir()
	env := newEnv(t, fake, func(c *daytona.Config) { c.UploadDir = stage })
	other := newEnv(t, fake, func(c *daytona.Config) { c.UploadDir = stage })
	sb := mustCreate(t, env, spec("pieces"))
	sb2, err := other.Open(context.Background(), sb.Info().ID)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789abcdef"), 10000)
	put := func(s envs.Sandbox, off, end int64, more bool, sha string) (envs.FileData, error) {
		return s.PutFile(ctx, envs.FilePut{Path: "sub/f.bin", Upload: "u1", Offset: off, Data: data[off:end], More: more, SHA256: sha, MaxSize: 1 << 20})
	}
	if d, err := put(sb, 0, 50000, true, ""); err != nil || d.Size != 50000 {
		t.Fatalf("piece 1: %+v %v", d, err)
	}
	// A part cut short (its upload broke) does not count: the next piece is taken, but the
	// answer says nothing came from offset 0 without a gap; piece 1 sent again fills it.
	parts, _ := filepath.Glob(filepath.Join(stage, "u*", "p0-50000"))
	if len(parts) != 1 {
		t.Fatalf("stage: %v", parts)
	}
	os.Truncate(parts[0], 1000)
	if d, err := put(sb2, 50000, 100000, true, ""); err != nil || d.Size != 0 {
		t.Fatalf("a piece after a part cut short: %+v %v, want it taken and size 0", d, err)
	}
	if d, err := put(sb2, 0, 50000, true, ""); err != nil || d.Size != 100000 {
		t.Fatalf("piece 1 again, through the other worker: %+v %v, want both pieces held", d, err)
	}
	if d, err := put(sb2, 50000, 100000, true, ""); err != nil || d.Size != 100000 {
		t.Fatalf("piece 2 through the other worker: %+v %v", d, err)
	}
	// A retry that overlaps what landed: only the new bytes are stored.
	if d, err := put(sb, 90000, 120000, true, ""); err != nil || d.Size != 120000 {
		t.Fatalf("an overlapping piece: %+v %v", d, err)
	}
	last, err := put(sb, 120000, int64(len(data)), false, sum(data))
	if err != nil || last.Size != int64(len(data)) || last.SHA256 != sum(data) || last.Mode != 0o644 {
		t.Fatalf("last piece: %+v %v", last, err)
	}
	if again, err := put(sb2, 120000, int64(len(data)), false, sum(data)); err != nil || again.Size != last.Size || again.SHA256 != last.SHA256 {
		t.Fatalf("the last piece sent again: %+v %v", again, err)
	}
	if got, err := os.ReadFile(filepath.Join(fake.Dir(sb.Info().ID), "sub/f.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the file put: %d bytes, %v", len(got), err)
	}
	// The same id for a new file: its first piece starts it again.
	if _, err := sb.PutFile(ctx, envs.FilePut{Path: "sub/f.bin", Upload: "u1", Data: []byte("new"), SHA256: sum([]byte("new")), MaxSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(fake.Dir(sb.Info().ID), "sub/f.bin")); string(got) != "new" {
		t.Fatalf("a new upload of the same id: %q", got)
	}
	// Nothing is left staged but the markers of finished uploads.
	left, _ := filepath.Glob(filepath.Join(stage, "*", "*"))
	for _, f := range left {
		if !strings.HasPrefix(filepath.Base(f), "done-") {
			t.Errorf("left in the stage: %s", f)
		}
	}
}

// TestFilePaths: absolute paths under the workspace (the daemon's working directory, or
// Config.Workdir), modes, a put that replaces a file atomically, names that shells mangle.
func TestFilePaths(t *testing.T) {
	fake := startFake(t, daytonafake.Options{Warm: true})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("paths"))
	ctx := context.Background()
	dir := fake.Dir(sb.Info().ID)
	for _, name := range []string{dir + "/abs.txt", "-dash", "sp ace/it's \"q\" $x `y`", "new\nline", "*", "nl\n/end\n"} {
		d, err := sb.PutFile(ctx, envs.FilePut{Path: name, Data: []byte(name), Mode: 0o600, MaxSize: 1 << 20})
		if err != nil || d.Mode != 0o600 || d.Size != int64(len(name)) || d.ModTime.IsZero() {
			t.Fatalf("put %q: %+v %v", name, d, err)
		}
		g, err := sb.GetFile(ctx, envs.FileGet{Path: name, MaxSize: 1 << 20})
		if err != nil || string(g.Data) != name || !g.EOF || g.SHA256 != sum([]byte(name)) || g.Mode != 0o600 {
			t.Fatalf("get %q: %+v %v", name, g, err)
		}
	}
	entries, _, err := sb.ListFiles(ctx, "", false, 100)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Path)
	}
	if want := []string{"*", "-dash", "abs.txt", "new\nline", "nl\n", "sp ace"}; !slices.Equal(names, want) {
		t.Errorf("list: %q, want %q", names, want)
	}

	// Config.Workdir is the workspace, for runs and files alike.
	work := filepath.Join(dir, "work")
	os.Mkdir(work, 0o755)
	wenv := newEnv(t, fake, func(c *daytona.Config) { c.Workdir = work })
	wsb, err := wenv.Open(ctx, sb.Info().ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wsb.PutFile(ctx, envs.FilePut{Path: work + "/w.txt", Data: []byte("w"), MaxSize: 10}); err != nil {
		t.Fatal(err)
	}
	if res, err := wsb.Run(ctx, envs.Exec{Language: "bash", Code: "cat w.txt"}); err != nil || res.Output != "w" {
		t.Errorf("a run in Workdir reads the file put there: %+v %v", res, err)
	}
	if _, err := wsb.GetFile(ctx, envs.FileGet{Path: dir + "/abs.txt", MaxSize: 10}); err == nil {
		t.Errorf("a path outside Workdir was read")
	}
}

// TestSwapRace: a process a snippet left running swaps a directory of the path for a link to
// a directory outside, over and over: puts and deletes act on the real directory or are
// refused, never outside.
func TestSwapRace(t *testing.T) {
	fake := startFake(t, daytonafake.Options{Warm: true})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("swap"))
	ctx := context.Background()
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "victim"), []byte("keep"), 0o644)
	// A blocking run (a session's end would kill the swapper with its session on the fake),
	// which waits for the swapper to have swapped once: it must have left the run's process
	// group before the run ends and the group is killed.
	swap := fmt.Sprintf(`mkdir real; setsid sh -c 'while :; do mv real real2 && ln -s %s real && rm real && mv real2 real; done' >/dev/null 2>&1 < /dev/null &
for i in $(seq 500); do [ -L real ] && exit 0; sleep 0.01; done; exit 1`, outside)
	if res, err := sb.Run(ctx, envs.Exec{Language: "bash", Code: swap, Timeout: 10 * time.Second}); err != nil || res.ExitCode != 0 {
		t.Fatalf("start the swapper: %+v %v", res, err)
	}
	// The swapper dies with the sandbox (the fake kills what carries its marker).
	outcomes := map[string]int{}
	for i := range 40 {
		_, err := sb.PutFile(ctx, envs.FilePut{Path: fmt.Sprintf("real/f%d", i), Data: []byte("x"), MaxSize: 10})
		outcomes[outcome(err)]++
		_, err = sb.DeleteFile(ctx, "real/victim", false)
		outcomes[outcome(err)]++
	}
	t.Logf("outcomes: %v", outcomes)
	left, _ := os.ReadDir(outside)
	if len(left) != 1 || left[0].Name() != "victim" {
		t.Errorf("outside the workspace: %v, want only victim, untouched", left)
	}
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, envs.ErrPathRefused):
		return "refused"
	case errors.Is(err, envs.ErrFileFailed):
		return "failed" // a mkdir that lost the race, say
	case errors.Is(err, envs.ErrFileNotFound):
		return "not found"
	}
	return err.Error()
}

// TestFilesSandboxGoneOrStopped: the file operations handle the toolbox's refusals as runs do:
// a stopped sandbox is started again, a deleted one is gone.
func TestFilesSandboxGoneOrStopped(t *testing.T) {
	fake := startFake(t, daytonafake.Options{})
	env := newEnv(t, fake, nil)
	sb := mustCreate(t, env, spec("files-stopped"))
	ctx := context.Background()
	if _, err := sb.PutFile(ctx, envs.FilePut{Path: "f", Data: []byte("kept"), MaxSize: 10}); err != nil {
		t.Fatal(err)
	}
	if err := fake.Stop(sb.Info().ID); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if s, _ := fake.Get(sb.Info().ID); s.State != "stopped" {
			return fmt.Errorf("state %s", s.State)
		}
		return nil
	})
	if d, err := sb.GetFile(ctx, envs.FileGet{Path: "f", MaxSize: 10}); err != nil || string(d.Data) != "kept" {
		t.Fatalf("get from a stopped sandbox: %+v %v", d, err)
	}
	gone, err := env.Create(ctx, spec("files-gone"))
	if err != nil {
		t.Fatal(err)
	}
	if err := newEnv(t, fake, nil).Destroy(ctx, gone.Info().ID); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if s, _ := fake.Get(gone.Info().ID); s.State != "destroyed" {
			return fmt.Errorf("state %s", s.State)
		}
		return nil
	})
	_, err = gone.GetFile(ctx, envs.FileGet{Path: "f", MaxSize: 10})
	wantErr(t, err, envs.ErrSandboxGone)
	_, err = gone.PutFile(ctx, envs.FilePut{Path: "f", Data: []byte("x"), MaxSize: 10})
	wantErr(t, err, envs.ErrSandboxGone)
}
