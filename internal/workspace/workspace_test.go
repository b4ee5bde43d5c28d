package workspace

import (
	"errors"
	"testing"
)

func TestRel(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"a.txt", "a.txt"},
		{"./a/b.txt", "a/b.txt"},
		{"a//b/", "a/b"},
		{"", ""},
		{".", ""},
		{"/workspace", ""},
		{"/workspace/", ""},
		{"/workspace/x/y", "x/y"},
	} {
		got, err := Rel("/workspace", c.in)
		if err != nil || got != c.want {
			t.Errorf("Rel(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"../etc/passwd", "a/../../b", "a/..", "/etc/shadow", "/workspacex/a", "/", "a\x00b"} {
		if got, err := Rel("/workspace", in); !errors.Is(err, ErrRefused) {
			t.Errorf("Rel(%q) = %q, %v; want ErrRefused", in, got, err)
		}
	}
}
