package agent

// Every run is startable, whatever the runs before it did.
//
// A conversation's snippets run as the sandbox's user, which owns the working directory and may
// signal every process of the sandbox but the agent (PID 1 of its pid namespace: a signal from
// inside reaches it only if it handles it). So a snippet can break what the next run needs:
// take the working directory's permissions away (`chmod 000 /workspace`), fill the pids limit
// with processes that outlive it (`setsid sleep 1000 &` three hundred times), or stop the idle
// interpreters (`kill -STOP -1`). None of that may end the sandbox (its files would be lost), so
// before each run the agent puts back what the run needs, and says so in the run's output, in
// lines that start with "codefleet:":
//
//   - The working directory (Agent.Dir, nothing below it): when it is missing, it is made again
//     (0755); when the agent owns it and it lacks u+rwx, those bits are added (the others are
//     kept). A directory below it that a snippet made unusable is the snippet's business: `cd
//     sub` then fails inside the run, with the shell's own message. Cost: one fstat per run
//     (checkDir), and a stat by path before a cold start.
//   - Idle interpreters: one that is stopped (SIGSTOP), traced, or dead is discarded when a run
//     would be handed to it (one read of its /proc/<pid>/stat, kept open), and the run takes
//     the next one or starts cold (warm.go). No interpreter is being forked while a run's code
//     runs (pool.begin): a child stopped between its fork and its exec would hang the agent.
//   - Pids: when fewer than max(8, 5%) of the sandbox's pids limit are free before a run (the
//     pids cgroup: one read of pids.current and pids.max each), or when the run's process
//     cannot be created for want of pids or memory (EAGAIN, ENOMEM), the processes that earlier
//     runs left behind are ended (endLeftovers) and, in the second case, the start is tried once
//     more.
//
// What lives on between runs, on purpose. A run's process group is killed when its main process
// exits (wait), but a process that left the group (setsid, a daemonized server) lives on: a
// snippet may start a server for later runs to use. Such processes count against the sandbox's
// pids and memory limits, and they are ended only when a new run could not start otherwise: the
// sandbox is nearly out of pids before the run, or creating the run's process failed for want
// of pids or memory. The run's output then says how many were ended and why. Ended are the
// processes of the sandbox that descend from the agent (so not one `docker exec` started) other
// than the agent, the processes it started that are still running (the runs going on, the idle
// interpreters) and what descends from those or shares their process group. Only the agent as
// PID 1 of the sandbox does this (Agent.EndLeftovers): elsewhere the processes it sees are not
// all the sandbox's.
//
// A start that fails all the same is the run's result, not an error frame: exit code 126 (the
// shell's "cannot execute") and an output saying what is wrong and how to recover, so that the
// worker does not take the sandbox for dead. Error frames are for the protocol only.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/codefleet/codefleet/internal/agent/wire"
)

// exitCannotStart is a run's exit code when its process could not be started (the shell's
// "cannot execute").
const exitCannotStart = 126

// note is the prefix of the lines the agent adds to a run's output.
const note = "codefleet: "

// prepare makes the run about to start startable: it restores the working directory and, when
// the sandbox is nearly out of pids, ends the leftovers of earlier runs. It returns what the
// run's output says about it first, and whether the idle interpreters no longer work in the
// working directory (it was made again, or is another directory than when they started).
func (a *Agent) prepare() (notes string, stale bool) {
	notes, stale = a.checkDir()
	if a.EndLeftovers {
		if cur, max, ok := a.pidsUse(); ok && max-cur < pidsReserve(max) {
			if p := a.warm.Load(); p != nil {
				p.settle()
			}
			if n := a.endLeftovers(); n > 0 {
				notes += fmt.Sprintf(note+"the sandbox was nearly out of processes (%d of its %d in use): ended %s that earlier runs left running\n", cur, max, plural(n, "process", "processes"))
			}
		}
	}
	return notes, stale
}

// pidsReserve is how many pids must be free before a run for the leftovers of earlier runs to be
// left alone.
func pidsReserve(limit int64) int64 { return max(8, limit/20) }

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}

// dirState is what the last check of the working directory found, and, while Serve runs, the
// directory open (O_PATH): a path lookup costs tens of microseconds on some storage drivers
// (fuse-overlayfs), a stat of the open directory a fraction of one.
type dirState struct {
	mu       sync.Mutex
	dev, ino uint64
	known    bool
	fd       int // the directory open (O_PATH), when open is set
	open     bool
}

// oPath is O_PATH (package syscall lacks it): an fd that only names a file, which a directory of
// mode 000 may be opened as.
const oPath = 0o10000000

// checkDir makes the working directory usable by the runs again (see the top of the file) and
// says what it did. It reports stale when the directory is not the one the last check found
// (the idle interpreters started in the old one). While Serve runs, the directory checked is the
// one open since the last check (one fstat): its mode, and whether it was removed. That it was
// moved away or replaced by another (which only root can do to /workspace) is seen by the check
// of a cold start (checkDirPath), which every run that is not handed a warm interpreter does.
func (a *Agent) checkDir() (notes string, stale bool) {
	d := &a.dir
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.open {
		var st syscall.Stat_t
		if syscall.Fstat(d.fd, &st) == nil && st.Nlink > 0 && st.Mode&syscall.S_IFMT == syscall.S_IFDIR &&
			(st.Mode&0o700 == 0o700 || int(st.Uid) != os.Geteuid()) {
			return "", false
		}
	}
	return a.checkDirPathLocked(a.warm.Load() != nil)
}

// checkDirPath is checkDir by the directory's path.
func (a *Agent) checkDirPath() (notes string, stale bool) {
	a.dir.mu.Lock()
	defer a.dir.mu.Unlock()
	return a.checkDirPathLocked(a.dir.open)
}

// checkDirPathLocked is checkDirPath with a.dir.mu held; keepOpen opens the directory for the
// next checks (see dirState).
func (a *Agent) checkDirPathLocked(keepOpen bool) (notes string, stale bool) {
	var st syscall.Stat_t
	err := syscall.Stat(a.Dir, &st)
	if err == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		if int(st.Uid) == os.Geteuid() && st.Mode&0o700 != 0o700 {
			notes = a.restoreMode(&st)
		}
		return notes, a.sameDirLocked(&st, keepOpen)
	}
	if !errors.Is(err, syscall.ENOENT) {
		return "", false // not a directory, or unreadable: nothing to restore; the start says why
	}
	if err := os.MkdirAll(a.Dir, 0o755); err != nil {
		return fmt.Sprintf(note+"the working directory %s was gone and could not be made again: %v\n", a.Dir, errText(err)), true
	}
	if syscall.Stat(a.Dir, &st) == nil {
		a.sameDirLocked(&st, keepOpen)
	}
	return fmt.Sprintf(note+"the working directory %s was gone: made it again (empty)\n", a.Dir), true
}

// restoreMode adds u+rwx to the working directory, which the agent owns.
func (a *Agent) restoreMode(st *syscall.Stat_t) string {
	old := st.Mode & 0o7777
	mode := old | 0o700
	if err := syscall.Chmod(a.Dir, mode); err != nil {
		return fmt.Sprintf(note+"the working directory %s has mode %03o and could not be given u+rwx: %v\n", a.Dir, old, errText(err))
	}
	return fmt.Sprintf(note+"the working directory %s had mode %03o: restored it to %03o (u+rwx)\n", a.Dir, old, mode)
}

// sameDirLocked records the working directory's identity (st, found by its path) and reports
// whether it changed since the last check (the first check records it); with keepOpen, the
// directory is (re)opened for the next checks. a.dir.mu is held.
func (a *Agent) sameDirLocked(st *syscall.Stat_t, keepOpen bool) (changed bool) {
	d := &a.dir
	changed = d.known && (d.dev != uint64(st.Dev) || d.ino != st.Ino)
	d.dev, d.ino, d.known = uint64(st.Dev), st.Ino, true
	if d.open && (changed || !keepOpen) {
		syscall.Close(d.fd)
		d.open = false
	}
	if keepOpen && !d.open {
		if fd, err := syscall.Open(a.Dir, oPath|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0); err == nil {
			var now syscall.Stat_t
			if syscall.Fstat(fd, &now) == nil && uint64(now.Dev) == d.dev && now.Ino == d.ino {
				d.fd, d.open = fd, true
			} else {
				syscall.Close(fd) // replaced between the stat and the open: the next check will see
			}
		}
	}
	return changed
}

// closeDir closes the working directory kept open for the checks (when Serve returns).
func (a *Agent) closeDir() {
	d := &a.dir
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.open {
		syscall.Close(d.fd)
		d.open = false
	}
}

// startFailed is the result of a run whose process could not be started: what is wrong, and
// how to recover.
func (a *Agent) startFailed(id, notes, what string, err error) *wire.Response {
	return &wire.Response{Op: wire.OpResult, ID: id, ExitCode: exitCannotStart,
		Output: notes + note + what + ": " + errText(err) + a.why(err) + "\n"}
}

// errText is err's system error message, without the operation and path around it.
func errText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

// why explains a failed start, in parentheses (or returns "").
func (a *Agent) why(err error) string {
	var errno syscall.Errno
	errors.As(err, &errno)
	switch errno {
	case syscall.EAGAIN:
		use := ""
		if cur, max, ok := a.pidsUse(); ok {
			use = fmt.Sprintf(": %d of its %d in use", cur, max)
		}
		return " (the sandbox is out of processes" + use + "; end some of those still running, or close the conversation to start afresh)"
	case syscall.ENOMEM:
		return " (the sandbox is out of memory; end some of the processes still running, or close the conversation to start afresh)"
	case syscall.ENOSPC, syscall.EDQUOT:
		return " (the disk is full: delete some files)"
	case syscall.EMFILE, syscall.ENFILE:
		return " (too many open files)"
	}
	var st syscall.Stat_t
	switch err := syscall.Stat(a.Dir, &st); {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Sprintf(" (the working directory %s does not exist)", a.Dir)
	case err != nil:
		return fmt.Sprintf(" (the working directory %s cannot be looked up: %v)", a.Dir, errText(err))
	case st.Mode&syscall.S_IFMT != syscall.S_IFDIR:
		return fmt.Sprintf(" (the working directory %s is not a directory: move it away)", a.Dir)
	case int(st.Uid) == os.Geteuid() && st.Mode&0o700 != 0o700:
		return fmt.Sprintf(" (the working directory's mode is %03o: chmod u+rwx %s)", st.Mode&0o7777, a.Dir)
	case syscall.Access(a.Dir, 0o3) != nil: // W_OK|X_OK
		return fmt.Sprintf(" (the working directory %s, owned by uid %d with mode %03o, cannot be entered and written by uid %d)", a.Dir, st.Uid, st.Mode&0o7777, os.Geteuid())
	}
	if errno == syscall.EACCES || errno == syscall.ENOENT || errno == syscall.ENOEXEC {
		return " (the interpreter cannot be run: check its file and its permissions)"
	}
	return ""
}

// outOfResources reports whether a process could not be made for want of pids or memory.
func outOfResources(err error) bool {
	return errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.ENOMEM)
}

// pidsFiles are the sandbox's pids cgroup files, opened once (nil when there are none).
type pidsFiles struct {
	once     sync.Once
	cur, max *os.File
}

// pidsCgroups are where the pids cgroup files are looked for: cgroup v1's pids controller, then
// cgroup v2 (the container's own cgroup namespace).
var pidsCgroups = []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup"}

// pidsUse returns how many pids the sandbox uses and may use; ok is false when the pids cgroup
// cannot be read, or sets no limit.
func (a *Agent) pidsUse() (cur, max int64, ok bool) {
	f := &a.pids
	f.once.Do(func() {
		dirs := a.pidsDirs
		if dirs == nil {
			dirs = pidsCgroups
		}
		for _, dir := range dirs {
			m, err := os.Open(filepath.Join(dir, "pids.max"))
			if err != nil {
				continue
			}
			c, err := os.Open(filepath.Join(dir, "pids.current"))
			if err != nil {
				m.Close()
				continue
			}
			f.cur, f.max = c, m
			return
		}
	})
	if f.cur == nil {
		return 0, 0, false
	}
	cur, ok1 := readCount(f.cur)
	max, ok2 := readCount(f.max) // "max" (no limit) is not a number
	return cur, max, ok1 && ok2 && max > 0
}

// readCount reads the number a cgroup file holds, from its start.
func readCount(f *os.File) (int64, bool) {
	var buf [32]byte
	n, _ := f.ReadAt(buf[:], 0)
	i := 0
	for i < n && buf[i] >= '0' && buf[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, false
	}
	v, err := strconv.ParseInt(string(buf[:i]), 10, 64)
	return v, err == nil
}

// procInfo is what the agent reads of a process in /proc/<pid>/stat.
type procInfo struct {
	state      byte // R, S, D, T (stopped), t (traced), Z (zombie), X, ...
	ppid, pgrp int
}

// readProc reads /proc/<pid>/stat; ok is false when the process is gone.
func readProc(pid int) (procInfo, bool) {
	var path [32]byte
	p := append(append(path[:0], "/proc/"...), strconv.Itoa(pid)...)
	return readStat(string(append(p, "/stat"...)))
}

func readStat(path string) (procInfo, bool) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return procInfo{}, false
	}
	var buf [256]byte // pid, (comm: at most 16 bytes), state, ppid, pgrp come first
	n, err := syscall.Read(fd, buf[:])
	syscall.Close(fd)
	if err != nil || n <= 0 {
		return procInfo{}, false
	}
	return parseStat(buf[:n])
}

// parseStat parses the start of a /proc/<pid>/stat line: "pid (comm) state ppid pgrp ...";
// comm may hold spaces and parentheses, nothing after it does.
func parseStat(b []byte) (procInfo, bool) {
	i := len(b) - 1
	for i >= 0 && b[i] != ')' {
		i--
	}
	if i < 0 || i+3 >= len(b) {
		return procInfo{}, false
	}
	info := procInfo{state: b[i+2]}
	fields := b[i+3:]
	num := func() (int, bool) {
		for len(fields) > 0 && fields[0] == ' ' {
			fields = fields[1:]
		}
		j := 0
		for j < len(fields) && fields[j] >= '0' && fields[j] <= '9' {
			j++
		}
		if j == 0 {
			return 0, false
		}
		v, err := strconv.Atoi(string(fields[:j]))
		fields = fields[j:]
		return v, err == nil
	}
	var ok1, ok2 bool
	info.ppid, ok1 = num()
	info.pgrp, ok2 = num()
	return info, ok1 && ok2
}

// stoppedOrDead reports whether a process cannot take a run: it is gone, a zombie, stopped or
// traced.
func stoppedOrDead(pid int) bool {
	info, ok := readProc(pid)
	return !ok || unfitState(info.state)
}

// unfitState reports whether a process in state can take no run: stopped, traced, a zombie, or
// dead.
func unfitState(state byte) bool {
	switch state {
	case 'T', 't', 'Z', 'X', 'x':
		return true
	}
	return false
}

// procDir is the proc file system the leftovers are looked for in.
const procDir = "/proc"

// scanProcs reads every process of /proc.
func scanProcs() map[int]procInfo {
	d, err := os.Open(procDir)
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	procs := make(map[int]procInfo, len(names))
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		if info, ok := readStat(procDir + "/" + name + "/stat"); ok {
			procs[pid] = info
		}
	}
	return procs
}

// leftovers returns the processes of procs that earlier runs left behind: those that descend
// from self (the agent) through no process of keep (what the agent started and is still
// running) nor of a process group of keep. Zombies are not counted: they are dead already.
func leftovers(procs map[int]procInfo, self int, keep map[int]bool) []int {
	var out []int
	for pid, info := range procs {
		if pid == self || info.state == 'Z' || info.state == 'X' || info.state == 'x' {
			continue
		}
		if leftover(pid, procs, self, keep) {
			out = append(out, pid)
		}
	}
	return out
}

func leftover(pid int, procs map[int]procInfo, self int, keep map[int]bool) bool {
	for cur, n := pid, 0; n < 4096; n++ {
		info, ok := procs[cur]
		if !ok || keep[cur] || keep[info.pgrp] {
			return false // gone since, not in the scan, or the agent's own
		}
		if info.ppid == self {
			return true
		}
		if info.ppid <= 1 {
			return false // not below the agent (a process `docker exec` started, or on a host)
		}
		cur = info.ppid
	}
	return false
}

// leftoverGrace bounds how long the agent takes to end the leftovers and see them gone.
const leftoverGrace = 2 * time.Second

// endLeftovers ends the processes earlier runs left behind (see the top of the file) and waits,
// within leftoverGrace, until they are gone (their pids free again); it returns how many it
// ended. What keeps forking is killed by process group as well, and the sandbox is scanned
// again until nothing is left.
func (a *Agent) endLeftovers() int {
	self := os.Getpid()
	deadline := time.Now().Add(leftoverGrace)
	ended := map[int]bool{}
	for {
		procs := scanProcs()
		// What the agent started is read after the scan: a process it forked before the scan is
		// registered by then (Reaper.Start holds its lock from the fork on).
		keep := a.reaper.running()
		victims := leftovers(procs, self, keep)
		if len(victims) == 0 {
			break
		}
		// A group may be killed whole when nothing the agent keeps is in it.
		spare := map[int]bool{}
		isVictim := make(map[int]bool, len(victims))
		for _, pid := range victims {
			isVictim[pid] = true
		}
		for pid, info := range procs {
			if !isVictim[pid] {
				spare[info.pgrp] = true
			}
		}
		groups := map[int]bool{}
		for _, pid := range victims {
			ended[pid] = true
			syscall.Kill(pid, syscall.SIGKILL)
			if g := procs[pid].pgrp; g > 1 && !spare[g] && !groups[g] {
				groups[g] = true
				syscall.Kill(-g, syscall.SIGKILL)
			}
		}
		if time.Now().After(deadline) {
			break
		}
	}
	// Killed, they are zombies until reaped: the agent reaps those it inherited at once.
	for len(ended) > 0 && time.Now().Before(deadline) {
		gone := true
		for pid := range ended {
			if _, err := os.Stat(procDir + "/" + strconv.Itoa(pid)); !errors.Is(err, fs.ErrNotExist) {
				gone = false
				break
			}
		}
		if gone {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	return len(ended)
}

// quietFor is how long after the last run, or the last process that ended, a signal may still
// have come from a snippet.
const quietFor = time.Second

// quiet reports whether no snippet can have sent the agent a signal that just came: no run is
// going on or ended within quietFor, no process ended within quietFor, and every process of the
// sandbox besides the agent is one it started and still runs (an idle interpreter, which runs
// nothing but its bootstrap). A sender that has exited since was collected by the agent (it
// descends from it), recently: the times are checked again after the scan, since it may have
// been collected while the scan went on. Main ends the agent on SIGTERM only then.
func (a *Agent) quiet() bool {
	calm := func() bool {
		recent := time.Now().Add(-quietFor).UnixNano()
		return a.runs.Load() == 0 && a.lastRun.Load() <= recent && a.reaper.lastReap.Load() <= recent
	}
	if !calm() {
		return false
	}
	reaped := a.reaper.lastReap.Load()
	self := os.Getpid()
	procs := scanProcs()
	started := a.reaper.running()
	for pid := range procs {
		if pid != self && !started[pid] {
			return false
		}
	}
	return calm() && a.reaper.lastReap.Load() == reaped
}
