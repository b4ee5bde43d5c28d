package protocol_test

import (
	"fmt"

	"github.com/codefleet/codefleet/pkg/protocol"
)

// A client builds a request, encodes it and publishes it on the conversation's run subject.
func ExampleRunRequest() {
	req := protocol.RunRequest{
		ID:        "req-1",
		Code:      "print(6 * 7)",
		Language:  protocol.LangPython,
		TimeoutMS: 10000,
		Env:       map[string]string{"GREETING": "hi"},
	}
	if perr := req.Validate(); perr != nil {
		fmt.Println(perr)
		return
	}
	var subjects protocol.Subjects // zero value: prefix "codefleet"
	fmt.Println(subjects.Run(protocol.DefaultTenant, "conv-42"))
	fmt.Println(string(protocol.Encode(req)))
	// Output:
	// codefleet.run.default.conv-42
	// {"id":"req-1","code":"print(6 * 7)","language":"python","timeout_ms":10000,"env":{"GREETING":"hi"}}
}

// A dispatcher parses the subject a request arrived on.
func ExampleSubjects_ParseConversation() {
	s := protocol.Subjects{Prefix: "codefleet"}
	verb, tenant, conv, err := s.ParseConversation("codefleet.close.acme.conv-42")
	fmt.Println(verb, tenant, conv, err)
	_, _, _, err = s.ParseConversation("codefleet.run.acme.conv/42")
	fmt.Println(err)
	// Output:
	// close acme conv-42 <nil>
	// bad_request: conversation "conv/42" must match [A-Za-z0-9_-]{1,128}
}

// A service decodes and validates a request body in one step.
func ExampleDecodeRunRequest() {
	req, perr := protocol.DecodeRunRequest([]byte(`{"code":"echo hi","language":"bash","timeout_ms":6e4}`))
	fmt.Println(req.Language, req.Timeout(), perr == nil)

	_, perr = protocol.DecodeRunRequest([]byte(`{"code":"x","language":"python","timeout_ms":"60"}`))
	fmt.Println(perr)

	_, perr = protocol.DecodeRunRequest([]byte(`{"code":"x","language":"cobol"}`))
	fmt.Println(perr.Code)
	// Output:
	// bash 1m0s true
	// bad_request: field timeout_ms: must be an integer, got string
	// unsupported_language
}

// Schema returns the embedded JSON Schemas, for clients in other languages or for tests.
func ExampleSchema() {
	for _, name := range protocol.SchemaNames {
		b, err := protocol.Schema(name)
		fmt.Println(name, len(b) > 0, err)
	}
	// Output:
	// run_request true <nil>
	// run_result true <nil>
	// close_result true <nil>
	// output_chunk true <nil>
	// file_request true <nil>
	// file_result true <nil>
	// worker_info true <nil>
}
