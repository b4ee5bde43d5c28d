package daytona

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/codefleet/codefleet/internal/workspace"
	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// The files of a Daytona sandbox (envs.FileSystem). The workspace is where runs start:
// Config.Workdir, else the daemon's working directory (asked once per sandbox, for absolute
// paths). Every operation first checks its path with a script (fsscript.go) that refuses any
// element that is a symbolic link; bytes go in and out through the toolbox's files API.
//
// Puts. The bytes are uploaded (/files/bulk-upload) to a stage under Config.UploadDir
// (/tmp/codefleet-files), never to the path itself, which the daemon would reach through
// links: a whole file to a stage of its own; the pieces of an upload to a stage named after the
// sandbox, the path and the upload id, each piece as a part file "p<start>-<end>". The parts
// that landed are read back from a listing of the stage (a part whose size differs from its
// name, cut by a broken upload, does not count and is sent again by the retry): that is the
// upload's size, whichever worker received the earlier pieces. A piece at that size is stored;
// one whose bytes are all there already (a retry) is taken as it is; one further on is refused
// (ErrFileFailed). The last piece's script joins the parts, checks the size and the SHA-256,
// walks the path making the missing directories (the snippets' user's: the toolbox, its
// commands and the snippets all run as the sandbox's user), moves the file next to its place
// and renames it there, so the file appears whole or not at all. The stage is removed, but for
// a marker of the result that lets a last piece sent again (its answer lost) find the file put.
// Stages nobody touched for a day are removed by the next upload.
//
// The window left: a get's bytes are read by the toolbox after the script checked the path, so
// a process a snippet left running could swap an element for a link in between (about one
// toolbox round trip). It is left open because it gains nothing: the toolbox runs as the same
// user as the snippets, so the file it would read through such a link is one the snippet could
// read, and copy into the workspace, itself. The protection that matters, against links planted
// and left for a later get (`ln -s /etc/passwd leak.txt`), holds whatever the timing. Puts and
// deletes act from the checked directory within the script (no window but the last element's,
// where a rename replaces a link rather than following it, and rm removes a link itself).

// fileScriptTimeout bounds a file script in the sandbox (Daytona's own timeout of the execute);
// it stays under the ~60 s after which the toolbox's load balancer cuts a silent call.
const fileScriptTimeout = 50 * time.Second

// DefaultUploadDir is where uploads are staged inside a sandbox, unless Config.UploadDir.
const DefaultUploadDir = "/tmp/codefleet-files"

// fsCall runs one toolbox call of a file operation, with Run's handling of the toolbox's
// refusals: a refusal in the service's own words (the proxy's or the daemon's error body, not a
// file handler's empty one) is confirmed with the management API (a sandbox gone is
// ErrSandboxGone, a key refused ErrBackendUnavailable); a sandbox stopped meanwhile is started
// and the call sent once more.
func (s *sandbox) fsCall(ctx context.Context, call func(context.Context) error) error {
	for try := 0; ; try++ {
		err := call(ctx)
		if err == nil || !refused(err) || fileHandlerAnswer(err) {
			return err
		}
		again, cerr := s.confirm(ctx, err, false, try == 0)
		if !again {
			return confirmed{cerr}
		}
	}
}

// confirmed is an error the management API explained: it is returned as it is.
type confirmed struct{ error }

func (c confirmed) Unwrap() error { return c.error }

// fileHandlerAnswer reports whether a toolbox error is the answer of a file handler (which
// aborts with a status and no body, or bulk-upload's {"errors"}), not the proxy's.
func fileHandlerAnswer(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Message == "" && ae.Code == ""
}

// fileErr maps the error of a toolbox call of a file operation.
func fileErr(op, rel string, err error) error {
	var c confirmed
	switch {
	case errors.As(err, &c):
		return fmt.Errorf("%s %q: %w", op, rel, c.error)
	case fileHandlerAnswer(err) && statusOf(err) == http.StatusNotFound:
		return fmt.Errorf("%w: daytona: %s %q: %w", envs.ErrFileNotFound, op, rel, err)
	case fileHandlerAnswer(err) && statusOf(err) < 500:
		return fmt.Errorf("%w: daytona: %s %q: %w", envs.ErrFileFailed, op, rel, err)
	case statusOf(err) == http.StatusRequestTimeout:
		return fmt.Errorf("%w: daytona: %s %q: the sandbox did not finish it within %s: %w", envs.ErrFileFailed, op, rel, fileScriptTimeout, err)
	}
	return fmt.Errorf("%s %q: %w", op, rel, toolboxError(err))
}

// script runs a file script and returns its status line and whole answer.
func (s *sandbox) script(ctx context.Context, op, rel string, f fsScript) (fsStatus, string, error) {
	ctx, cancel := context.WithTimeout(ctx, fileScriptTimeout+httpGrace)
	defer cancel()
	var res ExecuteResponse
	err := s.fsCall(ctx, func(ctx context.Context) error {
		var err error
		res, err = s.acct.api.Execute(ctx, s.toolbox, ExecuteRequest{Command: f.command(), Cwd: s.env.cfg.Workdir, Timeout: uint32(fileScriptTimeout / time.Second)})
		return err
	})
	if err != nil {
		return fsStatus{}, "", fileErr(op, rel, err)
	}
	st, ok := parseStatus(res.Result, f.nonce)
	if !ok {
		return fsStatus{}, "", fmt.Errorf("%w: daytona: %s %q: the sandbox's check did not finish (exit %d): %s", envs.ErrFileFailed, op, rel, res.ExitCode, trimMessage(res.Result))
	}
	return st, res.Result, nil
}

// rel checks p against the workspace and returns it relative to it. An absolute path is taken
// under the workspace as the clients know it (Config.Workdir, or the daemon's working directory
// as its shell shows it) or under its physical path.
func (s *sandbox) rel(ctx context.Context, op, p string) (string, error) {
	if s.closed.Load() {
		return "", fmt.Errorf("%w: daytona: sandbox %s", envs.ErrClosed, s.info.ID)
	}
	if len(p) > protocol.MaxPathBytes {
		return "", fmt.Errorf("%w: daytona: %s: the path has %d bytes, more than %d", envs.ErrPathRefused, op, len(p), protocol.MaxPathBytes)
	}
	roots := []string{cmp.Or(s.env.cfg.Workdir, "the workspace")}
	if strings.HasPrefix(p, "/") {
		var err error
		if roots, err = s.roots(ctx); err != nil {
			return "", err
		}
	}
	var err error
	for _, root := range roots {
		var rel string
		if rel, err = workspace.Rel(root, p); err == nil {
			return rel, nil
		}
	}
	return "", fmt.Errorf("daytona: %s: %w", op, err)
}

// roots returns the workspace's paths: Config.Workdir, else the daemon's working directory,
// logical and physical, asked once.
func (s *sandbox) roots(ctx context.Context) ([]string, error) {
	if w := s.env.cfg.Workdir; w != "" {
		return []string{w}, nil
	}
	s.fsMu.Lock()
	defer s.fsMu.Unlock()
	if s.workRoots != nil {
		return s.workRoots, nil
	}
	f := fsScript{nonce: newNonce(), body: rootScript}
	ctx, cancel := s.env.short(ctx)
	defer cancel()
	var res ExecuteResponse
	err := s.fsCall(ctx, func(ctx context.Context) error {
		var err error
		res, err = s.acct.api.Execute(ctx, s.toolbox, ExecuteRequest{Command: f.command(), Timeout: uint32(s.env.cfg.APITimeout / time.Second)})
		return err
	})
	if err != nil {
		return nil, fileErr("find the workspace", "", err)
	}
	_, after, ok := strings.Cut(res.Result, "\n"+f.nonce+" root\n")
	lines := strings.Split(after, "\n")
	if !ok || len(lines) < 2 || !strings.HasPrefix(lines[0], "/") || !strings.HasPrefix(lines[1], "/") {
		return nil, fmt.Errorf("%w: daytona: the sandbox did not say its working directory: %s", envs.ErrFileFailed, trimMessage(res.Result))
	}
	s.workRoots = []string{lines[0]}
	if lines[1] != lines[0] {
		s.workRoots = append(s.workRoots, lines[1])
	}
	return s.workRoots, nil
}

// maxSize is a request's size limit (the largest a worker may have when it says none).
func maxSize(n int64) int64 {
	if n <= 0 {
		return protocol.MaxFileBytes
	}
	return n
}

func hexSum(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// GetFile implements envs.FileSystem: the script checks the path and the size (and hashes a
// file larger than the piece read from 0), then the toolbox reads the piece.
func (s *sandbox) GetFile(ctx context.Context, get envs.FileGet) (envs.FileData, error) {
	rel, err := s.rel(ctx, "get", get.Path)
	switch {
	case err != nil:
		return envs.FileData{}, err
	case rel == "":
		return envs.FileData{}, fmt.Errorf("%w: daytona: get: the workspace is a directory", envs.ErrFileFailed)
	case get.Offset < 0:
		return envs.FileData{}, fmt.Errorf("%w: daytona: get %q: offset %d is negative", envs.ErrFileFailed, rel, get.Offset)
	}
	limit, length := maxSize(get.MaxSize), get.Length
	if length <= 0 || length > protocol.FileChunkBytes {
		length = protocol.FileChunkBytes
	}
	f := s.newScript(rel, getBody, len(workspace.Elements(rel))-1, false, map[string]string{
		"MAX": strconv.FormatInt(limit, 10), "LEN": strconv.FormatInt(length, 10), "SUM": boolFlag(get.Offset == 0),
	})
	st, _, err := s.script(ctx, "get", rel, f)
	if err != nil {
		return envs.FileData{}, err
	}
	switch st.word {
	case "ok":
	case "toolarge":
		return envs.FileData{}, fmt.Errorf("%w: daytona: get %q: the file has %s bytes, more than %d", envs.ErrFileTooLarge, rel, st.fields[0], limit)
	default:
		return envs.FileData{}, st.err("get", rel)
	}
	// ok <size> <mode> <mtime> <sha256 or -> <workspace>
	ok := strings.SplitN(st.rest, " ", 5)
	d, err := fileAnswer("get", rel, ok, 5)
	if err != nil {
		return envs.FileData{}, err
	}
	size := d.Size
	if get.Offset < size {
		var r FileRange
		err := s.fsCall(ctx, func(ctx context.Context) error {
			actx, cancel := s.env.short(ctx)
			defer cancel()
			var err error
			r, err = s.acct.api.Download(actx, s.toolbox, ok[4]+"/"+rel, get.Offset, min(length, size-get.Offset))
			return err
		})
		if err != nil {
			return envs.FileData{}, fileErr("get", rel, err)
		}
		if r.Size >= 0 {
			d.Size = r.Size // it changed since the check
		}
		if d.Size > limit {
			return envs.FileData{}, fmt.Errorf("%w: daytona: get %q: the file has %d bytes, more than %d", envs.ErrFileTooLarge, rel, d.Size, limit)
		}
		d.Data = r.Data
	}
	d.EOF = get.Offset+int64(len(d.Data)) >= d.Size
	if get.Offset == 0 && d.EOF {
		d.SHA256 = hexSum(d.Data) // what is returned, whole
	}
	return d, nil
}

// newScript makes the script of an operation on rel: its walk enters n elements.
func (s *sandbox) newScript(rel, body string, n int, makeDirs bool, vars map[string]string) fsScript {
	return fsScript{nonce: newNonce(), workdir: s.env.cfg.Workdir, elems: workspace.Elements(rel), enter: max(n, 0), make: makeDirs, vars: vars, body: body}
}

func boolFlag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// ListFiles implements envs.FileSystem: the script walks into the directory and lists it.
func (s *sandbox) ListFiles(ctx context.Context, p string, recursive bool, limit int) ([]envs.FileStat, bool, error) {
	rel, err := s.rel(ctx, "list", p)
	if err != nil {
		return nil, false, err
	}
	if limit <= 0 || limit > protocol.MaxListEntries {
		limit = protocol.MaxListEntries
	}
	depth := "-maxdepth 1"
	if recursive {
		depth = ""
	}
	f := s.newScript(rel, listBody, len(workspace.Elements(rel)), false, map[string]string{
		"MAX": strconv.Itoa(limit), "REC": boolFlag(recursive), "DEPTH": depth, "LISTER": lister,
	})
	st, out, err := s.script(ctx, "list", rel, f)
	if err != nil {
		return nil, false, err
	}
	if st.word != "ok" {
		return nil, false, st.err("list", rel)
	}
	entries, err := parseRecords(out, f.nonce, rel)
	if err != nil {
		return nil, false, fmt.Errorf("%w: daytona: list %q: %w", envs.ErrFileFailed, rel, err)
	}
	slices.SortFunc(entries, func(a, b envs.FileStat) int { return strings.Compare(a.Path, b.Path) })
	if len(entries) > limit {
		return entries[:limit], true, nil
	}
	return entries, false, nil
}

// DeleteFile implements envs.FileSystem: the script walks to the parent and removes the entry.
func (s *sandbox) DeleteFile(ctx context.Context, p string, recursive bool) (bool, error) {
	rel, err := s.rel(ctx, "delete", p)
	switch {
	case err != nil:
		return false, err
	case rel == "":
		return false, fmt.Errorf("%w: daytona: delete: the workspace itself cannot be deleted", envs.ErrPathRefused)
	}
	f := s.newScript(rel, deleteBody, len(workspace.Elements(rel))-1, false, map[string]string{"REC": boolFlag(recursive)})
	st, _, err := s.script(ctx, "delete", rel, f)
	switch {
	case err != nil:
		return false, err
	case st.word == "ok":
		return true, nil
	case st.word == "absent":
		return false, nil
	}
	return false, st.err("delete", rel)
}

// uploadDir is where uploads are staged in the sandbox.
func (s *sandbox) uploadDir() string { return cmp.Or(s.env.cfg.UploadDir, DefaultUploadDir) }

// stageOf is the stage of an upload: named after the sandbox, the path and the upload id, so
// that any worker finds it, and no other upload shares it.
func (s *sandbox) stageOf(rel, upload string) string {
	sum := sha256.Sum256([]byte(s.info.ID + "\x00" + rel + "\x00" + upload))
	return path.Join(s.uploadDir(), "u"+hex.EncodeToString(sum[:16]))
}

// dropStage removes a stage in the background (an upload that can no longer complete).
func (s *sandbox) dropStage(stage string) {
	s.env.bg.Add(1)
	go func() {
		defer s.env.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), killTimeout)
		defer cancel()
		if err := s.acct.api.DeleteFile(ctx, s.toolbox, stage, true); err != nil && statusOf(err) != http.StatusNotFound {
			s.env.log.Debug().Err(err).Str("sandbox_id", s.info.ID).Msg("remove an upload's stage")
		}
	}()
}
