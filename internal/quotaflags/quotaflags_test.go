package quotaflags_test

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/quotaflags"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/quota"
)

func parse(t *testing.T, args ...string) (quota.Limits, error) {
	t.Helper()
	fs := config.New("dispatcher", &bytes.Buffer{})
	var q quotaflags.Options
	q.Register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return q.Limits()
}

func TestLimits(t *testing.T) {
	testutil.ClearEnv(t)
	file := filepath.Join(t.TempDir(), "quotas.json")
	if err := os.WriteFile(file, []byte(`{"big": {"max_sandboxes": 100}}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want quota.Limits
	}{
		{"defaults limit nothing", nil, quota.Limits{}},
		{"flags", []string{"--tenant-max-sandboxes", "10", "--tenant-max-runs", "4"},
			quota.Limits{Default: quota.Limit{MaxSandboxes: 10, MaxRuns: 4}}},
		// A field left out keeps the flag's value; 0 in the JSON is unlimited for that tenant.
		{"overrides", []string{"--tenant-max-sandboxes", "10", "--tenant-max-runs", "4",
			"--tenant-quotas", `{"acme":{"max_runs":8}, "free":{"max_sandboxes":0,"max_runs":0}, "same":{}}`},
			quota.Limits{Default: quota.Limit{MaxSandboxes: 10, MaxRuns: 4}, Tenants: map[string]quota.Limit{
				"acme": {MaxSandboxes: 10, MaxRuns: 8}, "free": {}, "same": {MaxSandboxes: 10, MaxRuns: 4}}}},
		{"file", []string{"--tenant-quotas", "@" + file},
			quota.Limits{Tenants: map[string]quota.Limit{"big": {MaxSandboxes: 100}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parse(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Tenants) == 0 {
				got.Tenants = nil
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if l, err := parse(t, "--tenant-quotas", `{"acme":{"max_runs":1}}`); err != nil || !l.Enabled() || l.For("other") != (quota.Limit{}) {
		t.Fatalf("one tenant's quota: %+v %v", l, err)
	}
}

func TestLimitsErrors(t *testing.T) {
	testutil.ClearEnv(t)
	trailing := filepath.Join(t.TempDir(), "trailing.json")
	if err := os.WriteFile(trailing, []byte(`{"a":{}} {"b":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"negative", []string{"--tenant-max-sandboxes", "-1"}, []string{"--tenant-max-sandboxes -1", "want 0 (unlimited)"}},
		{"huge", []string{"--tenant-max-runs", "1000000"}, []string{"--tenant-max-runs 1000000"}},
		{"unknown field", []string{"--tenant-quotas", `{"acme":{"max_sandbox":3}}`}, []string{"--tenant-quotas", `unknown field "max_sandbox"`}},
		{"not an object", []string{"--tenant-quotas", `[1]`}, []string{"--tenant-quotas", "want a JSON object"}},
		{"not a number", []string{"--tenant-quotas", `{"acme":{"max_runs":"4"}}`}, []string{"--tenant-quotas", "max_runs"}},
		{"negative in the file", []string{"--tenant-quotas", `{"acme":{"max_runs":-2}}`}, []string{"--tenant-quotas", "tenant acme", "max_runs -2"}},
		{"bad tenant", []string{"--tenant-quotas", `{"a.b":{"max_runs":2}}`}, []string{"--tenant-quotas", `tenant "a.b"`}},
		{"trailing data", []string{"--tenant-quotas", "@" + trailing}, []string{"--tenant-quotas file " + trailing, "nothing after it"}},
		{"missing file", []string{"--tenant-quotas", "@/nonexistent.json"}, []string{"--tenant-quotas", "no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.args...)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Fatalf("got %v, want an error with %q", err, w)
				}
			}
		})
	}
}
