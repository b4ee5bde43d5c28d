// Package config declares the command-line flags of codefleet's commands so that each one can
// also be set by an environment variable: flag --max-timeout is CODEFLEET_MAX_TIMEOUT (the flag
// name upper-cased, dashes turned into underscores, behind the prefix). A flag given on the
// command line wins over its variable, which wins over the default.
//
// Values: strings, ints, bools, durations ("90s", "10m"), floats, comma-separated lists and
// byte sizes ("512MiB", "1g", "256k"; see ParseSize).
//
// The command line is parsed by github.com/spf13/pflag, the flag library of kubectl, helm and
// cobra, rather than the standard flag package, which stops at the first argument that is not a
// flag (`codefleet run 'print(1)' --timeout 1s` would run "print(1) --timeout 1s"). With pflag
// flags stand anywhere among the arguments, in GNU style: `--name value` or `--name=value`, a
// bool flag alone (`--destroy-on-shutdown`) sets it, and `--` ends the flags (`codefleet run --
// 'print("--x")'`). Flags take two dashes: `-name` is refused with a hint, even `-host` (which
// pflag would read as -h), and only `-h` alone is help. A flag's value may start with a dash
// (`--conversation -abc`); another argument that does goes after `--`.
package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// ErrHelp is returned by Parse when the command line asks for help (-h, --help): the usage has
// been printed, and the command should exit 0.
var ErrHelp = pflag.ErrHelp

// DefaultEnvPrefix is the prefix of the environment variables of codefleet's flags.
const DefaultEnvPrefix = "CODEFLEET_"

// EnvName returns the environment variable of a flag with the default prefix:
// "max-timeout" → "CODEFLEET_MAX_TIMEOUT".
func EnvName(flagName string) string { return envName(DefaultEnvPrefix, flagName) }

func envName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// FlagSet is a set of flags whose defaults may come from the environment. Declare the flags,
// then call Parse.
type FlagSet struct {
	fs     *pflag.FlagSet
	prefix string
	// Summary is printed at the top of the usage text, before the flags.
	Summary string
	// ArgsUsage describes the arguments besides the flags in the usage line ("[code]"); none
	// when empty.
	ArgsUsage string

	entries map[string]*entry
}

type entry struct {
	name     string
	typeName string
	usage    string
	def      string // default as shown in the usage; "" shows none
	env      []string
}

// New returns a flag set named name (the command) that writes usage and errors to output and
// reads variables with DefaultEnvPrefix.
func New(name string, output io.Writer) *FlagSet {
	f := &FlagSet{
		fs:      pflag.NewFlagSet(name, pflag.ContinueOnError),
		prefix:  DefaultEnvPrefix,
		entries: map[string]*entry{},
	}
	f.fs.SetOutput(output)
	f.fs.Usage = f.usage
	return f
}

// Name returns the flag set's name, the command's.
func (f *FlagSet) Name() string { return f.fs.Name() }

// Alias makes the variable env another source of a declared flag, read when the flag's own
// variable is unset (e.g. NATS_URL for --nats-url).
func (f *FlagSet) Alias(flagName, env string) {
	e := f.entries[flagName]
	if e == nil {
		panic("config: alias for undeclared flag " + flagName)
	}
	e.env = append(e.env, env)
}

func (f *FlagSet) add(v pflag.Value, name, typeName, def, usage string) {
	f.fs.Var(v, name, usage)
	f.entries[name] = &entry{name: name, typeName: typeName, usage: usage, def: def, env: []string{envName(f.prefix, name)}}
}

// String declares a string flag.
func (f *FlagSet) String(name, def, usage string) *string {
	p := new(string)
	f.StringVar(p, name, def, usage)
	return p
}

// StringVar declares a string flag stored in p.
func (f *FlagSet) StringVar(p *string, name, def, usage string) {
	*p = def
	shown := ""
	if def != "" {
		shown = strconv.Quote(def)
	}
	f.add((*stringValue)(p), name, "string", shown, usage)
}

// Int declares an int flag.
func (f *FlagSet) Int(name string, def int, usage string) *int {
	p := new(int)
	f.IntVar(p, name, def, usage)
	return p
}

// IntVar declares an int flag stored in p.
func (f *FlagSet) IntVar(p *int, name string, def int, usage string) {
	*p = def
	f.add((*intValue)(p), name, "int", nonZero(strconv.Itoa(def)), usage)
}

// Int64Var declares an int64 flag stored in p.
func (f *FlagSet) Int64Var(p *int64, name string, def int64, usage string) {
	*p = def
	f.add((*int64Value)(p), name, "int", nonZero(strconv.FormatInt(def, 10)), usage)
}

// Float64Var declares a float64 flag stored in p.
func (f *FlagSet) Float64Var(p *float64, name string, def float64, usage string) {
	*p = def
	f.add((*float64Value)(p), name, "float", nonZero(strconv.FormatFloat(def, 'g', -1, 64)), usage)
}

// BoolVar declares a bool flag stored in p.
func (f *FlagSet) BoolVar(p *bool, name string, def bool, usage string) {
	*p = def
	shown := ""
	if def {
		shown = "true"
	}
	f.add((*boolValue)(p), name, "", shown, usage)
}

// Duration declares a duration flag ("1.5s", "10m", "24h").
func (f *FlagSet) Duration(name string, def time.Duration, usage string) *time.Duration {
	p := new(time.Duration)
	f.DurationVar(p, name, def, usage)
	return p
}

// DurationVar declares a duration flag stored in p.
func (f *FlagSet) DurationVar(p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	shown := ""
	if def != 0 {
		shown = FormatDuration(def)
	}
	f.add((*durationValue)(p), name, "duration", shown, usage)
}

// nonZero hides a zero default in the usage, as the flag package does.
func nonZero(s string) string {
	if s == "0" {
		return ""
	}
	return s
}

// FormatDuration formats d as time.Duration.String does, without zero minutes and seconds at
// the end: 30m0s → "30m", 24h0m0s → "24h", 1h30m0s → "1h30m". time.ParseDuration reads it.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// StringListVar declares a list flag stored in p.
func (f *FlagSet) StringListVar(p *[]string, name string, def []string, usage string) {
	*p = append([]string(nil), def...)
	f.add(&listValue{p: p}, name, "list", strings.Join(def, ","), usage)
}

// SizeVar declares a byte-size flag stored in p.
func (f *FlagSet) SizeVar(p *int64, name string, def int64, usage string) {
	*p = def
	shown := ""
	if def != 0 {
		shown = FormatSize(def)
	}
	f.add((*sizeValue)(p), name, "size", shown, usage)
}

// Parse parses args, then sets every flag not given in args from its environment variable.
// Flags may stand anywhere among the arguments; "--" ends them. A bad value in a variable is an
// error naming the variable. With -h or --help it prints the usage and returns ErrHelp.
// Nothing but the usage is printed: the caller prints the returned error.
func (f *FlagSet) Parse(args []string) error {
	if err := f.singleDash(args); err != nil {
		return err
	}
	if err := f.fs.Parse(args); err != nil {
		return f.explain(err)
	}
	var errs []error
	for _, name := range f.names() {
		if f.fs.Changed(name) {
			continue
		}
		fl := f.fs.Lookup(name)
		for _, env := range f.entries[name].env {
			v, ok := os.LookupEnv(env)
			if !ok {
				continue
			}
			// The Value itself: the flag stays "not given on the command line" (Changed).
			if err := fl.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("environment variable %s=%q (flag --%s): %w", env, v, name, err))
			}
			break
		}
	}
	return errors.Join(errs...)
}

// singleDash refuses a single-dash long flag among args, up to "--": an argument that starts
// with one dash, is longer than two characters and is not the value of the flag before it.
// pflag would read it as shorthands, and codefleet declares none, so it fails with a confusing
// error, or worse, when its first letter is h, as -h: `worker -heartbeat-ttl 5s` would print
// the usage and exit 0. Arguments of two characters (-h, -x, -1) are left to pflag and explain.
func (f *FlagSet) singleDash(args []string) error {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return nil
		case strings.HasPrefix(a, "--"):
			name, _, withValue := strings.Cut(a[2:], "=")
			fl := f.fs.Lookup(name)
			if fl == nil {
				return nil // unknown (or --help): pflag stops there with its own answer
			}
			if !withValue && fl.NoOptDefVal == "" {
				i++ // the next argument is the flag's value, whatever it starts with
			}
		case len(a) > 2 && a[0] == '-':
			return f.singleDashError(a)
		}
	}
	return nil
}

func (f *FlagSet) singleDashError(arg string) error {
	name, _, _ := strings.Cut(arg[1:], "=")
	var msg string
	if f.entries[name] != nil {
		msg = fmt.Sprintf("flag -%s: flags take two dashes: -%s", name, arg)
	} else {
		msg = fmt.Sprintf("unknown flag %s: flags take two dashes (-%s)", arg, arg)
	}
	if f.ArgsUsage != "" {
		msg += fmt.Sprintf("; a word of the %s or an argument that starts with a dash goes after --: %s -- %s",
			strings.Trim(f.ArgsUsage, "[]"), f.fs.Name(), arg)
	}
	return errors.New(msg)
}

// explain turns pflag's report of a two-character single-dash argument ("unknown shorthand
// flag: 'x' in -x"; codefleet declares no shorthands, and singleDash has refused the longer
// ones) into a hint at the two-dash form.
func (f *FlagSet) explain(err error) error {
	var ne *pflag.NotExistError
	if !errors.As(err, &ne) || ne.GetSpecifiedShortnames() == "" {
		return err
	}
	name, _, _ := strings.Cut(ne.GetSpecifiedShortnames(), "=")
	if f.entries[name] != nil {
		return fmt.Errorf("flag -%s: flags take two dashes: --%s", name, name)
	}
	return fmt.Errorf("unknown flag -%s (flags take two dashes; put -- before arguments that start with a dash)", name)
}

// NoArgs returns an error when arguments besides the flags were given to command, which takes
// flags only.
func (f *FlagSet) NoArgs(command string) error {
	if len(f.fs.Args()) == 0 {
		return nil
	}
	return fmt.Errorf("unexpected arguments %q (the %s takes flags only, a bool flag its value after =, as --name=false; see --help)",
		f.fs.Args(), command)
}

// Args returns the arguments left after the flags.
func (f *FlagSet) Args() []string { return f.fs.Args() }

func (f *FlagSet) names() []string {
	names := make([]string, 0, len(f.entries))
	for n := range f.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (f *FlagSet) usage() {
	w := f.fs.Output()
	if f.Summary != "" {
		fmt.Fprintf(w, "%s\n\n", strings.TrimRight(f.Summary, "\n"))
	}
	line := f.fs.Name() + " [flags]"
	if f.ArgsUsage != "" {
		line += " " + f.ArgsUsage
	}
	fmt.Fprintf(w, "Usage: %s\n\n", line)
	fmt.Fprintf(w, "Every flag can also be set by the environment variable shown beside it;\na flag given on the command line wins over its variable.\n\n")
	// One block per flag: name, type and variables, then the usage and default.
	for _, name := range f.names() {
		e := f.entries[name]
		head := "  --" + e.name
		if e.typeName != "" {
			head += " " + e.typeName
		}
		envs := make([]string, len(e.env))
		for i, v := range e.env {
			envs[i] = "$" + v
		}
		fmt.Fprintf(w, "%-34s %s\n", head, strings.Join(envs, ", "))
		line := "      " + e.usage
		if e.def != "" {
			line += " (default " + e.def + ")"
		}
		fmt.Fprintln(w, line)
	}
}

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }
func (v *stringValue) Type() string       { return "string" }

type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 0, strconv.IntSize)
	if err != nil {
		return numError(err)
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }
func (v *intValue) Type() string   { return "int" }

type int64Value int64

func (v *int64Value) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 0, 64)
	if err != nil {
		return numError(err)
	}
	*v = int64Value(n)
	return nil
}
func (v *int64Value) String() string { return strconv.FormatInt(int64(*v), 10) }
func (v *int64Value) Type() string   { return "int" }

type float64Value float64

func (v *float64Value) Set(s string) error {
	n, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return numError(err)
	}
	*v = float64Value(n)
	return nil
}
func (v *float64Value) String() string { return strconv.FormatFloat(float64(*v), 'g', -1, 64) }
func (v *float64Value) Type() string   { return "float" }

type boolValue bool

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return errors.New("not a boolean (want true or false)")
	}
	*v = boolValue(b)
	return nil
}
func (v *boolValue) String() string { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) Type() string   { return "bool" }

// IsBoolFlag makes pflag take --name alone as --name=true.
func (v *boolValue) IsBoolFlag() bool { return true }

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return errors.New("not a duration (want e.g. 500ms, 30s, 10m, 24h)")
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string { return time.Duration(*v).String() }
func (v *durationValue) Type() string   { return "duration" }

type listValue struct {
	p   *[]string
	set bool // set from the command line at least once: later values add to it
}

func (v *listValue) Set(s string) error {
	items := SplitList(s)
	if v.set {
		*v.p = append(*v.p, items...)
	} else {
		*v.p = items
	}
	v.set = true
	return nil
}

func (v *listValue) Type() string { return "list" }

func (v *listValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

// SplitList splits a comma-separated list, trimming blanks and dropping empty items.
func SplitList(s string) []string {
	out := []string{}
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

type sizeValue int64

func (v *sizeValue) Set(s string) error {
	n, err := ParseSize(s)
	if err != nil {
		return err
	}
	*v = sizeValue(n)
	return nil
}
func (v *sizeValue) String() string { return FormatSize(int64(*v)) }
func (v *sizeValue) Type() string   { return "size" }

func numError(err error) error {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		if errors.Is(ne.Err, strconv.ErrRange) {
			return errors.New("out of range")
		}
		return errors.New("not a number")
	}
	return err
}

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// ParseSize parses a byte size: a non-negative number, optionally fractional, followed by an
// optional unit, case-insensitive, with optional blanks between. Units are binary as in
// Docker's --memory: k, kb and kib are 1024 bytes; m, mb, mib 1024²; g, gb, gib 1024³; t, tb,
// tib 1024⁴; b or none are bytes. "512MiB", "1g", "256k", "1.5GB" and "4096" are sizes.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	mult, ok := sizeUnits[unit]
	if num == "" || !ok {
		return 0, fmt.Errorf("not a size %q (want e.g. 512MiB, 1g, 256k or a number of bytes)", s)
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n > (1<<63-1)/mult {
			return 0, fmt.Errorf("size %q out of range", s)
		}
		return n * mult, nil
	}
	x, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("not a size %q (want e.g. 512MiB, 1g, 256k or a number of bytes)", s)
	}
	b := x * float64(mult)
	if b >= 1<<63 {
		return 0, fmt.Errorf("size %q out of range", s)
	}
	return int64(b), nil
}

// FormatSize formats a byte count with the largest binary unit that divides it exactly
// (536870912 → "512MiB", 262144 → "256KiB"), or as plain bytes (1500 → "1500"). ParseSize
// reads its output back.
func FormatSize(n int64) string {
	units := []struct {
		name string
		size int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}
	for _, u := range units {
		if n != 0 && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}
