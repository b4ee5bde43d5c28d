package wire_test

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/codefleet/codefleet"

// deps returns the packages pkg depends on, itself included (go list -deps).
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr.Bytes())
	}
	return strings.Fields(string(out))
}

// TestDependencies keeps the agent's layers apart: the worker side links the frames, not the
// agent's process handling; neither the agent nor its frames depend on the worker's packages;
// and the agent binary stays free of the packages that make a cgo build dynamic.
func TestDependencies(t *testing.T) {
	if d := deps(t, module+"/pkg/envs/docker"); slices.Contains(d, module+"/internal/agent") {
		t.Errorf("pkg/envs/docker depends on internal/agent (the runtime); it should import internal/agent/wire only")
	} else if !slices.Contains(d, module+"/internal/agent/wire") {
		t.Errorf("pkg/envs/docker does not depend on internal/agent/wire: is this test still right?")
	}
	for _, pkg := range []string{module + "/internal/agent", module + "/internal/agent/wire"} {
		for _, d := range deps(t, pkg) {
			if strings.HasPrefix(d, module+"/pkg/") {
				t.Errorf("%s depends on %s", pkg, d)
			}
		}
	}
	// The frames are only frames: nothing of codefleet.
	for _, d := range deps(t, module+"/internal/agent/wire") {
		if strings.HasPrefix(d, module+"/") && d != module+"/internal/agent/wire" {
			t.Errorf("internal/agent/wire depends on %s", d)
		}
	}
	// net and os/user link the C library when cgo is on (see internal/agent/socket.go).
	for _, d := range deps(t, module+"/cmd/sandbox-agent") {
		if d == "net" || d == "os/user" {
			t.Errorf("cmd/sandbox-agent depends on %s: a cgo build of it would not be static", d)
		}
	}
}
