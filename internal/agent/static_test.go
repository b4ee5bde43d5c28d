package agent

import (
	"debug/buildinfo"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"testing"
)

// TestStaticBinary: cmd/sandbox-agent is copied into sandbox images that need not have a C
// library, so it must be static even when built with cgo on, as `go install ./cmd/...` does
// wherever gcc is found.
func TestStaticBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "sandbox-agent")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/codefleet/codefleet/cmd/sandbox-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1") // the last value wins, whatever the environment says
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=1 go build ./cmd/sandbox-agent: %v\n%s", err, out)
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(info.Settings, debug.BuildSetting{Key: "CGO_ENABLED", Value: "1"}) {
		t.Fatalf("the binary was not built with cgo on: %v", info.Settings)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the binary has a PT_INTERP program header: it is dynamically linked")
		}
	}
	libs, err := f.ImportedLibraries() // the DT_NEEDED entries
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) > 0 {
		t.Errorf("the binary needs shared libraries: %v", libs)
	}
}
