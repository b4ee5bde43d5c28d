package protocol

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the first token of every codefleet subject.
const DefaultPrefix = "codefleet"

// DispatcherQueue is the queue group dispatchers share.
const DispatcherQueue = "codefleet-dispatchers"

// Headers of the internal worker subjects (clients never send or see these): the dispatcher
// sets the first three on its requests, the worker the last on its replies.
const (
	HeaderTenant       = "Codefleet-Tenant"
	HeaderConversation = "Codefleet-Conversation"
	// HeaderRecreated marks the first run of a conversation whose earlier sandbox was lost.
	HeaderRecreated = "Codefleet-Recreated"
	// HeaderSandboxCreated, on a run's reply, holds the id of the sandbox the run created, for
	// the dispatcher to record in the conversation's ownership without decoding the reply.
	HeaderSandboxCreated = "Codefleet-Sandbox-Created"
)

// MaxPrefixLen bounds a prefix.
const MaxPrefixLen = 64

// Subjects builds and parses the subjects, and names the KV buckets, of one fleet: every name
// starts with the fleet's prefix, so fleets with different prefixes share a NATS account
// without seeing each other. The zero value uses DefaultPrefix.
type Subjects struct {
	// Prefix is one NATS token, [A-Za-z0-9_-]{1,64} (ValidPrefix): it is also the first part
	// of the fleet's KV bucket names, which cannot hold dots.
	Prefix string
}

// ValidPrefix reports whether p can be a fleet's prefix: one token of [A-Za-z0-9_-], at most
// MaxPrefixLen long.
func ValidPrefix(p string) bool { return len(p) <= MaxPrefixLen && isToken(p) }

// CheckPrefix returns an error naming the prefix when it is not valid.
func CheckPrefix(p string) error {
	if !ValidPrefix(p) {
		return fmt.Errorf("prefix %q must be one token of [A-Za-z0-9_-], 1 to %d characters (it names the fleet's subjects and KV buckets)", trimForMessage(p), MaxPrefixLen)
	}
	return nil
}

func (s Subjects) prefix() string {
	if s.Prefix == "" {
		return DefaultPrefix
	}
	return s.Prefix
}

// Run returns the subject of a run request: <prefix>.run.<tenant>.<conversation>.
func (s Subjects) Run(tenant, conversation string) string {
	return s.prefix() + ".run." + tenant + "." + conversation
}

// Close returns the subject of a close request: <prefix>.close.<tenant>.<conversation>.
func (s Subjects) Close(tenant, conversation string) string {
	return s.prefix() + ".close." + tenant + "." + conversation
}

// Files returns the subject of a file request: <prefix>.files.<tenant>.<conversation>.
func (s Subjects) Files(tenant, conversation string) string {
	return s.prefix() + ".files." + tenant + "." + conversation
}

// Stream returns the subject a streamed run's output chunks are published on:
// <prefix>.stream.<tenant>.<conversation>.<id>, with the run's request id. It is under the
// tenant's <prefix>.*.<tenant>.> like the request subjects, so a tenant's permissions cover it.
func (s Subjects) Stream(tenant, conversation, id string) string {
	return s.prefix() + ".stream." + tenant + "." + conversation + "." + id
}

// RunAll, CloseAll and FilesAll are the wildcard subjects dispatchers subscribe to.
func (s Subjects) RunAll() string   { return s.prefix() + ".run.*.*" }
func (s Subjects) CloseAll() string { return s.prefix() + ".close.*.*" }
func (s Subjects) FilesAll() string { return s.prefix() + ".files.*.*" }

// Worker returns the subject of one worker's verb ("run", "close", "files"):
// <prefix>.worker.<id>.<verb>.
func (s Subjects) Worker(workerID, verb string) string {
	return s.prefix() + ".worker." + workerID + "." + verb
}

// WorkerGroup returns the subject group of one worker: <prefix>.worker.<id>.
func (s Subjects) WorkerGroup(workerID string) string {
	return s.prefix() + ".worker." + workerID
}

// ParseConversation extracts tenant and conversation from a run, close or files subject and checks
// both. The error is a CodeBadRequest Error.
func (s Subjects) ParseConversation(subject string) (verb, tenant, conversation string, err error) {
	p := s.prefix() + "."
	if !strings.HasPrefix(subject, p) {
		return "", "", "", Errorf(CodeBadRequest, "subject %q is not under %q", trimForMessage(subject), s.prefix())
	}
	parts := strings.Split(subject[len(p):], ".")
	if len(parts) != 3 || (parts[0] != "run" && parts[0] != "close" && parts[0] != "files") {
		return "", "", "", Errorf(CodeBadRequest, "subject %q is not %s.run|close|files.<tenant>.<conversation>", trimForMessage(subject), s.prefix())
	}
	if !isToken(parts[1]) {
		return "", "", "", Errorf(CodeBadRequest, "tenant %q must match [A-Za-z0-9_-]{1,%d}", trimForMessage(parts[1]), MaxIDLen)
	}
	if !isToken(parts[2]) {
		return "", "", "", Errorf(CodeBadRequest, "conversation %q must match [A-Za-z0-9_-]{1,%d}", trimForMessage(parts[2]), MaxIDLen)
	}
	return parts[0], parts[1], parts[2], nil
}

// WorkersBucket returns the name of the fleet's worker registry bucket: <prefix>-workers
// ("codefleet-workers" with the default prefix, as before prefixes named buckets).
func (s Subjects) WorkersBucket() string { return s.prefix() + "-workers" }

// AffinityBucket returns the name of the fleet's affinity bucket, which maps
// <tenant>.<conversation> to the worker that holds its sandbox: <prefix>-affinity.
func (s Subjects) AffinityBucket() string { return s.prefix() + "-affinity" }

// QuotasBucket returns the name of the fleet's quota bucket, which holds the slots of the
// tenants' sandbox and run quotas (pkg/quota): <prefix>-quotas.
func (s Subjects) QuotasBucket() string { return s.prefix() + "-quotas" }

// Key returns the affinity key of a conversation: <tenant>.<conversation>.
func Key(tenant, conversation string) string { return tenant + "." + conversation }

// String implements fmt.Stringer for logs.
func (s Subjects) String() string { return fmt.Sprintf("subjects(%s)", s.prefix()) }
