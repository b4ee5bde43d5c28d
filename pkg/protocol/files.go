package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Files. A FileRequest on Subjects.Files(tenant, conversation) puts, gets, lists or deletes a
// file of the conversation's sandbox, through the dispatchers and the conversation's affinity
// as a run goes (its sandbox is created by a file request as by a run). Paths are the
// workspace's: relative to it, or absolute under it (WorkspaceDir on the Docker backend).
// A path with a ".." element, an absolute path outside the workspace, or one that goes
// through a symbolic link (a link planted by a snippet, a linked directory) is refused with
// CodePathRefused: file requests never follow links. Files are written and read as the
// snippets' user.
//
// A file larger than one message moves in pieces of at most FileChunkBytes: a put sends them
// with the same Upload id, every piece but the last with More set, in any order (each lands at
// its Offset), then the last once the others are answered, and the file appears at its path,
// whole, when the last lands (with SHA256, checked); a get asks for
// Offset and Length and is told the file's Size, its SHA256 (in the answer at offset 0) and
// EOF. The largest file is the worker's limit (DefaultMaxFileBytes unless configured, at most
// MaxFileBytes): a put declaring, or sending, more, and a get of a larger file, are refused
// with CodeFileTooLarge.
const (
	// FileOpPut, FileOpGet, FileOpList and FileOpDelete are the ops of a FileRequest.
	FileOpPut    = "put"
	FileOpGet    = "get"
	FileOpList   = "list"
	FileOpDelete = "delete"
	// FileChunkBytes bounds the data of one put request or one get answer: base64 and JSON
	// keep the message under NATS's default 1 MiB max payload.
	FileChunkBytes = 512 << 10
	// DefaultMaxFileBytes is a worker's file size limit unless configured.
	DefaultMaxFileBytes = 128 << 20
	// MaxFileBytes is the largest file size limit a worker may be configured with.
	MaxFileBytes = 4 << 30
	// MaxPathBytes bounds a path.
	MaxPathBytes = 4096
	// MaxListEntries bounds the entries of one list answer (Truncated says more were left out).
	MaxListEntries = 10000
	// WorkspaceDir is the workspace of a Docker sandbox: the snippets' working directory.
	WorkspaceDir = "/workspace"
)

// FileOps lists the ops of a FileRequest.
var FileOps = []string{FileOpPut, FileOpGet, FileOpList, FileOpDelete}

// FileRequest is a request on the files subject. Unknown fields are ignored.
type FileRequest struct {
	// ID is the client's request id, echoed in the result. Optional.
	ID string `json:"id,omitempty"`
	// Op is one of FileOps. Required.
	Op string `json:"op"`
	// Path is the file (or, for list and delete, the directory). Required but for list, whose
	// default is the workspace itself.
	Path string `json:"path,omitempty"`
	// Data is the bytes of a put (base64 in JSON), at most FileChunkBytes.
	Data []byte `json:"data,omitempty"`
	// Offset is where Data goes in the file (put) or where a get starts reading.
	Offset int64 `json:"offset,omitempty"`
	// Size is a put's whole size when the client knows it: refused at once over the limit.
	Size int64 `json:"size,omitempty"`
	// Upload names a put in several pieces ([A-Za-z0-9_-]{1,128}, the same in each); More says
	// more pieces follow. A put without More is the last (or only) piece.
	Upload string `json:"upload,omitempty"`
	More   bool   `json:"more,omitempty"`
	// SHA256, on a put's last piece, is the hex SHA-256 of the whole file: the put fails with
	// CodeFileFailed, leaving nothing at the path, when what landed differs.
	SHA256 string `json:"sha256,omitempty"`
	// Mode is a put's permission bits in octal ("0644", the default; "0755"...).
	Mode string `json:"mode,omitempty"`
	// Length is the most bytes a get returns (0 or more than FileChunkBytes: FileChunkBytes).
	Length int64 `json:"length,omitempty"`
	// Recursive lists a directory's tree (not only its entries), or deletes a directory and
	// what it holds.
	Recursive bool `json:"recursive,omitempty"`
	// Sandbox applies only when this request creates the conversation's sandbox.
	Sandbox *SandboxOptions `json:"sandbox,omitempty"`
}

// FileResult answers a FileRequest.
type FileResult struct {
	ID string `json:"id"`
	Op string `json:"op,omitempty"`
	// Path is the file's path relative to the workspace.
	Path string `json:"path,omitempty"`
	// Size is the file's size: for a put, the bytes received from offset 0 without a gap (the
	// file's size once the last piece landed); for a get, the whole file's.
	Size int64 `json:"size"`
	// Data, Offset and EOF are a get's: the bytes read from Offset, and whether they reach the
	// end of the file.
	Data   []byte `json:"data,omitempty"`
	Offset int64  `json:"offset,omitempty"`
	EOF    bool   `json:"eof,omitempty"`
	// SHA256 is the hex SHA-256 of the whole file: in a get's answer at offset 0, and in the
	// answer to a put's last piece.
	SHA256 string `json:"sha256,omitempty"`
	// Mode (octal) and ModTime describe the file (get, put).
	Mode    string     `json:"mode,omitempty"`
	ModTime *time.Time `json:"mtime,omitempty"`
	// Entries are a list's, sorted by path; Truncated says more than MaxListEntries were found.
	Entries   []FileEntry `json:"entries,omitempty"`
	Truncated bool        `json:"truncated,omitempty"`
	// Deleted is a delete's: false when there was nothing at the path.
	Deleted bool         `json:"deleted,omitempty"`
	Sandbox *SandboxInfo `json:"sandbox,omitempty"`
	Error   *Error       `json:"error,omitempty"`
}

// File types of a FileEntry.
const (
	FileTypeFile    = "file"
	FileTypeDir     = "dir"
	FileTypeSymlink = "symlink"
	FileTypeOther   = "other"
)

// FileEntry is one entry of a list. A symbolic link is listed as such, never followed, and its
// target is not told.
type FileEntry struct {
	// Path is relative to the workspace.
	Path    string    `json:"path"`
	Type    string    `json:"type"`
	Size    int64     `json:"size"`
	Mode    string    `json:"mode"`
	ModTime time.Time `json:"mtime"`
}

// FileErrorResult returns a FileResult that carries only an error.
func FileErrorResult(id, op string, err *Error) *FileResult {
	return &FileResult{ID: id, Op: op, Error: err}
}

// ParseMode parses a put's octal mode ("" is 0644); only permission bits are taken.
func ParseMode(s string) (uint32, *Error) {
	if s == "" {
		return 0o644, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, Errorf(CodeBadRequest, "mode %q must be octal permission bits, 0 to 0777 (\"0644\", \"0755\")", trimForMessage(s))
	}
	return uint32(m), nil
}

// FormatMode writes permission bits as a FileResult's mode: "0644".
func FormatMode(m uint32) string { return fmt.Sprintf("%04o", m&0o7777) }

// DecodeFileRequest decodes a FileRequest from JSON and validates it (see Validate), with the
// same care as DecodeRunRequest: every problem is a CodeBadRequest *Error naming the field.
func DecodeFileRequest(data []byte) (*FileRequest, *Error) {
	obj, perr := decodeRequestObject(data)
	if perr != nil {
		return nil, perr
	}
	r := &FileRequest{}
	var present bool
	if r.ID, present, perr = decodeOptString(obj, "id", "id"); perr != nil {
		return nil, perr
	}
	if present && r.ID == "" {
		return nil, Errorf(CodeBadRequest, "id is empty: omit it or give one matching [A-Za-z0-9_-]{1,%d}", MaxIDLen)
	}
	for _, f := range []struct {
		key string
		dst *string
	}{{"op", &r.Op}, {"path", &r.Path}, {"upload", &r.Upload}, {"sha256", &r.SHA256}, {"mode", &r.Mode}} {
		if *f.dst, _, perr = decodeOptString(obj, f.key, f.key); perr != nil {
			return nil, perr
		}
	}
	for _, f := range []struct {
		key string
		dst *int64
	}{{"offset", &r.Offset}, {"size", &r.Size}, {"length", &r.Length}} {
		if raw, ok := obj[f.key]; ok {
			if *f.dst, perr = decodeInt(raw, f.key); perr != nil {
				return nil, perr
			}
		}
	}
	for _, f := range []struct {
		key string
		dst *bool
	}{{"more", &r.More}, {"recursive", &r.Recursive}} {
		if *f.dst, perr = decodeOptBool(obj, f.key, f.key); perr != nil {
			return nil, perr
		}
	}
	if r.Data, perr = decodeBase64(obj["data"], "data", FileChunkBytes); perr != nil {
		return nil, perr
	}
	if raw, ok := obj["sandbox"]; ok && jsonKind(raw) != "null" {
		if r.Sandbox, perr = decodeSandboxOptions(raw); perr != nil {
			return nil, perr
		}
	}
	if perr := r.Validate(); perr != nil {
		return nil, perr
	}
	return r, nil
}

// Validate checks a file request against the contract. The path is only checked for its
// length and for NUL bytes here: where it leads is the sandbox's to check.
func (r *FileRequest) Validate() *Error {
	if r == nil {
		return Errorf(CodeBadRequest, "request is missing")
	}
	if r.ID != "" && !isToken(r.ID) {
		return Errorf(CodeBadRequest, "id %q must match [A-Za-z0-9_-]{1,%d}", trimForMessage(r.ID), MaxIDLen)
	}
	if !slices.Contains(FileOps, r.Op) {
		return Errorf(CodeBadRequest, "op %q is not one of %s", trimForMessage(r.Op), strings.Join(FileOps, ", "))
	}
	if r.Path == "" && r.Op != FileOpList {
		return Errorf(CodeBadRequest, "path is missing: %s needs the file's path in the workspace", r.Op)
	}
	if len(r.Path) > MaxPathBytes {
		return Errorf(CodeBadRequest, "path is %d bytes, the limit is %d", len(r.Path), MaxPathBytes)
	}
	if strings.IndexByte(r.Path, 0) >= 0 {
		return Errorf(CodeBadRequest, "path contains a NUL byte")
	}
	if r.Offset < 0 || r.Size < 0 || r.Length < 0 {
		return Errorf(CodeBadRequest, "offset, size and length must not be negative")
	}
	if len(r.Data) > FileChunkBytes {
		return Errorf(CodeBadRequest, "data is %d bytes, a piece holds at most %d: send the file in pieces (upload, more)", len(r.Data), FileChunkBytes)
	}
	if r.Op == FileOpPut {
		if r.Upload != "" && !isToken(r.Upload) {
			return Errorf(CodeBadRequest, "upload %q must match [A-Za-z0-9_-]{1,%d}", trimForMessage(r.Upload), MaxIDLen)
		}
		if r.Upload == "" && r.More {
			return Errorf(CodeBadRequest, "more is true but upload is missing: a put in pieces names its upload ([A-Za-z0-9_-]{1,%d}) in every piece", MaxIDLen)
		}
		if r.Upload == "" && r.Offset > 0 {
			return Errorf(CodeBadRequest, "offset is %d but upload is missing: a put in pieces names its upload ([A-Za-z0-9_-]{1,%d}) in every piece", r.Offset, MaxIDLen)
		}
		if r.SHA256 != "" && !isHexSHA256(r.SHA256) {
			return Errorf(CodeBadRequest, "sha256 %q must be 64 hex digits", trimForMessage(r.SHA256))
		}
		if _, perr := ParseMode(r.Mode); perr != nil {
			return perr
		}
	}
	if r.Sandbox != nil {
		if perr := r.Sandbox.validate(); perr != nil {
			return perr
		}
	}
	return nil
}

// decodeBase64 decodes a base64 string field of at most max bytes; missing or null is nil. Base64
// has no character JSON escapes, so the common case is decoded straight from the raw message
// without decoding the JSON string first.
func decodeBase64(raw json.RawMessage, field string, max int) ([]byte, *Error) {
	if raw == nil || jsonKind(raw) == "null" {
		return nil, nil
	}
	raw = bytes.TrimSpace(raw)
	var text []byte
	if k := jsonKind(raw); k != "string" {
		return nil, Errorf(CodeBadRequest, "field %s: must be a base64 string, got %s", field, k)
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		text = raw[1 : len(raw)-1]
	} else {
		s, _, perr := decodeString(raw, field)
		if perr != nil {
			return nil, perr
		}
		text = []byte(s)
	}
	if base64.StdEncoding.DecodedLen(len(text)) > max+3 {
		return nil, Errorf(CodeBadRequest, "%s is %d base64 characters, over the %d bytes a piece may hold: send the file in pieces (upload, more)", field, len(text), max)
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(out, text)
	if err != nil {
		return nil, Errorf(CodeBadRequest, "field %s: must be standard base64: %v", field, err)
	}
	if n == 0 {
		return nil, nil // as absent: what an empty Data encodes to
	}
	return out[:n], nil
}

func isHexSHA256(s string) bool {
	return len(s) == 64 && matches(s, 64, func(_ int, c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' })
}

// DecodeFileResult decodes a FileResult, as a client does with a reply. It does not validate.
func DecodeFileResult(data []byte) (*FileResult, error) {
	var r FileResult
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("protocol: decode file result: %w", err)
	}
	return &r, nil
}
