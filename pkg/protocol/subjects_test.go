package protocol_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/codefleet/codefleet/pkg/protocol"
)

func TestSubjectBuilders(t *testing.T) {
	var def protocol.Subjects
	custom := protocol.Subjects{Prefix: "acme-cf"}
	tests := []struct {
		got, want string
	}{
		{def.Run("default", "c1"), "codefleet.run.default.c1"},
		{def.Close("t", "c1"), "codefleet.close.t.c1"},
		{def.RunAll(), "codefleet.run.*.*"},
		{def.CloseAll(), "codefleet.close.*.*"},
		{def.Files("default", "c1"), "codefleet.files.default.c1"},
		{def.FilesAll(), "codefleet.files.*.*"},
		{def.Stream("default", "chat-42", "r-7"), "codefleet.stream.default.chat-42.r-7"},
		{custom.Files("t", "c"), "acme-cf.files.t.c"},
		{custom.Stream("t", "c", "r"), "acme-cf.stream.t.c.r"},
		{def.Worker("w-1", "run"), "codefleet.worker.w-1.run"},
		{def.WorkerGroup("w-1"), "codefleet.worker.w-1"},
		{custom.Run("t", "c"), "acme-cf.run.t.c"},
		{custom.Close("t", "c"), "acme-cf.close.t.c"},
		{custom.Worker("w", "close"), "acme-cf.worker.w.close"},
		// The default prefix keeps the bucket names of the releases before buckets followed
		// the prefix, so a running fleet upgrades in place.
		{def.WorkersBucket(), "codefleet-workers"},
		{def.AffinityBucket(), "codefleet-affinity"},
		{custom.WorkersBucket(), "acme-cf-workers"},
		{custom.AffinityBucket(), "acme-cf-affinity"},
		{def.QuotasBucket(), "codefleet-quotas"},
		{custom.QuotasBucket(), "acme-cf-quotas"},
		{protocol.Key("t", "c"), "t.c"},
		{def.String(), "subjects(codefleet)"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestParseConversation(t *testing.T) {
	long := strings.Repeat("c", protocol.MaxIDLen)
	good := []struct {
		s                              protocol.Subjects
		subject, verb, tenant, convers string
	}{
		{protocol.Subjects{}, "codefleet.run.default.c1", "run", "default", "c1"},
		{protocol.Subjects{}, "codefleet.close.acme_1.conv-2", "close", "acme_1", "conv-2"},
		{protocol.Subjects{}, "codefleet.run.t." + long, "run", "t", long},
		{protocol.Subjects{Prefix: "acme-cf"}, "acme-cf.run.t.c", "run", "t", "c"},
		{protocol.Subjects{}, "codefleet.files.default.chat-42", "files", "default", "chat-42"},
	}
	for _, tt := range good {
		verb, tenant, conv, err := tt.s.ParseConversation(tt.subject)
		if err != nil {
			t.Errorf("%s: got error %v, want none", tt.subject, err)
			continue
		}
		if verb != tt.verb || tenant != tt.tenant || conv != tt.convers {
			t.Errorf("%s: got %s, %s, %s, want %s, %s, %s", tt.subject, verb, tenant, conv, tt.verb, tt.tenant, tt.convers)
		}
	}
	bad := []struct {
		s       protocol.Subjects
		subject string
		msg     string
	}{
		{protocol.Subjects{}, "other.run.t.c", "is not under"},
		{protocol.Subjects{}, "codefleetx.run.t.c", "is not under"},
		{protocol.Subjects{Prefix: "acme"}, "codefleet.run.t.c", "is not under"},
		{protocol.Subjects{}, "codefleet.run.t", "is not codefleet.run|close"},
		{protocol.Subjects{}, "codefleet.run", "is not codefleet.run|close"},
		{protocol.Subjects{}, "codefleet", "is not under"},
		{protocol.Subjects{}, "", "is not under"},
		{protocol.Subjects{}, "codefleet.run.t.c.extra", "is not codefleet.run|close"},
		{protocol.Subjects{}, "codefleet.worker.t.c", "is not codefleet.run|close"},
		{protocol.Subjects{}, "codefleet.stream.t.c", "is not codefleet.run|close|files"},
		{protocol.Subjects{}, "codefleet.stream.t.c.r-7", "is not codefleet.run|close|files"},
		{protocol.Subjects{}, "codefleet.run.t@x.c", "tenant"},
		{protocol.Subjects{}, "codefleet.run..c", "tenant"},
		{protocol.Subjects{}, "codefleet.run.*.c", "tenant"},
		{protocol.Subjects{}, "codefleet.close.t.c%", "conversation"},
		{protocol.Subjects{}, "codefleet.run.t." + long + "c", "conversation"},
		{protocol.Subjects{}, "codefleet.run." + long + "t.c", "tenant"},
	}
	for _, tt := range bad {
		_, _, _, err := tt.s.ParseConversation(tt.subject)
		var perr *protocol.Error
		if !errors.As(err, &perr) {
			t.Errorf("%s: got %v, want a *protocol.Error", tt.subject, err)
			continue
		}
		if perr.Code != protocol.CodeBadRequest {
			t.Errorf("%s: got code %s, want %s", tt.subject, perr.Code, protocol.CodeBadRequest)
		}
		if !strings.Contains(perr.Message, tt.msg) {
			t.Errorf("%s: got message %q, want it to contain %q", tt.subject, perr.Message, tt.msg)
		}
		if len(perr.Message) > 200 {
			t.Errorf("%s: got a %d-byte message, want the subject shortened", tt.subject, len(perr.Message))
		}
	}
}

func TestValidID(t *testing.T) {
	for _, id := range []string{"a", "A-z_0", strings.Repeat("x", protocol.MaxIDLen)} {
		if !protocol.ValidID(id) {
			t.Errorf("ValidID(%q): got false, want true", id)
		}
	}
	for _, id := range []string{"", "a.b", "a b", "é", "*", ">", strings.Repeat("x", protocol.MaxIDLen+1)} {
		if protocol.ValidID(id) {
			t.Errorf("ValidID(%q): got true, want false", id)
		}
	}
}

func TestValidPrefix(t *testing.T) {
	for _, p := range []string{"codefleet", "staging", "acme_prod-2", strings.Repeat("p", protocol.MaxPrefixLen)} {
		if !protocol.ValidPrefix(p) || protocol.CheckPrefix(p) != nil {
			t.Errorf("prefix %q refused", p)
		}
	}
	// A dot would make the prefix two subject tokens and cannot be in a bucket name.
	for _, p := range []string{"", "acme.cf", "a b", "*", ">", "é", strings.Repeat("p", protocol.MaxPrefixLen+1)} {
		if protocol.ValidPrefix(p) {
			t.Errorf("prefix %q accepted", p)
		}
		if err := protocol.CheckPrefix(p); err == nil || !strings.Contains(err.Error(), "prefix") {
			t.Errorf("prefix %q: error %v does not name the prefix", p, err)
		}
	}
}
