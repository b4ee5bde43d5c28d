package agent

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/codefleet/codefleet/internal/agent/wire"
)

// TestDataLines: a file's bytes travel on the line after their frame, both ways; a data line cut
// short (a worker that died mid-write, then the next attachment's newline) fails its own frame
// only, and the frames after it are served.
func TestDataLines(t *testing.T) {
	s := startAgent(t)
	data := bytes.Repeat([]byte("0123456789\n"), 50000)
	put := &wire.Request{Op: wire.OpFile, ID: "p", DataLen: len(data), File: &wire.FileRequest{Op: wire.FilePut, Path: "d/f.txt"}}
	b, err := wire.AppendFrame(nil, put, data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.in.Write(b); err != nil {
		t.Fatal(err)
	}
	if r := s.wait("p"); r.Op != wire.OpFile || r.File == nil || r.File.Size != int64(len(data)) {
		t.Fatalf("put: %+v", r)
	}
	get, _ := json.Marshal(&wire.Request{Op: wire.OpFile, ID: "g", File: &wire.FileRequest{Op: wire.FileGet, Path: "d/f.txt"}})
	s.send(string(get))
	line, err := s.out.ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var r wire.Response
	if err := json.Unmarshal(line, &r); err != nil || r.ID != "g" || r.DataLen != len(data) || r.File == nil || len(r.File.Data) != 0 {
		t.Fatalf("get's frame %q: %+v %v; want the data on the next line", line, r, err)
	}
	dline, err := s.out.ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	if got, err := wire.DecodeData(dline, r.DataLen); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("get's data line: %d bytes, %v", len(got), err)
	}

	// Cut: the frame says 100 bytes, its line holds 3, the next attachment's newline ends it.
	s.send(`{"op":"file","id":"cut","data_len":100,"file":{"op":"put","path":"cut.txt"}}`)
	s.send("QUJD")
	if r := s.wait("cut"); r.Op != wire.OpError || r.Code != wire.ErrCodeBadFrame {
		t.Fatalf("a cut data line: %+v, want a bad frame", r)
	}
	if r := s.call(wire.Request{Op: wire.OpHello, ID: "h"}); r.Op != wire.OpHello {
		t.Fatalf("hello after a cut data line: %+v", r)
	}
}
