package worker

import (
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/codefleet/codefleet/pkg/envs"
	"github.com/codefleet/codefleet/pkg/protocol"
)

// streamer publishes a streamed run's chunks on its stream subject, as the backend hands them
// over (one at a time, in order). Publishing does not wait for the server: a chunk is in the
// connection's buffer, bounded by the backend's rate, and a NATS outage loses chunks (counted
// by the client as gaps), never blocks the run.
type streamer struct {
	nc        *nats.Conn
	chunks    prometheus.Counter
	subject   string
	id        string
	published atomic.Int64
}

func (st *streamer) publish(c envs.Chunk) {
	b := protocol.Encode(&protocol.OutputChunk{ID: st.id, Seq: c.Seq, Data: c.Data, Dropped: c.Dropped})
	if st.nc.Publish(st.subject, b) != nil {
		return // lost: the client sees the gap in seq
	}
	st.published.Store(c.Seq)
	st.chunks.Inc()
}

// info is what the result says of the stream: the last chunk published, and the bytes the
// backend left out of it.
func (st *streamer) info(out envs.Result) *protocol.StreamInfo {
	return &protocol.StreamInfo{Subject: st.subject, Chunks: st.published.Load(), DroppedBytes: out.StreamDropped}
}
