package agent

// Warm interpreters.
//
// Starting bash or python inside a container costs milliseconds (the dynamic loader, the
// locale, python's site), more than everything else in a run. So while Serve runs, the agent
// keeps one interpreter per language started ahead of the runs: `bash -c BOOT` or
// `python3 -c BOOT`, in its own process group, stdin /dev/null, stdout and stderr on its own
// pipe, working directory and environment those of a cold run, blocked reading fd 3. A run of
// that language hands it the run's variables and code over fd 3 (warmPayload), which is then
// closed, and from there on it is an ordinary run: the same timeout, kill, output and exit code
// handling as a cold start. The bootstrap (bashBoot, pythonBoot) runs the code as `bash -c CODE`
// or `python3 -c CODE` would; each snippet is still a fresh process that never ran other code.
//
// Freshness. An interpreter reads files when it starts (python: site-packages, .pth files, the
// user site directory), and any run may change them (`pip install` from a bash snippet, then
// `import` from a python one). So an interpreter is handed a run only if no run ended since it
// was started, and none is started while a run is going: when a run ends, every idle
// interpreter is killed; the run's own language is started again at once (the next run is most
// likely the same language), the other languages the sandbox has run once the agent has been
// idle for warmIdle, so that a burst of bash runs does not pay for python starts it does not
// use. (When Serve starts, every language is started once.)
//
// Lasting interpreters. `bash -c` reads no startup file but $BASH_ENV's (and $ENV's in sh mode);
// so when the base environment sets neither, a warm bash is as good after any run as before it.
// It is then not killed when a run ends, and the agent keeps two waiting: a run sent as soon as
// the last one ended (the code blocks of one message) takes the spare, which has long finished
// starting, instead of one still starting. (Starting the replacement beside the run instead
// slowed the run itself on two CPUs.) When a run ends, only the one a next run would lack is
// started at once; the spare is started again once the agent has been idle for warmIdle, with
// the other languages. Runs sent back to back then take the spare without waiting for a start
// in flight (begin), and on a loaded machine a sandbox forks fewer interpreters beside the
// runs of the others: 20 sandboxes of back to back bash runs on two CPUs make about 25 % more
// runs per second with a p99 about a quarter lower (BenchmarkLoad in pkg/worker), for 1.5 ms
// more per run in a single conversation's back-to-back runs, every other one of which takes a
// bash that is still starting; paced runs find two waiting as before. What a
// run could still change for a bash that started before it is only what root can (the locale
// archive, the working directory replaced by another, or another bash put earlier in PATH: the
// base PATH's directories are root's).
//
// A run starts cold instead when its code goes to a file (javascript, typescript, big code),
// when its code or variables cannot go to a warm interpreter unchanged (warmable), when no
// interpreter of its language is idle or being forked (an interpreter that is still
// initialising is handed the run at once, never waited for), or when the idle ones are unfit:
// dead (killed from outside the runs, say), or stopped or traced (`kill -STOP -1` from a
// snippet stops every process of the sandbox but the agent). Before an idle interpreter is
// handed a run its state is read (/proc/<pid>/stat, microseconds); an unfit one is killed and
// forgotten, so that it neither takes the run (which would then never start) nor stays in the
// pool. Nor is one handed a run after the working directory was made again or replaced (it
// still works in the old one): the idle ones are then discarded (startable.go). The
// interpreter was looked up in PATH when it was started, after the last run ended (or,
// lasting, at any time: see above), so it is the one a cold start would find.
//
// Known differences from a cold start, none of which a snippet normally sees: the process's
// command line (/proc/self/cmdline, python's sys.orig_argv) is the bootstrap's; bash's
// PIPESTATUS is (0) and `_` is not exported before the code's first command; `declare -p`
// shows SECONDS with a value (it is set to 0 when the run begins, so that it counts from there
// rather than from the interpreter's start); bash reports
// syntax errors as "bash: eval: line N: ..." rather than "bash: -c: line N: ..." (same exit
// code 2); bash does not exec the code's last command in place of itself; python's top frame
// has the bootstrap's frame as f_back (tracebacks do not show it). A snippet can reach an idle
// interpreter of its own sandbox (same user); it could already change what the next run sees
// through the files it shares with it.

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// warmIdle is how long no run must end before the interpreters of the languages that did not
// just run are started again.
const warmIdle = 50 * time.Millisecond

// pool keeps warm interpreters for the life of Serve: one per language, two of a lasting one.
// Its methods are safe for concurrent use.
type pool struct {
	a     *Agent
	langs map[string]*language // the languages that can be warmed

	mu       sync.Mutex
	cond     *sync.Cond // signalled when a start ends
	closed   bool
	idle     map[string][]*warmProc // language → interpreters waiting for a run, oldest first
	starting map[string]int         // language → starts in flight
	used     map[string]bool        // languages the sandbox has run
	lasting  map[string]bool        // languages whose warm interpreters stay good across runs
	active   int                    // runs going on
	ended    uint64                 // runs ended so far: an interpreter started before the last one is stale
	timer    *time.Timer            // starts the other languages once idle
	// discarded counts the idle interpreters found stopped or dead when a run came (tests).
	discarded int
	wg        sync.WaitGroup // starts and kills in flight
}

func newPool(a *Agent) *pool {
	p := &pool{a: a, langs: map[string]*language{}, idle: map[string][]*warmProc{}, starting: map[string]int{}, used: map[string]bool{}, lasting: map[string]bool{}}
	p.cond = sync.NewCond(&p.mu)
	for i := range languages {
		lang := &languages[i]
		if lang.warm == nil {
			continue
		}
		p.langs[lang.name] = lang
		p.lasting[lang.name] = lang.lasting && !setsAny(a.Environ, lang.startVars)
	}
	return p
}

// setsAny reports whether environ sets any of names.
func setsAny(environ, names []string) bool {
	for _, n := range names {
		if _, ok := getenv(environ, n); ok {
			return true
		}
	}
	return false
}

// want is how many interpreters of lang are kept waiting: a lasting language keeps a spare, so
// that a run sent as soon as the last one ended finds one that has finished starting.
func (p *pool) want(lang string) int {
	if p.lasting[lang] {
		return 2
	}
	return 1
}

// fill starts the interpreters every language lacks, unless a run is going on.
func (p *pool) fill() { p.refill(false) }

// refill starts the interpreters every language lacks, or with usedOnly those the sandbox has
// run so far: a conversation that only ever runs bash does not pay for a python start
// (milliseconds of CPU) after each of its runs.
func (p *pool) refill(usedOnly bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.active > 0 {
		return
	}
	for name := range p.langs {
		if !usedOnly || p.used[name] {
			p.startLocked(name)
		}
	}
}

func (p *pool) refillUsed() { p.refill(true) }

// begin marks a run of lang as going on and, when want is set, takes lang's oldest idle
// interpreter (nil when there is none). end must follow.
//
// The starts in flight are waited for, of every language: each is a fork and exec (which a cold
// start would do itself, and a second process starting beside it would only halve the CPU each
// gets), and no fork may be in flight once the run's code runs. A snippet can stop every
// process of the sandbox but the agent (`kill -STOP -1`), and so a child between its fork and
// its exec; the fork, a vfork, then does not return, and the Go runtime cannot stop the world
// for a garbage collection while it waits: the whole agent would hang. (Reaper.Start also
// continues such a child, which helps unless a collection has begun.) No start begins while a
// run is going on (refill, end). An interpreter is handed the run while it initialises, which
// is never waited for.
func (p *pool) begin(lang string, want bool) *warmProc {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active++
	p.used[lang] = true
	for p.forking() {
		p.cond.Wait()
	}
	if !want {
		return nil
	}
	for len(p.idle[lang]) > 0 {
		w := p.idle[lang][0]
		p.idle[lang] = p.idle[lang][1:]
		if !w.unfit() {
			return w
		}
		// Stopped (a snippet's `kill -STOP -1`), traced or dead: a run handed to it would
		// never start. It goes, and the run takes the next one or starts cold.
		p.discarded++
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			w.kill()
		}()
	}
	return nil
}

// settle waits until no start is in flight: a process the pool is starting is then an idle
// interpreter, or gone, and not taken for a leftover of a run (endLeftovers).
func (p *pool) settle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.forking() {
		p.cond.Wait()
	}
}

// forking reports whether a start is in flight. p.mu is held.
func (p *pool) forking() bool {
	for _, n := range p.starting {
		if n > 0 {
			return true
		}
	}
	return false
}

// discardIdle kills every idle interpreter, waits until they are gone and returns how many there
// were. They are started again when the runs going on have ended. The starts in flight are
// waited for first: they were decided before the caller's reason to discard (a working
// directory made again), and would otherwise become idle just after.
func (p *pool) discardIdle() int {
	p.mu.Lock()
	for p.forking() {
		p.cond.Wait()
	}
	idle := p.idle
	p.idle = map[string][]*warmProc{}
	p.mu.Unlock()
	n := 0
	for _, ws := range idle {
		for _, w := range ws {
			w.kill()
			n++
		}
	}
	return n
}

// end marks a run of lang as ended: the idle interpreters are stale and killed (lasting ones
// are kept), one of lang's is started again at once if none is left, and the others (a
// lasting language's spare too) after warmIdle.
func (p *pool) end(lang string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.active--
	p.ended++
	for name, idle := range p.idle {
		if p.lasting[name] {
			continue
		}
		delete(p.idle, name)
		for _, w := range idle {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				w.kill()
			}()
		}
	}
	if p.closed || p.active > 0 {
		return
	}
	// At once only what the next run needs: a lasting language's spare is started once the
	// agent is idle (refillUsed), not beside the next runs.
	p.startUpTo(lang, 1)
	if p.timer == nil {
		p.timer = time.AfterFunc(warmIdle, p.refillUsed)
	} else {
		p.timer.Reset(warmIdle)
	}
}

// startLocked starts in the background the interpreters lang lacks, if it can be warmed. p.mu
// is held.
func (p *pool) startLocked(lang string) { p.startUpTo(lang, p.want(lang)) }

// startUpTo starts in the background interpreters of lang until want are idle or starting, if
// it can be warmed. p.mu is held.
func (p *pool) startUpTo(lang string, want int) {
	if p.closed || p.langs[lang] == nil {
		return
	}
	for n := len(p.idle[lang]) + p.starting[lang]; n < want; n++ {
		p.starting[lang]++
		p.wg.Add(1)
		go p.start(lang, p.ended)
	}
}

// start starts an interpreter of lang and keeps it if it is still wanted: lang is lasting, or
// no run ended since the start was decided (gen); if a run did, it starts another.
func (p *pool) start(lang string, gen uint64) {
	defer p.wg.Done()
	w, err := p.a.startWarm(p.langs[lang])
	p.mu.Lock()
	p.starting[lang]--
	p.cond.Broadcast()
	keep := err == nil && !p.closed && (gen == p.ended || p.lasting[lang]) && len(p.idle[lang]) < p.want(lang)
	if keep {
		p.idle[lang] = append(p.idle[lang], w)
	} else if err == nil && p.active == 0 {
		p.startLocked(lang) // it went stale while starting
	}
	p.mu.Unlock()
	if err == nil && !keep {
		w.kill()
	}
}

// close kills the idle interpreters and waits for those starting.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	if p.timer != nil {
		p.timer.Stop()
	}
	idle := p.idle
	p.idle = map[string][]*warmProc{}
	p.mu.Unlock()
	for _, ws := range idle {
		for _, w := range ws {
			w.kill()
		}
	}
	p.wg.Wait()
}

// warmProc is an interpreter started ahead of its run, blocked reading fd 3.
type warmProc struct {
	process
	// boot is the write end of the interpreter's fd 3.
	boot *os.File
	// stat is its /proc/<pid>/stat open (-1 if it could not be opened): read before the
	// interpreter is handed a run (unfit), without a path lookup.
	stat int
}

// startWarm starts an interpreter of lang with the base environment.
func (a *Agent) startWarm(lang *language) (*warmProc, error) {
	bins, ok := a.resolve(lang)
	if !ok {
		return nil, os.ErrNotExist
	}
	argv := lang.warm(bins, a.Environ)
	br, bw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	proc, err := a.spawn(argv, a.Environ, br)
	br.Close()
	if err != nil {
		bw.Close()
		return nil, err
	}
	stat, err := syscall.Open("/proc/"+strconv.Itoa(proc.pid)+"/stat", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		stat = -1
	}
	return &warmProc{process: *proc, boot: bw, stat: stat}, nil
}

// pipeBuf is what an empty pipe always takes without blocking (PIPE_BUF).
const pipeBuf = 4096

// handoff gives w its run and returns it as a started process, or nil, having discarded w, when
// w is dead. The first pipeBuf bytes are written at once (a dead interpreter fails the write
// with EPIPE); the rest of a bigger payload is written in the background, since the interpreter
// reads it only once it has finished starting.
func (w *warmProc) handoff(env map[string]string, code string) *process {
	w.closeStat()
	payload := warmPayload(env, code)
	start := time.Now()
	first := payload[:min(len(payload), pipeBuf)]
	if _, err := w.boot.Write(first); err != nil {
		w.kill()
		return nil
	}
	proc := w.process
	proc.start = start
	if rest := payload[len(first):]; len(rest) > 0 {
		proc.input = make(chan struct{})
		go func() {
			defer close(proc.input)
			w.boot.Write(rest) // fails once the process is gone
			w.boot.Close()
		}()
	} else {
		w.boot.Close()
	}
	return &proc
}

// unfit reports whether w cannot take a run: it has exited, or it is a zombie, stopped or
// traced (one read of /proc/<pid>/stat).
func (w *warmProc) unfit() bool {
	if len(w.exited) > 0 {
		return true
	}
	if w.stat < 0 {
		return stoppedOrDead(w.pid)
	}
	var buf [256]byte
	n, err := syscall.Pread(w.stat, buf[:], 0) // fails once the process is gone
	if err != nil || n <= 0 {
		return true
	}
	info, ok := parseStat(buf[:n])
	return !ok || unfitState(info.state)
}

// closeStat closes w's stat file.
func (w *warmProc) closeStat() {
	if w.stat >= 0 {
		syscall.Close(w.stat)
		w.stat = -1
	}
}

// kill kills an interpreter that was not handed a run (or is dead), and waits for it.
func (w *warmProc) kill() {
	select {
	case <-w.exited:
	default:
		syscall.Kill(-w.pid, syscall.SIGKILL)
		<-w.exited
	}
	w.boot.Close()
	w.out.Close()
	w.closeStat()
}

// warmPayload is what a warm interpreter reads on fd 3: each variable as KEY=VALUE and a NUL,
// an empty record, the code's length in bytes and a NUL, then the code.
func warmPayload(env map[string]string, code string) []byte {
	n := len(code) + 16
	for k, v := range env {
		n += len(k) + len(v) + 2
	}
	b := make([]byte, 0, n)
	for k, v := range env {
		b = append(b, k...)
		b = append(b, '=')
		b = append(b, v...)
		b = append(b, 0)
	}
	b = append(b, 0)
	b = strconv.AppendInt(b, int64(len(code)), 10)
	b = append(b, 0)
	return append(b, code...)
}

// warmable reports whether a run's code and variables can go to a warm interpreter: they must
// reach it unchanged (no NUL, which a cold start rejects; names a shell can export), and no
// variable may be one that is read when a process starts or that bash treats specially, since
// the interpreter started before the run's variables were known (coldVar).
func warmable(env map[string]string, code string) bool {
	if strings.IndexByte(code, 0) >= 0 {
		return false
	}
	for k, v := range env {
		if !isName(k) || coldVar(k) || strings.IndexByte(v, 0) >= 0 {
			return false
		}
	}
	return true
}

// isName reports whether s is a shell variable name.
func isName(s string) bool {
	for i, c := range s {
		if c != '_' && !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

// coldVars are the variables a run can set only through a cold start: read by the dynamic
// loader, libc, bash or python when the process starts (exporting them later changes nothing,
// or not the same thing), or set by bash itself at startup. coldPrefixes are the families of
// them.
var (
	coldVars = map[string]bool{
		"PATH": true, "HOME": true, "PWD": true, "OLDPWD": true, "TZ": true, "TZDIR": true,
		"LANG": true, "LANGUAGE": true, "LOCPATH": true, "NLSPATH": true, "GCONV_PATH": true,
		"ENV": true, "SHELLOPTS": true, "POSIXLY_CORRECT": true, "SHLVL": true, "IFS": true,
		"OPTIND": true, "OPTERR": true, "PPID": true, "UID": true, "EUID": true, "GROUPS": true,
		"RANDOM": true, "SRANDOM": true, "SECONDS": true, "LINENO": true, "HISTCMD": true,
		"FUNCNAME": true, "DIRSTACK": true, "PIPESTATUS": true, "EPOCHSECONDS": true,
		"EPOCHREALTIME": true, "COMP_WORDBREAKS": true, "_": true,
	}
	coldPrefixes = []string{"BASH", "PYTHON", "LD_", "LC_", "MALLOC_", "GLIBC_"}
)

func coldVar(k string) bool {
	if coldVars[k] {
		return true
	}
	for _, p := range coldPrefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// bashBoot is the program of a warm bash, given the value $_ has when bash starts. It exports
// each variable and reads the code into BASH_EXECUTION_STRING, which `bash -c CODE` sets to the
// code (so the bootstrap leaves no variable of its own; the code is read in one go under the C
// locale, where -N counts bytes), closes fd 3, sets $SECONDS (the time since the run began, not
// since the interpreter did) and $_ back and evals the code. It is one line,
// so that the code's line numbers ($LINENO, error messages) are those of `bash -c CODE`; eval
// returns 2 on a syntax error as `bash -c` exits 2, and `exit`, `set -e`, traps and functions
// behave the same at the top level of either.
func bashBoot(underscore string) string {
	return `while IFS= read -r -d '' BASH_EXECUTION_STRING <&3 && [[ $BASH_EXECUTION_STRING ]]; do export "$BASH_EXECUTION_STRING"; done; ` +
		`IFS= read -r -d '' BASH_EXECUTION_STRING <&3; IFS= LC_ALL=C read -r -N "$BASH_EXECUTION_STRING" BASH_EXECUTION_STRING <&3; ` +
		`exec 3<&-; SECONDS=0; : ` + shellQuote(underscore) + `; eval "$BASH_EXECUTION_STRING"`
}

// startUnderscore is the value of $_ when bash starts with environ and argv0: the environment's
// `_`, else argv0.
func startUnderscore(environ []string, argv0 string) string {
	if v, ok := getenv(environ, "_"); ok {
		return v
	}
	return argv0
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// pythonBoot is the program of a warm python. It reads its run (imports nothing new, so nothing
// is looked up in the working directory before the code runs), sets the variables as bytes,
// and runs the code as `python3 -c CODE` does: compiled as '<string>' and run in __main__'s
// globals, where the bootstrap leaves no name (sys.argv is already ['-c']). An exception leaving
// the code has the bootstrap's frame removed from its traceback and is re-raised with a bare
// raise (which adds no frame), so python prints it, exits 1, handles SystemExit and
// KeyboardInterrupt exactly as for `python3 -c CODE`.
const pythonBoot = `def __cf():
    import os
    b = b''
    while True:
        c = os.read(3, 1 << 16)
        if not c:
            break
        b += c
    os.close(3)
    *env, _, _, code = b.split(b'\0')
    for kv in env:
        k, _, v = kv.partition(b'=')
        os.environb[k] = v
    return code.decode('utf-8', 'surrogateescape')
try:
    exec(compile(globals().pop('__cf')(), '<string>', 'exec'), globals())
except BaseException as __cf:
    __cf.__traceback__ = __cf.__traceback__.tb_next
    raise
`
