package daytona

import (
	"context"
	"net/http"
	"time"

	"github.com/codefleet/codefleet/internal/output"
	"github.com/codefleet/codefleet/pkg/envs"
)

// A streamed run (envs.Exec.Stream) always goes through a toolbox session, whatever its
// timeout, and its supervisor (script.go) also writes the snippet's output, as it comes, to the
// run's directory's out file (liveFile), which it leaves behind when the run ends. While the
// session's command runs, the backend reads what that file gained since its last read with a
// ranged /files/download (the daemon serves files with Go's http.ServeFile, which honours
// Range; Daytona's proxy is an httputil.ReverseProxy, which passes it on) and writes it into an
// output.Streamer, which numbers, bounds and hands out the chunks. The file is read to its end
// once the command has ended, the result is taken from the session's logs as for any session
// run (the same supervisor output, so the same envs.Result as without a stream), the Streamer
// is closed (every chunk handed out) before Run returns, and the run's directory is removed in
// the background.
//
// Why not the session's logs, which grow as the command writes: the logs endpoint answers the
// whole log every time (its follow mode is a WebSocket), so polling it costs the square of the
// output; and the daemon's log writer is line-buffered (a shell `read -r` loop), so a progress
// line without a newline would not show until the run ends. A ranged read costs what was
// written since the last one and shows bytes as they land.
//
// Polling: the file is read pollFirst after the command is sent, then each read a quarter later
// than the last, up to streamPoll (100 ms) while the output grows; a read that finds nothing new
// is followed by a look at the command (has it ended?), and the reads go on a quarter later each
// time up to streamPollIdle (250 ms), back to streamPoll as soon as output comes again. So a
// run printing all the time costs one toolbox call per 100 ms, an idle one two per 250 ms. A read
// takes at most streamRead bytes; when more than that came since the last read, the rest is
// passed over (the Streamer could not hold it: it emits at most 16 KiB every 20 ms from a
// 64 KiB buffer) and told to the Streamer (Skip): the next chunk's Dropped counts it, and
// Result.StreamDropped.
//
// Latency, measured on the fake (TestStreamLatency: python printing a timestamp every 50 ms,
// time from the print to the chunk's arrival): see doc.go. Against the service each read is
// one round trip through the toolbox proxy, which adds its latency (tens of ms in the same
// region) to the up to 100 ms of the polling.
const (
	streamPoll     = 100 * time.Millisecond
	streamPollIdle = 250 * time.Millisecond
	streamRead     = 256 << 10
)

// liveOutput follows a streamed run's live file into its Streamer.
type liveOutput struct {
	st *output.Streamer
	// path is the live file of the run being tried (a run sent again has a new nonce).
	path string
	// seen counts the bytes of the file read or passed over.
	seen int64
}

func newLiveOutput(emit func(envs.Chunk)) *liveOutput {
	return &liveOutput{st: output.NewStreamer(emit)}
}

// follow starts following the live file of the run with this nonce.
func (l *liveOutput) follow(nonce string) {
	l.path, l.seen = liveFile(nonce), 0
}

// close closes the Streamer (its last chunks are handed out first) and returns the chunks
// streamed and the bytes left out of the stream, passed over by the reads included.
func (l *liveOutput) close() (chunks, dropped int64) { return l.st.Close() }

// pull reads what the live file gained since the last read, at most streamRead bytes (the rest
// is passed over), and writes it into the Streamer. It reports whether it read anything. A file
// not there yet, and a failed read, are nothing new: the run's fate is the command's.
func (s *sandbox) pull(ctx context.Context, l *liveOutput) bool {
	actx, cancel := s.env.short(ctx)
	r, err := s.acct.api.Download(actx, s.toolbox, l.path, l.seen, streamRead)
	cancel()
	if err != nil {
		if statusOf(err) != http.StatusNotFound && ctx.Err() == nil {
			s.env.log.Debug().Err(err).Str("sandbox_id", s.info.ID).Msg("read a streamed run's output")
		}
		return false
	}
	if len(r.Data) > 0 {
		l.st.Write(r.Data)
		l.seen += int64(len(r.Data))
	}
	if r.Size > l.seen {
		l.st.Skip(r.Size - l.seen)
		l.seen = r.Size
	}
	return len(r.Data) > 0
}

// dropRunDir removes a streamed run's directory (its live file) in the background, once the
// run has ended and the file was read.
func (s *sandbox) dropRunDir(nonce string) {
	s.env.bg.Add(1)
	go func() {
		defer s.env.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
		defer cancel()
		if err := s.acct.api.DeleteFile(ctx, s.toolbox, runDir(nonce), true); err != nil && statusOf(err) != http.StatusNotFound {
			s.env.log.Debug().Err(err).Str("sandbox_id", s.info.ID).Msg("remove a streamed run's directory")
		}
	}()
}
