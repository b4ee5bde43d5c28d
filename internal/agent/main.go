package agent

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/codefleet/codefleet/internal/agent/wire"
)

// ExecutableName is the file name the agent runs under inside a sandbox. A codefleet binary
// started under this name (cmd/worker, cmd/codefleet: the worker's own executable copied into
// a sandbox when no sandbox-agent binary is at hand) runs Main instead of its own command.
const ExecutableName = "sandbox-agent"

// Main runs the agent as PID 1 of a sandbox: it serves the worker on stdin and stdout until
// stdin ends, then stays (the container and its files live until the worker removes it or
// re-attaches after a restart). As PID 1 it drops every signal a snippet could end it with
// (see endingSignals), but for SIGTERM and SIGINT when no snippet can have sent them (quiet:
// `docker stop` of an idle sandbox; otherwise `docker stop` takes its grace period, then
// SIGKILL; the worker removes sandboxes with a forced remove). Elsewhere (not PID 1) it exits on
// SIGTERM or SIGINT. It never returns.
func Main() {
	// Not dumpable: snippets run as the same user, and must not reach the agent's stdin and
	// stdout (the worker's channel) through /proc/1/fd.
	syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_DUMPABLE, 0, 0)

	// Threads first: the Go runtime dies when it cannot create an OS thread, and a fork bomb
	// fills the sandbox's pids limit. Idle threads are kept and reused, so make them now.
	ReserveThreads(16)

	dir, err := os.Getwd()
	if err != nil {
		dir = "/"
	}
	a := New(dir, os.Environ(), NewReaper())
	limit, watch, err := diskArgs(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "sandbox-agent:", err)
		os.Exit(2)
	}
	if limit > 0 {
		// One file cannot pass the limit (inherited by every process the agent starts); with
		// SIGXFSZ ignored (an ignored signal stays ignored across exec), a write past it fails
		// with EFBIG instead of killing the writer.
		lim := syscall.Rlimit{Cur: uint64(limit), Max: uint64(limit)}
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
			fmt.Fprintln(os.Stderr, "sandbox-agent: file size limit:", err)
		}
		signal.Ignore(syscall.SIGXFSZ)
		if watch {
			home, _ := getenv(a.Environ, "HOME")
			a.Disk = NewDiskGuard(limit, dir, home, os.Getuid())
		}
	}
	ctx, stop := context.WithCancel(context.Background())
	if os.Getpid() == 1 {
		// Handled and dropped, not ignored: an ignored signal stays ignored in the processes
		// the agent starts (a snippet's `yes | head` would then complain of a broken pipe, its
		// children would ignore SIGTERM), while a handled one is reset to its default there.
		// SIGTERM and SIGINT end the agent when no snippet can have sent them (quiet): that is
		// `docker stop` of an idle sandbox.
		sigs := make(chan os.Signal, 16)
		ending := endingSignals
		if limit > 0 {
			ending = slices.DeleteFunc(slices.Clone(ending), func(s os.Signal) bool { return s == syscall.SIGXFSZ })
		}
		signal.Notify(sigs, ending...)
		go func() {
			for sig := range sigs {
				if (sig == syscall.SIGTERM || sig == syscall.SIGINT) && a.quiet() {
					stop()
				}
			}
		}()
	} else {
		var cancel context.CancelFunc
		ctx, cancel = signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
		defer cancel()
	}
	defer stop()
	a.WorkerOutside = true // PID 1 of the sandbox's own pid namespace; the worker is outside it
	// Every process it sees is then the sandbox's, so it may end what earlier runs left behind
	// when the sandbox runs out of pids (startable.go); never elsewhere.
	a.EndLeftovers = os.Getpid() == 1
	go func() {
		<-ctx.Done()
		os.Exit(0)
	}()
	if err := a.Serve(ctx, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox-agent:", err)
	}
	// Stdin ended: nobody can send work any more, but the container (and its files) stays
	// until the worker removes it or re-attaches after a restart.
	<-ctx.Done()
	os.Exit(0)
}

// endingSignals are the signals that end a Go program that does not handle them (os/signal:
// SIGHUP, SIGINT and SIGTERM exit, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGSTKFLT and SIGSYS exit
// with a stack dump; SIGBUS, SIGFPE and SIGSEGV sent with kill crash it too). Snippets run as the
// agent's user, and PID 1 of a pid namespace receives from inside it exactly the signals it
// handles, which the Go runtime does for all: so `kill 1`, `kill -HUP 1`, ... from a snippet
// would end the agent and with it the sandbox. Main handles them and drops them. (For SIGBUS,
// SIGFPE and SIGSEGV only those sent with kill are handled so: a fault of the agent's own still
// panics.)
var endingSignals = []os.Signal{
	syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGILL, syscall.SIGTRAP,
	syscall.SIGABRT, syscall.SIGBUS, syscall.SIGFPE, syscall.SIGSEGV, syscall.SIGTERM,
	syscall.SIGSTKFLT, syscall.SIGSYS, syscall.SIGPIPE, syscall.SIGXCPU, syscall.SIGXFSZ,
}

// diskArgs reads the agent's arguments.
func diskArgs(args []string) (limit int64, watch bool, err error) {
	for _, arg := range args {
		switch name, value, _ := strings.Cut(arg, "="); name {
		case wire.ArgDiskLimit:
			if limit, err = strconv.ParseInt(value, 10, 64); err != nil || limit < 0 {
				return 0, false, fmt.Errorf("%s=%q: want a number of bytes", wire.ArgDiskLimit, value)
			}
		case wire.ArgDiskWatch:
			watch = true
		default:
			return 0, false, fmt.Errorf("unknown argument %q", arg)
		}
	}
	return limit, watch, nil
}
