package main

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/internal/testutil"
)

func TestMain(m *testing.M) { testutil.MainWithLeftoverCheck(m) }

// TestNewcomerPath is what the README promises: `codefleet dev` starts a fleet, `codefleet run`
// prints 42 and exits 0, and `exit 3` in bash exits 3.
func TestNewcomerPath(t *testing.T) {
	testutil.RequireDocker(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	url := "nats://127.0.0.1:" + strconv.Itoa(port)

	ctx, cancel := context.WithCancel(context.Background())
	devDone := make(chan int, 1)
	var devErr bytes.Buffer
	go func() {
		devDone <- run(ctx, []string{"dev", "--port", strconv.Itoa(port), "--worker-id", "dev-" + testutil.RunID,
			"--agent", testutil.AgentBinary(t), "--image", testutil.SandboxImage(), "--log-level", "warn"}, nil, &bytes.Buffer{}, &devErr)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-devDone; code != 0 {
			t.Errorf("codefleet dev exited %d: %s", code, devErr.String())
		}
		if n, err := testutil.CountContainers("io.codefleet.worker", "dev-"+testutil.RunID); err != nil || n != 0 {
			t.Errorf("codefleet dev left %d sandboxes behind (%v)", n, err)
		}
	})
	testutil.Eventually(t, 30*time.Second, func() error {
		nc, err := nats.Connect(url)
		if err != nil {
			return err
		}
		defer nc.Close()
		_, err = nc.Request("$SRV.PING.codefleet-dispatcher", nil, time.Second)
		return err
	})

	cli := func(stdin string, args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(context.Background(), append(args, "--nats-url", url), strings.NewReader(stdin), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	// Flags after the code are not parsed by flag; put them first.
	cliRun := func(stdin string, flags []string, code ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		args := append(append([]string{"run", "--nats-url", url}, flags...), code...)
		c := run(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
		return c, out.String(), errOut.String()
	}
	if code, out, errOut := cliRun("", []string{"--conversation", "demo"}, "print(40+2)"); code != 0 || out != "42\n" {
		t.Fatalf("run print(40+2): exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, _, errOut := cliRun("", []string{"--conversation", "demo", "--language", "bash"}, "exit 3"); code != 3 {
		t.Fatalf("run exit 3: exit %d, stderr %q", code, errOut)
	}
	if code, out, _ := cliRun("open('f.txt','w').write('kept')\nprint(open('f.txt').read())", []string{"--conversation", "demo"}); code != 0 || out != "kept\n" {
		t.Fatalf("code from stdin: exit %d, stdout %q", code, out)
	}
	if code, _, errOut := cliRun("", []string{"--language", "cobol"}, "x"); code != exitFleetError || !strings.Contains(errOut, "unsupported_language") {
		t.Fatalf("cobol: exit %d, stderr %q", code, errOut)
	}
	if code, out, errOut := cli("", "status"); code != 0 || !strings.Contains(out, "dev-"+testutil.RunID) {
		t.Fatalf("status: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, errOut := cli("", "close", "--conversation", "demo"); code != 0 || !strings.HasPrefix(out, "closed demo") {
		t.Fatalf("close: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
