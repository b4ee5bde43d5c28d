package worker

import (
	"context"
	"errors"
	"time"

	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// fileTimeout bounds one file request in the sandbox (a get at offset 0 reads the whole file
// for its checksum).
const fileTimeout = 2 * time.Minute

// executeFile does a file request in the conversation's sandbox and answers it.
func (m *manager) executeFile(s *session, j *job, sb envs.Sandbox, info *protocol.SandboxInfo) {
	req := j.file
	ctx, cancel := context.WithTimeout(s.ctx, fileTimeout)
	defer cancel()
	res := &protocol.FileResult{ID: req.ID, Op: req.Op, Sandbox: info}
	var d envs.FileData
	var err error
	switch req.Op {
	case protocol.FileOpPut:
		mode, _ := protocol.ParseMode(req.Mode) // validated with the request
		d, err = sb.PutFile(ctx, envs.FilePut{
			Path: req.Path, Upload: req.Upload, Offset: req.Offset, Data: req.Data, More: req.More,
			SHA256: req.SHA256, Mode: mode, MaxSize: m.cfg.MaxFileSize, DeclaredSize: req.Size,
		})
	case protocol.FileOpGet:
		d, err = sb.GetFile(ctx, envs.FileGet{Path: req.Path, Offset: req.Offset, Length: req.Length, MaxSize: m.cfg.MaxFileSize})
		res.Data, res.Offset, res.EOF = d.Data, req.Offset, d.EOF
	case protocol.FileOpList:
		var entries []envs.FileStat
		entries, res.Truncated, err = sb.ListFiles(ctx, req.Path, req.Recursive, protocol.MaxListEntries)
		for _, e := range entries {
			res.Entries = append(res.Entries, protocol.FileEntry{Path: e.Path, Type: e.Type, Size: e.Size, Mode: protocol.FormatMode(e.Mode), ModTime: e.ModTime.UTC()})
		}
	case protocol.FileOpDelete:
		res.Deleted, err = sb.DeleteFile(ctx, req.Path, req.Recursive)
		res.Path = req.Path
	}
	if err != nil {
		res = protocol.FileErrorResult(req.ID, req.Op, m.fileError(s, sb, err))
		res.Sandbox = info
		m.finishFile(s, j, res)
		return
	}
	if req.Op == protocol.FileOpPut || req.Op == protocol.FileOpGet {
		res.Path, res.Size, res.SHA256 = d.Path, d.Size, d.SHA256
		if d.Type != "" {
			res.Mode = protocol.FormatMode(d.Mode)
		}
		if !d.ModTime.IsZero() {
			t := d.ModTime.UTC()
			res.ModTime = &t
		}
	}
	m.finishFile(s, j, res)
}

// fileError maps a backend's file error onto the wire's; a sandbox gone is dealt with as a
// run's is (lose).
func (m *manager) fileError(s *session, sb envs.Sandbox, err error) *protocol.Error {
	code := protocol.Code("")
	switch {
	case errors.Is(err, envs.ErrFileNotFound):
		code = protocol.CodeFileNotFound
	case errors.Is(err, envs.ErrPathRefused):
		code = protocol.CodePathRefused
	case errors.Is(err, envs.ErrFileTooLarge):
		code = protocol.CodeFileTooLarge
	case errors.Is(err, envs.ErrFileFailed):
		code = protocol.CodeFileFailed
	case s.ctx.Err() != nil:
		return protocol.Errorf(protocol.CodeSandboxFailed, "conversation %s was closed during this file request", s.conv)
	case errors.Is(err, envs.ErrSandboxGone):
		return m.lose(s, sb, err)
	default:
		return errorOf(err)
	}
	return &protocol.Error{Code: code, Message: err.Error()}
}

// finishFile answers a file request.
func (m *manager) finishFile(s *session, j *job, res *protocol.FileResult) {
	m.metrics.fileAnswered(j.file.Op, res.Error)
	j.respondFile(res)
	m.done(s)
}
