// Package agent is the sandbox agent's runtime: the small program that runs as PID 1 inside
// every Docker sandbox (cmd/sandbox-agent calls Main). It serves the worker's protocol, whose
// frames and constants are in package wire (internal/agent/wire: framing, hello, runs, the
// socket upgrade and its token), on the container's attached stdin and stdout, and on the unix
// socket the worker asks it to dial (socket.go). When the worker asks for it, it also carries
// the sandbox's egress: it listens on a port of the sandbox's loopback and splices each
// connection to the worker's egress socket, which decides where it may go (egress.go).
//
// Besides the protocol it does what PID 1 of a sandbox has to: it reaps every process (Reaper),
// starts each snippet in a process group of its own with the run's environment, merges its
// stdout and stderr into one capped buffer (internal/output), enforces the run's timeout,
// kills what the snippet leaves behind in its process group (KillGroup), keeps python and bash
// interpreters started ahead of the runs (warm.go), makes itself non-dumpable and creates its
// OS threads up front (Main, ReserveThreads).
//
// Whatever a snippet did, the next run starts (startable.go): the working directory is made
// usable again, stopped or dead idle interpreters are not handed runs, and processes that
// escaped their run's process group (setsid, daemons), which otherwise live on between runs on
// purpose, are ended when the sandbox is nearly out of pids or a run's process cannot be
// created; the run's output says so in lines starting with "codefleet:". A run whose process
// cannot be started all the same is answered with exit code 126 and what went wrong, never
// with an error frame, which is only for the protocol. Nor can a snippet end the agent with a
// signal (Main, endingSignals).
//
// It imports nothing of codefleet but wire and internal/output, and neither net nor os/user,
// so cmd/sandbox-agent is a static binary even when built with cgo. The worker side
// (pkg/envs/docker) imports wire only; pkg/envs/fake runs this runtime in-process.
package agent
