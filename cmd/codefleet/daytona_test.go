package main

import (
	"testing"
	"time"

	"github.com/codefleet/codefleet/internal/daytonafake"
	"github.com/codefleet/codefleet/internal/testutil"
)

// TestDevDaytona is the README's Daytona path on a fake Daytona service: `codefleet dev
// --backend daytona` with DAYTONA_API_KEY and DAYTONA_API_URL set starts a fleet whose
// conversations run in Daytona sandboxes, and leaves none behind when it stops.
func TestDevDaytona(t *testing.T) {
	testutil.ClearEnv(t)
	fake, err := daytonafake.Start(daytonafake.Options{StepDelay: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("DAYTONA_API_KEY", "dtn_fake")
	t.Setenv("DAYTONA_API_URL", fake.URL)
	t.Setenv("DAYTONA_TARGET", "eu")
	url := startDev(t, func() {
		if n := fake.Live(); n != 0 {
			t.Errorf("codefleet dev left %d Daytona sandboxes behind", n)
		}
		fake.Close()
	}, "--backend", "daytona", "--worker-id", "dev-daytona")

	if code, out, errOut := cli("", "run", "print(40+2)", "--conversation", "demo", "--nats-url", url); code != 0 || out != "42\n" {
		t.Fatalf("run print(40+2): exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, _, errOut := cli("", "run", "echo hi > notes.txt; exit 3", "--conversation", "demo", "--language", "bash", "--nats-url", url); code != 3 {
		t.Fatalf("run exit 3: exit %d, stderr %q", code, errOut)
	}
	all := fake.Sandboxes()
	if len(all) != 1 || all[0].Target != "eu" || all[0].Labels["io.codefleet.worker"] != "dev-daytona" {
		t.Fatalf("Daytona sandboxes %+v, want the conversation's, in eu", all)
	}
}
