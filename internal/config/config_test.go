package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestEnvName(t *testing.T) {
	for _, tc := range []struct{ flag, env string }{
		{"max-timeout", "CODEFLEET_MAX_TIMEOUT"},
		{"id", "CODEFLEET_ID"},
		{"nats-url", "CODEFLEET_NATS_URL"},
		{"kv-replicas", "CODEFLEET_KV_REPLICAS"},
		{"already_snake", "CODEFLEET_ALREADY_SNAKE"},
	} {
		if got := EnvName(tc.flag); got != tc.env {
			t.Errorf("EnvName(%q) = %q, want %q", tc.flag, got, tc.env)
		}
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false},
		{"4096", 4096, false},
		{"100b", 100, false},
		{"256k", 256 << 10, false},
		{"256K", 256 << 10, false},
		{"256kb", 256 << 10, false},
		{"256KiB", 256 << 10, false},
		{"512MiB", 512 << 20, false},
		{"512m", 512 << 20, false},
		{"512 MB", 512 << 20, false},
		{"1g", 1 << 30, false},
		{"1GiB", 1 << 30, false},
		{"1.5g", 3 << 29, false},
		{"0.5k", 512, false},
		{"2t", 2 << 40, false},
		{" 64m ", 64 << 20, false},
		{"", 0, true},
		{"m", 0, true},
		{"-1", 0, true},
		{"-1g", 0, true},
		{"12x", 0, true},
		{"1e3", 0, true},
		{"1.2.3m", 0, true},
		{"9999999999999t", 0, true},
		{"99999999999999999999", 0, true},
	} {
		got, err := ParseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0"},
		{1500, "1500"},
		{1024, "1KiB"},
		{256 << 10, "256KiB"},
		{512 << 20, "512MiB"},
		{1 << 30, "1GiB"},
		{3 << 29, "1536MiB"},
		{5 << 40, "5TiB"},
	} {
		got := FormatSize(tc.in)
		if got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
		back, err := ParseSize(got)
		if err != nil || back != tc.in {
			t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", tc.in, back, err)
		}
	}
}

func TestSplitList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", []string{}},
		{"a", []string{"a"}},
		{"a,b", []string{"a", "b"}},
		{" a , b ,, c,", []string{"a", "b", "c"}},
	} {
		if got := SplitList(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SplitList(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// values is every kind of flag, declared on one set.
type values struct {
	str   *string
	n     *int
	n64   *int64
	f     *float64
	b     *bool
	d     *time.Duration
	list  *[]string
	size  *int64
	alias *string
}

func declare(fs *FlagSet) values {
	v := values{
		str: fs.String("name", "def", "a string"),
		n:   fs.Int("count", 3, "an int"),
		n64: new(int64), f: new(float64), b: new(bool), list: new([]string), size: new(int64),
		d:     fs.Duration("max-timeout", 10*time.Minute, "a duration"),
		alias: fs.String("nats-url", "nats://127.0.0.1:4222", "a string with an alias"),
	}
	fs.Int64Var(v.n64, "big", 7, "an int64")
	fs.Float64Var(v.f, "cpus", 1, "a float")
	fs.BoolVar(v.b, "flag", false, "a bool")
	fs.StringListVar(v.list, "allowed-images", []string{"x"}, "a list")
	fs.SizeVar(v.size, "memory", 512<<20, "a size")
	fs.Alias("nats-url", "NATS_URL")
	return v
}

func (v values) snapshot() map[string]any {
	return map[string]any{
		"name": *v.str, "count": *v.n, "big": *v.n64, "cpus": *v.f, "flag": *v.b,
		"max-timeout": *v.d, "allowed-images": *v.list, "memory": *v.size, "nats-url": *v.alias,
	}
}

func TestPrecedence(t *testing.T) {
	defaults := map[string]any{
		"name": "def", "count": 3, "big": int64(7), "cpus": 1.0, "flag": false,
		"max-timeout": 10 * time.Minute, "allowed-images": []string{"x"}, "memory": int64(512 << 20),
		"nats-url": "nats://127.0.0.1:4222",
	}
	with := func(kv ...any) map[string]any {
		m := map[string]any{}
		for k, v := range defaults {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want map[string]any
	}{
		{name: "defaults", want: defaults},
		{
			name: "env",
			env: map[string]string{
				"CODEFLEET_NAME": "fromenv", "CODEFLEET_COUNT": "5", "CODEFLEET_BIG": "1099511627776",
				"CODEFLEET_CPUS": "0.5", "CODEFLEET_FLAG": "true", "CODEFLEET_MAX_TIMEOUT": "90s",
				"CODEFLEET_ALLOWED_IMAGES": "a, b", "CODEFLEET_MEMORY": "1g",
				"CODEFLEET_NATS_URL": "nats://env:4222",
			},
			want: map[string]any{
				"name": "fromenv", "count": 5, "big": int64(1 << 40), "cpus": 0.5, "flag": true,
				"max-timeout": 90 * time.Second, "allowed-images": []string{"a", "b"}, "memory": int64(1 << 30),
				"nats-url": "nats://env:4222",
			},
		},
		{
			name: "flags win over env",
			env: map[string]string{
				"CODEFLEET_NAME": "fromenv", "CODEFLEET_COUNT": "5", "CODEFLEET_FLAG": "true",
				"CODEFLEET_MAX_TIMEOUT": "90s", "CODEFLEET_ALLOWED_IMAGES": "a,b", "CODEFLEET_MEMORY": "1g",
			},
			args: []string{"--name=flag", "--count", "9", "--flag=false", "--max-timeout", "2m",
				"--allowed-images", "c", "--memory", "256k"},
			want: with("name", "flag", "count", 9, "flag", false, "max-timeout", 2*time.Minute,
				"allowed-images", []string{"c"}, "memory", int64(256<<10)),
		},
		{
			name: "empty env value is a value",
			env:  map[string]string{"CODEFLEET_NAME": "", "CODEFLEET_ALLOWED_IMAGES": ""},
			want: with("name", "", "allowed-images", []string{}),
		},
		{
			name: "bool flag alone",
			args: []string{"--flag"},
			want: with("flag", true),
		},
		{
			name: "bool flag alone before another flag",
			args: []string{"--flag", "--count=2"},
			want: with("flag", true, "count", 2),
		},
		{
			name: "repeated list flag adds",
			args: []string{"--allowed-images", "a,b", "--allowed-images=c"},
			want: with("allowed-images", []string{"a", "b", "c"}),
		},
		{
			name: "alias when own variable unset",
			env:  map[string]string{"NATS_URL": "nats://alias:4222"},
			want: with("nats-url", "nats://alias:4222"),
		},
		{
			name: "own variable wins over alias",
			env:  map[string]string{"NATS_URL": "nats://alias:4222", "CODEFLEET_NATS_URL": "nats://own:4222"},
			want: with("nats-url", "nats://own:4222"),
		},
		{
			name: "flag wins over alias",
			env:  map[string]string{"NATS_URL": "nats://alias:4222"},
			args: []string{"--nats-url", "nats://flag:4222"},
			want: with("nats-url", "nats://flag:4222"),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearTestEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs := New("test", io.Discard)
			v := declare(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := v.snapshot(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}

// unsetenv unsets k for the test (t.Setenv restores it afterwards).
func unsetenv(t *testing.T, k string) {
	t.Setenv(k, "")
	if err := os.Unsetenv(k); err != nil {
		t.Fatal(err)
	}
}

func TestBadEnvValue(t *testing.T) {
	for _, tc := range []struct {
		env, value string
		want       string // in the error besides the variable's name
	}{
		{"CODEFLEET_COUNT", "lots", "not a number"},
		{"CODEFLEET_COUNT", "99999999999999999999", "out of range"},
		{"CODEFLEET_BIG", "1.5", "not a number"},
		{"CODEFLEET_CPUS", "one", "not a number"},
		{"CODEFLEET_FLAG", "yes please", "not a boolean"},
		{"CODEFLEET_MAX_TIMEOUT", "10", "not a duration"},
		{"CODEFLEET_MEMORY", "lots", "not a size"},
		{"NATS_URL", "", ""}, // a string never fails: the control case
	} {
		t.Run(tc.env+"="+tc.value, func(t *testing.T) {
			t.Setenv(tc.env, tc.value)
			fs := New("test", io.Discard)
			declare(fs)
			err := fs.Parse(nil)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse accepted %s=%q", tc.env, tc.value)
			}
			if !strings.Contains(err.Error(), tc.env) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %s or say %q", err, tc.env, tc.want)
			}
		})
	}
}

func TestBadEnvIgnoredWhenFlagGiven(t *testing.T) {
	t.Setenv("CODEFLEET_COUNT", "lots")
	fs := New("test", io.Discard)
	v := declare(fs)
	if err := fs.Parse([]string{"--count=4"}); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if *v.n != 4 {
		t.Errorf("count = %d, want 4", *v.n)
	}
}

func TestBadFlagValue(t *testing.T) {
	for _, args := range [][]string{{"--memory", "huge"}, {"--memory=huge"}, {"x", "--memory", "huge"}} {
		fs := New("test", io.Discard)
		declare(fs)
		err := fs.Parse(args)
		if err == nil || !strings.Contains(err.Error(), "--memory") || !strings.Contains(err.Error(), "not a size") {
			t.Errorf("Parse(%q): error = %v, want one naming --memory", args, err)
		}
	}
	fs := New("test", io.Discard)
	declare(fs)
	if err := fs.Parse([]string{"--count"}); err == nil || !strings.Contains(err.Error(), "--count") {
		t.Errorf("a flag without its value: %v", err)
	}
}

func TestUsageListsEnv(t *testing.T) {
	var out bytes.Buffer
	fs := New("test", &out)
	fs.Summary = "test does things."
	declare(fs)
	fs.ArgsUsage = "[code]"
	if err := fs.Parse([]string{"--help"}); !errors.Is(err, ErrHelp) {
		t.Fatalf("Parse(--help) = %v, want ErrHelp", err)
	}
	text := out.String()
	for _, want := range []string{
		"test does things.",
		"Usage: test [flags] [code]",
		"--max-timeout duration", "$CODEFLEET_MAX_TIMEOUT", "(default 10m)",
		"--memory size", "$CODEFLEET_MEMORY", "(default 512MiB)",
		"--nats-url string", "$CODEFLEET_NATS_URL, $NATS_URL",
		"--allowed-images list", "(default x)",
		"--flag ", "$CODEFLEET_FLAG",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("usage lacks %q:\n%s", want, text)
		}
	}
	// Every flag's line names its variable.
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "  --") && !strings.Contains(line, "$CODEFLEET_") {
			t.Errorf("usage line without a variable: %q", line)
		}
	}
}

// TestInterspersed: flags stand anywhere among the arguments, and "--" ends them.
func TestInterspersed(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		wantArgs []string
		check    func(v values) bool
	}{
		{name: "flags after the argument", args: []string{"print(1)", "--count", "1", "--max-timeout=1s"},
			wantArgs: []string{"print(1)"}, check: func(v values) bool { return *v.n == 1 && *v.d == time.Second }},
		{name: "flags between arguments", args: []string{"a", "--flag", "b", "--name", "x", "c"},
			wantArgs: []string{"a", "b", "c"}, check: func(v values) bool { return *v.b && *v.str == "x" }},
		{name: "dash dash ends the flags", args: []string{"--count=2", "--", `print("--x")`, "--flag"},
			wantArgs: []string{`print("--x")`, "--flag"}, check: func(v values) bool { return *v.n == 2 && !*v.b }},
		{name: "a lone dash is an argument", args: []string{"-", "--flag"},
			wantArgs: []string{"-"}, check: func(v values) bool { return *v.b }},
		{name: "a value may start with a dash", args: []string{"--name", "-x", "--count", "-1"},
			wantArgs: []string{}, check: func(v values) bool { return *v.str == "-x" && *v.n == -1 }},
		{name: "bool flag value after a blank is an argument", args: []string{"--flag", "false"},
			wantArgs: []string{"false"}, check: func(v values) bool { return *v.b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearTestEnv(t)
			fs := New("test", io.Discard)
			v := declare(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := fs.Args(); !reflect.DeepEqual(got, tc.wantArgs) && !(len(got) == 0 && len(tc.wantArgs) == 0) {
				t.Errorf("Args() = %q, want %q", got, tc.wantArgs)
			}
			if !tc.check(v) {
				t.Errorf("values %v", v.snapshot())
			}
		})
	}
}

// clearTestEnv unsets the variables of the flags declare declares.
func clearTestEnv(t *testing.T) {
	for _, k := range []string{"CODEFLEET_NAME", "CODEFLEET_COUNT", "CODEFLEET_BIG", "CODEFLEET_CPUS",
		"CODEFLEET_FLAG", "CODEFLEET_MAX_TIMEOUT", "CODEFLEET_ALLOWED_IMAGES", "CODEFLEET_MEMORY",
		"CODEFLEET_NATS_URL", "NATS_URL"} {
		unsetenv(t, k)
	}
}

// TestSingleDash: a single-dash long flag is refused with a hint, even one whose first letter
// is h (pflag alone reads -heartbeat-ttl as -h and prints the usage: exit 0); only -h alone is
// help. Nothing is printed: the caller prints the error.
func TestSingleDash(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		argsUsage string
		want      []string
	}{
		{args: []string{"-count"}, want: []string{"flag -count: flags take two dashes: --count"}},
		{args: []string{"-count=3"}, want: []string{"flags take two dashes: --count=3"}},
		{args: []string{"-heartbeat-ttl", "5s"}, want: []string{"flag -heartbeat-ttl: flags take two dashes: --heartbeat-ttl"}},
		{args: []string{"-heartbeat-ttl=5s"}, want: []string{"flags take two dashes: --heartbeat-ttl=5s"}},
		{args: []string{"-host", "x"}, want: []string{"unknown flag -host: flags take two dashes (--host)"}},
		{args: []string{"-help"}, want: []string{"unknown flag -help"}},
		{args: []string{"--count", "2", "-heartbeat-ttl", "5s"}, want: []string{"-heartbeat-ttl"}},
		{args: []string{"--flag", "-heartbeat-ttl", "5s"}, want: []string{"-heartbeat-ttl"}}, // a bool flag takes no value
		{args: []string{"--name=x", "-hx"}, want: []string{"unknown flag -hx"}},
		{args: []string{"print(1)", "-abc"}, want: []string{"unknown flag -abc"}},
		{args: []string{"-abc"}, argsUsage: "[code]",
			want: []string{"unknown flag -abc", "a word of the code or an argument that starts with a dash goes after --: test -- -abc"}},
		// Two characters: pflag's shorthand error, explained.
		{args: []string{"-x"}, want: []string{"unknown flag -x"}},
		{args: []string{"-1"}, want: []string{"put -- before arguments that start with a dash"}},
	} {
		var out bytes.Buffer
		fs := New("test", &out)
		fs.ArgsUsage = tc.argsUsage
		declare(fs)
		fs.Duration("heartbeat-ttl", 3*time.Second, "a duration whose name starts with h")
		err := fs.Parse(tc.args)
		if err == nil || errors.Is(err, ErrHelp) {
			t.Errorf("Parse(%q) = %v, want an error saying %q", tc.args, err, tc.want)
			continue
		}
		for _, want := range tc.want {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Parse(%q) = %v, want an error saying %q", tc.args, err, want)
			}
		}
		if tc.argsUsage == "" && strings.Contains(err.Error(), "goes after --") {
			t.Errorf("Parse(%q) = %v: a command without arguments has nothing to put after --", tc.args, err)
		}
		if out.Len() != 0 {
			t.Errorf("Parse(%q) printed %q", tc.args, out.String())
		}
	}
	for _, args := range [][]string{{"-h"}, {"--help"}, {"--count=2", "-h"}, {"x", "-h"}} {
		var out bytes.Buffer
		fs := New("test", &out)
		declare(fs)
		if err := fs.Parse(args); !errors.Is(err, ErrHelp) || !strings.Contains(out.String(), "--max-timeout") {
			t.Errorf("Parse(%q) = %v, usage %q", args, err, out.String())
		}
	}
}

// TestDashValues: a flag's value may start with a dash (conversation ids may), with or without
// =, and so may the arguments after --.
func TestDashValues(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		wantArgs []string
		check    func(v values) bool
	}{
		{name: "string value", args: []string{"--name", "-abc"},
			check: func(v values) bool { return *v.str == "-abc" }},
		{name: "string value after =", args: []string{"--name=-abc"},
			check: func(v values) bool { return *v.str == "-abc" }},
		{name: "value like -h", args: []string{"--name", "-h"},
			check: func(v values) bool { return *v.str == "-h" }},
		{name: "value like a flag", args: []string{"--name", "-count", "--count", "4"},
			check: func(v values) bool { return *v.str == "-count" && *v.n == 4 }},
		{name: "negative float", args: []string{"--cpus", "-1"},
			check: func(v values) bool { return *v.f == -1 }},
		{name: "negative duration", args: []string{"--max-timeout", "-1s"},
			check: func(v values) bool { return *v.d == -time.Second }},
		{name: "negative duration after =", args: []string{"--max-timeout=-1s"},
			check: func(v values) bool { return *v.d == -time.Second }},
		{name: "list value", args: []string{"x", "--allowed-images", "-a,-b"}, wantArgs: []string{"x"},
			check: func(v values) bool { return reflect.DeepEqual(*v.list, []string{"-a", "-b"}) }},
		{name: "arguments after dash dash", args: []string{"--flag", "--", "-abc", "-heartbeat-ttl"},
			wantArgs: []string{"-abc", "-heartbeat-ttl"}, check: func(v values) bool { return *v.b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearTestEnv(t)
			fs := New("test", io.Discard)
			v := declare(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatalf("Parse(%q): %v", tc.args, err)
			}
			if got := fs.Args(); !reflect.DeepEqual(got, tc.wantArgs) && !(len(got) == 0 && len(tc.wantArgs) == 0) {
				t.Errorf("Args() = %q, want %q", got, tc.wantArgs)
			}
			if !tc.check(v) {
				t.Errorf("values %v", v.snapshot())
			}
		})
	}
}

func TestNoArgs(t *testing.T) {
	fs := New("test", io.Discard)
	declare(fs)
	if err := fs.Parse([]string{"--flag"}); err != nil || fs.NoArgs("test") != nil {
		t.Fatalf("Parse %v, NoArgs %v", err, fs.NoArgs("test"))
	}
	fs = New("test", io.Discard)
	declare(fs)
	if err := fs.Parse([]string{"--flag", "false"}); err != nil {
		t.Fatal(err)
	}
	if err := fs.NoArgs("test"); err == nil || !strings.Contains(err.Error(), `unexpected arguments ["false"]`) || !strings.Contains(err.Error(), "--name=false") {
		t.Errorf("NoArgs = %v", err)
	}
}

func TestNewLogger(t *testing.T) {
	for _, tc := range []struct {
		name, level, format string
		err                 bool
		debugShown          bool
		json                bool
	}{
		{name: "defaults", json: true},
		{name: "json debug", level: "debug", format: "json", debugShown: true, json: true},
		{name: "upper case", level: "DEBUG", format: "JSON", debugShown: true, json: true},
		{name: "console", level: "info", format: "console"},
		{name: "warn hides info", level: "warn", json: true},
		{name: "bad level", level: "loud", err: true},
		{name: "bad format", format: "xml", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := NewLogger(&buf, tc.level, tc.format)
			if tc.err {
				if err == nil {
					t.Fatal("no error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			log.Debug().Msg("dbg")
			log.Warn().Str("k", "v").Msg("hello")
			out := buf.String()
			if strings.Contains(out, "dbg") != tc.debugShown {
				t.Errorf("debug shown = %v, want %v: %q", !tc.debugShown, tc.debugShown, out)
			}
			if !strings.Contains(out, "hello") {
				t.Fatalf("no event: %q", out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			last := lines[len(lines)-1]
			var ev map[string]any
			isJSON := json.Unmarshal([]byte(last), &ev) == nil
			if isJSON != tc.json {
				t.Fatalf("JSON = %v, want %v: %q", isJSON, tc.json, last)
			}
			if isJSON {
				if ev["level"] != "warn" || ev["k"] != "v" || ev["message"] != "hello" {
					t.Errorf("event %v lacks level, field or message", ev)
				}
				ts, _ := ev["time"].(string)
				if _, err := time.Parse(TimeFormat, ts); err != nil || len(ts) != len("2006-01-02T15:04:05.000Z") {
					t.Errorf("time %q is not in TimeFormat: %v", ts, err)
				}
			} else {
				if strings.Contains(last, "\x1b[") {
					t.Errorf("console output to a buffer is coloured: %q", last)
				}
				if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WRN hello k=v$`).MatchString(last) {
					t.Errorf("console line %q", last)
				}
			}
		})
	}
}

func TestBadCommandLineNotPrinted(t *testing.T) {
	var out bytes.Buffer
	fs := New("test", &out)
	declare(fs)
	err := fs.Parse([]string{"print(1)", "--no-such-flag"})
	if err == nil || !strings.Contains(err.Error(), "--no-such-flag") {
		t.Fatalf("error = %v, want one naming the flag", err)
	}
	if out.Len() != 0 {
		t.Errorf("printed %q; the caller prints the error", out.String())
	}
}

func TestFormatDuration(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want string
	}{
		{0, "0s"},
		{time.Second, "1s"},
		{1500 * time.Millisecond, "1.5s"},
		{250 * time.Millisecond, "250ms"},
		{10 * time.Minute, "10m"},
		{90 * time.Second, "1m30s"},
		{24 * time.Hour, "24h"},
		{90 * time.Minute, "1h30m"},
		{time.Hour + time.Second, "1h0m1s"},
	} {
		got := FormatDuration(tc.in)
		if got != tc.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", tc.in, got, tc.want)
		}
		if back, err := time.ParseDuration(got); err != nil || back != tc.in {
			t.Errorf("ParseDuration(%q) = %v, %v", got, back, err)
		}
	}
}

func TestSemVer(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"dev", "0.0.0-dev"},
		{"", "0.0.0-dev"},
		{"1.2.3", "1.2.3"},
		{"v1.2.3", "1.2.3"},
		{"v0.1.0-3-gabc123-dirty", "0.1.0-3-gabc123-dirty"},
		{"v1.0.0+build.5", "1.0.0+build.5"},
		{"c5970c7-dirty", "0.0.0-c5970c7-dirty"},
		{"0123", "0.0.0-v0123"},
		{"v1.2", "0.0.0-v1-2"},
		{"my build/7", "0.0.0-my-build-7"},
	} {
		got := SemVer(tc.in)
		if got != tc.want {
			t.Errorf("SemVer(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if !semVer.MatchString(got) {
			t.Errorf("SemVer(%q) = %q is not SemVer", tc.in, got)
		}
	}
}
