package agent

import (
	"strings"

	"github.com/codefleet/codefleet/pkg/envs"
)

// capBuffer keeps the first and the last bytes written to it, up to max in all, and counts what
// it dropped between them. It is not safe for concurrent use.
type capBuffer struct {
	max     int
	head    []byte
	tail    []byte // ring buffer of the last len(tail) bytes, once full
	tailPos int    // next write position in tail when full
	tailCap int
	full    bool
	total   int64
}

func newCapBuffer(max int) *capBuffer {
	if max <= 0 {
		max = DefaultMaxOutput
	}
	headCap := max / 2
	return &capBuffer{max: max, head: make([]byte, 0, min(headCap, 64<<10)), tailCap: max - headCap}
}

func (b *capBuffer) Write(p []byte) (int, error) {
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
func (b *capBuffer) Truncated() bool { return b.total > int64(len(b.head)+len(b.tail)) }

// String returns head + marker + tail; the marker appears only when bytes were dropped.
func (b *capBuffer) String() string {
	var s strings.Builder
	s.Grow(len(b.head) + len(b.tail) + 64)
	s.Write(b.head)
	if b.Truncated() {
		s.WriteString(envs.TruncationMarker(b.total - int64(len(b.head)+len(b.tail))))
	}
	if b.full {
		s.Write(b.tail[b.tailPos:])
		s.Write(b.tail[:b.tailPos])
	} else {
		s.Write(b.tail)
	}
	return s.String()
}
