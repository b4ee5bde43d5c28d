package output

import (
	"sync"
	"time"
	"unicode/utf8"
)

// Chunk is one piece of a streamed run's output.
type Chunk struct {
	// Seq numbers a run's chunks from 1.
	Seq int64
	// Data never splits a UTF-8 character (but where the output itself is not UTF-8).
	Data string
	// Dropped counts the bytes left out of the stream just before this chunk.
	Dropped int64
}

// Stream bounds, published in the contract as protocol.StreamChunkBytes, StreamInterval and
// StreamBufferBytes (defined here: the agent links this package, not the protocol).
const (
	StreamChunkBytes  = 16 << 10
	StreamInterval    = 20 * time.Millisecond
	StreamBufferBytes = 64 << 10
)

// Streamer turns a run's output into numbered chunks as it is written, bounded in rate and
// memory: a chunk holds at most StreamChunkBytes, chunks are emitted at most every
// StreamInterval (the first as soon as there is output), and at most StreamBufferBytes wait to
// be emitted; what is written past that is dropped and counted (the next chunk's Dropped).
// Write never waits for emit, so a slow consumer never slows the snippet down.
//
// emit is called from the Streamer's own goroutine, one chunk at a time, in order; Close
// emits what is left and returns once the last emit has returned.
type Streamer struct {
	emit func(Chunk)

	mu      sync.Mutex
	pending []byte
	// gaps are where bytes were dropped, by their position in pending (ascending): a chunk
	// ends at a gap, and the next one carries its count.
	gaps   []gap
	total  int64 // bytes dropped in all
	closed bool

	wake chan struct{}
	done chan struct{}
	seq  int64 // the goroutine's, read after done
}

type gap struct {
	at int   // position in pending
	n  int64 // bytes dropped there
}

// NewStreamer starts a Streamer that hands its chunks to emit.
func NewStreamer(emit func(Chunk)) *Streamer {
	s := &Streamer{emit: emit, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go s.loop()
	return s
}

// Write implements io.Writer; it never fails and never blocks on the consumer.
func (s *Streamer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return len(p), nil
	}
	k := min(max(StreamBufferBytes-len(s.pending), 0), len(p))
	s.pending = append(s.pending, p[:k]...)
	if lost := int64(len(p) - k); lost > 0 {
		s.drop(lost)
	}
	select { // under mu: Close closes wake under it too
	case s.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

// Skip records that n bytes of output were passed over where they came, after what was written
// so far, by a reader that could not take them (Daytona's reads of a live file): the chunk after
// them says so in its Dropped, as for bytes Write dropped.
func (s *Streamer) Skip(n int64) {
	if n <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.drop(n)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// drop records n bytes dropped at the end of pending. s.mu is held.
func (s *Streamer) drop(n int64) {
	if last := len(s.gaps) - 1; last >= 0 && s.gaps[last].at == len(s.pending) {
		s.gaps[last].n += n
	} else {
		s.gaps = append(s.gaps, gap{at: len(s.pending), n: n})
	}
	s.total += n
}

// Close emits what waits and stops. It returns the number of chunks emitted and the bytes
// dropped from the stream in all.
func (s *Streamer) Close() (chunks, dropped int64) {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.wake)
	}
	s.mu.Unlock()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq, s.total
}

func (s *Streamer) loop() {
	defer close(s.done)
	var last time.Time
	for {
		_, open := <-s.wake
		for {
			if wait := StreamInterval - time.Since(last); open && wait > 0 && !last.IsZero() {
				time.Sleep(wait) // the rate bound: output keeps piling up (bounded) meanwhile
			}
			c, ok := s.next(!open)
			if !ok {
				break
			}
			s.emit(c)
			last = time.Now()
			s.mu.Lock()
			more := len(s.pending) > 0 || s.closed
			s.mu.Unlock()
			if !more {
				break
			}
		}
		if !open {
			return
		}
	}
}

// next takes the next chunk off pending: at most StreamChunkBytes, up to the next gap, ending on
// a whole UTF-8 character unless final or at a gap (or unless no character starts in the last 4
// bytes: not UTF-8). A gap at its start is its Dropped.
func (s *Streamer) next(final bool) (Chunk, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if final {
		final = s.closed // Close was called: everything goes
	}
	var dropped int64
	if len(s.gaps) > 0 && s.gaps[0].at == 0 {
		dropped = s.gaps[0].n
		s.gaps = s.gaps[1:]
	}
	n := min(len(s.pending), StreamChunkBytes)
	atGap := len(s.gaps) > 0 && s.gaps[0].at <= n
	if atGap {
		n = s.gaps[0].at // what follows was cut off by the drop: a character may end here
	} else if !final || n < len(s.pending) {
		n = wholeRunes(s.pending[:n])
	}
	if n == 0 && dropped == 0 {
		return Chunk{}, false
	}
	s.seq++
	c := Chunk{Seq: s.seq, Data: string(s.pending[:n]), Dropped: dropped}
	s.pending = append(s.pending[:0], s.pending[n:]...)
	for i := range s.gaps {
		s.gaps[i].at -= n
	}
	return c, true
}

// wholeRunes returns the length of the longest prefix of b that does not end inside a UTF-8
// character.
func wholeRunes(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if utf8.FullRune(b[i:]) {
				return len(b)
			}
			return i
		}
	}
	return len(b)
}
