package client_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/envs/fake"
	"github.com/codefleet/codefleet/pkg/protocol"
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16)}).Read(b)
	return b
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// fileServer is a fake of the fleet's files subject: one file per path in memory, puts in
// pieces checked as the contract says. drop, when set, is asked before each answer whether to
// lose it (the request is still carried out, as when an answer is lost on the way).
type fileServer struct {
	mu      sync.Mutex
	files   map[string][]byte
	uploads map[string]map[int64][]byte // by path and upload: the pieces, by offset
	reqs    []*protocol.FileRequest
	drop    func(n int, req *protocol.FileRequest) bool
	// sumOf, when set, replaces the sha256 a get answers at offset 0.
	sumOf func(data []byte) string
}

func serveFiles(t *testing.T, nc *nats.Conn) *fileServer {
	fs := &fileServer{files: map[string][]byte{}, uploads: map[string]map[int64][]byte{}}
	respond(t, nc, "codefleet.files.default.chat-1", func(_ int, m *nats.Msg) []byte {
		req, perr := protocol.DecodeFileRequest(m.Data)
		if perr != nil {
			t.Errorf("the client sent a file request the contract refuses: %v", perr)
			return protocol.Encode(protocol.FileErrorResult("", "", perr))
		}
		fs.mu.Lock()
		defer fs.mu.Unlock()
		fs.reqs = append(fs.reqs, req)
		res := fs.answer(req)
		if fs.drop != nil && fs.drop(len(fs.reqs), req) {
			return nil
		}
		return protocol.Encode(res)
	})
	return fs
}

func (fs *fileServer) answer(req *protocol.FileRequest) *protocol.FileResult {
	res := &protocol.FileResult{ID: req.ID, Op: req.Op, Path: req.Path}
	switch req.Op {
	case protocol.FileOpPut:
		// As the fleet does: pieces land at their offsets, in any order; the answer's size is
		// what came from offset 0 without a gap; the last piece needs every byte before it.
		key := req.Path + "/" + req.Upload
		pieces := fs.uploads[key]
		if pieces == nil {
			pieces = map[int64][]byte{}
			fs.uploads[key] = pieces
		}
		if old, ok := pieces[req.Offset]; ok && !bytes.Equal(old, req.Data) {
			res.Error = protocol.Errorf(protocol.CodeFileFailed, "piece at %d differs from the one held", req.Offset)
			return res
		}
		pieces[req.Offset] = req.Data
		var held []byte
		for p, ok := pieces[0]; ok; p, ok = pieces[int64(len(held))] {
			held = append(held, p...)
			if len(p) == 0 {
				break
			}
		}
		res.Size = int64(len(held))
		if !req.More {
			if res.Size != req.Offset+int64(len(req.Data)) {
				res.Error = protocol.Errorf(protocol.CodeFileFailed, "bytes %d to %d have not come", len(held), req.Offset)
				return res
			}
			delete(fs.uploads, key)
			if req.SHA256 != hexSum(held) {
				res.Error = protocol.Errorf(protocol.CodeFileFailed, "sha256 differs")
				return res
			}
			fs.files[req.Path] = held
			res.SHA256 = hexSum(held)
		}
	case protocol.FileOpGet:
		data, ok := fs.files[req.Path]
		if !ok {
			res.Error = protocol.Errorf(protocol.CodeFileNotFound, "%s: no such file", req.Path)
			return res
		}
		end := min(req.Offset+req.Length, int64(len(data)))
		res.Size, res.Offset, res.Data, res.EOF = int64(len(data)), req.Offset, data[req.Offset:end], end == int64(len(data))
		if req.Offset == 0 {
			res.SHA256 = hexSum(data)
			if fs.sumOf != nil {
				res.SHA256 = fs.sumOf(data)
			}
		}
	case protocol.FileOpList:
		for p, data := range fs.files {
			res.Entries = append(res.Entries, protocol.FileEntry{Path: p, Type: protocol.FileTypeFile, Size: int64(len(data))})
		}
	case protocol.FileOpDelete:
		_, res.Deleted = fs.files[req.Path]
		delete(fs.files, req.Path)
	}
	return res
}

func (fs *fileServer) requests() []*protocol.FileRequest {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return append([]*protocol.FileRequest(nil), fs.reqs...)
}

// TestPutFileInPieces: a file larger than a piece goes in pieces of FileChunkBytes with one
// upload id, their offsets, more on all but the last, the declared size on each, and the
// sha256 of the whole file on the last; a small file goes in one request; a file of unknown
// size goes the same way, without a size, and a whole number of pieces sends no empty one.
func TestPutFileInPieces(t *testing.T) {
	_, nc, c := setup(t)
	fs := serveFiles(t, nc)
	conv := c.Conversation("chat-1")
	ctx := context.Background()
	const piece = protocol.FileChunkBytes
	for _, tc := range []struct {
		name   string
		n      int
		size   int64 // -1: unknown
		pieces int
	}{
		{"small", 100, 100, 1},
		{"empty", 0, 0, 1},
		{"empty, size unknown", 0, -1, 1},
		{"pieces", 2*piece + 123, 2*piece + 123, 3},
		{"pieces, size unknown", 2*piece + 123, -1, 3},
		{"two whole pieces, size unknown", 2 * piece, -1, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := randomBytes(tc.n)
			before := len(fs.requests())
			res, err := conv.PutFile(ctx, "dir/f.bin", bytes.NewReader(data), tc.size, &client.FileOptions{Mode: 0o755})
			if err != nil || res.Size != int64(tc.n) || res.SHA256 != hexSum(data) {
				t.Fatalf("PutFile = %+v, %v", res, err)
			}
			reqs := fs.requests()[before:]
			if len(reqs) != tc.pieces {
				t.Fatalf("%d requests, want %d", len(reqs), tc.pieces)
			}
			// The pieces before the last go several at a time, in any order; the last, last.
			slices.SortStableFunc(reqs[:len(reqs)-1], func(a, b *protocol.FileRequest) int { return cmp.Compare(a.Offset, b.Offset) })
			var off int64
			for i, q := range reqs {
				last := i == len(reqs)-1
				wantSize := max(tc.size, 0)
				if q.Offset != off || q.More == last || q.Size != wantSize || q.Mode != "0755" || (q.Upload == "") != (tc.pieces == 1) || q.Upload != reqs[0].Upload || len(q.Data) > piece {
					t.Errorf("piece %d: offset %d more %v size %d mode %q upload %q, %d bytes", i, q.Offset, q.More, q.Size, q.Mode, q.Upload, len(q.Data))
				}
				if (q.SHA256 != "") != last || (last && q.SHA256 != hexSum(data)) {
					t.Errorf("piece %d: sha256 %q, want the whole file's on the last only", i, q.SHA256)
				}
				off += int64(len(q.Data))
			}
			if !bytes.Equal(fs.files["dir/f.bin"], data) {
				t.Errorf("the server holds %d bytes, want the %d sent", len(fs.files["dir/f.bin"]), len(data))
			}
		})
	}
}

// TestPutFileRetriesAPiece: a piece whose answer is lost is sent again, the same, and the
// upload goes on.
func TestPutFileRetriesAPiece(t *testing.T) {
	// Long enough for a piece of 512 KiB to make its way on a loaded machine: the lost answer
	// costs one attempt this long.
	_, nc, c := setup(t, client.WithOverhead(2*time.Second))
	fs := serveFiles(t, nc)
	dropped := false
	fs.drop = func(_ int, q *protocol.FileRequest) bool { // the second piece's first answer
		if q.Offset == protocol.FileChunkBytes && !dropped {
			dropped = true
			return true
		}
		return false
	}
	data := randomBytes(protocol.FileChunkBytes*2 + 1)
	res, err := c.Conversation("chat-1").PutFile(context.Background(), "f.bin", bytes.NewReader(data), int64(len(data)), nil)
	if err != nil || res.Size != int64(len(data)) {
		t.Fatalf("PutFile = %+v, %v", res, err)
	}
	// Every attempt at an offset carries the same piece (a slow machine may retry others too).
	byOffset := map[int64][]*protocol.FileRequest{}
	for _, q := range fs.requests() {
		if sent := byOffset[q.Offset]; len(sent) > 0 && (!bytes.Equal(sent[0].Data, q.Data) || sent[0].Upload != q.Upload || sent[0].More != q.More) {
			t.Errorf("the piece at %d was sent again changed", q.Offset)
		}
		byOffset[q.Offset] = append(byOffset[q.Offset], q)
	}
	if len(byOffset) != 3 || len(byOffset[protocol.FileChunkBytes]) < 2 {
		t.Fatalf("pieces at %d offsets, the second sent %d times; want 3 pieces, the second sent again", len(byOffset), len(byOffset[protocol.FileChunkBytes]))
	}
	if !bytes.Equal(fs.files["f.bin"], data) {
		t.Errorf("the file differs")
	}
}

// TestPutFileSizeMismatch: a reader shorter or longer than the size given is an error, and the
// file never appears (the last piece is not sent).
func TestPutFileSizeMismatch(t *testing.T) {
	_, nc, c := setup(t)
	fs := serveFiles(t, nc)
	conv := c.Conversation("chat-1")
	ctx := context.Background()
	if _, err := conv.PutFile(ctx, "short", strings.NewReader("abc"), 4, nil); err == nil || !strings.Contains(err.Error(), "ended after 3 bytes") {
		t.Errorf("short reader: %v", err)
	}
	if _, err := conv.PutFile(ctx, "long", strings.NewReader("abcde"), 4, nil); err == nil || !strings.Contains(err.Error(), "more than the 4 bytes") {
		t.Errorf("long reader: %v", err)
	}
	if n := len(fs.requests()); n != 0 {
		t.Errorf("%d requests sent", n)
	}
	for _, size := range []int64{-2, protocol.MaxFileBytes + 1} {
		res, err := conv.PutFile(ctx, "f", strings.NewReader(""), size, nil)
		var perr *protocol.Error
		if !errors.As(err, &perr) || res == nil || res.Error != perr {
			t.Errorf("size %d: %+v, %v; want a *protocol.Error with its result", size, res, err)
		}
	}
}

// TestGetFileInPieces: a file larger than a piece comes in pieces, written in order, checked
// against the sha256 of the first answer.
func TestGetFileInPieces(t *testing.T) {
	_, nc, c := setup(t)
	fs := serveFiles(t, nc)
	data := randomBytes(protocol.FileChunkBytes*2 + 7)
	fs.files["big.bin"] = data
	var got bytes.Buffer
	res, err := c.Conversation("chat-1").GetFile(context.Background(), "big.bin", &got)
	if err != nil || !bytes.Equal(got.Bytes(), data) || res.Size != int64(len(data)) || res.SHA256 != hexSum(data) || res.Data != nil {
		t.Fatalf("GetFile = %+v (%d bytes written), %v", res, got.Len(), err)
	}
	// The pieces after the first are asked for at once (pieceWindow): in any order.
	var offsets []int64
	for _, r := range fs.requests() {
		offsets = append(offsets, r.Offset)
	}
	slices.Sort(offsets)
	if !slices.Equal(offsets, []int64{0, protocol.FileChunkBytes, 2 * protocol.FileChunkBytes}) {
		t.Errorf("requests at offsets %v, want 0, 512 KiB, 1 MiB", offsets)
	}
	fs.files["empty"] = nil
	got.Reset()
	if res, err := c.Conversation("chat-1").GetFile(context.Background(), "empty", &got); err != nil || res.Size != 0 || got.Len() != 0 {
		t.Errorf("GetFile of an empty file = %+v, %v", res, err)
	}
}

// TestGetFileChanged: bytes that do not match the first answer's sha256 (the file was
// rewritten between two pieces) are ErrFileChanged.
func TestGetFileChanged(t *testing.T) {
	_, nc, c := setup(t)
	fs := serveFiles(t, nc)
	fs.files["f"] = []byte("new bytes")
	fs.sumOf = func([]byte) string { return hexSum([]byte("old bytes")) }
	_, err := c.Conversation("chat-1").GetFile(context.Background(), "f", io.Discard)
	if !errors.Is(err, client.ErrFileChanged) || !strings.Contains(err.Error(), "get f") {
		t.Errorf("GetFile = %v, want ErrFileChanged", err)
	}
}

// TestFileErrors: the fleet's refusal is a *protocol.Error with its result; a request the
// contract refuses is not sent.
func TestFileErrors(t *testing.T) {
	_, nc, c := setup(t)
	fs := serveFiles(t, nc)
	ctx := context.Background()
	res, err := c.Conversation("chat-1").GetFile(ctx, "missing", io.Discard)
	if !errors.Is(err, &protocol.Error{Code: protocol.CodeFileNotFound}) || res == nil || res.Error == nil {
		t.Errorf("missing file: %+v, %v", res, err)
	}
	before := len(fs.requests())
	for name, call := range map[string]func() (*protocol.FileResult, error){
		"put without a path": func() (*protocol.FileResult, error) {
			return c.Conversation("chat-1").PutFile(ctx, "", strings.NewReader("x"), 1, nil)
		},
		"get without a path":        func() (*protocol.FileResult, error) { return c.Conversation("chat-1").GetFile(ctx, "", io.Discard) },
		"bad conversation":          func() (*protocol.FileResult, error) { return c.Conversation("a.b").ListFiles(ctx, "", false) },
		"delete with NUL":           func() (*protocol.FileResult, error) { return c.Conversation("chat-1").DeleteFile(ctx, "a\x00b", false) },
		"conversation with a blank": func() (*protocol.FileResult, error) { return c.Conversation("a b").DeleteFile(ctx, "x", false) },
	} {
		res, err := call()
		if !errors.Is(err, &protocol.Error{Code: protocol.CodeBadRequest}) || res == nil || res.Error == nil {
			t.Errorf("%s: %+v, %v; want bad_request with its result", name, res, err)
		}
	}
	if n := len(fs.requests()) - before; n != 0 {
		t.Errorf("%d refused requests were sent", n)
	}
	if res, err := c.Conversation("chat-1").DeleteFile(ctx, "missing", false); err != nil || res.Deleted {
		t.Errorf("delete of nothing: %+v, %v", res, err)
	}
}

// TestFilesFleet moves files through a real fleet: a file of several pieces goes in with its
// mode, a snippet sees it whole, it comes back byte for byte; lists and deletes work; paths
// outside the workspace are refused.
func TestFilesFleet(t *testing.T) {
	c := fakeFleet(t, "files", fake.New())
	conv := c.Conversation("chat-files")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	data := randomBytes(protocol.FileChunkBytes*2 + 1234)
	res, err := conv.PutFile(ctx, "in/data.bin", bytes.NewReader(data), int64(len(data)), &client.FileOptions{Mode: 0o600})
	if err != nil || res.Size != int64(len(data)) || res.SHA256 != hexSum(data) {
		t.Fatalf("PutFile = %+v, %v", res, err)
	}
	run, err := conv.Run(ctx, "sha256sum < in/data.bin | cut -d' ' -f1; stat -c %a in/data.bin; cp in/data.bin out.bin", protocol.LangBash, nil)
	if err != nil || run.Output != hexSum(data)+"\n600\n" {
		t.Fatalf("the snippet saw %+v, %v; want the file's sha256 and mode 600", run, err)
	}
	var got bytes.Buffer
	if _, err := conv.GetFile(ctx, "in/data.bin", &got); err != nil || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("GetFile: %d bytes, %v; want the %d put", got.Len(), err, len(data))
	}
	// Unknown size, from a reader that is not a file.
	if res, err := conv.PutFile(ctx, "in/piped.txt", io.MultiReader(strings.NewReader("piped "), strings.NewReader("in")), -1, nil); err != nil || res.Size != 8 {
		t.Fatalf("PutFile of unknown size = %+v, %v", res, err)
	}
	list, err := conv.ListFiles(ctx, "", true)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range list.Entries {
		paths = append(paths, e.Path+":"+e.Type)
	}
	if strings.Join(paths, " ") != "in:dir in/data.bin:file in/piped.txt:file out.bin:file" {
		t.Errorf("ListFiles = %v", paths)
	}
	if res, err := conv.DeleteFile(ctx, "in", true); err != nil || !res.Deleted {
		t.Errorf("DeleteFile in = %+v, %v", res, err)
	}
	if _, err := conv.GetFile(ctx, "in/data.bin", io.Discard); !errors.Is(err, &protocol.Error{Code: protocol.CodeFileNotFound}) {
		t.Errorf("GetFile of a deleted file: %v, want file_not_found", err)
	}
	for _, p := range []string{"../escape", "/etc/passwd"} {
		if _, err := conv.GetFile(ctx, p, io.Discard); !errors.Is(err, &protocol.Error{Code: protocol.CodePathRefused}) {
			t.Errorf("GetFile %s: %v, want path_refused", p, err)
		}
		if _, err := conv.PutFile(ctx, p, strings.NewReader("x"), 1, nil); !errors.Is(err, &protocol.Error{Code: protocol.CodePathRefused}) {
			t.Errorf("PutFile %s: %v, want path_refused", p, err)
		}
	}
}
