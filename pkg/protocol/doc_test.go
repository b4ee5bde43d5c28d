package protocol_test

import (
	"os"
	"regexp"
	"testing"
)

// TestProtocolDocExamples checks every JSON example of docs/protocol.md against the schema its
// marker names, so the page cannot drift from the contract.
func TestProtocolDocExamples(t *testing.T) {
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	examples := regexp.MustCompile("(?s)<!-- schema: ([a-z_]+) -->\n```json\n(.*?)\n```").FindAllSubmatch(doc, -1)
	if len(examples) < 10 {
		t.Fatalf("found %d schema-marked examples in docs/protocol.md, expected at least 10", len(examples))
	}
	for i, ex := range examples {
		if err := validateJSON(t, string(ex[1]), ex[2]); err != nil {
			t.Errorf("example %d (%s) does not match its schema: %v\n%s", i+1, ex[1], err, ex[2])
		}
	}
}
