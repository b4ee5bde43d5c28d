package envs

import (
	"context"
	"errors"
	"time"

	"github.com/codefleet/codefleet/internal/output"
	"github.com/codefleet/codefleet/internal/workspace"
)

// Errors of the file operations of a Sandbox (FileSystem). Backends wrap them with %w.
var (
	// ErrFileNotFound: nothing at the path.
	ErrFileNotFound = errors.New("file not found")
	// ErrPathRefused: the path leaves the workspace or goes through a symbolic link. It is
	// workspace.ErrRefused, so that the path checks shared by every backend return it.
	ErrPathRefused = workspace.ErrRefused
	// ErrFileTooLarge: the file is larger than the request's MaxSize.
	ErrFileTooLarge = errors.New("file too large")
	// ErrFileFailed: the operation reached the sandbox and failed there (permission denied,
	// disk full, a directory where a file was expected, a checksum that differs).
	ErrFileFailed = errors.New("file operation failed")
)

// Chunk is one piece of a streamed run's output (Exec.Stream).
type Chunk = output.Chunk

// FilePut writes one piece of a file (the whole file when Upload is empty).
type FilePut struct {
	// Path is the file's path, relative to the workspace or absolute under it.
	Path string
	// Upload names a file sent in pieces; every piece of it has the same Upload. The file
	// appears at Path, whole, when the piece without More lands.
	Upload string
	// Offset is where Data goes: the bytes of the upload received before it. A piece sent
	// again (a retry) whose bytes are already there is accepted as it is.
	Offset int64
	Data   []byte
	More   bool
	// SHA256 (hex), when set on the last piece, must be the whole file's.
	SHA256 string
	// Mode is the file's permission bits (0644 when 0).
	Mode uint32
	// MaxSize bounds the file: a piece that would take it past MaxSize fails with
	// ErrFileTooLarge (so does a DeclaredSize over it, before anything is written).
	MaxSize      int64
	DeclaredSize int64
}

// FileGet reads a piece of a file.
type FileGet struct {
	Path string
	// Offset and Length say what to read; Length 0 means up to the backend's piece size.
	Offset, Length int64
	// MaxSize: a file larger than this is refused with ErrFileTooLarge.
	MaxSize int64
}

// FileStat describes a file of the workspace.
type FileStat struct {
	// Path is relative to the workspace.
	Path string
	// Type is protocol.FileTypeFile, FileTypeDir, FileTypeSymlink or FileTypeOther.
	Type    string
	Size    int64
	Mode    uint32
	ModTime time.Time
}

// FileData is the answer to a put or a get.
type FileData struct {
	FileStat
	// Data is a get's bytes from its Offset; EOF says they reach the end of the file.
	Data []byte
	EOF  bool
	// SHA256 (hex) of the whole file: a get's at offset 0, a put's once its last piece landed.
	SHA256 string
}

// FileSystem is the file side of a Sandbox: the workspace, as the snippets' user sees it.
// Paths are checked by workspace.Rel and never followed through a symbolic link. Errors wrap
// ErrFileNotFound, ErrPathRefused, ErrFileTooLarge, ErrFileFailed, or those of Run
// (ErrSandboxGone, ErrBackendUnavailable, ErrClosed).
type FileSystem interface {
	PutFile(ctx context.Context, put FilePut) (FileData, error)
	GetFile(ctx context.Context, get FileGet) (FileData, error)
	// ListFiles lists a directory (the workspace when path is empty): its entries, or its
	// tree when recursive, at most max of them (truncated reports more were found).
	ListFiles(ctx context.Context, path string, recursive bool, max int) (entries []FileStat, truncated bool, err error)
	// DeleteFile removes a file, a link (not what it points to), an empty directory, or a
	// directory and its tree when recursive. It reports false when nothing was at path.
	DeleteFile(ctx context.Context, path string, recursive bool) (bool, error)
}
