package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// peer is bench/dockerpy_peer.py: AG2's DockerSandbox with docker-py, one request at a time.
type peer struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

type peerReply struct {
	IDs      []string `json:"ids"`
	LatUS    []int64  `json:"lat_us"`
	ElapsedS float64  `json:"elapsed_s"`
	FirstUS  int64    `json:"first_us"`  // stream: to the first chunk
	TotalUS  int64    `json:"total_us"`  // stream: the whole call
	DelaysUS []int64  `json:"delays_us"` // stream: each line's arrival less the time it printed
	PutUS    int64    `json:"put_us"`    // files
	GetUS    int64    `json:"get_us"`
	Error    string   `json:"error"`
}

func startPeer(python, script, image string) (*peer, error) {
	cmd := exec.Command(python, script, image)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = daemonAttr() // as the daemons; it stops its containers at the end of its stdin too
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s %s: %w (is python3-docker installed? apt-get install python3-docker)", python, script, err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	return &peer{cmd: cmd, in: in, out: sc}, nil
}

func (p *peer) call(req map[string]any) (*peerReply, error) {
	b, _ := json.Marshal(req)
	if _, err := p.in.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("docker-py peer: %w", err)
	}
	if !p.out.Scan() {
		return nil, fmt.Errorf("docker-py peer exited: %v", errors.Join(p.out.Err(), p.cmd.Wait()))
	}
	var r peerReply
	if err := json.Unmarshal(p.out.Bytes(), &r); err != nil {
		return nil, fmt.Errorf("docker-py peer: %w: %s", err, p.out.Bytes())
	}
	if r.Error != "" {
		return nil, fmt.Errorf("docker-py peer: %s", r.Error)
	}
	return &r, nil
}

// start makes sure n sandboxes (containers started as AG2 starts them) exist and returns their
// container ids.
func (p *peer) start(n int) ([]string, error) {
	r, err := p.call(map[string]any{"op": "start", "n": n})
	if err != nil {
		return nil, err
	}
	return r.IDs, nil
}

// run runs the snippet n times in sandbox i, pausing pace (untimed) before each.
func (p *peer) run(i int, sn snippet, n int, pace time.Duration) ([]time.Duration, error) {
	r, err := p.call(map[string]any{"op": "run", "sandbox": i, "lang": sn.lang, "code": sn.code, "n": n, "pace_ms": pace.Milliseconds()})
	if err != nil {
		return nil, err
	}
	return durations(r.LatUS), nil
}

// load runs the snippet back to back in the first k sandboxes at once for window.
func (p *peer) load(k int, sn snippet, window time.Duration) ([]time.Duration, time.Duration, error) {
	r, err := p.call(map[string]any{"op": "load", "sandboxes": k, "lang": sn.lang, "code": sn.code, "seconds": window.Seconds()})
	if err != nil {
		return nil, 0, err
	}
	return durations(r.LatUS), time.Duration(r.ElapsedS * float64(time.Second)), nil
}

// first starts a new sandbox and runs the snippet in it: AG2's first run of a conversation.
func (p *peer) first(sn snippet) (time.Duration, error) {
	r, err := p.call(map[string]any{"op": "first", "lang": sn.lang, "code": sn.code})
	if err != nil {
		return 0, err
	}
	return durations(r.LatUS)[0], nil
}

// stream runs the snippet in sandbox i with exec_run(stream=True), as AG2's
// DockerSandbox.stream does, timed in the peer as the caller of that generator sees it.
func (p *peer) stream(i int, lang, code string) (streamRun, error) {
	r, err := p.call(map[string]any{"op": "stream", "sandbox": i, "lang": lang, "code": code})
	if err != nil {
		return streamRun{}, err
	}
	return streamRun{first: time.Duration(r.FirstUS) * time.Microsecond, total: time.Duration(r.TotalUS) * time.Microsecond, delays: durations(r.DelaysUS)}, nil
}

// files puts a file of size random bytes at path in sandbox i's workspace and gets it back, as
// AG2's put_file and get_file do; the peer checks the checksums off the clock.
func (p *peer) files(i int, path string, size int64) (fileRound, error) {
	r, err := p.call(map[string]any{"op": "files", "sandbox": i, "path": path, "bytes": size})
	if err != nil {
		return fileRound{}, err
	}
	return fileRound{put: time.Duration(r.PutUS) * time.Microsecond, get: time.Duration(r.GetUS) * time.Microsecond}, nil
}

// close stops the peer's containers and waits for it to exit.
func (p *peer) close() {
	p.call(map[string]any{"op": "close"})
	p.in.Close()
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		p.cmd.Process.Kill()
	}
}

func durations(us []int64) []time.Duration {
	d := make([]time.Duration, len(us))
	for i, v := range us {
		d[i] = time.Duration(v) * time.Microsecond
	}
	return d
}

// dockerCLI runs the snippet n times with `docker exec` in container id, pausing pace (untimed)
// before each; it times the whole CLI process, as a shell script calling it sees it.
func dockerCLI(id string, sn snippet, n int, pace time.Duration) ([]time.Duration, error) {
	argv := map[string][]string{"bash": {"bash", "-c", sn.code}, "python": {"python3", "-c", sn.code}}[sn.lang]
	lat := make([]time.Duration, 0, n)
	for range n {
		time.Sleep(pace)
		start := time.Now()
		out, err := exec.Command("docker", append([]string{"exec", "-w", "/workspace", id}, argv...)...).CombinedOutput()
		lat = append(lat, time.Since(start))
		if err != nil {
			return nil, fmt.Errorf("docker exec %s: %v: %s", sn.lang, err, out)
		}
	}
	return lat, nil
}
