package protocol_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/codefleet/codefleet/pkg/protocol"
)

func TestErrorIs(t *testing.T) {
	busy := protocol.Errorf(protocol.CodeBusy, "queue of %d is full", 8)
	if got, want := busy.Error(), "busy: queue of 8 is full"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	wrapped := fmt.Errorf("dispatch: %w", busy)
	tests := []struct {
		name   string
		err    error
		target error
		want   bool
	}{
		{"same code", busy, &protocol.Error{Code: protocol.CodeBusy}, true},
		{"wrapped", wrapped, &protocol.Error{Code: protocol.CodeBusy}, true},
		{"same code and message", busy, &protocol.Error{Code: protocol.CodeBusy, Message: "queue of 8 is full"}, true},
		{"other message", busy, &protocol.Error{Code: protocol.CodeBusy, Message: "other"}, false},
		{"other code", busy, &protocol.Error{Code: protocol.CodeCapacity}, false},
		{"wrapped other code", wrapped, &protocol.Error{Code: protocol.CodeInternal}, false},
		{"not an Error", busy, errors.New("busy: queue of 8 is full"), false},
	}
	for _, tt := range tests {
		if got := errors.Is(tt.err, tt.target); got != tt.want {
			t.Errorf("%s: got errors.Is = %v, want %v", tt.name, got, tt.want)
		}
	}
	var perr *protocol.Error
	if !errors.As(wrapped, &perr) || perr != busy {
		t.Errorf("errors.As: got %v, want %v", perr, busy)
	}
}

func TestCodesDistinct(t *testing.T) {
	seen := map[protocol.Code]bool{}
	for _, c := range protocol.Codes {
		if seen[c] {
			t.Errorf("code %s listed twice", c)
		}
		seen[c] = true
	}
	if got, want := len(seen), 15; got != want {
		t.Errorf("got %d codes, want %d", got, want)
	}
}
