package config

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// agentName is the file name of the sandbox agent binary.
const agentName = "sandbox-agent"

// FindAgent returns the sandbox-agent binary: the --agent flag (or $CODEFLEET_AGENT) when set,
// else a file named sandbox-agent next to the worker's executable, else sandbox-agent in $PATH.
func FindAgent(flagValue string) (string, error) {
	if flagValue != "" {
		if err := isExecutableFile(flagValue); err != nil {
			return "", fmt.Errorf("--agent %s: %w", flagValue, err)
		}
		return flagValue, nil
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), agentName)
		if isExecutableFile(p) == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath(agentName); err == nil {
		return p, nil
	}
	tried = append(tried, agentName+" in $PATH")
	return "", fmt.Errorf("the %s binary was not found (tried %s): build it with `make build` and pass --agent or set %s",
		agentName, strings.Join(tried, ", "), EnvName("agent"))
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
