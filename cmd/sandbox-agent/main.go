// Command sandbox-agent runs as PID 1 inside every codefleet Docker sandbox. It reaps zombies,
// and runs the snippets the worker sends over the container's attached stdin, answering on
// stdout (see internal/agent for the protocol). It is a static binary with no dependencies
// beyond the standard library, copied into the container before it starts.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/codefleet/codefleet/internal/agent"
)

func main() {
	// Not dumpable: snippets run as the same user, and must not reach the agent's stdin and
	// stdout (the worker's channel) through /proc/1/fd.
	syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_DUMPABLE, 0, 0)

	// Threads first: the Go runtime dies when it cannot create an OS thread, and a fork bomb
	// fills the sandbox's pids limit. Idle threads are kept and reused, so make them now.
	agent.ReserveThreads(16)

	dir, err := os.Getwd()
	if err != nil {
		dir = "/"
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	a := agent.New(dir, os.Environ(), agent.NewReaper())
	a.WorkerOutside = true // PID 1 of the sandbox's own pid namespace; the worker is outside it
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
}
