// Package output caps a run's output the way every codefleet backend does: when it is longer
// than the cap, its head and its tail are kept around a marker line saying how many bytes were
// cut. Cap does it to a whole string (Daytona, the worker fitting a reply into a NATS message);
// Buffer does it while the output is written (the sandbox agent). It imports nothing of
// codefleet, so the agent inside the sandbox and the worker side share it.
package output

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// DefaultMax is the output cap when none is set: 256 KiB.
const DefaultMax = 256 << 10

// Marker is the line put where n bytes of output were cut.
func Marker(n int64) string {
	return fmt.Sprintf("\n[... %d bytes truncated ...]\n", n)
}

// Cap caps s at max bytes: when it is longer, its first max/2 bytes and its last max-max/2 bytes
// are kept around Marker; no UTF-8 character is split. It reports whether bytes were cut. max
// <= 0 means no cap.
func Cap(s string, max int) (string, bool) {
	if max <= 0 || len(s) <= max {
		return s, false
	}
	head, tail := max/2, len(s)-(max-max/2)
	for head > 0 && !utf8.RuneStart(s[head]) {
		head--
	}
	for tail < len(s) && !utf8.RuneStart(s[tail]) {
		tail++
	}
	return s[:head] + Marker(int64(tail-head)) + s[tail:], true
}

// Buffer keeps the first and the last bytes written to it, up to max in all, and counts what
// it dropped between them. It is not safe for concurrent use.
type Buffer struct {
	max     int
	head    []byte
	tail    []byte // ring buffer of the last len(tail) bytes, once full
	tailPos int    // next write position in tail when full
	tailCap int
	full    bool
	total   int64
}

// NewBuffer returns a Buffer that keeps max bytes (DefaultMax when max <= 0).
func NewBuffer(max int) *Buffer {
	if max <= 0 {
		max = DefaultMax
	}
	headCap := max / 2
	return &Buffer{max: max, head: make([]byte, 0, min(headCap, 64<<10)), tailCap: max - headCap}
}

// Write implements io.Writer; it never fails.
func (b *Buffer) Write(p []byte) (int, error) {
	n := len(p)
	b.total += int64(n)
	if room := b.max/2 - len(b.head); room > 0 {
		k := min(room, len(p))
		b.head = append(b.head, p[:k]...)
		p = p[k:]
	}
	if len(p) == 0 {
		return n, nil
	}
	if !b.full {
		room := b.tailCap - len(b.tail)
		if len(p) <= room {
			b.tail = append(b.tail, p...)
			return n, nil
		}
		b.tail = append(b.tail, p[:room]...)
		p = p[room:]
		b.full = true
		b.tailPos = 0
	}
	if len(p) >= b.tailCap {
		copy(b.tail, p[len(p)-b.tailCap:])
		b.tailPos = 0
		return n, nil
	}
	k := copy(b.tail[b.tailPos:], p)
	if k < len(p) {
		copy(b.tail, p[k:])
	}
	b.tailPos = (b.tailPos + len(p)) % b.tailCap
	return n, nil
}

// Truncated reports whether bytes were dropped.
func (b *Buffer) Truncated() bool { return b.total > int64(len(b.head)+len(b.tail)) }

// String returns head + Marker + tail; the marker appears only when bytes were dropped.
func (b *Buffer) String() string {
	var s strings.Builder
	s.Grow(len(b.head) + len(b.tail) + 64)
	s.Write(b.head)
	if b.Truncated() {
		s.WriteString(Marker(b.total - int64(len(b.head)+len(b.tail))))
	}
	if b.full {
		s.Write(b.tail[b.tailPos:])
		s.Write(b.tail[:b.tailPos])
	} else {
		s.Write(b.tail)
	}
	return s.String()
}
