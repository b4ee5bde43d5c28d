package daytona

import (
	"context"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/codefleet/codefleet/internal/workspace"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// PutFile implements envs.FileSystem; files.go says how a put goes.
func (s *sandbox) PutFile(ctx context.Context, put envs.FilePut) (envs.FileData, error) {
	rel, err := s.rel(ctx, "put", put.Path)
	if err != nil {
		return envs.FileData{}, err
	}
	limit := maxSize(put.MaxSize)
	end := put.Offset + int64(len(put.Data))
	switch {
	case rel == "":
		return envs.FileData{}, fmt.Errorf("%w: daytona: put: the workspace is a directory", envs.ErrFileFailed)
	case put.Offset < 0:
		return envs.FileData{}, fmt.Errorf("%w: daytona: put %q: offset %d is negative", envs.ErrFileFailed, rel, put.Offset)
	case put.DeclaredSize > limit:
		return envs.FileData{}, fmt.Errorf("%w: daytona: put %q: the file is declared %d bytes, more than %d", envs.ErrFileTooLarge, rel, put.DeclaredSize, limit)
	case end > limit:
		if put.Upload != "" {
			s.dropStage(s.stageOf(rel, put.Upload)) // it can never complete
		}
		return envs.FileData{}, fmt.Errorf("%w: daytona: put %q: the piece would take the file to %d bytes, more than %d", envs.ErrFileTooLarge, rel, end, limit)
	case put.Upload == "" && (put.Offset != 0 || put.More):
		return envs.FileData{}, fmt.Errorf("%w: daytona: put %q: a file sent in pieces needs an upload id", envs.ErrFileFailed, rel)
	}
	mode := put.Mode & 0o7777
	if mode == 0 {
		mode = 0o644
	}
	want := strings.ToLower(put.SHA256)
	if put.Upload == "" {
		// The whole file is in hand: its checksum is checked here, before anything is sent.
		sum := hexSum(put.Data)
		if want != "" && want != sum {
			return envs.FileData{}, fmt.Errorf("%w: daytona: put %q: the data's sha256 is %s, the put says %s: nothing was written", envs.ErrFileFailed, rel, sum, want)
		}
		stage := path.Join(s.uploadDir(), "w"+newNonce())
		part := partName(0, end)
		if err := s.upload(ctx, rel, stage+"/"+part, put.Data); err != nil {
			s.dropStage(stage)
			return envs.FileData{}, err
		}
		d, err := s.finish(ctx, rel, stage, []string{part}, end, mode, "", sum, false)
		if err != nil {
			s.dropStage(stage) // gone already if the script ran, which removes it whatever happens
		}
		return d, err
	}

	stage := s.stageOf(rel, put.Upload)
	if put.Offset == 0 {
		// The first piece (or its retry): the path is checked before any byte is stored.
		f := s.newScript(rel, prepareBody, len(workspace.Elements(rel))-1, false, map[string]string{"U": s.uploadDir(), "S": stage})
		st, _, err := s.script(ctx, "put", rel, f)
		if err != nil {
			return envs.FileData{}, err
		}
		if st.word != "ok" && st.word != "absent" { // what is missing on the way is made at the end
			return envs.FileData{}, st.err("put", rel)
		}
	}
	spans, done, err := s.staged(ctx, rel, stage)
	if err != nil {
		return envs.FileData{}, err
	}
	parts, have := chain(spans)
	if done.size >= 0 {
		// The upload was finished (its last piece's answer was lost, say): a piece of it sent
		// again is answered as it was.
		switch {
		case put.More && end <= done.size:
			return envs.FileData{FileStat: envs.FileStat{Path: rel, Type: protocol.FileTypeFile, Size: end}}, nil
		case !put.More && end == done.size && (want == "" || want == done.sha):
			return envs.FileData{FileStat: envs.FileStat{Path: rel, Type: protocol.FileTypeFile, Size: end}, SHA256: done.sha}, nil
		}
		return envs.FileData{}, fmt.Errorf("%w: daytona: put %q: upload %q was finished with %d bytes; this piece (%d to %d) is not one of it", envs.ErrFileFailed, rel, put.Upload, done.size, put.Offset, end)
	}
	// Pieces may come in any order (two dispatchers may pass a client's pieces on in another
	// order than it sent them): each is a part of its own, what the chain from offset 0 does not
	// hold yet; a piece sent again finds its part there.
	if start := max(put.Offset, have); end > start && spans[start] < end {
		if err := s.upload(ctx, rel, stage+"/"+partName(start, end), put.Data[start-put.Offset:]); err != nil {
			return envs.FileData{}, err
		}
		spans[start] = end
		parts, have = chain(spans)
	}
	if put.More {
		return envs.FileData{FileStat: envs.FileStat{Path: rel, Type: protocol.FileTypeFile, Size: have}}, nil
	}
	if have < end {
		return envs.FileData{}, fmt.Errorf("%w: daytona: put %q: bytes %d to %d of upload %q have not come: send them, then the last piece again", envs.ErrFileFailed, rel, have, gapEnd(spans, have, end), put.Upload)
	}
	if have != end {
		return envs.FileData{}, fmt.Errorf("%w: daytona: put %q: upload %q has %d bytes, more than its last piece ends at (%d)", envs.ErrFileFailed, rel, put.Upload, have, end)
	}
	return s.finish(ctx, rel, stage, parts, end, mode, want, "", true)
}

// partName names the part of an upload that holds its bytes start to end.
func partName(start, end int64) string { return fmt.Sprintf("p%d-%d", start, end) }

// finished is the marker of an upload put in place (size -1: none).
type finished struct {
	size int64
	sha  string
}

// staged reads an upload's stage: its whole parts (a part's size is the one its name says), by
// start, the furthest end of those starting there; and the marker of a finished upload.
func (s *sandbox) staged(ctx context.Context, rel, stage string) (spans map[int64]int64, done finished, err error) {
	done.size = -1
	spans = map[int64]int64{}
	var infos []FileInfo
	err = s.fsCall(ctx, func(ctx context.Context) error {
		actx, cancel := s.env.short(ctx)
		defer cancel()
		var err error
		infos, err = s.acct.api.ListFiles(actx, s.toolbox, stage)
		return err
	})
	if err != nil {
		if fileHandlerAnswer(err) && statusOf(err) == http.StatusNotFound {
			return spans, done, nil // no piece yet
		}
		return nil, done, fileErr("put", rel, err)
	}
	for _, fi := range infos {
		if rest, ok := strings.CutPrefix(fi.Name, "done-"); ok {
			size, sha, _ := strings.Cut(rest, "-")
			if n, err := strconv.ParseInt(size, 10, 64); err == nil {
				done = finished{size: n, sha: sha}
			}
			continue
		}
		a, b, ok := strings.Cut(strings.TrimPrefix(fi.Name, "p"), "-")
		start, err1 := strconv.ParseInt(a, 10, 64)
		end, err2 := strconv.ParseInt(b, 10, 64)
		if !ok || fi.IsDir || err1 != nil || err2 != nil || !strings.HasPrefix(fi.Name, "p") || end-start != fi.Size {
			continue // not a part, or one cut short
		}
		spans[start] = max(spans[start], end)
	}
	return spans, done, nil
}

// chain returns the parts that follow one another from offset 0, in order, and the bytes they
// hold.
func chain(spans map[int64]int64) (parts []string, have int64) {
	for {
		end, ok := spans[have]
		if !ok || end <= have {
			return parts, have
		}
		parts = append(parts, partName(have, end))
		have = end
	}
}

// gapEnd is where the bytes missing from have end: the first part's start past have, or end.
func gapEnd(spans map[int64]int64, have, end int64) int64 {
	to := end
	for start := range spans {
		if start > have && start < to {
			to = start
		}
	}
	return to
}

// upload stores bytes at dest, a stage's file.
func (s *sandbox) upload(ctx context.Context, rel, dest string, data []byte) error {
	err := s.fsCall(ctx, func(ctx context.Context) error {
		// A second per MiB on top of a short call's budget: a whole file may be large.
		actx, cancel := context.WithTimeout(ctx, s.env.cfg.APITimeout+time.Duration(len(data)>>20)*time.Second)
		defer cancel()
		return s.acct.api.Upload(actx, s.toolbox, dest, data)
	})
	if err != nil {
		return fileErr("put", rel, err)
	}
	return nil
}

// finish runs the script that puts the staged file in place (finishBody) and answers the put.
func (s *sandbox) finish(ctx context.Context, rel, stage string, parts []string, size int64, mode uint32, want, have string, done bool) (envs.FileData, error) {
	f := s.newScript(rel, finishBody, len(workspace.Elements(rel))-1, true, map[string]string{
		"U": s.uploadDir(), "S": stage, "PARTS": strings.Join(parts, " "), "SIZE": strconv.FormatInt(size, 10),
		"MODE": strconv.FormatUint(uint64(mode), 8), "WANT": cmpDash(want), "HAVE": cmpDash(have), "DONE": boolFlag(done),
	})
	st, _, err := s.script(ctx, "put", rel, f)
	if err != nil {
		return envs.FileData{}, err
	}
	switch st.word {
	case "ok":
	case "badsum":
		return envs.FileData{}, fmt.Errorf("%w: daytona: put %q: the sha256 of what landed is %s, the put says %s: nothing was written", envs.ErrFileFailed, rel, st.fields[0], want)
	default:
		return envs.FileData{}, st.err("put", rel)
	}
	return fileAnswer("put", rel, strings.Fields(st.rest), 4) // <size> <mode> <mtime> <sha256>
}

// fileAnswer reads a file script's answer fields, <size> <mode> <mtime> <sha256 or -> and what
// the op adds (n fields in all), into what the op answers of the file.
func fileAnswer(op, rel string, fields []string, n int) (envs.FileData, error) {
	if len(fields) != n {
		return envs.FileData{}, fmt.Errorf("%w: daytona: %s %q: the sandbox answered %q", envs.ErrFileFailed, op, rel, trimMessage(strings.Join(fields, " ")))
	}
	size, mode, mtime, err := parseMeta(fields[0], fields[1], fields[2])
	if err != nil {
		return envs.FileData{}, fmt.Errorf("%w: daytona: %s %q: %w", envs.ErrFileFailed, op, rel, err)
	}
	d := envs.FileData{FileStat: envs.FileStat{Path: rel, Type: protocol.FileTypeFile, Size: size, Mode: mode, ModTime: mtime}}
	if fields[3] != "-" {
		d.SHA256 = fields[3]
	}
	return d, nil
}

// cmpDash is s, or "-" (none) when empty.
func cmpDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
