package client

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/nats-io/nuid"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// Files of a conversation's workspace, on the files subject. Every call is one or more
// FileRequests; each is retried on a transport failure with the same payload, as a run is: a
// put piece sent again at the same offset is taken as it is, and gets, lists and deletes do the
// same thing twice. Paths are the workspace's: relative to it, or absolute under it.

// ErrFileChanged is the error of a GetFile whose file changed while it was read in pieces (its
// size, or the SHA-256 of the bytes read, differs from what the first piece's answer said).
// What was written to the writer is a mix of two versions: get it again.
var ErrFileChanged = errors.New("the file changed while it was read")

// FileOptions are the optional fields of PutFile.
type FileOptions struct {
	// Mode is the file's permission bits; 0 means 0644.
	Mode fs.FileMode
	// Sandbox applies when this request creates the conversation's sandbox.
	Sandbox *protocol.SandboxOptions
}

// PutFile writes the file at path in the conversation's workspace with what r holds: size
// bytes, or, with size -1, whatever r holds until EOF (the fleet refuses a file past its limit
// with CodeFileTooLarge once the pieces pass it; a known size is refused before anything is
// sent over). Missing directories on the way are made. The file appears whole when its last
// piece lands, and only if the SHA-256 the client computed while sending matches what landed.
// The result is the answer to the last piece: the file's path, size, SHA-256 and mode.
//
// The error is a *protocol.Error from the fleet (path_refused, file_too_large, file_failed...),
// with the result, or a transport or read error, without one.
func (cv *Conversation) PutFile(ctx context.Context, path string, r io.Reader, size int64, opts *FileOptions) (*protocol.FileResult, error) {
	if opts == nil {
		opts = &FileOptions{}
	}
	id := nuid.Next()
	switch {
	case size < -1:
		perr := protocol.Errorf(protocol.CodeBadRequest, "size %d: give the file's size, or -1 when it is not known", size)
		return protocol.FileErrorResult(id, protocol.FileOpPut, perr), perr
	case size > protocol.MaxFileBytes:
		perr := protocol.Errorf(protocol.CodeFileTooLarge, "%s is %d bytes, over the largest file limit a worker may have (%d bytes)", path, size, int64(protocol.MaxFileBytes))
		return protocol.FileErrorResult(id, protocol.FileOpPut, perr), perr
	}
	mode := ""
	if opts.Mode != 0 {
		mode = protocol.FormatMode(uint32(opts.Mode.Perm()))
	}
	sum := sha256.New()
	br := bufio.NewReader(r) // Peek tells whether a full piece is the last
	upload := ""
	var off int64
	// The pieces before the last go pieceWindow at a time (the fleet takes them in any order);
	// the last goes once they are all in, and the file appears.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var flying []inFlight
	for {
		buf := make([]byte, protocol.FileChunkBytes) // a piece of its own: others are in flight
		want := int64(len(buf))
		if size >= 0 {
			want = min(want, size-off)
		}
		n, err := io.ReadFull(br, buf[:want])
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("put %s: read: %w", path, err)
		}
		if size >= 0 && int64(n) < want {
			return nil, fmt.Errorf("put %s: the reader ended after %d bytes, the size given is %d", path, off+int64(n), size)
		}
		sum.Write(buf[:n])
		_, err = br.Peek(1)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("put %s: read: %w", path, err)
		}
		more := err == nil
		if size >= 0 && off+int64(n) == size {
			if more { // checked before the last piece goes: the file must not appear
				return nil, fmt.Errorf("put %s: the reader holds more than the %d bytes the size gives", path, size)
			}
		}
		if more && upload == "" {
			upload = nuid.Next() // more than one piece: they need an upload id
		}
		req := &protocol.FileRequest{ID: id, Op: protocol.FileOpPut, Path: path, Data: buf[:n], Offset: off,
			Upload: upload, More: more, Mode: mode, Sandbox: opts.Sandbox}
		if size >= 0 {
			req.Size = size
		}
		off += int64(n)
		if more {
			if len(flying) == pieceWindow {
				if res, err := flying[0].wait(); err != nil {
					return res, err
				}
				flying = flying[1:]
			}
			flying = append(flying, goFile(func() (*protocol.FileResult, error) { return cv.file(ctx, req) }))
			continue
		}
		for _, f := range flying {
			if res, err := f.wait(); err != nil {
				return res, err
			}
		}
		req.SHA256 = hex.EncodeToString(sum.Sum(nil))
		res, err := cv.file(ctx, req)
		if err != nil {
			return res, err
		}
		if res.Size != off {
			return res, fmt.Errorf("put %s: the fleet holds %d bytes of the file after the client sent %d", path, res.Size, off)
		}
		if res.SHA256 != "" && !strings.EqualFold(res.SHA256, req.SHA256) {
			return res, fmt.Errorf("put %s: the fleet's sha256 %s differs from the client's %s", path, res.SHA256, req.SHA256)
		}
		return res, nil
	}
}

// pieceWindow is how many pieces of a put or a get are in flight at once: the worker takes
// them one after another, and the hops on the way (the client's and the dispatcher's encoding
// and decoding) work on the next pieces meanwhile.
const pieceWindow = 4

// inFlight is a file request sent from a goroutine of its own; wait reads its answer, once.
type inFlight chan fileAnswer

type fileAnswer struct {
	res *protocol.FileResult
	err error
}

func goFile(send func() (*protocol.FileResult, error)) inFlight {
	f := make(inFlight, 1)
	go func() {
		res, err := send()
		f <- fileAnswer{res, err}
	}()
	return f
}

func (f inFlight) wait() (*protocol.FileResult, error) {
	a := <-f
	return a.res, a.err
}

// GetFile writes the file at path in the conversation's workspace to w, reading it in pieces
// (pieceWindow asked for at once, written in order), and checks what it wrote against the file's
// SHA-256 (ErrFileChanged when the file changed meanwhile). The result describes the file
// (path, size, mode, mtime, SHA-256), without its data. The error is a *protocol.Error from the
// fleet (file_not_found, path_refused, file_too_large, file_failed for a directory...), with
// the result, or another error without.
func (cv *Conversation) GetFile(ctx context.Context, path string, w io.Writer) (*protocol.FileResult, error) {
	id := nuid.Next()
	get := func(ctx context.Context, off int64) (*protocol.FileResult, error) {
		res, err := cv.file(ctx, &protocol.FileRequest{ID: id, Op: protocol.FileOpGet, Path: path, Offset: off, Length: protocol.FileChunkBytes})
		if err == nil && res.Offset != off {
			err = fmt.Errorf("get %s: asked for offset %d, the answer is at %d", path, off, res.Offset)
		}
		return res, err
	}
	first, err := get(ctx, 0)
	if err != nil {
		return first, err
	}
	sum := sha256.New()
	write := func(res *protocol.FileResult) error {
		if _, err := w.Write(res.Data); err != nil {
			return fmt.Errorf("get %s: write: %w", path, err)
		}
		sum.Write(res.Data)
		return nil
	}
	if err := write(first); err != nil {
		return nil, err
	}
	off := int64(len(first.Data))
	if !first.EOF {
		if off == 0 {
			return nil, fmt.Errorf("get %s: no data at offset 0 of %d bytes, and no end of file", path, first.Size)
		}
		// The rest: pieces of the first's length (what the fleet gives at most), asked for
		// pieceWindow at a time and written in order; any answer that does not fit the first's
		// size is a file that changed.
		piece := off
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var pending []inFlight
		next := off
		for off < first.Size {
			for len(pending) < pieceWindow && next < first.Size {
				at := next
				pending = append(pending, goFile(func() (*protocol.FileResult, error) { return get(ctx, at) }))
				next += piece
			}
			res, err := pending[0].wait()
			pending = pending[1:]
			if err != nil {
				return res, err
			}
			want := min(piece, first.Size-off)
			if res.Size != first.Size || int64(len(res.Data)) != want {
				return nil, fmt.Errorf("get %s: %w (it was %d bytes, now %d)", path, ErrFileChanged, first.Size, res.Size)
			}
			if err := write(res); err != nil {
				return nil, err
			}
			off += want
		}
	}
	got := hex.EncodeToString(sum.Sum(nil))
	if off != first.Size || (first.SHA256 != "" && !strings.EqualFold(first.SHA256, got)) {
		return nil, fmt.Errorf("get %s: %w (read %d bytes of sha256 %s; it was %d bytes of sha256 %s)", path, ErrFileChanged, off, got, first.Size, first.SHA256)
	}
	info := *first
	info.Data, info.Offset, info.EOF, info.SHA256 = nil, 0, true, got
	return &info, nil
}

// ListFiles lists the directory at path ("" is the workspace): its entries, or its whole tree
// when recursive, in Entries sorted by path (paths relative to the workspace), at most
// protocol.MaxListEntries of them (Truncated says more were found). Symbolic links are listed as
// such, never followed. Listing a file is a file_failed error.
func (cv *Conversation) ListFiles(ctx context.Context, path string, recursive bool) (*protocol.FileResult, error) {
	return cv.file(ctx, &protocol.FileRequest{ID: nuid.Next(), Op: protocol.FileOpList, Path: path, Recursive: recursive})
}

// DeleteFile removes the file, symbolic link (not what it points to) or empty directory at
// path, or a directory and its whole tree when recursive. Deleted is false when nothing was
// there, which is not an error.
func (cv *Conversation) DeleteFile(ctx context.Context, path string, recursive bool) (*protocol.FileResult, error) {
	return cv.file(ctx, &protocol.FileRequest{ID: nuid.Next(), Op: protocol.FileOpDelete, Path: path, Recursive: recursive})
}

// file checks a file request against the contract, sends it (retrying the transport) and
// decodes its answer.
func (cv *Conversation) file(ctx context.Context, req *protocol.FileRequest) (*protocol.FileResult, error) {
	perr := cv.check()
	if perr == nil {
		perr = req.Validate()
	}
	if perr != nil {
		return protocol.FileErrorResult(req.ID, req.Op, perr), perr
	}
	data, err := cv.c.request(ctx, cv.c.subjects.Files(cv.c.tenant, cv.id), protocol.Encode(req), cv.c.overhead)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.Op, req.Path, err)
	}
	res, err := protocol.DecodeFileResult(data)
	if err != nil {
		return nil, err
	}
	if res.Error != nil {
		return res, res.Error
	}
	return res, nil
}
