package output_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/codefleet/codefleet/internal/output"
)

func TestCap(t *testing.T) {
	if out, cut := output.Cap("short", 10); out != "short" || cut {
		t.Errorf("under the cap: %q %v", out, cut)
	}
	if out, cut := output.Cap(strings.Repeat("x", 100), 0); len(out) != 100 || cut {
		t.Errorf("no cap: %d %v", len(out), cut)
	}
	s := "HEAD" + strings.Repeat(".", 1000) + "TAIL"
	out, cut := output.Cap(s, 100)
	if !cut || !strings.HasPrefix(out, "HEAD") || !strings.HasSuffix(out, "TAIL") || !strings.Contains(out, "\n[... 908 bytes truncated ...]\n") {
		t.Errorf("capped: %v %q", cut, out)
	}
	// No UTF-8 character is split; the count says exactly what was cut.
	s = strings.Repeat("é", 100) // 200 bytes
	out, cut = output.Cap(s, 51)
	if !cut || !utf8.ValidString(out) {
		t.Fatalf("utf-8: %v %q", cut, out)
	}
	head, tail, _ := strings.Cut(out, "\n[... ")
	_, tail, _ = strings.Cut(tail, " ...]\n")
	if len(head)+len(tail)+int(mustCount(t, out)) != len(s) {
		t.Errorf("kept %d+%d bytes and cut %d of %d", len(head), len(tail), mustCount(t, out), len(s))
	}
}

func mustCount(t *testing.T, out string) int64 {
	t.Helper()
	i := strings.Index(out, "[... ")
	var n int64
	for _, c := range out[i+5:] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

func TestBuffer(t *testing.T) {
	for _, tc := range []struct {
		max    int
		writes []string
		want   string
	}{
		{10, []string{"abc"}, "abc"},
		{10, []string{"0123456789"}, "0123456789"},
		{10, []string{"01234", "56789", "ab"}, "01234\n[... 2 bytes truncated ...]\n789ab"},
		{4, []string{"a", "b", "c", "d", "e", "f"}, "ab\n[... 2 bytes truncated ...]\nef"},
		{4, []string{"abcdefghij"}, "ab\n[... 6 bytes truncated ...]\nij"},
	} {
		b := output.NewBuffer(tc.max)
		for _, w := range tc.writes {
			b.Write([]byte(w))
		}
		if got := b.String(); got != tc.want {
			t.Errorf("max %d writes %q: got %q, want %q", tc.max, tc.writes, got, tc.want)
		}
	}
}
