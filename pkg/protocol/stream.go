package protocol

import (
	"encoding/json"
	"fmt"

	"github.com/codefleet/codefleet/internal/output"
)

// Streaming. A RunRequest with "stream": true has its output published, as it is produced, in
// OutputChunks on Subjects.Stream(tenant, conversation, id), a subject the client subscribes to
// before it sends the request (the id names it, so a streamed run needs one). The RunResult is
// the reply as for any run, with the whole output capped as usual, and says in Stream how many
// chunks were published: a client that has fewer waits a moment for the rest (the chunks and
// the reply travel different routes through NATS), and counts the missing ones as lost.
//
// The stream is bounded where the output is read (the sandbox agent, or the Daytona backend),
// never by a queue that grows: chunks of at most StreamChunkBytes, at most one every
// StreamInterval (the first at once), from a buffer of StreamBufferBytes. Output produced
// faster than that is left out of the stream (never out of the RunResult's head and tail): the
// next chunk's Dropped says how many bytes were skipped before it, and StreamInfo.DroppedBytes
// the total. A client that reads its subscription too slowly is NATS's slow consumer: its
// server or its library drops messages, which the client sees as gaps in Seq.
const (
	// StreamChunkBytes bounds the data of one chunk.
	StreamChunkBytes = output.StreamChunkBytes
	// StreamInterval is the least time between two chunks of one run: at most 50 chunks, 800
	// KiB, a second.
	StreamInterval = output.StreamInterval
	// StreamBufferBytes bounds the output waiting to be streamed; past it, output is dropped
	// from the stream and counted.
	StreamBufferBytes = output.StreamBufferBytes
)

// OutputChunk is one piece of a streamed run's output, published on the stream subject.
type OutputChunk struct {
	// ID is the run's request id.
	ID string `json:"id"`
	// Seq numbers the run's chunks from 1, with no gap as published.
	Seq int64 `json:"seq"`
	// Data is the output, stdout and stderr interleaved as produced. A chunk never splits a
	// UTF-8 character.
	Data string `json:"data"`
	// Dropped counts the bytes of output left out of the stream just before this chunk (the
	// stream's rate or buffer bound); the RunResult's output still has them, within its cap.
	Dropped int64 `json:"dropped,omitempty"`
}

// StreamInfo is what a streamed run published.
type StreamInfo struct {
	// Subject is where the chunks went.
	Subject string `json:"subject"`
	// Chunks is how many were published: the last Seq.
	Chunks int64 `json:"chunks"`
	// DroppedBytes is the output left out of the stream in all.
	DroppedBytes int64 `json:"dropped_bytes,omitempty"`
}

// DecodeOutputChunk decodes a chunk, as a client does with a stream message. It does not
// validate.
func DecodeOutputChunk(data []byte) (*OutputChunk, error) {
	var c OutputChunk
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("protocol: decode output chunk: %w", err)
	}
	return &c, nil
}

// decodeOptBool decodes obj[key] as a boolean; missing or null is false.
func decodeOptBool(obj map[string]json.RawMessage, key, field string) (bool, *Error) {
	raw, ok := obj[key]
	if !ok {
		return false, nil
	}
	switch k := jsonKind(raw); k {
	case "null":
		return false, nil
	case "boolean":
		var b bool
		if err := json.Unmarshal(raw, &b); err != nil {
			return false, Errorf(CodeBadRequest, "field %s: %s", field, err.Error())
		}
		return b, nil
	default:
		return false, Errorf(CodeBadRequest, "field %s: must be a boolean, got %s", field, k)
	}
}
