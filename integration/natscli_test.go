package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// natsCLIVersion is the stock nats CLI the tests drive the fleet with.
const natsCLIVersion = "v0.5.0"

var (
	natsCLIOnce sync.Once
	natsCLIPath string
	natsCLIErr  error
)

// natsCLI builds github.com/nats-io/natscli at natsCLIVersion once per machine (kept in the
// user cache directory) and returns its path.
func natsCLI(t *testing.T) string {
	t.Helper()
	natsCLIOnce.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			cache = os.TempDir()
		}
		dir := filepath.Join(cache, "codefleet", "natscli-"+natsCLIVersion)
		natsCLIPath = filepath.Join(dir, "nats")
		if _, err := os.Stat(natsCLIPath); err == nil {
			return
		}
		cmd := exec.Command("go", "install", "github.com/nats-io/natscli/nats@"+natsCLIVersion)
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			natsCLIErr = fmt.Errorf("go install natscli %s: %v\n%s", natsCLIVersion, err, out)
		}
	})
	if natsCLIErr != nil {
		t.Fatal(natsCLIErr)
	}
	return natsCLIPath
}

// natsRun runs the nats CLI against the fleet and returns its stdout; stderr goes in the error.
func (f *fleet) natsRun(args ...string) (string, error) {
	f.t.Helper()
	cmd := exec.Command(natsCLI(f.t), append([]string{"--server", f.natsURL(), "--no-context"}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("nats --server %s %s: %v: %s", f.natsURL(), strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), nil
}

// natsRequest sends one request with `nats request --raw` and returns the reply body.
func (f *fleet) natsRequest(subject string, body any) []byte {
	f.t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		f.t.Fatal(err)
	}
	out, err := f.natsRun("request", "--raw", "--timeout", "60s", subject, string(b))
	if err != nil {
		f.t.Fatal(err)
	}
	return []byte(strings.TrimSpace(out))
}

// schemas compiles the wire contract's JSON Schemas.
func schemas(t *testing.T) map[string]*jsonschema.Schema {
	t.Helper()
	out := map[string]*jsonschema.Schema{}
	for _, name := range protocol.SchemaNames {
		b, err := protocol.Schema(name)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		c := jsonschema.NewCompiler()
		url := protocol.SchemaBaseURL + name + ".json"
		if err := c.AddResource(url, doc); err != nil {
			t.Fatal(err)
		}
		if out[name], err = c.Compile(url); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestNATSCLIConversation drives a conversation with nothing but the stock nats CLI: write a
// file, read it back, exit codes, a timeout, a bad request and close, every reply checked
// against the JSON Schemas; `nats micro` lists and describes the services.
func TestNATSCLIConversation(t *testing.T) {
	f := newFleet(t)
	f.startNATS()
	f.startDispatcher("d1")
	w1 := f.startWorker("w1")
	sch := schemas(t)
	run := func(req map[string]any) protocol.RunResult {
		t.Helper()
		reply := f.natsRequest("codefleet.run.default.cli-demo", req)
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(reply))
		if err != nil {
			t.Fatalf("reply is not JSON: %s", reply)
		}
		if err := sch["run_result"].Validate(doc); err != nil {
			t.Fatalf("reply does not match run_result.json: %v\n%s", err, reply)
		}
		var res protocol.RunResult
		if err := json.Unmarshal(reply, &res); err != nil {
			t.Fatal(err)
		}
		return res
	}

	res := run(map[string]any{"code": "open('data.txt','w').write('from nats')\nprint('written')", "language": "python"})
	if res.Error != nil || res.Output != "written\n" || res.ExitCode != 0 || !res.Sandbox.Created || res.Sandbox.Worker != workerID("w1") {
		t.Fatalf("write: %+v", res)
	}
	if logs := f.logsOf(w1); !strings.Contains(logs, `"transport":"socket"`) {
		t.Fatalf("the worker does not reach its sandbox over the shared socket directory:\n%s", logs)
	}
	res = run(map[string]any{"code": "cat data.txt; exit 7", "language": "bash"})
	if res.Output != "from nats" || res.ExitCode != 7 || res.Sandbox.Created {
		t.Fatalf("read back: %+v", res)
	}
	res = run(map[string]any{"code": "import time\nprint('tick', flush=True)\ntime.sleep(60)", "language": "python", "timeout_ms": 1000})
	if res.ExitCode != 124 || !res.TimedOut || res.Output != "tick\n" {
		t.Fatalf("timeout: %+v", res)
	}
	res = run(map[string]any{"code": "x", "language": "cobol"})
	if res.Error == nil || res.Error.Code != protocol.CodeUnsupportedLanguage {
		t.Fatalf("cobol: %+v", res)
	}
	if n := len(f.sandboxesOf("w1")); n != 1 {
		t.Fatalf("%d sandboxes for one conversation", n)
	}

	closed := f.natsRequest("codefleet.close.default.cli-demo", map[string]any{})
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(closed))
	if err != nil || sch["close_result"].Validate(doc) != nil || !strings.Contains(string(closed), `"closed":true`) {
		t.Fatalf("close: %s (%v)", closed, err)
	}
	if n := len(f.sandboxesOf("w1")); n != 0 {
		t.Fatalf("%d sandboxes after close", n)
	}

	ls, err := f.natsRun("micro", "ls", "--json")
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"codefleet-dispatcher", "codefleet-worker"} {
		if !strings.Contains(ls, `"`+svc+`"`) {
			t.Fatalf("nats micro ls does not list %s:\n%s", svc, ls)
		}
	}
	info, err := f.natsRun("micro", "info", "codefleet-worker", "--json")
	if err != nil || !strings.Contains(info, workerID("w1")) || !strings.Contains(info, "codefleet.worker."+workerID("w1")+".run") {
		t.Fatalf("nats micro info codefleet-worker: %v\n%s", err, info)
	}
}
