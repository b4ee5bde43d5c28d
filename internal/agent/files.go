package agent

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/internal/workspace"
)

// Files in and out of the workspace (wire.OpFile). The agent does them as itself, which is the
// snippets' user, so what a put writes is theirs and a get reads only what a snippet could.
// Every path is checked by workspace.Rel, then opened one element at a time, each relative to
// the directory opened before, with O_NOFOLLOW: a symbolic link anywhere on the path (planted by
// a snippet: `ln -s /etc/shadow out.txt`, a linked directory) is refused, never followed, and
// a snippet that swaps an element meanwhile only makes the walk fail: what is open stays what
// was checked.

const (
	// maxFileRead bounds one get's data (the worker asks for protocol.FileChunkBytes).
	maxFileRead = 1 << 20
	// uploadMarker is in the name of the file a put in pieces lands in until its last piece:
	// ".<name>.codefleet-upload-<upload>", beside the file it becomes.
	uploadMarker = ".codefleet-upload-"
	// staleUpload is how old an abandoned upload's file is when a new upload in its directory
	// removes it.
	staleUpload = time.Hour
)

// fileError is a file operation's failure, with its wire code.
type fileError struct {
	code string
	msg  string
}

func (e *fileError) Error() string { return e.msg }

func refused(format string, args ...any) error { return workspace.Refusef(format, args...) }

func failed(format string, args ...any) error {
	return &fileError{wire.ErrCodeFileFailed, fmt.Sprintf(format, args...)}
}

// File does one file operation and returns its answer: an OpFile frame, or an OpError frame
// with a wire.ErrCodeFile code.
func (a *Agent) File(id string, req *wire.FileRequest) *wire.Response {
	if req == nil {
		return &wire.Response{Op: wire.OpError, ID: id, Code: wire.ErrCodeBadFrame, Error: "file frame without a file request"}
	}
	var fr *wire.FileResponse
	var err error
	switch req.Op {
	case wire.FilePut:
		fr, err = a.putFile(req)
	case wire.FileGet:
		fr, err = a.getFile(req)
	case wire.FileList:
		fr, err = a.listFiles(req)
	case wire.FileDelete:
		fr, err = a.deleteFile(req)
	default:
		return &wire.Response{Op: wire.OpError, ID: id, Code: wire.ErrCodeBadFrame, Error: fmt.Sprintf("unknown file op %q", req.Op)}
	}
	if err != nil {
		code := wire.ErrCodeFileFailed
		var fe *fileError
		switch {
		case errors.As(err, &fe):
			code = fe.code
		case errors.Is(err, workspace.ErrRefused):
			code = wire.ErrCodePathRefused
		}
		return &wire.Response{Op: wire.OpError, ID: id, Code: code, Error: err.Error()}
	}
	return &wire.Response{Op: wire.OpFile, ID: id, File: fr}
}

// walk opens the directory of elems, one element at a time from the workspace, never through a
// link; with create, missing directories are made (0755, the agent's: the snippets' user's).
// shown is the path as the request named it, for messages.
func (a *Agent) walk(elems []string, create bool) (int, error) {
	fd, err := unix.Open(a.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, failed("cannot open the workspace %s: %v", a.Dir, err)
	}
	for i, e := range elems {
		next, err := openAt(fd, e, unix.O_RDONLY|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, e, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = openAt(fd, e, unix.O_RDONLY|unix.O_DIRECTORY)
			}
		}
		if err != nil {
			err = elementError(fd, strings.Join(elems[:i+1], "/"), e, err)
			unix.Close(fd)
			return -1, err
		}
		unix.Close(fd)
		fd = next
	}
	return fd, nil
}

// openAt opens name in dir without following a link, close-on-exec; a file it creates is the
// owner's only (0600) until its upload is done.
func openAt(dir int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dir, name, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return fd, err
	}
}

// elementError says why the element name of dir (path, so far) could not be opened: a link is
// refused, a missing one is not found, anything else failed.
func elementError(dir int, path, name string, err error) error {
	var st unix.Stat_t
	if unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			return refused("%s is a symbolic link: file requests never follow one", path)
		case unix.S_IFDIR:
		default:
			if errors.Is(err, unix.ENOTDIR) {
				return failed("%s is not a directory", path)
			}
		}
	}
	switch {
	case errors.Is(err, unix.ENOENT):
		return &fileError{wire.ErrCodeFileNotFound, fmt.Sprintf("%s: no such file or directory in the workspace", path)}
	case errors.Is(err, unix.ELOOP):
		return refused("%s is a symbolic link: file requests never follow one", path)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return failed("%s: permission denied (to the snippets' user)", path)
	}
	return failed("%s: %v", path, err)
}

// split checks a request's path and splits it into the directory's elements and the name.
func (a *Agent) split(p string) (rel string, dir []string, name string, err error) {
	rel, err = workspace.Rel(a.Dir, p)
	if err != nil {
		return "", nil, "", err
	}
	elems := workspace.Elements(rel)
	if len(elems) == 0 {
		return "", nil, "", failed("%q is the workspace itself, a directory", p)
	}
	return rel, elems[:len(elems)-1], elems[len(elems)-1], nil
}

func (a *Agent) putFile(req *wire.FileRequest) (*wire.FileResponse, error) {
	rel, dirElems, name, err := a.split(req.Path)
	if err != nil {
		return nil, err
	}
	if strings.Contains(name, uploadMarker) {
		return nil, failed("%s: names holding %q are the uploads' own", rel, uploadMarker)
	}
	if req.MaxSize > 0 && (req.DeclaredSize > req.MaxSize || req.Offset+int64(len(req.Data)) > req.MaxSize) {
		return nil, &fileError{wire.ErrCodeFileTooLarge, fmt.Sprintf("%s: %d bytes is over the file size limit of %d bytes", rel, max(req.DeclaredSize, req.Offset+int64(len(req.Data))), req.MaxSize)}
	}
	dir, err := a.walk(dirElems, true)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	if err := checkTarget(dir, rel, name); err != nil {
		return nil, err
	}
	upload := req.Upload
	if upload == "" {
		upload = randomToken()
	}
	tmp := "." + name + uploadMarker + upload
	if len(tmp) > 255 {
		tmp = ".codefleet-upload-" + upload
	}
	key := rel + "\x00" + upload // the upload's entry in a.uploads
	if a.Disk != nil && len(req.Data) > 0 {
		if err := a.Disk.Admit(int64(len(req.Data))); err != nil {
			unix.Unlinkat(dir, tmp, 0) // it cannot be finished: what it holds goes
			a.uploads.forget(key)
			return nil, failed("%s: %v; the upload was given up", rel, err)
		}
	}
	if req.Offset == 0 && req.Upload != "" {
		removeStaleUploads(dir) // only uploads in pieces are left behind: a lone piece's file goes with it
	}
	if !req.More && req.Upload != "" {
		var st unix.Stat_t
		if errors.Is(unix.Fstatat(dir, tmp, &st, unix.AT_SYMLINK_NOFOLLOW), unix.ENOENT) {
			// The last piece sent again after it landed (its answer was lost).
			if fr := a.uploads.landedAnswer(key, req); fr != nil {
				return fr, nil
			}
		}
	}
	fd, err := openAt(dir, tmp, unix.O_RDWR|unix.O_CREAT)
	if err != nil {
		return nil, elementError(dir, rel, tmp, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	defer f.Close()
	abandon := func() {
		unix.Unlinkat(dir, tmp, 0)
		a.uploads.forget(key)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, failed("%s: %v", rel, err)
	}
	if !st.Mode().IsRegular() {
		return nil, failed("%s: the upload's file is not a regular file", rel)
	}
	if !a.uploads.known(key) && st.Size() > 0 {
		// Bytes of an upload this agent has no account of (it was started again): which of
		// them came is unknown, so none count.
		if err := f.Truncate(0); err != nil {
			return nil, failed("%s: %v", rel, err)
		}
	}
	end := req.Offset + int64(len(req.Data))
	// Pieces may come in any order (two dispatchers may pass a client's pieces on in another
	// order than it sent them): each lands at its offset, and the upload's account says which
	// bytes came. A piece sent again finds its bytes there already.
	if a.uploads.covered(key, req.Offset, end) && len(req.Data) > 0 {
		if !sameBytes(f, req.Offset, req.Data) {
			return nil, failed("%s: a piece at offset %d differs from the bytes upload %s holds there already", rel, req.Offset, upload)
		}
	} else if len(req.Data) > 0 {
		if _, err := f.WriteAt(req.Data, req.Offset); err != nil {
			abandon()
			return nil, writeError(rel, err)
		}
	}
	a.uploads.add(key, req.Offset, end)
	fr := &wire.FileResponse{FileInfo: wire.FileInfo{Path: rel, Size: a.uploads.prefix(key)}}
	if req.More {
		return fr, nil
	}
	// The last piece: every byte before it must have come.
	if from, to, ok := a.uploads.missing(key, end); ok {
		return nil, failed("%s: bytes %d to %d of upload %s have not come: send them, then the last piece again", rel, from, to, upload)
	}
	if err := f.Truncate(end); err != nil { // nothing past the last piece's end belongs to the file
		abandon()
		return nil, failed("%s: %v", rel, err)
	}
	fr.Type = "file"
	// The last piece: what landed is checked, given its mode, and renamed into place.
	size, sum, err := hashFile(f)
	if err != nil {
		abandon()
		return nil, failed("%s: read back: %v", rel, err)
	}
	if req.SHA256 != "" && !strings.EqualFold(req.SHA256, sum) {
		abandon()
		return nil, failed("%s: the sha256 of the %d bytes that landed is %s, the put said %s: nothing was written", rel, size, sum, strings.ToLower(req.SHA256))
	}
	mode := req.Mode & 0o777
	if mode == 0 {
		mode = 0o644
	}
	if err := f.Chmod(os.FileMode(mode)); err != nil {
		abandon()
		return nil, failed("%s: chmod: %v", rel, err)
	}
	if err := unix.Renameat(dir, tmp, dir, name); err != nil {
		abandon()
		if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return nil, failed("%s is a directory", rel)
		}
		return nil, failed("%s: %v", rel, err)
	}
	fr.Size, fr.SHA256, fr.Mode, fr.ModTimeNS = size, sum, mode, time.Now().UnixNano()
	if st, err := f.Stat(); err == nil {
		fr.ModTimeNS = st.ModTime().UnixNano()
	}
	a.uploads.landed(key, req, *fr)
	return fr, nil
}

// uploadBook is the agent's account of uploads: the byte ranges each upload in progress has
// received (pieces may come in any order), and the last uploads landed, so that the last piece
// sent again (its answer lost) gets the same answer instead of a refusal. Both are bounded: an
// upload untouched for staleUpload is forgotten (its file is removed by the next upload in its
// directory), and only the last maxLanded landed ones are remembered.
type uploadBook struct {
	mu   sync.Mutex
	open map[string]*openUpload // by key: the path and the upload id
	done []landedUpload
}

type openUpload struct {
	spans   []span // sorted, apart
	touched time.Time
}

type span struct{ start, end int64 }

type landedUpload struct {
	key         string
	offset, end int64
	fr          wire.FileResponse
}

const (
	maxLanded = 64
	maxOpen   = 256
)

func (b *uploadBook) known(key string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open[key] != nil
}

// add records bytes start to end of an upload as received.
func (b *uploadBook) add(key string, start, end int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open == nil {
		b.open = map[string]*openUpload{}
	}
	u := b.open[key]
	if u == nil {
		for k, o := range b.open { // uploads given up long ago, or too many
			if time.Since(o.touched) > staleUpload || len(b.open) >= maxOpen {
				delete(b.open, k)
			}
		}
		u = &openUpload{}
		b.open[key] = u
	}
	u.touched = time.Now()
	if end <= start {
		return
	}
	merged := span{start, end}
	var out []span
	for _, s := range u.spans {
		if s.end < merged.start || s.start > merged.end {
			out = append(out, s)
			continue
		}
		merged = span{min(s.start, merged.start), max(s.end, merged.end)}
	}
	out = append(out, merged)
	sort.Slice(out, func(i, j int) bool { return out[i].start < out[j].start })
	u.spans = out
}

// covered reports whether bytes start to end of an upload were received.
func (b *uploadBook) covered(key string, start, end int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if u := b.open[key]; u != nil {
		for _, s := range u.spans {
			if s.start <= start && end <= s.end {
				return true
			}
		}
	}
	return false
}

// prefix is how many bytes of an upload came from offset 0 without a gap.
func (b *uploadBook) prefix(key string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if u := b.open[key]; u != nil && len(u.spans) > 0 && u.spans[0].start == 0 {
		return u.spans[0].end
	}
	return 0
}

// missing returns the first range of bytes before end that an upload has not received.
func (b *uploadBook) missing(key string, end int64) (from, to int64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	at := int64(0)
	if u := b.open[key]; u != nil {
		for _, s := range u.spans {
			if s.start > at {
				return at, min(s.start, end), at < end
			}
			at = max(at, s.end)
		}
	}
	return at, end, at < end
}

func (b *uploadBook) forget(key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.open, key)
}

// landed records an upload put in place, with its answer, and forgets its ranges.
func (b *uploadBook) landed(key string, req *wire.FileRequest, fr wire.FileResponse) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.open, key)
	if req.Upload == "" {
		return // one piece: nothing to send again but the whole put
	}
	b.done = append(b.done, landedUpload{key: key, offset: req.Offset, end: req.Offset + int64(len(req.Data)), fr: fr})
	if len(b.done) > maxLanded {
		b.done = b.done[1:]
	}
}

// landedAnswer returns the answer of the upload whose last piece req is again, or nil.
func (b *uploadBook) landedAnswer(key string, req *wire.FileRequest) *wire.FileResponse {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, u := range b.done {
		if u.key == key && u.offset == req.Offset && u.end == req.Offset+int64(len(req.Data)) {
			fr := u.fr
			return &fr
		}
	}
	return nil
}

// checkTarget refuses to put a file where a link or a directory is.
func checkTarget(dir int, rel, name string) error {
	var st unix.Stat_t
	err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err != nil {
		return nil // nothing there (or nothing we may see: the rename will say)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return refused("%s is a symbolic link: file requests never follow or replace one", rel)
	case unix.S_IFDIR:
		return failed("%s is a directory", rel)
	}
	return nil
}

func writeError(rel string, err error) error {
	switch {
	case errors.Is(err, unix.EFBIG):
		return failed("%s: over the sandbox's file size limit (EFBIG)", rel)
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return failed("%s: the sandbox's disk is full", rel)
	}
	return failed("%s: write: %v", rel, err)
}

// sameBytes reports whether f holds b at off.
func sameBytes(f *os.File, off int64, b []byte) bool {
	got := make([]byte, len(b))
	n, err := f.ReadAt(got, off)
	return (err == nil || errors.Is(err, io.EOF)) && n == len(b) && bytes.Equal(got, b)
}

func hashFile(f *os.File) (int64, string, error) {
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

func randomToken() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// removeStaleUploads removes the files of uploads in dir abandoned staleUpload ago.
func removeStaleUploads(dir int) {
	names, err := readDirNames(dir)
	if err != nil {
		return
	}
	for _, n := range names {
		if !strings.Contains(n, uploadMarker) {
			continue
		}
		var st unix.Stat_t
		if unix.Fstatat(dir, n, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG &&
			time.Since(time.Unix(st.Mtim.Unix())) > staleUpload {
			unix.Unlinkat(dir, n, 0)
		}
	}
}

func (a *Agent) getFile(req *wire.FileRequest) (*wire.FileResponse, error) {
	rel, dirElems, name, err := a.split(req.Path)
	if err != nil {
		return nil, err
	}
	dir, err := a.walk(dirElems, false)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	// O_NONBLOCK: a FIFO a snippet left there must not hang the agent (it is refused below).
	fd, err := openAt(dir, name, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return nil, elementError(dir, rel, name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, failed("%s: %v", rel, err)
	}
	switch {
	case st.IsDir():
		return nil, failed("%s is a directory: list it, or get its files one by one", rel)
	case !st.Mode().IsRegular():
		return nil, failed("%s is not a regular file", rel)
	case req.MaxSize > 0 && st.Size() > req.MaxSize:
		return nil, &fileError{wire.ErrCodeFileTooLarge, fmt.Sprintf("%s is %d bytes, over the file size limit of %d bytes", rel, st.Size(), req.MaxSize)}
	}
	fr := &wire.FileResponse{FileInfo: info(rel, st)}
	if req.Offset == 0 {
		if _, fr.SHA256, err = hashFile(f); err != nil {
			return nil, failed("%s: read: %v", rel, err)
		}
	}
	n := req.Length
	if n <= 0 || n > maxFileRead {
		n = maxFileRead
	}
	if req.Offset < st.Size() {
		buf := make([]byte, min(n, st.Size()-req.Offset))
		k, err := f.ReadAt(buf, req.Offset)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, failed("%s: read: %v", rel, err)
		}
		fr.Data = buf[:k]
	}
	fr.EOF = req.Offset+int64(len(fr.Data)) >= st.Size()
	return fr, nil
}

func info(rel string, st os.FileInfo) wire.FileInfo {
	t := "other"
	switch {
	case st.Mode().IsRegular():
		t = "file"
	case st.IsDir():
		t = "dir"
	case st.Mode()&os.ModeSymlink != 0:
		t = "symlink"
	}
	return wire.FileInfo{Path: rel, Type: t, Size: st.Size(), Mode: uint32(st.Mode().Perm()), ModTimeNS: st.ModTime().UnixNano()}
}

func statInfo(rel string, st *unix.Stat_t) wire.FileInfo {
	t := "other"
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		t = "file"
	case unix.S_IFDIR:
		t = "dir"
	case unix.S_IFLNK:
		t = "symlink"
	}
	size := st.Size
	if t == "symlink" {
		size = 0 // a link's size is its target's length: nothing to tell
	}
	return wire.FileInfo{Path: rel, Type: t, Size: size, Mode: st.Mode & 0o777, ModTimeNS: time.Unix(st.Mtim.Unix()).UnixNano()}
}

func (a *Agent) listFiles(req *wire.FileRequest) (*wire.FileResponse, error) {
	rel, err := workspace.Rel(a.Dir, req.Path)
	if err != nil {
		return nil, err
	}
	dir, err := a.walk(workspace.Elements(rel), false)
	if err != nil {
		return nil, err
	}
	max := req.MaxEntries
	if max <= 0 {
		max = 10000
	}
	fr := &wire.FileResponse{FileInfo: wire.FileInfo{Path: rel, Type: "dir"}}
	// Breadth first, each directory opened relative to its parent without following links.
	type pending struct {
		fd  int
		rel string
	}
	queue := []pending{{dir, rel}}
	defer func() {
		for _, p := range queue {
			unix.Close(p.fd)
		}
	}()
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		names, err := readDirNames(p.fd)
		if err != nil {
			unix.Close(p.fd)
			return nil, failed("%s: %v", p.rel, err)
		}
		sort.Strings(names)
		for _, n := range names {
			var st unix.Stat_t
			if unix.Fstatat(p.fd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
				continue // removed meanwhile
			}
			if len(fr.Entries) == max {
				fr.Truncated = true
				break
			}
			path := joinRel(p.rel, n)
			fr.Entries = append(fr.Entries, statInfo(path, &st))
			if req.Recursive && st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if sub, err := openAt(p.fd, n, unix.O_RDONLY|unix.O_DIRECTORY); err == nil {
					queue = append(queue, pending{sub, path})
				}
			}
		}
		unix.Close(p.fd)
		if fr.Truncated {
			break
		}
	}
	sort.Slice(fr.Entries, func(i, j int) bool { return fr.Entries[i].Path < fr.Entries[j].Path })
	return fr, nil
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// readDirNames returns the names in the directory open at fd (without . and ..), reading it
// from its start through a duplicate of fd.
func readDirNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	unix.CloseOnExec(dup)
	f := os.NewFile(uintptr(dup), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}

func (a *Agent) deleteFile(req *wire.FileRequest) (*wire.FileResponse, error) {
	rel, dirElems, name, err := a.split(req.Path)
	if err != nil {
		return nil, err
	}
	dir, err := a.walk(dirElems, false)
	if errors.Is(err, errNotFound) {
		return &wire.FileResponse{FileInfo: wire.FileInfo{Path: rel}}, nil
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	var st unix.Stat_t
	if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return &wire.FileResponse{FileInfo: wire.FileInfo{Path: rel}}, nil
		}
		return nil, elementError(dir, rel, name, err)
	}
	fr := &wire.FileResponse{FileInfo: statInfo(rel, &st), Deleted: true}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlinkat(dir, name, 0); err != nil {
			return nil, failed("%s: %v", rel, err)
		}
		return fr, nil
	}
	if req.Recursive {
		if err := removeTree(dir, name); err != nil {
			return nil, failed("%s: %v", rel, err)
		}
	}
	if err := unlinkDir(dir, name); err != nil {
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return nil, failed("%s is a directory that is not empty: delete it recursive", rel)
		}
		return nil, failed("%s: %v", rel, err)
	}
	return fr, nil
}

// errNotFound matches the not-found fileError of walk.
var errNotFound = &fileError{code: wire.ErrCodeFileNotFound}

func (e *fileError) Is(target error) bool {
	t, ok := target.(*fileError)
	return ok && t.code == e.code && t.msg == ""
}

func unlinkDir(dir int, name string) error { return unix.Unlinkat(dir, name, unix.AT_REMOVEDIR) }

// removeTree empties the directory name of dir, never following a link.
func removeTree(dir int, name string) error {
	fd, err := openAt(dir, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	names, err := readDirNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		var st unix.Stat_t
		if unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			continue
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := removeTree(fd, n); err != nil {
				return err
			}
			if err := unlinkDir(fd, n); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
			continue
		}
		if err := unix.Unlinkat(fd, n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	return nil
}
