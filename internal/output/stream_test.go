package output

import (
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

// A writer faster than the stream's bound loses bytes from the stream, counted, and the
// Streamer never holds more than its buffer.
func TestStreamerDropsPastTheBound(t *testing.T) {
	var c collector
	block := make(chan struct{})
	s := NewStreamer(func(ch Chunk) {
		<-block // a consumer that does not keep up
		c.emit(ch)
	})
	total := 0
	for range 64 {
		p := []byte(strings.Repeat("x", 8<<10))
		s.Write(p)
		total += len(p)
	}
	s.mu.Lock()
	held := len(s.pending)
	s.mu.Unlock()
	if held > StreamBufferBytes {
		t.Fatalf("streamer holds %d bytes, bound %d", held, StreamBufferBytes)
	}
	close(block)
	_, dropped := s.Close()
	got := int64(0)
	var counted int64
	for _, ch := range c.chunks {
		got += int64(len(ch.Data))
		counted += ch.Dropped
	}
	if dropped == 0 || counted != dropped || got+dropped != int64(total) {
		t.Fatalf("streamed %d + dropped %d (chunks say %d) of %d", got, dropped, counted, total)
	}
}
