package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/docker/docker/api/types/container"
	dockerclient "github.com/docker/docker/client"
)

// cgroupMem is a container's memory cgroup as the Docker API reports it: the usage, and the
// usage less the inactive file cache (what `docker stats` shows).
func cgroupMem(ctx context.Context, cli *dockerclient.Client, id string) (usage, noCache int64, err error) {
	r, err := cli.ContainerStatsOneShot(ctx, id)
	if err != nil {
		return 0, 0, err
	}
	defer r.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
		return 0, 0, err
	}
	m := st.MemoryStats
	inactive := m.Stats["total_inactive_file"] // cgroup v1
	if v, ok := m.Stats["inactive_file"]; ok && inactive == 0 {
		inactive = v // cgroup v2
	}
	return int64(m.Usage), int64(m.Usage - min(inactive, m.Usage)), nil
}

// procKiB reads a field (VmRSS of status, Pss of smaps_rollup) of a host process in bytes; 0
// when it cannot be read.
func procKiB(pid int, file, field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func rss(pid int) int64 { return procKiB(pid, "status", "VmRSS") }

// pss is a process's proportional share of its resident pages (shared pages split between
// the processes that map them), its RSS where smaps_rollup is missing.
func pss(pid int) int64 {
	if v := procKiB(pid, "smaps_rollup", "Pss"); v > 0 {
		return v
	}
	return rss(pid)
}

// hostProc is a process of the host: its pid, name and command line.
type hostProc struct {
	pid           int
	comm, cmdline string
}

func hostProcs() []hostProc {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	procs := make([]hostProc, 0, len(dirs))
	for _, d := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(d))
		comm, _ := os.ReadFile(d + "/comm")
		cmdline, _ := os.ReadFile(d + "/cmdline")
		procs = append(procs, hostProc{pid, strings.TrimSpace(string(comm)), string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))})
	}
	return procs
}

// daemonRSS is the summed RSS of the host processes named comm (dockerd, containerd).
func daemonRSS(comm string) int64 {
	var sum int64
	for _, p := range hostProcs() {
		if p.comm == comm {
			sum += rss(p.pid)
		}
	}
	return sum
}

// sandboxMem is one container's memory, in it and around it on the host.
type sandboxMem struct {
	usage, noCache int64 // its memory cgroup
	agent          int64 // RSS of its PID 1 (the sandbox agent; AG2's sh)
	shim           int64 // PSS of its containerd shim
	fuse           int64 // PSS of the fuse-overlayfs process of its root file system, if any
}

func measureSandbox(ctx context.Context, cli *dockerclient.Client, id string, procs []hostProc) (sandboxMem, error) {
	var m sandboxMem
	var err error
	if m.usage, m.noCache, err = cgroupMem(ctx, cli, id); err != nil {
		return m, err
	}
	insp, err := cli.ContainerInspect(ctx, id)
	if err != nil {
		return m, err
	}
	if insp.State != nil {
		m.agent = rss(insp.State.Pid)
	}
	upper := ""
	if insp.GraphDriver.Name == "fuse-overlayfs" {
		upper = insp.GraphDriver.Data["UpperDir"]
	}
	for _, p := range procs {
		switch {
		case strings.HasPrefix(p.comm, "containerd-shim") && strings.Contains(p.cmdline, "-id "+insp.ID):
			m.shim += pss(p.pid)
		case upper != "" && p.comm == "fuse-overlayfs" && strings.Contains(p.cmdline, upper):
			m.fuse += pss(p.pid)
		}
	}
	return m, nil
}

// measureSandboxes measures each container and returns the medians. At once: dockerd answers
// a stats request at the next tick of its collector, up to a second later.
func measureSandboxes(ctx context.Context, cli *dockerclient.Client, ids []string) (sandboxMem, error) {
	procs := hostProcs()
	ms := make([]sandboxMem, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { ms[i], errs[i] = measureSandbox(ctx, cli, id, procs) })
	}
	wg.Wait()
	return medians(ms), errors.Join(errs...)
}

// medians of each field over several sandboxes.
func medians(ms []sandboxMem) sandboxMem {
	pick := func(f func(sandboxMem) int64) int64 {
		v := make([]int64, len(ms))
		for i, m := range ms {
			v[i] = f(m)
		}
		return median(v)
	}
	return sandboxMem{
		usage:   pick(func(m sandboxMem) int64 { return m.usage }),
		noCache: pick(func(m sandboxMem) int64 { return m.noCache }),
		agent:   pick(func(m sandboxMem) int64 { return m.agent }),
		shim:    pick(func(m sandboxMem) int64 { return m.shim }),
		fuse:    pick(func(m sandboxMem) int64 { return m.fuse }),
	}
}
