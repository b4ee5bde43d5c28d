package protocol

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseJSONInt(t *testing.T) {
	tests := []struct {
		lit         string
		n           int64
		ok, inRange bool
	}{
		{"0", 0, true, true},
		{"-0", 0, true, true},
		{"0.000", 0, true, true},
		{"0e999999999999999999999", 0, true, true},
		{"60000", 60000, true, true},
		{"-5", -5, true, true},
		{"6e4", 60000, true, true},
		{"6E+4", 60000, true, true},
		{"60000.0", 60000, true, true},
		{"600000e-1", 60000, true, true},
		{"1.25e2", 125, true, true},
		{"1.5", 0, false, false},
		{"1e-1", 0, false, false},
		{"10e-2", 0, false, false},
		{"999999999999999999", 999999999999999999, true, true},
		{"1000000000000000000", 0, true, false},
		{"1e30", 0, true, false},
		{"1e9999999999999999999", 0, true, false},
		{"1e-9999999999999999999", 0, false, false},
		{"-1e30", 0, true, false},
	}
	for _, tt := range tests {
		n, ok, inRange := parseJSONInt(tt.lit)
		if n != tt.n || ok != tt.ok || inRange != tt.inRange {
			t.Errorf("parseJSONInt(%q): got %d, %v, %v, want %d, %v, %v", tt.lit, n, ok, inRange, tt.n, tt.ok, tt.inRange)
		}
	}
}

func TestTrimForMessage(t *testing.T) {
	got := trimForMessage(strings.Repeat("é", 100)) // cut inside a rune
	if len(got) > 70 {
		t.Errorf("got %d bytes, want at most 70", len(got))
	}
	if !utf8.ValidString(got) {
		t.Errorf("got invalid UTF-8 %q, want valid", got)
	}
	if got := trimForMessage("short"); got != "short" {
		t.Errorf("got %q, want %q", got, "short")
	}
}
