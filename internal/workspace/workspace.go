// Package workspace confines the paths of file requests to a sandbox's workspace, the same way
// on every backend: Rel checks a path by its text (no "..", nothing outside the workspace); the
// backend then opens it without following any symbolic link (the agent's openat walk, Daytona's
// checks of each element). It imports only the standard library: the sandbox agent uses it.
package workspace

import (
	"errors"
	"fmt"
	"strings"
)

// ErrRefused is what every refusal of a path matches (errors.Is): those of Rel, and the
// backends' refusals of a path through a symbolic link (Refusef).
var ErrRefused = errors.New("path refused")

// Refusal is a refused path. Its message says why, without a prefix: the error code or the
// caller says it was refused.
type Refusal struct{ Msg string }

func (r *Refusal) Error() string        { return r.Msg }
func (r *Refusal) Is(target error) bool { return target == ErrRefused }

// Refusef returns a Refusal with a formatted message.
func Refusef(format string, args ...any) error {
	return &Refusal{Msg: fmt.Sprintf(format, args...)}
}

// Rel returns p relative to the workspace at root ("" for the workspace itself), with its
// elements separated by single slashes. p is relative to the workspace, or absolute under root.
// A path with a ".." element, an absolute path outside root, or a NUL byte is refused:
// the error wraps ErrRefused and says why.
func Rel(root, p string) (string, error) {
	if strings.IndexByte(p, 0) >= 0 {
		return "", Refusef("the path contains a NUL byte")
	}
	rel := p
	if strings.HasPrefix(p, "/") {
		r := strings.TrimRight(root, "/")
		switch {
		case p == r || p == r+"/":
			rel = ""
		case strings.HasPrefix(p, r+"/"):
			rel = p[len(r)+1:]
		default:
			return "", Refusef("%q is outside the workspace %s", trim(p), root)
		}
	}
	var parts []string
	for _, e := range strings.Split(rel, "/") {
		switch e {
		case "", ".":
		case "..":
			return "", Refusef("%q has a \"..\" element; paths stay in the workspace %s", trim(p), root)
		default:
			parts = append(parts, e)
		}
	}
	return strings.Join(parts, "/"), nil
}

// Elements splits a path from Rel into its elements (none for the workspace itself).
func Elements(rel string) []string {
	if rel == "" {
		return nil
	}
	return strings.Split(rel, "/")
}

func trim(s string) string {
	if len(s) > 96 {
		return s[:96] + "..."
	}
	return s
}
