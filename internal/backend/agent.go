package backend

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/rs/zerolog"

	"github.com/codefleet/codefleet/internal/agent"
	"github.com/codefleet/codefleet/internal/config"
)

// Where FindAgent found the agent: Agent.Source.
const (
	SourceFlag       = "--agent"                // the flag or its variable
	SourceNextToExe  = "next to the executable" // sandbox-agent in the running executable's directory
	SourcePath       = "$PATH"                  // sandbox-agent in $PATH
	SourceExecutable = "this executable"        // the running executable, run as the agent
)

// Agent is the sandbox-agent binary the Docker backend copies into every sandbox.
type Agent struct {
	// Path is the file.
	Path string
	// Source says which rule of FindAgent found it: one of the Source constants.
	Source string
}

// FindAgent returns the sandbox-agent binary:
//
//  1. flagValue (--agent, or $CODEFLEET_AGENT) when set; it must be an executable file;
//  2. else a file named sandbox-agent next to the running executable (`make build` and
//     `go install ./cmd/...` put it there);
//  3. else sandbox-agent in $PATH;
//  4. else the running executable itself (os.Executable). cmd/worker and cmd/codefleet run
//     agent.Main when started under the name sandbox-agent, which is the name the Docker
//     backend gives the file inside the sandbox, so `go install .../cmd/codefleet@latest`
//     alone is enough for `codefleet dev`. Only on Linux: a binary of another system cannot
//     run in a Linux container.
func FindAgent(flagValue string) (Agent, error) {
	return findAgent(flagValue, os.Executable, runtime.GOOS)
}

func findAgent(flagValue string, executable func() (string, error), goos string) (Agent, error) {
	if flagValue != "" {
		if err := isExecutableFile(flagValue); err != nil {
			return Agent{}, fmt.Errorf("--agent %s: %w", flagValue, err)
		}
		return Agent{Path: flagValue, Source: SourceFlag}, nil
	}
	var tried []string
	exe, exeErr := executable()
	if exeErr == nil {
		p := filepath.Join(filepath.Dir(exe), agent.ExecutableName)
		if isExecutableFile(p) == nil {
			return Agent{Path: p, Source: SourceNextToExe}, nil
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath(agent.ExecutableName); err == nil {
		return Agent{Path: p, Source: SourcePath}, nil
	}
	tried = append(tried, agent.ExecutableName+" in $PATH")
	switch {
	case exeErr != nil:
		tried = append(tried, "this executable: "+exeErr.Error())
	case goos != "linux":
		tried = append(tried, "this executable, a "+goos+" binary that cannot run in a Linux sandbox")
	default:
		return Agent{Path: exe, Source: SourceExecutable}, nil
	}
	return Agent{}, fmt.Errorf("the %s binary was not found (tried %s): build it for linux with `make build` and pass --agent or set %s",
		agent.ExecutableName, strings.Join(tried, ", "), config.EnvName("agent"))
}

func isExecutableFile(p string) error {
	st, err := os.Stat(p)
	switch {
	case err != nil:
		return err
	case st.IsDir():
		return errors.New("is a directory")
	case st.Mode().Perm()&0o111 == 0:
		return errors.New("is not executable")
	}
	return nil
}

// Interpreter returns the dynamic loader an ELF executable names (its PT_INTERP), "" for a
// static executable or a file that is not ELF. A Go binary built with cgo (the default of `go
// build` and `go install` where a C compiler exists) that imports net is linked against glibc
// and names /lib64/ld-linux-x86-64.so.2 or the like: it runs in images that have glibc (the
// Debian sandbox image does), not in Alpine's or distroless static ones.
func Interpreter(path string) string {
	f, err := elf.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "unknown"
		}
		return strings.TrimRight(string(b), "\x00")
	}
	return ""
}

// log says which agent the sandboxes get: at info, or at warn when it is the running
// executable itself (each sandbox then gets a copy of a much bigger file; with a dynamically
// linked one, images without glibc cannot start).
func (a Agent) log(log zerolog.Logger) {
	ev := log.Info()
	if a.Source == SourceExecutable {
		ev = log.Warn()
	}
	ev = ev.Str("agent", a.Path).Str("found", a.Source)
	if st, err := os.Stat(a.Path); err == nil {
		ev = ev.Int64("size", st.Size())
	}
	msg := "sandbox agent"
	if interp := Interpreter(a.Path); interp != "" {
		ev = ev.Str("interpreter", interp)
		msg = "sandbox agent (dynamically linked: sandbox images need glibc; build it with CGO_ENABLED=0 for others)"
	}
	ev.Msg(msg)
}
