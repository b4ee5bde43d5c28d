package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DiskGuard keeps what a sandbox's snippets write under a limit where the kernel does not: the
// Docker daemon's storage driver has no size option (fuse-overlayfs, overlay2 off xfs project
// quotas), so nothing below the sandbox stops a snippet from filling the worker's disk.
//
// Two things hold the limit. Every process the agent starts has RLIMIT_FSIZE at the limit (set
// on the agent itself, and inherited; SIGXFSZ is ignored, so a write past it fails with EFBIG,
// "File too large"): one file cannot pass it. And the guard measures the space the snippets' files
// take: the files under the directories the agent's user can write (its user is the snippets',
// so that is everywhere a snippet can write; for root, the whole root filesystem, less what it
// held when the guard started), each inode counted once by its size or its allocated blocks, whichever is more, and the files
// processes hold open after they were removed. When that passes the limit while a run is going
// on, the runs are ended (their result says so: DiskLimited) and so are the processes earlier
// runs left behind; later runs may go on (to remove files), but one that writes more while the
// files are still over the limit is ended too.
//
// Measuring walks the directories, so it is not done on every tick: the free space of the
// filesystem (statfs, one cheap call) and the sandbox's dirty pages (data not written back yet,
// which a FUSE filesystem's free space does not show) bound how much can have been written
// since the last walk,
// and the guard walks only when that bound passes the limit, and at least every forceEvery
// while runs go on (other sandboxes removing files on the same filesystem would hide writes
// from the bound). What passes the limit between two ticks is the overshoot (docs/security.md).
//
// Its blind spot: a file removed while open by a process that made itself non-dumpable (its
// open files cannot be read from /proc by the same user) is not seen; it is bounded by
// RLIMIT_FSIZE, and it goes when the process ends (a run's processes are ended with the run).
type DiskGuard struct {
	// Limit is the most the snippets' files may take, in bytes.
	Limit int64

	roots    []string
	all      bool   // roots is "/": everything on its filesystem but what was there at the start
	rootDev  uint64 // the device of "/" when all is set (the walk stays on it)
	baseline int64  // what "/" held when the guard started, when all is set
	statPath string // the path statfs is asked about

	mu   sync.Mutex
	runs map[chan struct{}]uint64 // hit channels of the runs going on, with their registration number
	// registered counts the runs registered (watch): a walk ends only the runs registered
	// before it began, whose start the check that walked took into account.
	registered uint64
	running    int
	// lingering: processes earlier runs left behind live (Run looked between runs).
	lingering bool
	wake      chan struct{} // a run started: Run checks at once and goes on ticking fast
	usage     int64         // what the last walk found
	admitted  int64         // what file puts were let write since (Admit)
	free      int64         // the free space when the last walk started
	floor     int64         // usage when the runs were last ended for it; 0 when under the limit
	walked    time.Time
	took      time.Duration // how long the last walk took
	// hitUsage is what the walk that ended runs found; hitPending counts the runs it ended that
	// are not over yet. Once they are (their processes gone), rebase asks the next walk to take
	// what it finds as the floor: what they wrote until they were killed is not a later run's.
	hitUsage   int64
	hitPending int
	rebase     bool
	// started: a run started since the last check. Files already over the limit then are an
	// earlier run's doing (one stopped by the file size limit, say): that check takes them as
	// the floor instead of ending the new run for them.
	started bool
}

const (
	fastTick   = 20 * time.Millisecond  // while runs go on
	slowTick   = 250 * time.Millisecond // between runs, when the agent cannot tell whether processes were left behind
	scanEvery  = time.Second            // how often processes left behind are looked for between runs
	forceEvery = time.Second            // a walk at least this often while runs go on
	// floorSlack is what a run may still write while the files are over the limit (a shell's
	// history, a small log) before it is ended.
	floorSlack = 64 << 10
)

// NewDiskGuard returns a guard of limit bytes for snippets run in dir (their working directory)
// by user uid with home directory home.
func NewDiskGuard(limit int64, dir, home string, uid int) *DiskGuard {
	g := &DiskGuard{Limit: limit, statPath: dir, runs: map[chan struct{}]uint64{}, wake: make(chan struct{}, 1)}
	if uid == 0 {
		g.all, g.roots = true, []string{"/"}
		var st syscall.Stat_t
		if syscall.Stat("/", &st) == nil {
			g.rootDev = uint64(st.Dev)
		}
		return g
	}
	// The directories a snippet can create files in, on a Debian-like image: its working and
	// home directories and the world-writable ones. /dev/shm is a tmpfs: memory, bounded by its
	// size and the sandbox's memory limit.
	for _, p := range []string{dir, home, "/tmp", "/var/tmp", "/run/lock"} {
		if p == "" || syscall.Access(p, 2 /* W_OK */) != nil {
			continue
		}
		g.roots = append(g.roots, filepath.Clean(p))
	}
	g.roots = outermost(g.roots)
	return g
}

// outermost drops the paths that are inside another one of paths (or equal to it).
func outermost(paths []string) []string {
	var out []string
	for i, p := range paths {
		inside := false
		for j, q := range paths {
			if i != j && (p == q && j < i || p != q && strings.HasPrefix(p, strings.TrimSuffix(q, "/")+"/")) {
				inside = true
				break
			}
		}
		if !inside {
			out = append(out, p)
		}
	}
	return out
}

// guardedAgent is what Run needs of the agent: ending what earlier runs left behind, and whether they
// left any (nil for both where the agent is not PID 1 of the sandbox and cannot tell).
type guardedAgent struct {
	endLeftovers func() int
	lingering    func() bool
}

// Run checks the disk until ctx ends: every fastTick while runs go on or processes that earlier
// runs left behind live (they may write between runs; looked for every scanEvery), and not at
// all otherwise (nothing but the agent and its idle interpreters runs then: nothing writes)
// until a run starts. Without a way to tell (a.lingering nil) it checks every slowTick between
// runs.
func (g *DiskGuard) Run(ctx context.Context, a guardedAgent) {
	if g.all {
		g.baseline = g.measure()
	}
	g.mu.Lock()
	g.free = statfsFree(g.statPath)
	g.mu.Unlock()
	t := time.NewTimer(slowTick)
	defer t.Stop()
	var scanned time.Time
	lingering := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.wake:
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
		case <-t.C:
		}
		if g.check() && a.endLeftovers != nil {
			a.endLeftovers()
		}
		g.mu.Lock()
		running := g.running > 0
		g.mu.Unlock()
		switch {
		case running:
			t.Reset(fastTick)
		case a.lingering == nil:
			t.Reset(slowTick)
		default:
			if time.Since(scanned) >= scanEvery || !lingering {
				lingering, scanned = a.lingering(), time.Now()
			}
			g.mu.Lock()
			g.lingering = lingering
			g.mu.Unlock()
			if lingering {
				t.Reset(fastTick)
			} // else: wait for the next run (watch wakes the loop)
		}
	}
}

// check measures when the free space says the limit may have been passed (or forceEvery passed
// with runs going on), and ends the runs when it was. It reports whether it ended them.
func (g *DiskGuard) check() bool {
	free := statfsFree(g.statPath)
	g.mu.Lock()
	if free < 0 {
		free = g.free // no bound: the forced walks only
	}
	// Over the limit already (the runs were ended, the files not removed yet), what matters is
	// whether more is written.
	threshold := g.Limit
	if g.floor != 0 {
		threshold = g.floor + floorSlack
	}
	// What the snippets removed since frees space as surely as what they wrote takes it; what
	// other sandboxes on the filesystem do moves the bound too (up: a walk for nothing; down:
	// writes hidden until the forced walk).
	// Data written and not yet on the filesystem (dirty pages of the sandbox's cgroup: a FUSE
	// filesystem learns of it, and statfs with it, only when it is written back) counts too.
	bound := max(0, g.usage+g.free-free) + unwritten()
	due := (g.running > 0 || g.lingering) && time.Since(g.walked) >= max(forceEvery, 10*g.took)
	// Over the limit until files were removed: a walk says whether they are under it again (the
	// bound alone may be moved down by other sandboxes removing files).
	if g.started {
		g.started = false
		g.rebase = g.rebase || bound > threshold
	}
	seen := g.registered
	due = due || g.floor != 0 && bound <= g.Limit || g.rebase
	if bound <= threshold && !due {
		g.mu.Unlock()
		return false
	}
	g.mu.Unlock()

	usage := g.walkNow(free)
	defer g.mu.Unlock()
	if usage <= g.Limit {
		g.floor, g.rebase = 0, false
		return false
	}
	if g.rebase {
		g.floor, g.rebase = max(g.floor, usage), false
		return false
	}
	if g.floor != 0 && usage <= g.floor+floorSlack {
		return false // over the limit, but nothing more was written since the runs were ended
	}
	g.floor, g.hitUsage = usage, usage
	// A run that started while this walk went on is not ended by it: the files it found may
	// have been there before that run (make test saw an rm after a dd stopped at the file size
	// limit ended a few ms in); the next check takes its start into account.
	for hit, n := range g.runs {
		if n > seen {
			continue
		}
		close(hit)
		delete(g.runs, hit)
		g.hitPending++
	}
	g.rebase = g.hitPending == 0 // only processes left behind: ended before the next check
	return true
}

// watch registers a run: hit is closed when the guard ends the runs; done unregisters it.
func (g *DiskGuard) watch() (hit <-chan struct{}, done func()) {
	ch := make(chan struct{})
	g.mu.Lock()
	g.registered++
	g.runs[ch] = g.registered
	g.running++
	g.started = true
	g.mu.Unlock()
	select {
	case g.wake <- struct{}{}:
	default:
	}
	return ch, func() {
		g.mu.Lock()
		if _, ok := g.runs[ch]; ok {
			delete(g.runs, ch)
		} else if g.hitPending--; g.hitPending == 0 {
			g.rebase = true // the runs ended for the limit are over
		}
		g.running--
		g.mu.Unlock()
	}
}

// Reason says what the guard found, for a run it ended.
func (g *DiskGuard) Reason() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return fmt.Sprintf("the sandbox's files reached its disk limit (%s used of %s): the run was ended; remove files to go on",
		sizeText(g.hitUsage), sizeText(g.Limit))
}

// measure returns the space the snippets' files take: the allocated blocks of every inode under
// the roots (once each), plus the removed files that processes hold open.
func (g *DiskGuard) measure() int64 {
	seen := map[[2]uint64]bool{}
	var total int64
	add := func(st *syscall.Stat_t) {
		if st.Nlink > 1 || st.Nlink == 0 {
			k := [2]uint64{uint64(st.Dev), st.Ino}
			if seen[k] {
				return
			}
			seen[k] = true
		}
		// The larger of its size and its allocated blocks: fuse-overlayfs reports the blocks of
		// data not yet written back (and of every removed file) as 0. A sparse file counts
		// whole, but RLIMIT_FSIZE bounds its size.
		total += max(st.Size, st.Blocks*512)
	}
	for _, root := range g.roots {
		g.walk(root, add)
	}
	removedOpenFiles(add)
	if g.all {
		total -= g.baseline
	}
	return max(total, 0)
}

// walk calls add for every file and directory under root, without following symlinks or
// leaving root's filesystem when the guard covers "/". A directory the snippets made unreadable
// (chmod 0: the agent is their user, so it owns it) is made readable again to be counted.
func (g *DiskGuard) walk(root string, add func(*syscall.Stat_t)) {
	var visit func(path string)
	visit = func(path string) {
		var st syscall.Stat_t
		if syscall.Lstat(path, &st) != nil {
			return
		}
		if g.all && uint64(st.Dev) != g.rootDev {
			return // /proc, /sys, /dev, the mounts Docker adds
		}
		add(&st)
		if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
			return
		}
		d, err := os.Open(path)
		if errors.Is(err, fs.ErrPermission) && st.Uid == uint32(os.Getuid()) {
			os.Chmod(path, fs.FileMode(st.Mode&0o7777)|0o700)
			d, err = os.Open(path)
		}
		if err != nil {
			return
		}
		for {
			names, err := d.Readdirnames(1024)
			for _, name := range names {
				visit(path + "/" + name)
			}
			if err != nil {
				break
			}
		}
		d.Close()
	}
	visit(strings.TrimSuffix(root, "/") + "/")
}

// removedOpenFiles calls add for every removed file a process of the sandbox still holds open
// (readable in /proc for processes of the agent's user that are dumpable).
func removedOpenFiles(add func(*syscall.Stat_t)) {
	d, err := os.Open(procDir)
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	self := strconv.Itoa(os.Getpid())
	for _, pid := range names {
		if pid == self || pid[0] < '0' || pid[0] > '9' {
			continue
		}
		dir := procDir + "/" + pid + "/fd"
		f, err := os.Open(dir)
		if err != nil {
			continue
		}
		fds, _ := f.Readdirnames(-1)
		f.Close()
		for _, fd := range fds {
			target, err := os.Readlink(dir + "/" + fd)
			if err != nil || !strings.HasSuffix(target, " (deleted)") {
				continue
			}
			var st syscall.Stat_t
			if syscall.Stat(dir+"/"+fd, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFREG {
				add(&st)
			}
		}
	}
}

// memoryStats are the memory cgroup's statistics as a sandbox sees them: cgroup v1 and v2.
var memoryStats = []string{"/sys/fs/cgroup/memory/memory.stat", "/sys/fs/cgroup/memory.stat"}

// unwritten returns the bytes of file data the sandbox's processes wrote that are not written
// back yet (dirty and under writeback, by the sandbox's memory cgroup), or 0.
func unwritten() int64 {
	for _, path := range memoryStats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		var n int64
		for _, line := range strings.Split(string(b), "\n") {
			key, value, _ := strings.Cut(line, " ")
			switch key {
			case "dirty", "writeback", "file_dirty", "file_writeback": // v1, v2
				v, _ := strconv.ParseInt(value, 10, 64)
				n += v
			}
		}
		return n
	}
	return 0
}

// statfsFree returns the bytes free to unprivileged users on path's filesystem, or -1.
func statfsFree(path string) int64 {
	var s syscall.Statfs_t
	if syscall.Statfs(path, &s) != nil {
		return -1
	}
	return int64(s.Bavail) * s.Bsize
}

// sizeText writes a byte count for people: 1.5 GiB, 200 MiB, 12 KiB.
func sizeText(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 1, 64) + " GiB"
	case n >= 1<<20:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	default:
		return strconv.FormatInt(n>>10, 10) + " KiB"
	}
}

// Admit returns nil when n more bytes (a piece of a file put) keep the snippets' files under
// the limit, else an error saying what they take. What was admitted since the last walk is
// added to what it found, and so is what the free space says was written since (processes runs
// left behind may write between runs); a walk is made when that bound leaves no room, or when
// the last is older than forceEvery (other sandboxes removing files on the filesystem move the
// free space's bound down).
func (g *DiskGuard) Admit(n int64) error {
	free := statfsFree(g.statPath)
	g.mu.Lock()
	bound := max(g.usage+g.admitted, max(0, g.usage+g.free-free)+unwritten())
	fresh := !g.walked.IsZero() && time.Since(g.walked) < forceEvery
	if fresh && free >= 0 && bound+n <= g.Limit {
		g.admitted += n
		g.mu.Unlock()
		return nil
	}
	g.mu.Unlock()
	usage := g.walkNow(free)
	defer g.mu.Unlock()
	if usage+n > g.Limit {
		return fmt.Errorf("the sandbox's files take %d bytes of its disk limit of %d: %d more do not fit", usage, g.Limit, n)
	}
	g.admitted = n
	return nil
}

// walkNow measures the snippets' files and records it as the last walk, with the free space seen
// before it; it returns with g.mu held.
func (g *DiskGuard) walkNow(free int64) int64 {
	start := time.Now()
	usage := g.measure()
	g.mu.Lock()
	g.usage, g.free, g.walked, g.took, g.admitted = usage, free, start, time.Since(start), 0
	return usage
}
