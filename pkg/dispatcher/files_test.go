package dispatcher_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/protocol"
)

var subjects = protocol.Subjects{}

// These tests speak the wire contract with a bare NATS connection, as a client in any
// language does, to a dispatcher and a worker with real Docker sandboxes.

// rawFleet is a Docker fleet of one dispatcher and one worker, and a bare connection to it.
func rawFleet(t *testing.T, workerID string) *nats.Conn {
	t.Helper()
	testutil.RequireDocker(t)
	ns := testutil.StartNATS(t)
	startWorker(t, ns, workerID+"-"+testutil.RunID, newDockerEnv(t))
	d := startDispatcher(t, ns)
	testutil.WaitWorkers(t, 1, d)
	return testutil.Connect(t, ns)
}

func request(t *testing.T, nc *nats.Conn, subject string, v any) []byte {
	t.Helper()
	msg, err := nc.Request(subject, protocol.Encode(v), 2*time.Minute)
	if err != nil {
		t.Fatalf("request on %s: %v", subject, err)
	}
	return msg.Data
}

func fileReq(t *testing.T, nc *nats.Conn, conv string, req protocol.FileRequest) *protocol.FileResult {
	t.Helper()
	res, err := protocol.DecodeFileResult(request(t, nc, subjects.Files("default", conv), req))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func runReq(t *testing.T, nc *nats.Conn, conv string, req protocol.RunRequest) *protocol.RunResult {
	t.Helper()
	res, err := protocol.DecodeRunResult(request(t, nc, subjects.Run("default", conv), req))
	if err != nil {
		t.Fatal(err)
	}
	if res.Error != nil {
		t.Fatalf("run %q: %v", req.Code, res.Error)
	}
	return res
}

// TestStreamedRunOnDocker: a run printing a line every 200 ms for 3 s, streamed through a
// dispatcher and a Docker worker: the client has the first line long before the run ends, every
// chunk in order, then the result with the exit code and the chunk count. Each line carries
// the time it was printed (the sandbox shares the host's clock), so the delay from print to
// client is measured line by line.
func TestStreamedRunOnDocker(t *testing.T) {
	nc := rawFleet(t, "stream")
	conv := "stream-" + testutil.RunID
	runReq(t, nc, conv, protocol.RunRequest{Code: "true", Language: "bash"}) // the sandbox exists: the stream is the run's alone

	type arrival struct {
		c  protocol.OutputChunk
		at time.Time
	}
	var mu sync.Mutex
	var got []arrival
	sub, err := nc.Subscribe(subjects.Stream("default", conv, "ticks-1"), func(m *nats.Msg) {
		c, err := protocol.DecodeOutputChunk(m.Data)
		if err != nil {
			t.Errorf("chunk %q: %v", m.Data, err)
			return
		}
		mu.Lock()
		got = append(got, arrival{*c, time.Now()})
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	nc.Flush()

	code := "import time\nfor i in range(15):\n    print('tick', i, '%.6f' % time.time(), flush=True)\n    time.sleep(0.2)\nraise SystemExit(3)\n"
	start := time.Now()
	res, err := protocol.DecodeRunResult(request(t, nc, subjects.Run("default", conv), protocol.RunRequest{ID: "ticks-1", Code: code, Language: "python", Stream: true}))
	end := time.Now()
	if err != nil || res.Error != nil {
		t.Fatalf("streamed run: %v %v", err, res.Error)
	}
	if res.ExitCode != 3 || res.Stream == nil || res.Stream.Subject != subjects.Stream("default", conv, "ticks-1") {
		t.Fatalf("result: exit %d stream %+v; want exit 3 and the stream's subject", res.ExitCode, res.Stream)
	}
	// The chunks and the reply take different routes: the result says how many to wait for.
	testutil.Eventually(t, 5*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if int64(len(got)) < res.Stream.Chunks {
			return fmt.Errorf("%d of %d chunks arrived", len(got), res.Stream.Chunks)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	var all strings.Builder
	lineAt := map[string]time.Time{} // when the line's chunk arrived
	for i, a := range got {
		if a.c.Seq != int64(i+1) || a.c.ID != "ticks-1" || a.c.Dropped != 0 {
			t.Fatalf("chunk %d: seq %d id %q dropped %d; want seq %d of ticks-1, nothing dropped", i, a.c.Seq, a.c.ID, a.c.Dropped, i+1)
		}
		all.WriteString(a.c.Data)
		for _, line := range strings.Split(strings.TrimSuffix(a.c.Data, "\n"), "\n") {
			lineAt[line] = a.at
		}
	}
	if all.String() != res.Output || strings.Count(res.Output, "\n") != 15 {
		t.Fatalf("streamed %q, result %q: want the same 15 lines", all.String(), res.Output)
	}
	var delays []time.Duration
	for line, at := range lineAt {
		f := strings.Fields(line)
		printed, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		delays = append(delays, at.Sub(time.Unix(0, int64(printed*1e9))))
	}
	first := got[0].at
	if lead := end.Sub(first); lead < 2*time.Second {
		t.Fatalf("first chunk %s before the end of a 3 s run: not streamed as produced", lead)
	}
	worst := time.Duration(0)
	for _, d := range delays {
		worst = max(worst, d)
	}
	t.Logf("first chunk %s after the request, %s before the result (run %s); %d chunks; print to client: worst %s of %d lines",
		first.Sub(start).Round(time.Millisecond), end.Sub(first).Round(time.Millisecond), end.Sub(start).Round(time.Millisecond), len(got), worst.Round(time.Microsecond), len(delays))
	if worst > time.Second {
		t.Fatalf("a line took %s from print to client", worst)
	}

	// A streamed run needs an id: without one it is refused, naming the field.
	bad, _ := protocol.DecodeRunResult(request(t, nc, subjects.Run("default", conv), protocol.RunRequest{Code: "true", Language: "bash", Stream: true}))
	if bad.Error == nil || bad.Error.Code != protocol.CodeBadRequest || !strings.Contains(bad.Error.Message, "id") {
		t.Fatalf("a streamed run without an id: %+v", bad.Error)
	}
}

// putFile puts data at path in pieces, as a client does, and returns the first and the last
// answers.
func putFile(t *testing.T, nc *nats.Conn, conv, path string, data []byte) (first, last *protocol.FileResult) {
	t.Helper()
	sum := sha256.Sum256(data)
	upload := "up-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	for off := 0; ; {
		end := min(off+protocol.FileChunkBytes, len(data))
		req := protocol.FileRequest{Op: protocol.FileOpPut, Path: path, Upload: upload, Offset: int64(off), Data: data[off:end], Size: int64(len(data)), More: end < len(data)}
		if !req.More {
			req.SHA256 = hex.EncodeToString(sum[:])
		}
		res := fileReq(t, nc, conv, req)
		if first == nil {
			first = res
		}
		if res.Error != nil || !req.More {
			return first, res
		}
		off = end
	}
}

// getFile gets a whole file in pieces, as a client does.
func getFile(t *testing.T, nc *nats.Conn, conv, path string) ([]byte, *protocol.FileResult) {
	t.Helper()
	var out []byte
	var first *protocol.FileResult
	for {
		res := fileReq(t, nc, conv, protocol.FileRequest{Op: protocol.FileOpGet, Path: path, Offset: int64(len(out))})
		if res.Error != nil {
			return nil, res
		}
		if first == nil {
			first = res
		}
		out = append(out, res.Data...)
		if res.EOF {
			return out, first
		}
	}
}

// TestFilesOnDocker: a 50 MiB file put in pieces through a dispatcher, read by the next snippet
// (same checksum), changed by it and got back equal; the size limit, paths outside the
// workspace and planted links refused with clear errors.
func TestFilesOnDocker(t *testing.T) {
	nc := rawFleet(t, "files")
	conv := "files-" + testutil.RunID

	data := make([]byte, 50<<20)
	rand.Read(data)
	sum := sha256.Sum256(data)
	start := time.Now()
	created, res := putFile(t, nc, conv, "data/big.bin", data)
	put := time.Since(start)
	if res.Error != nil || res.Size != int64(len(data)) || res.SHA256 != hex.EncodeToString(sum[:]) || res.Path != "data/big.bin" || res.Mode != "0644" {
		t.Fatalf("put of 50 MiB: %+v", res)
	}
	if created.Sandbox == nil || !created.Sandbox.Created {
		t.Fatalf("the first request of the conversation, a put, should have created its sandbox: %+v", res.Sandbox)
	}
	run := runReq(t, nc, conv, protocol.RunRequest{Language: "python", Code: "import hashlib\nb = bytearray(open('data/big.bin','rb').read())\nprint(hashlib.sha256(b).hexdigest())\nb[:5] = b'HELLO'\nopen('data/out.bin','wb').write(b)\n"})
	if run.ExitCode != 0 || strings.TrimSpace(run.Output) != hex.EncodeToString(sum[:]) {
		t.Fatalf("the next snippet read: %q exit %d; want sha256 %x", run.Output, run.ExitCode, sum)
	}
	start = time.Now()
	got, first := getFile(t, nc, conv, "data/out.bin")
	get := time.Since(start)
	copy(data, "HELLO")
	want := sha256.Sum256(data)
	if !bytes.Equal(got, data) || first.SHA256 != hex.EncodeToString(want[:]) || first.Size != int64(len(data)) {
		t.Fatalf("got %d bytes back (sha %s), want the changed %d (sha %x)", len(got), first.SHA256, len(data), want)
	}
	t.Logf("50 MiB: put in %s (%.0f MiB/s), got in %s (%.0f MiB/s), through the dispatcher", put.Round(time.Millisecond), 50/put.Seconds(), get.Round(time.Millisecond), 50/get.Seconds())

	// The limit: a file of the limit plus one byte is refused at its first piece, saying both sizes.
	over := fileReq(t, nc, conv, protocol.FileRequest{Op: protocol.FileOpPut, Path: "over.bin", Upload: "over", Data: data[:1024], More: true, Size: protocol.DefaultMaxFileBytes + 1})
	if over.Error == nil || over.Error.Code != protocol.CodeFileTooLarge || !strings.Contains(over.Error.Message, strconv.Itoa(protocol.DefaultMaxFileBytes)) {
		t.Fatalf("a put of the limit plus one byte: %+v", over.Error)
	}

	// Hostile paths and planted links.
	runReq(t, nc, conv, protocol.RunRequest{Language: "bash", Code: "ln -s /etc/shadow shadow.txt; ln -s /etc/passwd out.txt; ln -s /etc etc"})
	for _, c := range []struct {
		req  protocol.FileRequest
		code protocol.Code
	}{
		{protocol.FileRequest{Op: protocol.FileOpGet, Path: "out.txt"}, protocol.CodePathRefused},
		{protocol.FileRequest{Op: protocol.FileOpGet, Path: "shadow.txt"}, protocol.CodePathRefused},
		{protocol.FileRequest{Op: protocol.FileOpGet, Path: "etc/passwd"}, protocol.CodePathRefused},
		{protocol.FileRequest{Op: protocol.FileOpGet, Path: "../../etc/passwd"}, protocol.CodePathRefused},
		{protocol.FileRequest{Op: protocol.FileOpGet, Path: "/etc/passwd"}, protocol.CodePathRefused},
		{protocol.FileRequest{Op: protocol.FileOpPut, Path: "etc/cron.d/evil", Data: []byte("x")}, protocol.CodePathRefused},
		{protocol.FileRequest{Op: protocol.FileOpPut, Path: "out.txt", Data: []byte("x")}, protocol.CodePathRefused},
		{protocol.FileRequest{Op: protocol.FileOpList, Path: "etc"}, protocol.CodePathRefused},
		{protocol.FileRequest{Op: protocol.FileOpGet, Path: "missing.txt"}, protocol.CodeFileNotFound},
		{protocol.FileRequest{Op: protocol.FileOpGet, Path: "data"}, protocol.CodeFileFailed},
	} {
		res := fileReq(t, nc, conv, c.req)
		if res.Error == nil || res.Error.Code != c.code || len(res.Data) != 0 || strings.Contains(res.Error.Message, "root:") {
			t.Errorf("%s %s: %+v, data %q; want %s and nothing disclosed", c.req.Op, c.req.Path, res.Error, res.Data, c.code)
		} else {
			t.Logf("%s %s: %s: %s", c.req.Op, c.req.Path, res.Error.Code, res.Error.Message)
		}
	}
	list := fileReq(t, nc, conv, protocol.FileRequest{Op: protocol.FileOpList, Recursive: true})
	types := map[string]string{}
	for _, e := range list.Entries {
		types[e.Path] = e.Type
	}
	if list.Error != nil || types["out.txt"] != protocol.FileTypeSymlink || types["data/out.bin"] != protocol.FileTypeFile || types["etc"] != protocol.FileTypeSymlink {
		t.Fatalf("list: %+v %v", list.Entries, list.Error)
	}
	if del := fileReq(t, nc, conv, protocol.FileRequest{Op: protocol.FileOpDelete, Path: "data", Recursive: true}); del.Error != nil || !del.Deleted {
		t.Fatalf("delete data: %+v", del)
	}
}
