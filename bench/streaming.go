package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// The phase "streaming and files": a run that prints a line every 200 ms, its output streamed
// (codefleet's RunStream against docker-py's exec_run(stream=True), as AG2's
// DockerSandbox.stream does), and a file put into the workspace and got back (codefleet's
// PutFile and GetFile against docker-py's put_archive and get_archive, as AG2's put_file and
// get_file do).

// The paths of this phase.
const (
	pathStreamPy = "docker-py exec_run(stream=True)"
	pathFilesPy  = "docker-py"
)

const (
	streamLines    = 10
	streamInterval = 200 * time.Millisecond
	filePath       = "bench-file.bin" // in the workspace, on both paths
)

// streamCode prints its own clock (the sandbox shares the host's) every 200 ms, 10 times: each
// line says when it was printed, the receiver when it arrived.
var streamCode = fmt.Sprintf("import time\nfor _ in range(%d):\n    print(f\"{time.time():.6f}\", flush=True)\n    time.sleep(%g)\n",
	streamLines, streamInterval.Seconds())

// streamRun is one streamed run as its caller saw it.
type streamRun struct {
	first, total time.Duration   // from the call's start to the first chunk; to the call's end
	delays       []time.Duration // each line: its arrival less the time it printed
}

// fileRound is one put and get of the file.
type fileRound struct{ put, get time.Duration }

// lineClock turns the chunks of a streamed run into the delay of each line, as they arrive.
type lineClock struct {
	partial string
	delays  []time.Duration
}

// add takes a chunk that arrived at now (Unix nanoseconds).
func (l *lineClock) add(data string, now int64) error {
	l.partial += data
	for {
		i := strings.IndexByte(l.partial, '\n')
		if i < 0 {
			return nil
		}
		line := strings.TrimSpace(l.partial[:i])
		l.partial = l.partial[i+1:]
		printed, err := strconv.ParseFloat(line, 64)
		if err != nil {
			return fmt.Errorf("a line of the stream is not a time: %q", line)
		}
		l.delays = append(l.delays, time.Duration(now-int64(math.Round(printed*1e9))))
	}
}

// fleetStream runs streamCode through the fleet with RunStream, timing it in the caller.
func fleetStream(ctx context.Context, conv *client.Conversation) (streamRun, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var (
		lc       lineClock
		first    time.Duration
		chunkErr error
	)
	start := time.Now()
	res, err := conv.RunStream(ctx, streamCode, "python", nil, func(c protocol.OutputChunk) {
		now := time.Now()
		if first == 0 {
			first = now.Sub(start)
		}
		if err := lc.add(c.Data, now.UnixNano()); err != nil && chunkErr == nil {
			chunkErr = err
		}
	})
	total := time.Since(start)
	switch {
	case err != nil:
		return streamRun{}, err
	case res.ExitCode != 0:
		return streamRun{}, fmt.Errorf("streamed run: exit %d: %s", res.ExitCode, res.Output)
	case !res.Streamed || res.Lost != 0:
		return streamRun{}, fmt.Errorf("streamed run: streamed %v, %d chunks lost", res.Streamed, res.Lost)
	case chunkErr != nil:
		return streamRun{}, chunkErr
	case len(lc.delays) != streamLines:
		return streamRun{}, fmt.Errorf("streamed run: %d lines arrived, not %d", len(lc.delays), streamLines)
	}
	return streamRun{first: first, total: total, delays: lc.delays}, nil
}

// fleetFiles puts data at filePath in the conversation's workspace and gets it back, each
// timed as its call; the checksums are compared off the clock.
func fleetFiles(ctx context.Context, conv *client.Conversation, data []byte) (fileRound, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	want := sha256.Sum256(data)
	start := time.Now()
	put, err := conv.PutFile(ctx, filePath, bytes.NewReader(data), int64(len(data)), nil)
	putTook := time.Since(start)
	if err != nil {
		return fileRound{}, fmt.Errorf("PutFile: %w", err)
	}
	if put.Size != int64(len(data)) || !strings.EqualFold(put.SHA256, hex.EncodeToString(want[:])) {
		return fileRound{}, fmt.Errorf("PutFile: the fleet holds %d bytes of sha256 %s", put.Size, put.SHA256)
	}
	var got bytes.Buffer
	start = time.Now()
	_, err = conv.GetFile(ctx, filePath, &got)
	getTook := time.Since(start)
	if err != nil {
		return fileRound{}, fmt.Errorf("GetFile: %w", err)
	}
	if sha256.Sum256(got.Bytes()) != want {
		return fileRound{}, fmt.Errorf("GetFile: %d bytes came back, not the %d put", got.Len(), len(data))
	}
	return fileRound{put: putTook, get: getTook}, nil
}

// streamingAndFiles alternates the two paths: streamed runs one by one (the order rotating,
// an untimed pause of pace before each), then rounds of a put and a get of the file.
func streamingAndFiles(ctx context.Context, r *results, conv *client.Conversation, peer *peer) error {
	for i := range r.o.streamRuns {
		for j := range 2 {
			time.Sleep(r.o.pace)
			var (
				run  streamRun
				err  error
				path = pathFleet
			)
			if (i+j)%2 == 0 {
				run, err = fleetStream(ctx, conv)
			} else {
				path = pathStreamPy
				run, err = peer.stream(0, "python", streamCode)
				if err == nil && len(run.delays) != streamLines {
					err = fmt.Errorf("%d lines arrived, not %d", len(run.delays), streamLines)
				}
			}
			if err != nil {
				return fmt.Errorf("streaming, %s: %w", path, err)
			}
			r.stream[path] = append(r.stream[path], run)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	size := int64(r.o.fileMiB) << 20
	data := make([]byte, size)
	for round := range r.o.fileRounds {
		for j := range 2 {
			var (
				fr   fileRound
				err  error
				path = pathFleet
			)
			if (round+j)%2 == 0 {
				rand.Read(data) // a new file each round, off the clock
				fr, err = fleetFiles(ctx, conv, data)
			} else {
				path = pathFilesPy
				fr, err = peer.files(0, filePath, size)
			}
			if err != nil {
				return fmt.Errorf("files, %s: %w", path, err)
			}
			r.files[path] = append(r.files[path], fr)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}

// spread is the p50, p99 and max of durations, by nearest rank.
func spread(d []time.Duration) (p50, p99, hi time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0, 0, 0
	}
	return percentile(s, 0.50), percentile(s, 0.99), s[len(s)-1]
}

func (r *results) streamTable(p printer) {
	p("Streaming: a python snippet printing its clock (`time.time()`) every %s, %d lines, then\n", streamInterval, streamLines)
	p("exiting (about %s); %d runs per path, alternating. codefleet runs it in the sandbox's\n", streamInterval*streamLines, r.o.streamRuns)
	p("pre-started interpreter, docker-py starts `python3 -c` (in the first line, not in the delays).\n")
	p("First line: from the start of the call to the first chunk in the caller. Print → client: each\n")
	p("line's arrival in the caller less the time it printed (the sandbox shares the host's clock),\n")
	p("over every line. Total: the whole call. In ms, p50 / p99 / max:\n\n")
	p("| path | runs | lines | first line | print → client | total |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, path := range []string{pathFleet, pathStreamPy} {
		runs := r.stream[path]
		var first, total, delays []time.Duration
		for _, run := range runs {
			first, total = append(first, run.first), append(total, run.total)
			delays = append(delays, run.delays...)
		}
		name := path
		if path == pathFleet {
			name = "**codefleet** RunStream"
		}
		p("| %s | %d | %d | %s | %s | %s |\n", name, len(runs), len(delays), triple(first), triple(delays), triple(total))
	}
	p("\n")
}

func triple(d []time.Duration) string {
	a, b, c := spread(d)
	return fmt.Sprintf("%s / %s / %s", ms(a), ms(b), ms(c))
}

func (r *results) filesTable(p printer) {
	mibs := float64(r.o.fileMiB)
	p("Files: a %d MiB file of random bytes put into the workspace (`%s`) and got back, %d round(s),\n", r.o.fileMiB, filePath, r.o.fileRounds)
	p("the two paths alternating, the checksums compared off the clock. codefleet: PutFile and GetFile\n")
	p("through the dispatcher in %d KiB pieces, one request each, four at a time (as pkg/client does\n", protocol.FileChunkBytes>>10)
	p("them; a put's last piece once the others are in; the whole\n")
	p("file's SHA-256 computed by the client and checked by the worker before the file appears; on a get,\n")
	p("computed by the worker over the whole file and checked by the client);\n")
	p("docker-py, as AG2's put_file and get_file: a tar built in memory and `put_archive`, then\n")
	p("`get_archive`, the tar joined in memory and the file extracted. Min / median / max:\n\n")
	p("| path | op | n | MiB/s | wall time, s | median MiB/s ÷ docker-py's |\n| --- | --- | ---: | ---: | ---: | ---: |\n")
	pick := map[string]func(fileRound) time.Duration{"put": func(f fileRound) time.Duration { return f.put }, "get": func(f fileRound) time.Duration { return f.get }}
	ops := map[string][2]string{pathFleet: {"PutFile", "GetFile"}, pathFilesPy: {"put_archive (tar built in memory)", "get_archive (tar read, file extracted)"}}
	for i, op := range []string{"put", "get"} {
		ref := medianOf(r.files[pathFilesPy], pick[op])
		for _, path := range []string{pathFleet, pathFilesPy} {
			var d []time.Duration
			for _, f := range r.files[path] {
				d = append(d, pick[op](f))
			}
			if len(d) == 0 {
				continue
			}
			s := slices.Clone(d)
			slices.Sort(s)
			lo, m, hi := s[0], percentile(s, 0.50), s[len(s)-1]
			rate := func(t time.Duration) string { return fmt.Sprintf("%.0f", mibs/t.Seconds()) }
			secs := func(t time.Duration) string { return fmt.Sprintf("%.2f", t.Seconds()) }
			name := path
			if path == pathFleet {
				name = "**codefleet**"
			}
			p("| %s | %s | %d | %s / %s / %s | %s / %s / %s | %s |\n", name, ops[path][i], len(d),
				rate(hi), rate(m), rate(lo), secs(lo), secs(m), secs(hi), ratio(ref.Seconds(), m.Seconds()))
		}
	}
	pieces := (int64(r.o.fileMiB)<<20 + protocol.FileChunkBytes - 1) / protocol.FileChunkBytes
	if n := len(r.files[pathFleet]); n > 0 && pieces > 0 {
		put, get := medianOf(r.files[pathFleet], pick["put"]), medianOf(r.files[pathFleet], pick["get"])
		p("\ncodefleet's medians are %s ms (put) and %s ms (get) per %d KiB piece, %d pieces each way.\n",
			ms(put/time.Duration(pieces)), ms(get/time.Duration(pieces)), protocol.FileChunkBytes>>10, pieces)
	}
}

// medianOf is the median of one op's wall times.
func medianOf(rounds []fileRound, op func(fileRound) time.Duration) time.Duration {
	var d []time.Duration
	for _, f := range rounds {
		d = append(d, op(f))
	}
	m, _, _ := spread(d)
	return m
}
