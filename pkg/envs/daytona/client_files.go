package daytona

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// The toolbox's files API (apps/daemon/pkg/toolbox/fs): a plain Go file server running as the
// sandbox's user, which follows symbolic links everywhere (its stat, list, download, upload and
// delete). The backend checks paths itself before it calls these (files.go).

// Upload implements API. It uses /files/bulk-upload, which both the v0.190 and the v0.205
// daemons have (v0.205 replaced /files/upload by /files/upload-v2), with one file: a text part
// files[0].path before the file part files[0].file, as the daemon requires. It is repeated
// after a failure that may have reached the service: writing the same bytes again is harmless.
func (c *Client) Upload(ctx context.Context, tb Toolbox, path string, data []byte) error {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if err := mw.WriteField("files[0].path", path); err != nil {
		return fmt.Errorf("upload: encode request: %w", err)
	}
	fw, err := mw.CreateFormFile("files[0].file", pathBase(path))
	if err != nil {
		return fmt.Errorf("upload: encode request: %w", err)
	}
	fw.Write(data)
	if err := mw.Close(); err != nil {
		return fmt.Errorf("upload: encode request: %w", err)
	}
	var out struct {
		Files []struct {
			Path  string `json:"path"`
			Bytes int64  `json:"bytes"`
		} `json:"files"`
		Errors []string `json:"errors"`
	}
	err = c.do(ctx, call{op: "upload", method: http.MethodPost, url: toolboxURL(tb, "/files/bulk-upload"), idempotent: true,
		payload: body.Bytes(), contentType: mw.FormDataContentType(), out: &out})
	switch {
	case err != nil:
		return err
	case len(out.Errors) > 0:
		return fmt.Errorf("upload %s: %s", path, strings.Join(out.Errors, "; "))
	case len(out.Files) != 1 || out.Files[0].Bytes != int64(len(data)):
		return fmt.Errorf("upload %s: the daemon reports %+v, want %d bytes written", path, out.Files, len(data))
	}
	return nil
}

// Download implements API. The daemon answers a range with 206 and a Content-Range giving the
// file's size, a range past the end with 416 (Content-Range "bytes */size"), and, should it not
// take ranges, the whole file with 200: each is read into a FileRange.
func (c *Client) Download(ctx context.Context, tb Toolbox, path string, offset, length int64) (FileRange, error) {
	if length <= 0 {
		return FileRange{Offset: offset, Size: -1}, nil
	}
	var raw []byte
	var header http.Header
	var status int
	h := http.Header{}
	h.Set("Range", fmt.Sprintf("bytes=%d-%d", offset, offset+length-1))
	h.Set("Accept", "application/octet-stream")
	err := c.do(ctx, call{op: "download", method: http.MethodGet, url: toolboxURL(tb, "/files/download?"+url.Values{"path": {path}}.Encode()),
		idempotent: true, raw: &raw, header: &header, status: &status, reqHeader: h})
	if statusOf(err) == http.StatusRequestedRangeNotSatisfiable {
		var ae *APIError
		errors.As(err, &ae)
		_, _, size, ok := contentRange(ae.Header.Get("Content-Range"))
		if !ok {
			return FileRange{}, fmt.Errorf("download %s: 416 without the file's size: %w", path, err)
		}
		return FileRange{Offset: offset, Size: size}, nil
	}
	if err != nil {
		return FileRange{}, err
	}
	if status == http.StatusPartialContent {
		first, last, size, ok := contentRange(header.Get("Content-Range"))
		if !ok || first != offset || last-first+1 != int64(len(raw)) {
			return FileRange{}, fmt.Errorf("download %s: partial answer of %d bytes with Content-Range %q for bytes %d-", path, len(raw), header.Get("Content-Range"), offset)
		}
		return FileRange{Offset: offset, Data: raw, Size: size}, nil
	}
	// The whole file.
	size := int64(len(raw))
	if offset >= size {
		return FileRange{Offset: offset, Size: size}, nil
	}
	return FileRange{Offset: offset, Data: raw[offset:min(offset+length, size)], Size: size}, nil
}

// ListFiles implements API.
func (c *Client) ListFiles(ctx context.Context, tb Toolbox, path string) ([]FileInfo, error) {
	var out []FileInfo
	err := c.do(ctx, call{op: "list files", method: http.MethodGet, url: toolboxURL(tb, "/files?"+url.Values{"path": {path}}.Encode()), idempotent: true, out: &out})
	return out, err
}

// DeleteFile implements API.
func (c *Client) DeleteFile(ctx context.Context, tb Toolbox, path string, recursive bool) error {
	q := url.Values{"path": {path}}
	if recursive {
		q.Set("recursive", "true")
	}
	return c.do(ctx, call{op: "delete file", method: http.MethodDelete, url: toolboxURL(tb, "/files?"+q.Encode()), idempotent: true})
}

// contentRange parses "bytes first-last/size" and "bytes */size".
func contentRange(v string) (first, last, size int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	span, total, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	size, err := strconv.ParseInt(total, 10, 64)
	if err != nil {
		return 0, 0, 0, false
	}
	if span == "*" {
		return 0, -1, size, true
	}
	a, b, found := strings.Cut(span, "-")
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	if !found || err1 != nil || err2 != nil || first > last {
		return 0, 0, 0, false
	}
	return first, last, size, true
}

// pathBase is the last element of a slash-separated path.
func pathBase(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
