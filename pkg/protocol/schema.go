package protocol

import (
	"embed"
	"fmt"
	"io/fs"
	"strings"
)

//go:embed schema/*.json
var schemaFS embed.FS

// SchemaBaseURL is the base of the $id of every schema of this version of the contract; a
// schema's $id is SchemaBaseURL + name + ".json".
const SchemaBaseURL = "https://codefleet.dev/schema/" + Version + "/"

// SchemaNames lists the JSON Schemas (draft 2020-12) of the contract's messages, by the names
// Schema accepts: those a client sends or receives (runs, their streamed output, closes,
// files), and the workers' registration (internal to the fleet).
var SchemaNames = []string{"run_request", "run_result", "close_result", "output_chunk", "file_request", "file_result", "worker_info"}

// Schema returns the JSON Schema of a message by name ("run_request" or "run_request.json";
// see SchemaNames). The error wraps fs.ErrNotExist for an unknown name.
func Schema(name string) ([]byte, error) {
	base := strings.TrimSuffix(name, ".json")
	known := false
	for _, n := range SchemaNames {
		if n == base {
			known = true
			break
		}
	}
	if !known {
		return nil, fmt.Errorf("protocol: schema %q (known: %s): %w", name, strings.Join(SchemaNames, ", "), fs.ErrNotExist)
	}
	b, err := schemaFS.ReadFile("schema/" + base + ".json")
	if err != nil {
		return nil, fmt.Errorf("protocol: schema %q: %w", name, err)
	}
	return b, nil
}
