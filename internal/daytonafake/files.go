package daytonafake

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The toolbox's files API, as the daemon's apps/daemon/pkg/toolbox/fs serves it (v0.190): a plain
// Go file server running as the sandbox's user, on the paths it is given (relative ones from the
// daemon's working directory, here the sandbox's directory; absolute ones as they are, here on
// the host), which follows symbolic links wherever the daemon does: its stat (info, each entry
// of a list, the check before a download or a delete) is os.Stat, a list of a linked directory
// lists the directory linked to, a download reads what a link points to, an upload writes
// through links in the path, and a list leaves out a link whose target is missing. A client
// that must not follow links has to check paths itself; the fake does not hide this.
//
// Errors are the daemon's: the handlers abort with a status and no body (404 nothing there, 403
// permission denied, 400 anything else, "path is required", a directory to download, a
// directory to delete without recursive), except bulk-upload, which answers {"errors", "files"}.
//
//	GET    /files?path=            [FileInfo] of a directory (path defaults to the working dir)
//	GET    /files/info?path=       FileInfo
//	GET    /files/download?path=   the file (http.ServeFile: Range, 206, 416)
//	POST   /files/upload?path=     multipart part "file"; parents made 0750
//	POST   /files/bulk-upload      multipart files[i].path then files[i].file; parents made 0755
//	DELETE /files?path=&recursive= 204
//	POST   /files/folder?path=&mode=0755  201
//	GET    /work-dir, /user-home-dir      {"dir"}
//
// /files/bulk-download, find, search, replace, move and permissions are not served.

// fileInfo is the daemon's FileInfo.
type fileInfo struct {
	Name        string    `json:"name"`
	Size        int64     `json:"size"`
	Mode        string    `json:"mode"`
	ModTime     string    `json:"modTime"`
	ModifiedAt  time.Time `json:"modifiedAt"`
	IsDir       bool      `json:"isDir"`
	Owner       string    `json:"owner"`
	Group       string    `json:"group"`
	Permissions string    `json:"permissions"`
}

// statInfo is the daemon's getFileInfo: os.Stat, which follows links.
func statInfo(path string) (fileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileInfo{}, err
	}
	info := fileInfo{
		Name: fi.Name(), Size: fi.Size(), Mode: fi.Mode().String(), ModTime: fi.ModTime().String(),
		ModifiedAt: fi.ModTime(), IsDir: fi.IsDir(), Permissions: fmt.Sprintf("%04o", fi.Mode().Perm()),
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.Owner = strconv.FormatUint(uint64(st.Uid), 10)
		info.Group = strconv.FormatUint(uint64(st.Gid), 10)
	}
	return info, nil
}

// abort answers a status with no body, as gin's AbortWithError does in the daemon's file
// handlers (its error middleware leaves an answer already written alone).
func abort(w http.ResponseWriter, status int) {
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
}

// abortFor aborts with the status the daemon gives an error of the file system.
func abortFor(w http.ResponseWriter, err error) {
	switch {
	case os.IsNotExist(err):
		abort(w, http.StatusNotFound)
	case os.IsPermission(err):
		abort(w, http.StatusForbidden)
	default:
		abort(w, http.StatusBadRequest)
	}
}

// serveFiles serves the /files routes and /work-dir, /user-home-dir.
func (s *Server) serveFiles(w http.ResponseWriter, r *http.Request, c toolboxCall) {
	// The daemon resolves a relative path from its working directory.
	resolve := func(p string) string {
		if filepath.IsAbs(p) {
			return filepath.Clean(p)
		}
		return filepath.Join(c.dir, p)
	}
	path := c.query.Get("path")
	switch c.op {
	case "work-dir", "user-home-dir":
		writeJSON(w, http.StatusOK, map[string]string{"dir": c.dir})
		return
	case "files-list":
		if path == "" {
			path = "."
		}
		entries, err := os.ReadDir(resolve(path))
		if err != nil {
			abortFor(w, err)
			return
		}
		infos := []fileInfo{}
		for _, e := range entries {
			info, err := statInfo(filepath.Join(resolve(path), e.Name()))
			if err != nil {
				continue // a dangling link, say: left out, as the daemon does
			}
			infos = append(infos, info)
		}
		writeJSON(w, http.StatusOK, infos)
		return
	case "files-bulk-upload":
		s.bulkUpload(w, r, c, resolve)
		return
	}
	if path == "" {
		abort(w, http.StatusBadRequest) // "path is required"
		return
	}
	p := resolve(path)
	switch c.op {
	case "files-info":
		info, err := statInfo(p)
		if err != nil {
			abortFor(w, err)
			return
		}
		writeJSON(w, http.StatusOK, info)
	case "files-download":
		fi, err := os.Stat(p)
		switch {
		case err != nil:
			abortFor(w, err)
			return
		case fi.IsDir():
			abort(w, http.StatusBadRequest) // "path must be a file"
			return
		}
		w.Header().Set("Content-Description", "File Transfer")
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s"`, filepath.Base(p)))
		w.Header().Set("Content-Transfer-Encoding", "binary")
		w.Header().Set("Expires", "0")
		w.Header().Set("Cache-Control", "must-revalidate")
		w.Header().Set("Pragma", "public")
		http.ServeFile(w, r, p) // gin's c.File: ranges, 206, 416
	case "files-upload":
		part, err := formPart(r, c.body, func(name string) bool { return name == "file" })
		if err != nil {
			abort(w, http.StatusBadRequest)
			return
		}
		// gin's SaveUploadedFile: parents 0750, then os.Create through any link.
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			abort(w, http.StatusBadRequest)
			return
		}
		if err := os.WriteFile(p, part, 0o666); err != nil {
			abort(w, http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
	case "files-delete":
		fi, err := os.Stat(p)
		switch {
		case err != nil:
			abortFor(w, err)
			return
		case fi.IsDir() && c.query.Get("recursive") != "true":
			abort(w, http.StatusBadRequest) // "cannot delete directory without recursive flag"
			return
		}
		if c.query.Get("recursive") == "true" {
			err = os.RemoveAll(p)
		} else {
			err = os.Remove(p)
		}
		if err != nil {
			abort(w, http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case "files-folder":
		perm := os.FileMode(0o755)
		if m := c.query.Get("mode"); m != "" {
			n, err := strconv.ParseUint(m, 8, 32)
			if err != nil {
				abort(w, http.StatusBadRequest) // "invalid mode format"
				return
			}
			perm = os.FileMode(n)
		}
		if err := os.MkdirAll(p, perm); err != nil {
			abort(w, http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}
}

// bulkUpload serves POST /files/bulk-upload as the daemon does: each files[i].file part goes to
// the files[i].path part sent before it, parents made (0755), the file created or truncated
// through any link; errors are collected per file.
func (s *Server) bulkUpload(w http.ResponseWriter, r *http.Request, c toolboxCall, resolve func(string) string) {
	mr, err := multipartReader(r, c.body)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"errors": []string{"invalid multipart form"}})
		return
	}
	type result struct {
		Path  string `json:"path"`
		Bytes int64  `json:"bytes"`
	}
	dests := map[string]string{}
	var errs []string
	var files []result
	index := func(name string) string {
		return strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(name, "files["), "].path"), "].file")
	}
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("reading part: %v", err))
			break
		}
		name := part.FormName()
		switch {
		case strings.HasSuffix(name, ".path"):
			data, err := io.ReadAll(part)
			dest := strings.TrimSpace(string(data))
			switch {
			case err != nil:
				errs = append(errs, fmt.Sprintf("path[%s]: %v", index(name), err))
			case dest == "":
				errs = append(errs, fmt.Sprintf("path[%s]: empty path", index(name)))
			default:
				dests[index(name)] = dest
			}
		case strings.HasSuffix(name, ".file"):
			dest, ok := dests[index(name)]
			if !ok {
				errs = append(errs, fmt.Sprintf("file[%s]: missing .path metadata", index(name)))
				continue
			}
			p := resolve(dest)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				errs = append(errs, fmt.Sprintf("%s: mkdir %s: %v", dest, filepath.Dir(dest), err))
				continue
			}
			f, err := os.Create(p)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: create: %v", dest, err))
				continue
			}
			n, cerr := io.Copy(f, part)
			if err := f.Close(); err != nil && cerr == nil {
				cerr = err
			}
			if cerr != nil {
				errs = append(errs, fmt.Sprintf("%s: write: %v", dest, cerr))
				continue
			}
			files = append(files, result{Path: dest, Bytes: n})
		}
	}
	if len(errs) > 0 {
		writeJSON(w, http.StatusBadRequest, map[string]any{"errors": errs, "files": files})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"files": files})
}

// multipartReader reads a multipart/form-data body the toolbox already read.
func multipartReader(r *http.Request, body []byte) (*multipart.Reader, error) {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return nil, errors.New("not multipart/form-data")
	}
	return multipart.NewReader(bytes.NewReader(body), params["boundary"]), nil
}

// formPart returns the data of the first part whose form name is wanted.
func formPart(r *http.Request, body []byte, want func(string) bool) ([]byte, error) {
	mr, err := multipartReader(r, body)
	if err != nil {
		return nil, err
	}
	for {
		part, err := mr.NextPart()
		if err != nil {
			return nil, err
		}
		if want(part.FormName()) {
			return io.ReadAll(part)
		}
	}
}
