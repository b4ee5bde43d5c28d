package docker_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dockerclient "github.com/docker/docker/client"

	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/envs/docker"
)

// diskOvershoot is the most the snippets' files may pass the limit by before the agent ends
// the run, as docs/security.md states it: what a fast writer adds between two of the
// watchdog's 20 ms ticks and the walk that measures it, writing at 0.7-2 GB/s into the page
// cache. The agent shares the sandbox's CPU quota with the writer, so a writer that uses it up
// delays the check by up to the CFS period (100 ms): 45 MiB seen here on an idle machine, 74 MiB
// with both CPUs busy.
const diskOvershoot = 128 << 20

// TestDiskLimit tries to write eight times the limit into the workspace (one file, many small files)
// and into /tmp, and into files it removed but holds open, as a hostile snippet would: each is stopped at the limit (plus the overshoot),
// the sandbox's writable layer on the host grows no more than that, the next run works once the
// files are removed, and another conversation is served throughout.
func TestDiskLimit(t *testing.T) {
	const limit = 64 << 20
	env := newEnv(t, func(c *docker.Config) { c.Disk = limit })
	mode, err := env.DiskMode(context.Background(), testutil.SandboxImage())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("disk limit held by: %s", mode)
	sb := create(t, env, envs.Spec{})
	other := create(t, env, envs.Spec{Conversation: "other"})
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	layer := func() int64 {
		t.Helper()
		info, _, err := cli.ContainerInspectWithRaw(context.Background(), sb.Info().ID, true)
		if err != nil || info.SizeRw == nil {
			t.Fatalf("inspect the sandbox's size: %v", err)
		}
		return *info.SizeRw
	}
	hostFree := func() int64 {
		var s syscall.Statfs_t
		if err := syscall.Statfs("/var/lib/docker", &s); err != nil {
			t.Fatal(err)
		}
		return int64(s.Bavail) * s.Bsize
	}

	// The other conversation runs all along: it must never wait for the hostile writes.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	served, slowest := 0, time.Duration(0)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			res, err := other.Run(context.Background(), envs.Exec{Language: "bash", Code: "echo ok", Timeout: 10 * time.Second})
			if err != nil || res.Output != "ok\n" {
				t.Errorf("the other conversation: %+v %v", res, err)
				return
			}
			served++
			slowest = max(slowest, time.Since(start))
		}
	}()

	cases := []struct{ name, lang, code, cleanup string }{
		{"one file", "bash", fmt.Sprintf("dd if=/dev/zero of=big bs=1M count=%d", 8*limit>>20), "rm -f big"},
		{"many small files", "python", fmt.Sprintf(`
import os
os.makedirs("many", exist_ok=True)
for i in range(%d):
    with open(f"many/{i}", "wb") as f:
        f.write(os.urandom(256 << 10))
print("wrote them all")`, 8*limit/(256<<10)), "rm -rf many"},
		{"removed open files", "python", fmt.Sprintf(`
import os
fs = []
for i in range(4):
    f = open(f"hidden{i}", "wb")
    os.unlink(f"hidden{i}")
    fs.append(f)
chunk = os.urandom(1 << 20)
for i in range(%d):
    for f in fs:
        f.write(chunk)
        f.flush()
    print(f"wrote {4 * (i + 1)} MiB", flush=True)
print("wrote them all")`, 2*limit>>20), "true"},
		{"tmp", "bash", fmt.Sprintf("mkdir -p /tmp/d && for i in $(seq %d); do head -c 1048576 /dev/zero > /tmp/d/$i || exit; done; echo wrote them all", 8*limit>>20), "rm -rf /tmp/d"},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			before, freeBefore := layer(), hostFree()
			res, err := sb.Run(context.Background(), envs.Exec{Language: c.lang, Code: c.code, Timeout: time.Minute})
			if err != nil {
				t.Fatalf("the run failed instead of giving a result: %v", err)
			}
			grew, hostDrop := layer()-before, freeBefore-hostFree()
			t.Logf("exit %d disk_limit %q in %s; the writable layer grew %s, the host's free space dropped %s; output %q",
				res.ExitCode, res.DiskLimit, res.Duration.Round(time.Millisecond), mib(grew), mib(hostDrop), tail(res.Output))
			if res.ExitCode == 0 || strings.Contains(res.Output, "wrote them all") {
				t.Fatalf("writing 8x the limit succeeded: %+v", res)
			}
			if grew > limit+diskOvershoot {
				t.Fatalf("the sandbox's writable layer grew %s, more than the limit %s and the overshoot %s", mib(grew), mib(limit), mib(diskOvershoot))
			}
			// Removed files take no room in the layer: how far the snippet got says what it held.
			if m := regexp.MustCompile(`wrote (\d+) MiB\n$`).FindStringSubmatch(res.Output); m != nil {
				if n, _ := strconv.ParseInt(m[1], 10, 64); n<<20 > limit+diskOvershoot {
					t.Fatalf("the snippet wrote %d MiB into removed files, more than the limit %s and the overshoot %s", n, mib(limit), mib(diskOvershoot))
				}
			} else if c.name == "removed open files" {
				t.Fatalf("no progress in the output: %q", tail(res.Output))
			}
			if c.name == "one file" {
				// The file size limit stops it at the limit exactly (EFBIG); the watchdog may end
				// the run first, as the file and the sandbox's other files pass the limit.
				if !strings.Contains(res.Output, "File too large") && res.DiskLimit == "" {
					t.Fatalf("a write of one file past the limit should fail with EFBIG or end the run: %+v", res)
				}
				if grew > limit+1<<20 {
					t.Fatalf("one file grew the writable layer %s: the file size limit is %s", mib(grew), mib(limit))
				}
			} else if !strings.Contains(res.DiskLimit, "disk limit") {
				t.Fatalf("the run should be ended for the disk limit: %+v", res)
			}
			wantRun(t, sb, "bash", c.cleanup+"; echo clean", "clean\n")
			wantRun(t, sb, "bash", "head -c 1048576 /dev/zero > small && rm small && echo served", "served\n")
		})
	}
	close(stop)
	wg.Wait()
	t.Logf("the other conversation was served %d times meanwhile, the slowest in %s", served, slowest.Round(time.Millisecond))
	if served == 0 {
		t.Fatal("the other conversation was not served")
	}
}

func mib(n int64) string { return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB" }

func tail(s string) string {
	if len(s) > 300 {
		return "..." + s[len(s)-300:]
	}
	return s
}

// TestDiskLimitHoldsPuts: files put into a sandbox count under its disk limit as a snippet's do:
// puts that would take the files past it are refused, saying so, and nothing is left of them.
func TestDiskLimitHoldsPuts(t *testing.T) {
	const limit = 32 << 20
	env := newEnv(t, func(c *docker.Config) { c.Disk = limit })
	sb := create(t, env, envs.Spec{})
	ctx := context.Background()
	piece := make([]byte, 512<<10)
	put := func(path string, n int) error {
		for off := 0; off < n; off += len(piece) {
			more := off+len(piece) < n
			if _, err := sb.PutFile(ctx, envs.FilePut{Path: path, Upload: "u-" + path, Offset: int64(off), Data: piece, More: more, MaxSize: 1 << 30}); err != nil {
				return err
			}
		}
		return nil
	}
	if err := put("a.bin", 20<<20); err != nil {
		t.Fatalf("a put of 20 MiB under a 32 MiB limit: %v", err)
	}
	err := put("b.bin", 20<<20)
	if !errors.Is(err, envs.ErrFileFailed) || !strings.Contains(err.Error(), "disk limit") {
		t.Fatalf("a second put of 20 MiB: %v; want ErrFileFailed naming the disk limit", err)
	}
	res, rerr := sb.Run(ctx, envs.Exec{Code: "ls -A; du -sm . | cut -f1", Language: "bash"})
	if rerr != nil || res.Output != "a.bin\n21\n" && res.Output != "a.bin\n20\n" {
		t.Fatalf("the workspace after the refused put: %q %v; want a.bin alone, about 20 MiB", res.Output, rerr)
	}
}
