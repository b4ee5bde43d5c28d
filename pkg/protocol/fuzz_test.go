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
	fuzzDecoder(f, requestCorpus(), protocol.DecodeRunRequest, (*protocol.RunRequest).Validate, checkSchemaAgreement)
}

// FuzzDecodeFileRequest is FuzzDecodeRunRequest for file requests (data back in base64).
func FuzzDecodeFileRequest(f *testing.F) {
	fuzzDecoder(f, fileRequestCorpus(), protocol.DecodeFileRequest, (*protocol.FileRequest).Validate, checkFileSchemaAgreement)
}

// fuzzDecoder fuzzes a request decoder from a corpus: it never panics, a rejection is an Error
// of the contract's codes with a message, an accepted request validates and decodes again equal
// from its encoding, and the schema agrees with the decoder.
func fuzzDecoder[T any](f *testing.F, corpus []string, decode func([]byte) (*T, *protocol.Error), validate func(*T) *protocol.Error, agree func(testing.TB, []byte)) {
	for _, body := range corpus {
		if len(body) < 4096 {
			f.Add([]byte(body))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, perr := decode(data)
		switch {
		case perr != nil && r != nil:
			t.Fatalf("got request %+v and error %v, want only the error", r, perr)
		case perr != nil && !slices.Contains(protocol.Codes, perr.Code):
			t.Fatalf("got code %q, want one of %v", perr.Code, protocol.Codes)
		case perr != nil && perr.Message == "":
			t.Fatalf("got an empty message for code %s", perr.Code)
		case perr == nil && r == nil:
			t.Fatal("got nil request and nil error")
		case perr == nil:
			if err := validate(r); err != nil {
				t.Fatalf("decoded request does not validate: %v", err)
			}
			enc := protocol.Encode(r)
			r2, perr := decode(enc)
			if perr != nil {
				t.Fatalf("re-decoding %s: got %v, want success", enc, perr)
			}
			if !reflect.DeepEqual(r, r2) {
				t.Fatalf("round trip: got %+v, want %+v", r2, r)
			}
		}
		agree(t, data)
	})
}
