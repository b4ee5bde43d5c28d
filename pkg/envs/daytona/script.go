package daytona

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// A run is sent to the toolbox wrapped in a small supervisor, because the toolbox alone cannot
// keep the promises of envs.Result: on its timeout it answers 408 and discards the output, it
// reports a shell killed by a signal as -1, and it returns output of any size. The supervisor
// (Python for python runs through /process/code-run, POSIX sh for the others through
// /process/execute; either one as the command of a toolbox session for a long run, see
// sandbox.go) writes the snippet to /tmp/codefleet-<nonce>/, starts it in a process session of
// its own (setsid) with stdin from /dev/null, keeps the head and the tail of its interleaved
// output (at most the output cap), kills its whole process group at the run's timeout or when it
// ends (nothing it started outlives it), and prints the output followed by a trailer line
//
//	\n<nonce> <exit code> <timed out 0|1> <truncated 0|1> [<duration µs>]\n
//
// which the client strips. The nonce is random per run, so no output can forge a trailer. The
// process group id is written to /tmp/codefleet-<nonce>/pid, where killScript finds it when the
// caller gives up on a run. On a blocking call, Daytona's own timeout stays set, a few seconds
// later, as a backstop.

// runPlan is what a supervisor needs to know about one run.
type runPlan struct {
	nonce    string
	language string
	code     string
	timeout  time.Duration
	max      int
	// workdir is where the snippet runs; empty means the daemon's working directory.
	workdir string
	// exports are set by the supervisor itself: the run's env on daemons that ignore envs.
	exports map[string]string
	// stream: the output is also written, as it comes, to the run's directory's out file
	// (liveFile), which the supervisor leaves behind for the backend to read to its end and
	// remove (stream.go).
	stream bool
}

func newNonce() string {
	var b [10]byte
	rand.Read(b[:])
	return "cf" + hex.EncodeToString(b[:])
}

// runDir is where a run's files live inside the sandbox.
func runDir(nonce string) string { return "/tmp/codefleet-" + nonce }

// liveFile is the file that holds a streamed run's output as it is produced.
func liveFile(nonce string) string { return runDir(nonce) + "/out" }

// seconds formats d for sleep(1) and Python: whole seconds when it is whole, else milliseconds.
func seconds(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10)
	}
	return strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
}

// apiTimeout is the timeout, in whole seconds, given to Daytona for a run of timeout: later than
// the supervisor's own, so that it normally never fires.
func apiTimeout(timeout time.Duration) uint32 {
	return uint32(math.Ceil((timeout + runGrace).Seconds()))
}

// quote single-quotes s for sh.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// viaSh returns a command line that runs script with sh, whatever the daemon's shell is (zsh,
// bash or sh): the script travels base64-encoded, so no quoting or here-document is involved,
// and it is read from a pipe, so its size is not bound by ARG_MAX.
func viaSh(script string) string {
	return "printf '%s' " + quote(base64.StdEncoding.EncodeToString([]byte(script))) + " | base64 -d | sh"
}

// exportLines returns `export K='v'` lines, sorted. Names are checked by the caller.
func exportLines(env map[string]string) string {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, quote(env[k]))
	}
	return b.String()
}

// shellRunners start a snippet file ($1) for each language the shell supervisor runs.
var shellRunners = map[string]struct{ ext, run string }{
	"bash":       {".sh", `bash "$f"`},
	"javascript": {".js", `node "$f"`},
	// ts-node when the image has it, else compile with tsc next to the file and run with node.
	"typescript": {".ts", `sh -c 'if command -v ts-node >/dev/null 2>&1; then exec ts-node "$1"; fi; tsc --target es2020 --module commonjs --esModuleInterop --skipLibCheck --pretty false "$1" && exec node "${1%.ts}.js"' sh "$f"`},
}

// shellSupervisor is the sh script that runs a bash, javascript or typescript snippet.
func shellSupervisor(p runPlan) string {
	r := shellRunners[p.language]
	head := p.max / 2
	var b strings.Builder
	fmt.Fprintf(&b, "n=%s; d=%s; f=\"$d/main%s\"\n", p.nonce, runDir(p.nonce), r.ext)
	// The run's directory made already: a kill came first (killScript); nothing is started.
	b.WriteString(`mkdir -m 700 "$d" || { [ -e "$d/cancel" ] && rm -rf "$d"; exit 125; }` + "\n")
	fmt.Fprintf(&b, "printf '%%s' %s | base64 -d > \"$f\" || exit 125\n", quote(base64.StdEncoding.EncodeToString([]byte(p.code))))
	b.WriteString(exportLines(p.exports))
	if p.workdir != "" {
		fmt.Fprintf(&b, "cd %s || exit 125\n", quote(p.workdir))
	}
	// setsid makes the snippet the leader of a new session and process group (a background job
	// of a non-interactive shell is no group leader, so setsid execs without forking: $! is
	// the group id).
	fmt.Fprintf(&b, "setsid %s </dev/null >\"$d/out\" 2>&1 &\n", r.run)
	b.WriteString("p=$!\necho \"$p\" > \"$d/pid\"\n")
	// A kill that came before the pid was written marked the run instead.
	b.WriteString("[ -e \"$d/cancel\" ] && kill -9 -\"$p\" 2>/dev/null\n")
	if p.timeout > 0 {
		// The watchdog has a group of its own too, so that killing it takes its sleep along.
		fmt.Fprintf(&b, "setsid sh -c 'sleep \"$1\"; : > \"$2/timeout\"; kill -9 -\"$3\"' sh %s \"$d\" \"$p\" </dev/null >/dev/null 2>&1 &\n", seconds(p.timeout))
		b.WriteString("w=$!\n")
	}
	// The shell's own "Killed" (a job that died of a signal) is not the snippet's output.
	b.WriteString("wait \"$p\" 2>/dev/null; c=$?\n")
	b.WriteString("kill -9 -\"$p\" 2>/dev/null\n") // whatever the snippet left in its group
	if p.timeout > 0 {
		b.WriteString("kill -9 -\"$w\" 2>/dev/null\n")
	}
	b.WriteString("t=0; if [ -e \"$d/timeout\" ]; then t=1; c=124; fi\n")
	b.WriteString("s=$(wc -c < \"$d/out\" | tr -d ' ')\n")
	fmt.Fprintf(&b, "if [ \"$s\" -gt %d ]; then head -c %d \"$d/out\"; printf '\\n[... %%d bytes truncated ...]\\n' $((s - %d)); tail -c %d \"$d/out\"; r=1; else cat \"$d/out\"; r=0; fi\n",
		p.max, head, p.max, p.max-head)
	b.WriteString("printf '\\n%s %d %d %d\\n' \"$n\" \"$c\" \"$t\" \"$r\"\n")
	if p.stream {
		// The snippet's output file is the live one (it was written as produced): it stays for
		// the backend's last read, unless a kill says nobody will read it. The pid goes, so
		// that a late kill finds no process group to kill.
		b.WriteString("if [ -e \"$d/cancel\" ]; then rm -rf \"$d\"; else rm -f \"$d/pid\"; fi\nexit \"$c\"\n")
		return b.String()
	}
	b.WriteString("rm -rf \"$d\"\nexit \"$c\"\n")
	return b.String()
}

// pythonSupervisor is the Python program that runs a python snippet; it is what /process/code-run
// receives (and what older daemons get piped to python3 through /process/execute).
func pythonSupervisor(p runPlan) string {
	env := ""
	if len(p.exports) > 0 {
		keys := make([]string, 0, len(p.exports))
		for k := range p.exports {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, "os.environ[%s] = %s\n", pyString(k), pyString(p.exports[k]))
		}
		env = b.String()
	}
	timeout := "0"
	if p.timeout > 0 {
		timeout = seconds(p.timeout)
	}
	stream := "False"
	if p.stream {
		stream = "True"
	}
	return fmt.Sprintf(pythonTemplate, pyString(p.nonce), pyString(base64.StdEncoding.EncodeToString([]byte(p.code))),
		timeout, p.max, pyString(p.workdir), pyString(runDir(p.nonce)), stream, env)
}

// pyString is a Python string literal of s (JSON's escapes are valid in Python).
func pyString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// pythonTemplate: nonce, code (base64), timeout (s, 0 = none), cap, workdir, run dir, stream,
// env lines. Compatible with Python 3.6 and later. When streaming, each read of the snippet's
// output also goes to D/out at once (uncapped, as the shell supervisor's output file always
// is; a full disk only ends the copy), and D/out is left behind as the shell supervisor leaves
// it.
const pythonTemplate = `import base64, os, select, shutil, signal, subprocess, sys, time
N, CODE, T, M, W, D, S = %s, %s, %s, %d, %s, %s, %s
%s
def main():
    try:
        os.mkdir(D, 0o700)
    except FileExistsError:
        sys.exit(125)  # a kill came first (it makes the run's directory): nothing is started
    f = os.path.join(D, "main.py")
    with open(f, "wb") as fh:
        fh.write(base64.b64decode(CODE))
    if W:
        os.chdir(W)
    r, w = os.pipe()
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-u", f], stdin=subprocess.DEVNULL, stdout=w, stderr=w, start_new_session=True)
    os.close(w)
    with open(os.path.join(D, "pid"), "w") as fh:
        fh.write(str(p.pid))
    live = os.open(os.path.join(D, "out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) if S else None
    H = M // 2
    head, tail, total = bytearray(), bytearray(), 0
    def killpg():
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
    if os.path.exists(os.path.join(D, "cancel")):
        killpg()  # a kill came before the pid was written
    rc, timed_out, eof, dur, drain_until = None, False, False, 0.0, None
    while True:
        if rc is None:
            rc = p.poll()
            if rc is None and T > 0 and time.monotonic() - t0 >= T:
                timed_out = True
                killpg()
                rc = p.wait()
            if rc is not None:
                dur = time.monotonic() - t0
                killpg()
                drain_until = time.monotonic() + 0.1
        if rc is not None and (eof or time.monotonic() >= drain_until):
            break
        if eof:
            time.sleep(0.02)
            continue
        if select.select([r], [], [], 0.02)[0]:
            b = os.read(r, 65536)
            if not b:
                eof = True
                continue
            if live is not None:
                try:
                    os.write(live, b)
                except OSError:
                    live = None
            total += len(b)
            if len(head) < H:
                k = H - len(head)
                head += b[:k]
                b = b[k:]
            if b:
                tail += b
                if len(tail) > M - H:
                    del tail[:len(tail) - (M - H)]
    code = 124 if timed_out else (128 - rc if rc < 0 else rc)
    out = sys.stdout.buffer
    out.write(bytes(head))
    if total > M:
        out.write(("\n[... %%d bytes truncated ...]\n" %% (total - M)).encode())
    out.write(bytes(tail))
    out.write(("\n%%s %%d %%d %%d %%d\n" %% (N, code, int(timed_out), int(total > M), int(dur * 1e6))).encode())
    out.flush()
    return code

try:
    rc = main()
finally:
    if S and not os.path.exists(os.path.join(D, "cancel")):
        for f in ("pid", "main.py"):  # no pid for a late kill to find; D/out stays
            try:
                os.remove(os.path.join(D, f))
            except OSError:
                pass
    else:
        shutil.rmtree(D, ignore_errors=True)
sys.exit(rc)
`

// legacyPythonCommand runs the Python supervisor through /process/execute, as the SDKs ran code
// before the daemon had /process/code-run.
func legacyPythonCommand(p runPlan) string {
	return "printf '%s' " + quote(base64.StdEncoding.EncodeToString([]byte(pythonSupervisor(p)))) + " | base64 -d | python3 -u -"
}

// killScript kills the process group of the run with this nonce, if it is still there. It marks
// the run's directory first, so that a supervisor that has not yet written its pid kills the
// run itself: whichever of the two writes last sees the other's file. When the directory is not
// there, the run has ended or not begun (its request overtaken by the kill): the script makes
// it, marked, for killGrace, so that a supervisor arriving meanwhile does not start the run,
// and then removes it (a run that ended leaves nothing behind).
func killScript(nonce string) string {
	return fmt.Sprintf(`d=%s; if mkdir -m 700 "$d" 2>/dev/null; then : > "$d/cancel"; sleep %d; rm -rf "$d"; else : > "$d/cancel"; p=$(cat "$d/pid" 2>/dev/null) && kill -9 -"$p" 2>/dev/null; fi; true`+"\n",
		runDir(nonce), int(killGrace/time.Second))
}

// killGrace is how long a kill that found no run keeps a supervisor arriving after it from
// starting the run.
const killGrace = 2 * time.Second

// probeCommand lists which of the programs the runs need the sandbox has.
const probeCommand = `for b in python3 bash node ts-node tsc setsid base64; do command -v "$b" >/dev/null 2>&1 && echo "$b"; done; true`

// languagesFrom maps the probe's answer onto the languages a sandbox can run.
func languagesFrom(probe string) []string {
	has := map[string]bool{}
	for _, l := range strings.Fields(probe) {
		has[l] = true
	}
	var out []string
	if has["python3"] {
		out = append(out, "python")
	}
	shell := has["setsid"] && has["base64"] // what the shell supervisor needs
	if shell && has["bash"] {
		out = append(out, "bash")
	}
	if shell && has["node"] {
		out = append(out, "javascript")
		if has["ts-node"] || has["tsc"] {
			out = append(out, "typescript")
		}
	}
	return out
}

// trailer is the supervisor's last line.
type trailer struct {
	exit      int
	timedOut  bool
	truncated bool
	duration  time.Duration // 0 when the supervisor did not measure it
}

// parseTrailer splits a supervisor's output into the snippet's output and the trailer: after
// the nonce come the exit code, the timed-out and truncated flags and, from the Python
// supervisor, the duration in microseconds.
func parseTrailer(out, nonce string) (string, trailer, bool) {
	i := strings.LastIndex(out, "\n"+nonce+" ")
	if i < 0 {
		return out, trailer{}, false
	}
	f := strings.Fields(out[i+len(nonce)+2:])
	if len(f) != 3 && len(f) != 4 {
		return out, trailer{}, false
	}
	n := make([]int64, len(f))
	for j := range f {
		v, err := strconv.ParseInt(f[j], 10, 64)
		if err != nil {
			return out, trailer{}, false
		}
		n[j] = v
	}
	t := trailer{exit: int(n[0]), timedOut: n[1] == 1, truncated: n[2] == 1}
	if len(n) == 4 {
		t.duration = time.Duration(n[3]) * time.Microsecond
	}
	return out[:i], t, true
}
