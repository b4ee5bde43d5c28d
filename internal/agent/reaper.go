package agent

import (
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ReserveThreads makes the Go runtime create n OS threads now, while the sandbox's pids limit
// leaves room: n goroutines block in a raw read at once (each holding a thread), then all are
// released. The runtime keeps idle threads for reuse, so the agent does not need to create one
// later, when a fork bomb may have taken every pid (the runtime aborts if it cannot).
func ReserveThreads(n int) {
	var fds [2]int
	if err := syscall.Pipe(fds[:]); err != nil {
		return
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	var started, done sync.WaitGroup
	for i := 0; i < n; i++ {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			started.Done()
			var b [1]byte
			syscall.Read(fds[0], b[:]) // blocks this goroutine's thread
		}()
	}
	started.Wait()
	time.Sleep(20 * time.Millisecond) // let the blocked reads pin their threads
	syscall.Write(fds[1], make([]byte, n))
	done.Wait()
}

// KillGroup kills every process of a process group, again and again until none is left, since
// a process can fork while the group is being killed (a fork bomb does nothing else). It gives
// up after about a second.
func KillGroup(pgid int) {
	for i := 0; i < 200; i++ {
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err == syscall.ESRCH {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Reaper starts processes and collects the exit status of every child, including orphans
// re-parented to the agent as PID 1 (which would otherwise stay zombies).
//
// It waits with wait4(-1) on SIGCHLD, so processes must be started through Start, never through
// os/exec (whose Wait would race with the reaper for the status). Start holds mu from fork to
// registration and the reaper takes mu before looking a pid up, so a child that exits at once
// is never missed.
//
// A Reaper made with NewChildWaiter instead waits for each child by its pid, touches no other
// process's status, and is what a program that is not PID 1 (a test, a fake backend) uses.
type Reaper struct {
	mu sync.Mutex
	// waiting holds the processes started and not collected yet, with their status channels.
	waiting map[int]chan syscall.WaitStatus
	// perPid: wait for each child by pid instead of reaping every child.
	perPid bool
	// lastReap is when a child was last collected (UnixNano).
	lastReap atomic.Int64
}

// NewChildWaiter returns a Reaper that waits for the children it starts and nothing else.
func NewChildWaiter() *Reaper {
	return &Reaper{waiting: map[int]chan syscall.WaitStatus{}, perPid: true}
}

// NewReaper starts reaping every child of the process (PID 1's duty); it runs for the life of
// the process.
func NewReaper() *Reaper {
	r := &Reaper{waiting: map[int]chan syscall.WaitStatus{}}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGCHLD)
	go func() {
		for range sigs {
			r.reap()
		}
	}()
	r.reap()
	return r
}

// Start forks and execs argv0 and returns the pid and a channel that receives its status.
func (r *Reaper) Start(argv0 string, argv []string, attr *syscall.ProcAttr) (int, <-chan syscall.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// A snippet can stop every process of the sandbox but the agent (`kill -STOP -1`), and so
	// the child between fork and exec: the fork (a vfork) then does not return, and the lock
	// held would stall every run. A child that is slow to exec is looked for and continued.
	// This works unless a garbage collection begins meanwhile (the runtime cannot stop the
	// forking thread, so nothing else runs): the warm pool therefore forks nothing while a
	// run's code runs (pool.begin).
	done := make(chan struct{})
	watch := time.AfterFunc(forkStall, func() {
		for {
			continueStoppedForks()
			select {
			case <-done:
				return
			case <-time.After(forkStall):
			}
		}
	})
	pid, err := forkExec(argv0, argv, attr)
	close(done)
	watch.Stop()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiting[pid] = ch
	if r.perPid {
		go func() {
			var ws syscall.WaitStatus
			for {
				_, err := syscall.Wait4(pid, &ws, 0, nil)
				if err != syscall.EINTR {
					break
				}
			}
			r.lastReap.Store(time.Now().UnixNano())
			r.mu.Lock()
			delete(r.waiting, pid)
			r.mu.Unlock()
			ch <- ws
		}()
	}
	return pid, ch, nil
}

// running returns the processes started through r whose status was not collected yet (a fork
// in progress is waited for).
func (r *Reaper) running() map[int]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	pids := make(map[int]bool, len(r.waiting))
	for pid := range r.waiting {
		pids[pid] = true
	}
	return pids
}

func (r *Reaper) reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		r.lastReap.Store(time.Now().UnixNano())
		r.mu.Lock()
		if ch, ok := r.waiting[pid]; ok {
			ch <- ws
			delete(r.waiting, pid)
		}
		r.mu.Unlock()
	}
}

// forkExec is syscall.ForkExec (a test makes it fail).
var forkExec = syscall.ForkExec

// forkStall is how long a fork may take before its child is looked for stopped.
const forkStall = 50 * time.Millisecond

// continueStoppedForks continues the children of the process that are stopped before their
// exec: they are still copies of it (same command name).
func continueStoppedForks() {
	self := os.Getpid()
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		return
	}
	for pid, info := range scanProcs() {
		if info.ppid != self || (info.state != 'T' && info.state != 't') {
			continue
		}
		if c, err := os.ReadFile(procDir + "/" + strconv.Itoa(pid) + "/comm"); err == nil && string(c) == string(comm) {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}
}
