package integration

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// TestNATSCLIStream streams a run through a dispatcher and a worker in containers with nothing
// but the stock nats CLI, as docs/protocol.md shows it: `nats sub` on the run's stream subject
// in one process, `nats request` of a run printing a line every 200 ms for 3 s in another. The
// subscriber prints the first chunk long before the request has its reply, every chunk in
// order; then a file goes in and out with `nats request`, and a planted link is refused.
func TestNATSCLIStream(t *testing.T) {
	f := newFleet(t)
	f.startNATS()
	f.startDispatcher("d1")
	f.startWorker("w1")
	sch := schemas(t)
	check := func(name string, b []byte) {
		t.Helper()
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("not JSON: %s", b)
		}
		if s := sch[name]; s == nil {
			t.Fatalf("no schema %s", name)
		} else if err := s.Validate(doc); err != nil {
			t.Fatalf("does not match %s.json: %v\n%s", name, err, b)
		}
	}
	conv := "cli-stream"
	f.natsRequest("codefleet.run.default."+conv, map[string]any{"code": "true", "language": "bash"}) // its sandbox, made

	// nats sub in the background, as docs/protocol.md shows it: it says on stderr when it has
	// subscribed, then prints each message's body on a line of its own as it comes, timed here.
	sub := exec.Command(natsCLI(t), "--server", f.natsURL(), "--no-context", "sub", "codefleet.stream.default."+conv+".ticks")
	stdout, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var subErr testutil.SyncBuffer
	sub.Stderr = &subErr
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Process.Kill(); sub.Wait() })
	type line struct {
		b  []byte
		at time.Time
	}
	var mu sync.Mutex
	var lines []line
	go func() {
		s := bufio.NewScanner(stdout)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			if !bytes.HasPrefix(s.Bytes(), []byte("{")) {
				continue // "[#1] Received on ...", blank lines
			}
			mu.Lock()
			lines = append(lines, line{append([]byte(nil), s.Bytes()...), time.Now()})
			mu.Unlock()
		}
	}()
	testutil.Eventually(t, 30*time.Second, func() error {
		if !strings.Contains(subErr.String(), "Subscribing on") {
			return fmt.Errorf("nats sub is not subscribed yet: %q", subErr.String())
		}
		return nil
	})

	code := "import time\nfor i in range(15):\n    print('tick', i, flush=True)\n    time.sleep(0.2)\n"
	start := time.Now()
	reply := f.natsRequest("codefleet.run.default."+conv, map[string]any{"id": "ticks", "code": code, "language": "python", "stream": true})
	end := time.Now()
	check("run_result", reply)
	var res protocol.RunResult
	if err := json.Unmarshal(reply, &res); err != nil || res.Error != nil || res.ExitCode != 0 || res.Stream == nil {
		t.Fatalf("streamed run: %s (%v)", reply, err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if int64(len(lines)) < res.Stream.Chunks {
			return fmt.Errorf("nats sub printed %d of %d chunks", len(lines), res.Stream.Chunks)
		}
		return nil
	})
	mu.Lock()
	var all strings.Builder
	for i, l := range lines {
		check("output_chunk", l.b)
		var c protocol.OutputChunk
		json.Unmarshal(l.b, &c)
		if c.Seq != int64(i+1) || c.ID != "ticks" {
			t.Fatalf("chunk %d: %s", i+1, l.b)
		}
		all.WriteString(c.Data)
	}
	first := lines[0].at
	mu.Unlock()
	if all.String() != res.Output || strings.Count(all.String(), "\n") != 15 {
		t.Fatalf("streamed %q, result %q", all.String(), res.Output)
	}
	// `nats request` itself takes some 100 ms to start and connect: the first chunk still
	// comes within the run's first half second, the run lasting 3 s.
	if lead := end.Sub(first); lead < 2*time.Second {
		t.Fatalf("nats sub printed the first chunk %s after the request started and %s before its reply: not streamed", first.Sub(start), lead)
	}
	t.Logf("nats sub: first chunk %s after `nats request` started, %s before its reply; %d chunks", first.Sub(start).Round(time.Millisecond), end.Sub(first).Round(time.Millisecond), res.Stream.Chunks)

	// A file in and out with nats request.
	data := []byte("a,b\n1,2\n")
	sum := sha256.Sum256(data)
	put := f.natsRequest("codefleet.files.default."+conv, map[string]any{"op": "put", "path": "in/data.csv", "data": data, "sha256": hex.EncodeToString(sum[:])})
	check("file_result", put)
	res2 := f.natsRequest("codefleet.run.default."+conv, map[string]any{"code": "wc -l < in/data.csv; cp in/data.csv out.csv; echo 3,4 >> out.csv", "language": "bash"})
	if !strings.Contains(string(res2), `"output":"2\n"`) {
		t.Fatalf("the snippet reads the file put: %s", res2)
	}
	got := f.natsRequest("codefleet.files.default."+conv, map[string]any{"op": "get", "path": "out.csv"})
	check("file_result", got)
	var fr protocol.FileResult
	if err := json.Unmarshal(got, &fr); err != nil || string(fr.Data) != "a,b\n1,2\n3,4\n" || !fr.EOF || fr.Size != 12 {
		t.Fatalf("get out.csv: %s (%v)", got, err)
	}
	f.natsRequest("codefleet.run.default."+conv, map[string]any{"code": "ln -s /etc/passwd leak.txt", "language": "bash"})
	leak := f.natsRequest("codefleet.files.default."+conv, map[string]any{"op": "get", "path": "leak.txt"})
	check("file_result", leak)
	if !strings.Contains(string(leak), `"code":"path_refused"`) || strings.Contains(string(leak), "root:") {
		t.Fatalf("get of a planted link: %s", leak)
	}
}
