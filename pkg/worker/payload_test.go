package worker

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// TestFitPayload: a result whose JSON would not fit the connection's max payload (output of
// control characters grows six-fold when escaped) is cut in the middle until it fits, keeps its
// head and tail, and says truncated; one that fits is sent as it is.
func TestFitPayload(t *testing.T) {
	const limit = 64 << 10
	small := &protocol.RunResult{ID: "r", Output: "fine\n"}
	if b := fitPayload(small, limit); !strings.Contains(string(b), `"output":"fine\n"`) || strings.Contains(string(b), `"truncated":true`) {
		t.Fatalf("small result changed: %s", b)
	}
	big := &protocol.RunResult{ID: "r", Output: "HEAD" + strings.Repeat("\x01", 60<<10) + "TAIL"}
	b := fitPayload(big, limit)
	if len(b) > limit {
		t.Fatalf("payload of %d bytes, limit %d", len(b), limit)
	}
	var res protocol.RunResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if !res.Truncated || !strings.HasPrefix(res.Output, "HEAD") || !strings.HasSuffix(res.Output, "TAIL") || !strings.Contains(res.Output, "bytes truncated") {
		t.Fatalf("trimmed result: truncated %v, output %.40q...", res.Truncated, res.Output)
	}
}
