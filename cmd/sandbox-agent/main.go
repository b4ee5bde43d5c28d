// Command sandbox-agent runs as PID 1 inside every codefleet Docker sandbox. It reaps zombies,
// and runs the snippets the worker sends over the container's attached stdin, answering on
// stdout (see internal/agent for the protocol). It is a static binary with no dependencies
// beyond the standard library, copied into the container before it starts.
package main

import "github.com/codefleet/codefleet/internal/agent"

func main() { agent.Main() }
