package protocol_test

import (
	"reflect"
	"slices"
	"testing"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// FuzzDecodeRunRequest checks that DecodeRunRequest never panics, that every rejection is a
// well-formed Error, that every accepted request validates and survives an encode/decode round
// trip, and that the JSON Schema agrees.
func FuzzDecodeRunRequest(f *testing.F) {
	for _, body := range requestCorpus() {
		if len(body) < 4096 {
			f.Add([]byte(body))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, perr := protocol.DecodeRunRequest(data)
		if perr != nil {
			if r != nil {
				t.Fatalf("got request %+v and error %v, want only the error", r, perr)
			}
			if !slices.Contains(protocol.Codes, perr.Code) {
				t.Fatalf("got code %q, want one of %v", perr.Code, protocol.Codes)
			}
			if perr.Message == "" {
				t.Fatalf("got an empty message for code %s", perr.Code)
			}
		} else {
			if r == nil {
				t.Fatal("got nil request and nil error")
			}
			if err := r.Validate(); err != nil {
				t.Fatalf("decoded request does not validate: %v", err)
			}
			enc := protocol.Encode(r)
			r2, perr := protocol.DecodeRunRequest(enc)
			if perr != nil {
				t.Fatalf("re-decoding %s: got %v, want success", enc, perr)
			}
			if !reflect.DeepEqual(r, r2) {
				t.Fatalf("round trip: got %+v, want %+v", r2, r)
			}
		}
		checkSchemaAgreement(t, data)
	})
}

// FuzzDecodeFileRequest checks that DecodeFileRequest never panics, that every rejection is a
// well-formed Error of the contract, that every accepted request validates and survives an
// encode/decode round trip (data back in base64), and that the JSON Schema agrees.
func FuzzDecodeFileRequest(f *testing.F) {
	for _, body := range fileRequestCorpus() {
		if len(body) < 4096 {
			f.Add([]byte(body))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, perr := protocol.DecodeFileRequest(data)
		if perr != nil {
			if r != nil {
				t.Fatalf("got request %+v and error %v, want only the error", r, perr)
			}
			if !slices.Contains(protocol.Codes, perr.Code) {
				t.Fatalf("got code %q, want one of %v", perr.Code, protocol.Codes)
			}
			if perr.Message == "" {
				t.Fatalf("got an empty message for code %s", perr.Code)
			}
		} else {
			if r == nil {
				t.Fatal("got nil request and nil error")
			}
			if err := r.Validate(); err != nil {
				t.Fatalf("decoded request does not validate: %v", err)
			}
			enc := protocol.Encode(r)
			r2, perr := protocol.DecodeFileRequest(enc)
			if perr != nil {
				t.Fatalf("re-decoding %s: got %v, want success", enc, perr)
			}
			if len(r.Data) == 0 {
				r.Data = nil // "data":"" decodes to an empty slice, which encodes as no data
			}
			if !reflect.DeepEqual(r, r2) {
				t.Fatalf("round trip: got %+v, want %+v", r2, r)
			}
		}
		checkFileSchemaAgreement(t, data)
	})
}
