package output

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

type collector struct {
	mu     sync.Mutex
	chunks []Chunk
	at     []time.Time
}

func (c *collector) emit(ch Chunk) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.chunks = append(c.chunks, ch)
	c.at = append(c.at, time.Now())
}

func TestStreamerInOrderWithoutLoss(t *testing.T) {
	var c collector
	s := NewStreamer(c.emit)
	var want strings.Builder
	for i := range 200 {
		line := strings.Repeat("é", i%7) + "line\n"
		want.WriteString(line)
		s.Write([]byte(line))
		if i%50 == 0 {
			time.Sleep(StreamInterval) // let chunks go out between writes
		}
	}
	n, dropped := s.Close()
	var got strings.Builder
	for i, ch := range c.chunks {
		if ch.Seq != int64(i+1) {
			t.Fatalf("chunk %d has seq %d", i, ch.Seq)
		}
		if !utf8.ValidString(ch.Data) {
			t.Fatalf("chunk %d splits a character: %q", ch.Seq, ch.Data)
		}
		if len(ch.Data) > StreamChunkBytes {
			t.Fatalf("chunk %d has %d bytes", ch.Seq, len(ch.Data))
		}
		got.WriteString(ch.Data)
	}
	if got.String() != want.String() || dropped != 0 || n != int64(len(c.chunks)) {
		t.Fatalf("streamed %d bytes in %d chunks (Close says %d, dropped %d), want %d bytes", got.Len(), len(c.chunks), n, dropped, want.Len())
	}
}

func TestStreamerFirstChunkAtOnce(t *testing.T) {
	var c collector
	s := NewStreamer(c.emit)
	defer s.Close()
	start := time.Now()
	s.Write([]byte("hello\n"))
	for i := 0; ; i++ {
		c.mu.Lock()
		n := len(c.chunks)
		c.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("no chunk within 5s of the first write")
		}
		time.Sleep(time.Millisecond)
	}
	if c.chunks[0].Data != "hello\n" {
		t.Fatalf("first chunk %q", c.chunks[0].Data)
	}
}

// A writer faster than the stream's bound loses bytes from the stream, counted where they were
// lost: each chunk's data is the output that follows the previous chunk's and the bytes its
// Dropped says were skipped. The Streamer never holds more than its buffer.
func TestStreamerDropsPastTheBound(t *testing.T) {
	var c collector
	block := make(chan struct{})
	s := NewStreamer(func(ch Chunk) {
		<-block // a consumer that does not keep up
		c.emit(ch)
	})
	var out []byte
	for i := range 64 {
		p := make([]byte, 8<<10)
		for j := range p {
			p[j] = byte('a' + (i*len(p)+j)%26)
		}
		s.Write(p)
		out = append(out, p...)
		if i == 40 {
			close(block) // the consumer catches up, then the writer overruns it again
		}
	}
	s.mu.Lock()
	held := len(s.pending)
	s.mu.Unlock()
	if held > StreamBufferBytes {
		t.Fatalf("streamer holds %d bytes, bound %d", held, StreamBufferBytes)
	}
	_, dropped := s.Close()
	pos, counted := int64(0), int64(0)
	for _, ch := range c.chunks {
		pos += ch.Dropped
		counted += ch.Dropped
		if end := pos + int64(len(ch.Data)); end > int64(len(out)) || string(out[pos:end]) != ch.Data {
			t.Fatalf("chunk %d (dropped %d) is not the output at %d", ch.Seq, ch.Dropped, pos)
		}
		pos += int64(len(ch.Data))
	}
	if dropped == 0 || counted != dropped || pos != int64(len(out)) {
		t.Fatalf("streamed and dropped %d of %d bytes; dropped %d, chunks say %d", pos, len(out), dropped, counted)
	}
}

// Bytes a reader passed over (Skip) are counted where they were, as dropped ones are.
func TestStreamerSkip(t *testing.T) {
	var c collector
	s := NewStreamer(c.emit)
	s.Write([]byte("abc"))
	s.Skip(5)
	s.Write([]byte("def"))
	n, dropped := s.Close()
	var got []string
	for _, ch := range c.chunks {
		got = append(got, fmt.Sprintf("%d:%s", ch.Dropped, ch.Data))
	}
	if strings.Join(got, " ") != "0:abc 5:def" || dropped != 5 || n != 2 {
		t.Fatalf("chunks %v (%d), dropped %d; want 0:abc 5:def, 5 dropped", got, n, dropped)
	}
}
