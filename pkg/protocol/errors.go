package protocol

import "fmt"

// Code is a machine-readable error code of the contract.
type Code string

// The error codes of the contract. The list is closed within a version: new codes are added,
// none are renamed or removed.
const (
	// CodeBadRequest: the request is malformed (JSON, a field, the subject).
	CodeBadRequest Code = "bad_request"
	// CodeUnsupportedLanguage: the language is unknown or the sandbox's image lacks it.
	CodeUnsupportedLanguage Code = "unsupported_language"
	// CodeImageNotAllowed: sandbox.image is not on the worker's allow-list.
	CodeImageNotAllowed Code = "image_not_allowed"
	// CodeCapacity: no worker can take a new sandbox now.
	CodeCapacity Code = "capacity"
	// CodeBusy: the conversation's queue of pending runs is full.
	CodeBusy Code = "busy"
	// CodeSandboxFailed: the sandbox could not be created or died.
	CodeSandboxFailed Code = "sandbox_failed"
	// CodeBackendUnavailable: the backend (Docker daemon, Daytona API) cannot be reached.
	CodeBackendUnavailable Code = "backend_unavailable"
	// CodeWorkerLost: the worker holding the conversation went away mid-run.
	CodeWorkerLost Code = "worker_lost"
	// CodeInternal: a bug or an unexpected fault.
	CodeInternal Code = "internal"
	// CodeDiskLimit: the run was ended because the sandbox's files reached its disk limit. The
	// result keeps the output so far and the exit code (137); the sandbox and its files survive.
	CodeDiskLimit Code = "disk_limit"
	// CodeQuotaExceeded: the tenant holds as many sandboxes, or has as many runs going, as its
	// quota allows (the message names the quota and the tenant). Added after v1's first codes.
	CodeQuotaExceeded Code = "quota_exceeded"
	// CodeFileNotFound: a file request names a path that does not exist in the workspace.
	CodeFileNotFound Code = "file_not_found"
	// CodePathRefused: a file request's path leaves the workspace (.., an absolute path outside
	// it) or goes through a symbolic link: file requests never follow one, so a link a snippet
	// planted cannot make a get read, or a put write, outside the workspace.
	CodePathRefused Code = "path_refused"
	// CodeFileTooLarge: the file is larger than the worker's file size limit (the message says
	// both sizes).
	CodeFileTooLarge Code = "file_too_large"
	// CodeFileFailed: the file request reached the sandbox and failed there (permission denied,
	// disk full, a directory where a file was expected, an upload's checksum that differs);
	// the message says why.
	CodeFileFailed Code = "file_failed"
)

// Codes lists every error code of the contract.
var Codes = []Code{
	CodeBadRequest, CodeUnsupportedLanguage, CodeImageNotAllowed, CodeCapacity, CodeBusy,
	CodeSandboxFailed, CodeBackendUnavailable, CodeWorkerLost, CodeInternal, CodeDiskLimit, CodeQuotaExceeded,
	CodeFileNotFound, CodePathRefused, CodeFileTooLarge, CodeFileFailed,
}

// Error is the error object of RunResult, CloseResult and FileResult. It implements error.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

// Errorf returns an Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Is makes errors.Is match on the code: errors.Is(err, &Error{Code: CodeBusy}).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
}
