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

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
)

// TestDevDaytona is the README's Daytona path on a fake Daytona service: `codefleet dev
// --backend daytona` with DAYTONA_API_KEY and DAYTONA_API_URL set starts a fleet whose
// conversations run in Daytona sandboxes, and leaves none behind when it stops.
func TestDevDaytona(t *testing.T) {
	fake, err := daytonafake.Start(daytonafake.Options{StepDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("DAYTONA_API_KEY", "dtn_fake")
	t.Setenv("DAYTONA_API_URL", fake.URL)
	t.Setenv("DAYTONA_TARGET", "eu")
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
		devDone <- run(ctx, []string{"dev", "--backend", "daytona", "--port", strconv.Itoa(port), "--worker-id", "dev-daytona", "--log-level", "warn"},
			nil, &bytes.Buffer{}, &devErr)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-devDone; code != 0 {
			t.Errorf("codefleet dev exited %d: %s", code, devErr.String())
		}
		if n := fake.Live(); n != 0 {
			t.Errorf("codefleet dev left %d Daytona sandboxes behind", n)
		}
		fake.Close()
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
	cliRun := func(flags []string, code ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		args := append(append([]string{"run", "--nats-url", url}, flags...), code...)
		c := run(context.Background(), args, strings.NewReader(""), &out, &errOut)
		return c, out.String(), errOut.String()
	}
	if code, out, errOut := cliRun([]string{"--conversation", "demo"}, "print(40+2)"); code != 0 || out != "42\n" {
		t.Fatalf("run print(40+2): exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, _, errOut := cliRun([]string{"--conversation", "demo", "--language", "bash"}, "echo hi > notes.txt; exit 3"); code != 3 {
		t.Fatalf("run exit 3: exit %d, stderr %q", code, errOut)
	}
	all := fake.Sandboxes()
	if len(all) != 1 || all[0].Target != "eu" || all[0].Labels["io.codefleet.worker"] != "dev-daytona" {
		t.Fatalf("Daytona sandboxes %+v, want the conversation's, in eu", all)
	}
}
