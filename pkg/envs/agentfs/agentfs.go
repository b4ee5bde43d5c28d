// Package agentfs is envs.FileSystem for the backends whose sandboxes run codefleet's agent
// (Docker through its frames, the fake backend in process): each operation is one
// wire.OpFile request, and the agent's answer is mapped onto envs' types and errors here, once
// for both.
package agentfs

import (
	"context"
	"fmt"
	"time"

	"github.com/codefleet/codefleet/internal/agent/wire"
	"github.com/codefleet/codefleet/pkg/envs"
)

// FS implements envs.FileSystem over Call.
type FS struct {
	// Call sends one file request to the agent and returns its answer frame; its error is the
	// channel's (ErrSandboxGone, ErrClosed, a context's).
	Call func(ctx context.Context, req *wire.FileRequest) (*wire.Response, error)
	// Name prefixes error messages ("docker: sandbox 1234abcd").
	Name string
}

func (f FS) do(ctx context.Context, req *wire.FileRequest) (*wire.FileResponse, error) {
	resp, err := f.Call(ctx, req)
	if err != nil {
		return nil, err
	}
	switch resp.Op {
	case wire.OpFile:
		if resp.File == nil {
			return nil, fmt.Errorf("%w: %s: file answer without a body", envs.ErrSandboxFailed, f.Name)
		}
		return resp.File, nil
	case wire.OpError:
		var kind error
		switch resp.Code {
		case wire.ErrCodeFileNotFound:
			kind = envs.ErrFileNotFound
		case wire.ErrCodePathRefused:
			kind = envs.ErrPathRefused
		case wire.ErrCodeFileTooLarge:
			kind = envs.ErrFileTooLarge
		case wire.ErrCodeFileFailed:
			kind = envs.ErrFileFailed
		default: // bad_frame: an agent older than file requests (a sandbox made before), or a bug
			return nil, fmt.Errorf("%w: %s: the sandbox's agent did not take the file request (%s); a sandbox made before file requests existed cannot take them: close the conversation for a new one", envs.ErrSandboxFailed, f.Name, resp.Error)
		}
		return nil, &fileError{kind: kind, msg: resp.Error}
	default:
		return nil, fmt.Errorf("%w: %s: unexpected frame %q to a file request", envs.ErrSandboxFailed, f.Name, resp.Op)
	}
}

// PutFile implements envs.FileSystem.
func (f FS) PutFile(ctx context.Context, p envs.FilePut) (envs.FileData, error) {
	fr, err := f.do(ctx, &wire.FileRequest{
		Op: wire.FilePut, Path: p.Path, Upload: p.Upload, Offset: p.Offset, Data: p.Data, More: p.More,
		SHA256: p.SHA256, Mode: p.Mode, MaxSize: p.MaxSize, DeclaredSize: p.DeclaredSize,
	})
	if err != nil {
		return envs.FileData{}, err
	}
	return data(fr), nil
}

// GetFile implements envs.FileSystem.
func (f FS) GetFile(ctx context.Context, g envs.FileGet) (envs.FileData, error) {
	fr, err := f.do(ctx, &wire.FileRequest{Op: wire.FileGet, Path: g.Path, Offset: g.Offset, Length: g.Length, MaxSize: g.MaxSize})
	if err != nil {
		return envs.FileData{}, err
	}
	return data(fr), nil
}

// ListFiles implements envs.FileSystem.
func (f FS) ListFiles(ctx context.Context, path string, recursive bool, max int) ([]envs.FileStat, bool, error) {
	fr, err := f.do(ctx, &wire.FileRequest{Op: wire.FileList, Path: path, Recursive: recursive, MaxEntries: max})
	if err != nil {
		return nil, false, err
	}
	out := make([]envs.FileStat, len(fr.Entries))
	for i, e := range fr.Entries {
		out[i] = stat(e)
	}
	return out, fr.Truncated, nil
}

// DeleteFile implements envs.FileSystem.
func (f FS) DeleteFile(ctx context.Context, path string, recursive bool) (bool, error) {
	fr, err := f.do(ctx, &wire.FileRequest{Op: wire.FileDelete, Path: path, Recursive: recursive})
	if err != nil {
		return false, err
	}
	return fr.Deleted, nil
}

func stat(i wire.FileInfo) envs.FileStat {
	st := envs.FileStat{Path: i.Path, Type: i.Type, Size: i.Size, Mode: i.Mode}
	if i.ModTimeNS != 0 {
		st.ModTime = time.Unix(0, i.ModTimeNS)
	}
	return st
}

func data(fr *wire.FileResponse) envs.FileData {
	return envs.FileData{FileStat: stat(fr.FileInfo), Data: fr.Data, EOF: fr.EOF, SHA256: fr.SHA256}
}

// fileError is the agent's refusal of a file request: its message as the agent said it (the
// wire code says the kind), matching the envs error of its kind.
type fileError struct {
	kind error
	msg  string
}

func (e *fileError) Error() string { return e.msg }
func (e *fileError) Unwrap() error { return e.kind }
