package agent

import (
	"slices"
	"strings"
	"testing"
)

// The Docker backend's tests (pkg/envs/docker/disk_test.go) hold the guard to the limit in real
// sandboxes; these check its arguments and which directories it walks.

func TestDiskArgs(t *testing.T) {
	limit, watch, err := diskArgs([]string{"--disk-limit=1048576", "--disk-watch"})
	if err != nil || limit != 1<<20 || !watch {
		t.Fatalf("diskArgs = %d %v %v", limit, watch, err)
	}
	if limit, watch, err := diskArgs(nil); err != nil || limit != 0 || watch {
		t.Fatalf("no arguments: %d %v %v", limit, watch, err)
	}
	for _, bad := range [][]string{{"--disk-limit=lots"}, {"--disk-limit=-1"}, {"--other"}} {
		if _, _, err := diskArgs(bad); err == nil || !strings.Contains(err.Error(), strings.SplitN(bad[0], "=", 2)[0]) {
			t.Errorf("diskArgs(%q) = %v, want an error naming the argument", bad, err)
		}
	}
}

func TestOutermost(t *testing.T) {
	got := outermost([]string{"/workspace", "/workspace", "/workspace/sub", "/tmp", "/tmpfoo", "/"})
	if want := []string{"/"}; !slices.Equal(got, want) {
		t.Fatalf("with / = %q, want %q", got, want)
	}
	got = outermost([]string{"/workspace", "/workspace", "/workspace/sub", "/tmp", "/tmpfoo"})
	if want := []string{"/workspace", "/tmp", "/tmpfoo"}; !slices.Equal(got, want) {
		t.Fatalf("outermost = %q, want %q", got, want)
	}
}
