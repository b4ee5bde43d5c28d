package agent

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// ExecutableName is the file name the agent runs under inside a sandbox. A codefleet binary
// started under this name (cmd/worker, cmd/codefleet: the worker's own executable copied into
// a sandbox when no sandbox-agent binary is at hand) runs Main instead of its own command.
const ExecutableName = "sandbox-agent"

// Main runs the agent as PID 1 of a sandbox: it serves the worker on stdin and stdout until
// stdin ends, then stays (the container and its files live until the worker removes it or
// re-attaches after a restart), and exits on SIGTERM or SIGINT. It never returns.
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	a := New(dir, os.Environ(), NewReaper())
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
