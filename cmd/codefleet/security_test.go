package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/codefleet/codefleet/internal/config"
	"github.com/codefleet/codefleet/internal/testutil"
	"github.com/codefleet/codefleet/pkg/affinity"
	"github.com/codefleet/codefleet/pkg/client"
	"github.com/codefleet/codefleet/pkg/dispatcher"
	"github.com/codefleet/codefleet/pkg/envs/docker"
	"github.com/codefleet/codefleet/pkg/protocol"
	"github.com/codefleet/codefleet/pkg/quota"
	"github.com/codefleet/codefleet/pkg/worker"
)

// securityConf is the nats-server configuration docs/security.md describes.
const securityConf = "../../docs/nats-security.conf"

// tenantBPassword is tenant-b's password; its server side is a bcrypt hash of it (cost 4), as
// docs/security.md offers.
const (
	tenantBPassword = "tenant-b-secret"
	tenantBHash     = "$2a$04$LrQiJzhKRAS26t5TLk18GedN9t8Fi0VIdcUzNS2bqzzVd3LNbtQrK"
)

// securityEnv clears the variables that configure the commands (the nats CLI's included) and
// sets the password variables securityConf reads, fresh ones for every user but tenant-b. It
// returns each user's password.
func securityEnv(t *testing.T) map[string]string {
	t.Helper()
	testutil.ClearEnv(t)
	pw := map[string]string{"tenant-b": tenantBPassword}
	for _, user := range []string{"dispatcher", "worker", "fleet", "tenant-a"} {
		pw[user] = "pw" + nuid.Next()
		t.Setenv(strings.ToUpper(strings.ReplaceAll(user, "-", "_"))+"_PASSWORD", pw[user])
	}
	t.Setenv("TENANT_B_PASSWORD", tenantBHash)
	return pw
}

// startSecureNATS runs a NATS server configured by securityConf on a random loopback port,
// JetStream in a temporary directory, until the test ends.
func startSecureNATS(t *testing.T) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile(securityConf)
	if err != nil {
		t.Fatalf("%s: %v", securityConf, err)
	}
	opts.Host, opts.Port, opts.StoreDir = "127.0.0.1", -1, t.TempDir()
	return testutil.StartNATSWith(t, opts)
}

// asyncErrs collects a connection's asynchronous errors: the server's permissions violations.
type asyncErrs chan error

func (e asyncErrs) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	select {
	case e <- err:
	default:
	}
}

// violation waits for the server's permissions violation of subject ("Publish to", or
// "Subscription to") among the errors.
func (e asyncErrs) violation(t *testing.T, what, subject string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case err := <-e:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), what+" "+strconv.Quote(subject)) {
				return
			}
			t.Logf("other async error: %v", err)
		case <-timeout:
			t.Fatalf("no permissions violation for %s %q", what, subject)
		}
	}
}

// none fails the test for every error collected.
func (e asyncErrs) none(t *testing.T, who string) {
	t.Helper()
	for {
		select {
		case err := <-e:
			t.Errorf("%s: %v", who, err)
		default:
			return
		}
	}
}

// connectAs connects to url as auth says, the asynchronous errors going to errs; the
// connection is closed when the test ends.
func connectAs(t *testing.T, url string, auth config.NATSAuth, errs asyncErrs, opts ...nats.Option) *nats.Conn {
	t.Helper()
	secure, err := auth.Options()
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, append(append(secure, nats.ErrorHandler(errs.handler), nats.MaxReconnects(-1)), opts...)...)
	if err != nil {
		t.Fatalf("connect as %s: %v", auth.User, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestSecurityConfig runs a fleet on a NATS server configured by docs/nats-security.conf: the
// worker and the dispatcher with their own users, tenants A and B with theirs. A runs code in
// its own conversation; its publish to B's subjects, to the worker subjects and to JetStream,
// and its subscriptions to the worker and run subjects are refused by the server; it cannot
// read B's replies (even subscribed to _INBOX.>), nor make a dispatcher answer into B's
// affinity. B's conversation is untouched: same sandbox, its file still there. The fleet's
// users never hit a permissions violation: the configuration gives them all they use (A's runs
// and conversation count against quotas, in the quota bucket; the worker drops an ownership).
func TestSecurityConfig(t *testing.T) {
	testutil.RequireDocker(t)
	image, agent := testutil.SandboxImage(), testutil.AgentBinary(t)
	pw := securityEnv(t)
	ns := startSecureNATS(t)
	url := ns.ClientURL()
	as := func(user string) config.NATSAuth { return config.NATSAuth{User: user, Password: pw[user]} }

	// No user, or a wrong password: refused.
	if nc, err := nats.Connect(url); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("connect without a user = %v, want nats.ErrAuthorization", err)
		if nc != nil {
			nc.Close()
		}
	}
	if _, err := nats.Connect(url, nats.UserInfo("tenant-a", pw["tenant-b"])); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("connect as tenant-a with tenant-b's password = %v, want nats.ErrAuthorization", err)
	}

	// The fleet, each on a connection of its own user.
	env, err := docker.New(docker.Config{Image: image, AgentPath: agent, Labels: testutil.TestLabels()}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	workerErrs, dispatcherErrs := make(asyncErrs, 16), make(asyncErrs, 16)
	wnc := connectAs(t, url, as("worker"), workerErrs)
	dnc := connectAs(t, url, as("dispatcher"), dispatcherErrs)
	id := "secure-" + testutil.RunID
	w, err := worker.New(worker.Config{ID: id, HeartbeatInterval: 200 * time.Millisecond, HeartbeatTTL: testutil.FleetTTL, DestroyOnShutdown: true},
		wnc, env, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		t.Fatalf("worker start as user worker: %v", err)
	}
	t.Cleanup(func() { w.Shutdown(context.Background()) })
	// Quotas for A: its runs and its conversation take and give back slots in codefleet-quotas
	// (two runs: the one A sends with a reflected reply subject may still be in flight when A
	// runs again).
	quotas := quota.Limits{Tenants: map[string]quota.Limit{"tenant-a": {MaxSandboxes: 1, MaxRuns: 2}}}
	d, err := dispatcher.New(dispatcher.Config{Name: "secure", HeartbeatTTL: testutil.FleetTTL, Quotas: quotas}, dnc, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatalf("dispatcher start as user dispatcher: %v", err)
	}
	t.Cleanup(func() { d.Stop(context.Background()) })
	testutil.WaitWorkers(t, 1, d)

	// B writes a file in its conversation (through pkg/client, B's password a bcrypt hash on
	// the server's side).
	ctx := testutil.Context(t)
	bnc := connectAs(t, url, as("tenant-b"), make(asyncErrs, 16))
	bc, err := client.New(bnc, client.WithTenant("tenant-b"))
	if err != nil {
		t.Fatal(err)
	}
	conv := "chat-" + testutil.RunID
	first, err := bc.Conversation(conv).Run(ctx, "echo secret-b > b.txt; cat b.txt", protocol.LangBash, nil)
	if err != nil || first.Output != "secret-b\n" || !first.Sandbox.Created {
		t.Fatalf("B's first run: %+v, %v", first, err)
	}

	// A runs in its own conversation of the same name, through the CLI and its flags.
	aFlags := []string{"--nats-url", url, "--nats-user", "tenant-a", "--nats-password", pw["tenant-a"], "--tenant", "tenant-a", "--conversation", conv}
	if code, out, errOut := cli("", append([]string{"run", "print(6*7)"}, aFlags...)...); code != 0 || out != "42\n" {
		t.Fatalf("A's run: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if code, out, errOut := cli("", append([]string{"run", "--language", "bash", "cat b.txt 2>&1; true"}, aFlags...)...); code != 0 || strings.Contains(out, "secret-b") {
		t.Fatalf("A's conversation sees B's file: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// A naming B as its tenant is refused at once, not after the request's timeouts.
	start := time.Now()
	code, _, errOut := cli("", append(append([]string{"run"}, aFlags...), "--tenant", "tenant-b", "print(1)")...) // the last --tenant wins
	if code != exitFleetError || !strings.Contains(errOut, `nats: permissions violation: Permissions Violation for Publish to "codefleet.run.tenant-b.`+conv+`"`) {
		t.Errorf("A's run as tenant-b: exit %d, stderr %q; want the server's permissions violation", code, errOut)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("A's refused run took %s", took)
	}

	// A, on a connection of its own, tries what its permissions forbid.
	aErrs := make(asyncErrs, 64)
	anc := connectAs(t, url, as("tenant-a"), aErrs, nats.PermissionErrOnSubscribe(true))
	run := protocol.Encode(&protocol.RunRequest{Code: "cat b.txt", Language: protocol.LangBash})
	for _, subject := range []string{
		protocol.Subjects{}.Run("tenant-b", conv),     // B's conversation
		protocol.Subjects{}.Close("tenant-b", conv),   // closing it
		protocol.Subjects{}.Worker(id, "run"),         // the worker, past the dispatchers
		"$JS.API.STREAM.INFO.KV_codefleet-affinity",   // JetStream
		"$KV.codefleet-affinity.tenant-b." + conv,     // B's affinity, directly
		"$JS.API.STREAM.DELETE.KV_codefleet-affinity", // the fleet's state
		"_INBOX.spoof", // an inbox outside its own
	} {
		if err := anc.PublishRequest(subject, anc.NewRespInbox(), run); err != nil {
			t.Fatal(err)
		}
		aErrs.violation(t, "Publish to", subject)
	}
	for _, subject := range []string{"codefleet.worker.>", "codefleet.run.>", "codefleet.run.tenant-b.*", ">", "$JS.API.>"} {
		sub, err := anc.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sub.NextMsg(10 * time.Second); !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("A's subscription to %s: NextMsg = %v, want nats.ErrPermissionViolation", subject, err)
		}
		aErrs.violation(t, "Subscription to", subject)
	}

	// A streams a run of its own and moves a file, across the accounts: the chunks reach A's
	// account through its stream import; B's stream subjects are not A's to read.
	streamed, err := anc.SubscribeSync(protocol.Subjects{}.Stream("tenant-a", conv, "a-stream"))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := anc.Request(protocol.Subjects{}.Run("tenant-a", conv), protocol.Encode(&protocol.RunRequest{ID: "a-stream", Code: "echo one; echo two", Language: protocol.LangBash, Stream: true}), time.Minute)
	if err != nil {
		t.Fatalf("A's streamed run: %v", err)
	}
	res, _ := protocol.DecodeRunResult(msg.Data)
	if res == nil || res.Error != nil || res.Stream == nil || res.Stream.Chunks < 1 {
		t.Fatalf("A's streamed run: %s", msg.Data)
	}
	var chunks strings.Builder
	for i := int64(0); i < res.Stream.Chunks; i++ {
		m, err := streamed.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("A's chunk %d of %d: %v", i+1, res.Stream.Chunks, err)
		}
		c, _ := protocol.DecodeOutputChunk(m.Data)
		chunks.WriteString(c.Data)
	}
	if chunks.String() != "one\ntwo\n" {
		t.Fatalf("A's stream: %q", chunks.String())
	}
	put, err := anc.Request(protocol.Subjects{}.Files("tenant-a", conv), protocol.Encode(&protocol.FileRequest{Op: protocol.FileOpPut, Path: "a.txt", Data: []byte("file-a")}), time.Minute)
	if fr, _ := protocol.DecodeFileResult(put.Data); err != nil || fr == nil || fr.Error != nil || fr.Size != 6 {
		t.Fatalf("A's put: %v %s", err, put.Data)
	}
	if err := anc.PublishRequest(protocol.Subjects{}.Files("tenant-b", conv), anc.NewRespInbox(), protocol.Encode(&protocol.FileRequest{Op: protocol.FileOpGet, Path: "b.txt"})); err != nil {
		t.Fatal(err)
	}
	aErrs.violation(t, "Publish to", protocol.Subjects{}.Files("tenant-b", conv))
	sub, err := anc.SubscribeSync("codefleet.stream.tenant-b.>")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.NextMsg(10 * time.Second); !errors.Is(err, nats.ErrPermissionViolation) {
		t.Errorf("A's subscription to B's streams: NextMsg = %v, want nats.ErrPermissionViolation", err)
	}
	aErrs.violation(t, "Subscription to", "codefleet.stream.tenant-b.>")

	// A asks for a run of its own with B's affinity entry as the reply subject: the dispatcher
	// answers the server's _R_ mapping, which leads back into A's account, not into the KV
	// bucket. The run that follows in the same conversation is answered after it.
	if err := anc.PublishRequest(protocol.Subjects{}.Run("tenant-a", conv), "$KV.codefleet-affinity.tenant-b."+conv,
		protocol.Encode(&protocol.RunRequest{Code: "print('reflected')", Language: protocol.LangPython})); err != nil {
		t.Fatal(err)
	}
	if err := anc.Flush(); err != nil {
		t.Fatal(err)
	}

	// A listens on _INBOX.> (allowed: its account's inboxes are its own) while B runs, then
	// runs once itself. The dispatcher published B's reply before A's, so had B's reached A's
	// account, the spy would hold it before A's own reply.
	spy, err := anc.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := anc.Flush(); err != nil {
		t.Fatal(err)
	}
	again, err := bc.Conversation(conv).Run(ctx, "cat b.txt", protocol.LangBash, nil)
	if err != nil || again.Output != "secret-b\n" || again.Sandbox.ID != first.Sandbox.ID || again.Sandbox.Created || again.Sandbox.Recreated {
		t.Fatalf("B's run after A's attempts: %+v, %v; want its file in sandbox %s", again, err, first.Sandbox.ID)
	}
	if code, out, errOut := cli("", append([]string{"run", "print('a-done')"}, aFlags...)...); code != 0 || out != "a-done\n" {
		t.Fatalf("A's last run: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for {
		msg, err := spy.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("A's _INBOX.> subscription never saw A's own reply: %v", err)
		}
		if strings.Contains(string(msg.Data), "secret-b") {
			t.Fatalf("A read B's reply on %s: %s", msg.Subject, msg.Data)
		}
		if strings.Contains(string(msg.Data), "a-done") {
			break
		}
	}

	// B's affinity is B's own: the worker's user reads it (as the worker's reaper does).
	wjs, err := jetstream.New(wnc)
	if err != nil {
		t.Fatal(err)
	}
	if owner, ok, err := affinity.NewOwners(wjs, protocol.Subjects{}).Owner(ctx, "tenant-b", conv); err != nil || !ok || owner != id {
		t.Errorf("B's owner read as user worker: %q %v %v, want %s", owner, ok, err, id)
	}
	// `codefleet status` as the operator's user and as a dispatcher's; a tenant's is refused.
	for _, user := range []string{"fleet", "dispatcher"} {
		code, out, errOut := cli("", "status", "--nats-url", url, "--nats-user", user, "--nats-password", pw[user])
		if code != 0 || !strings.Contains(out, id) {
			t.Errorf("status as %s: exit %d, stdout %q, stderr %q", user, code, out, errOut)
		}
	}
	if code, _, errOut := cli("", "status", "--nats-url", url, "--nats-user", "tenant-a", "--nats-password", pw["tenant-a"]); code != exitFleetError ||
		!strings.Contains(errOut, "permissions violation") {
		t.Errorf("status as tenant-a: exit %d, stderr %q; want a permissions violation", code, errOut)
	}
	// A closes its conversation; B's stays.
	if code, out, errOut := cli("", append([]string{"close"}, aFlags...)...); code != 0 || !strings.HasPrefix(out, "closed "+conv) {
		t.Errorf("A's close: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if res, err := bc.Conversation(conv).Run(ctx, "cat b.txt", protocol.LangBash, nil); err != nil || res.Output != "secret-b\n" || res.Sandbox.ID != first.Sandbox.ID {
		t.Errorf("B's run after A closed its own: %+v, %v", res, err)
	}
	// The worker's user drops an ownership of its own, as its reaper does once it reaped the
	// conversation's sandbox.
	owners := affinity.NewOwners(wjs, protocol.Subjects{})
	if err := owners.Release(ctx, "tenant-b", conv, id); err != nil {
		t.Errorf("B's ownership released as user worker: %v", err)
	}
	if owner, ok, err := owners.Owner(ctx, "tenant-b", conv); ok || err != nil {
		t.Errorf("B's owner after its release: %q %v %v, want none", owner, ok, err)
	}
	workerErrs.none(t, "user worker")
	dispatcherErrs.none(t, "user dispatcher")
}

// startSecureDev runs `codefleet dev` with args in this process until the test ends, when it
// stops it as SIGTERM does and checks that it exited 0 and left no sandbox of worker id. ready
// polls until dev serves; it fails the test at once when dev has exited.
func startSecureDev(t *testing.T, id string, args ...string) (ready func(cond func() error)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var logs testutil.SyncBuffer
	go func() {
		done <- run(ctx, append([]string{"dev", "--log-level", "warn"}, args...), nil, &bytes.Buffer{}, &logs)
	}()
	exited := false
	t.Cleanup(func() {
		cancel()
		if !exited {
			if code := <-done; code != 0 {
				t.Errorf("codefleet dev exited %d: %s", code, logs.String())
			}
		}
		if n, err := testutil.CountContainers("io.codefleet.worker", id); err != nil || n != 0 {
			t.Errorf("codefleet dev left %d sandboxes behind (%v)", n, err)
		}
	})
	return func(cond func() error) {
		t.Helper()
		testutil.Eventually(t, 60*time.Second, func() error {
			select {
			case code := <-done:
				exited = true
				t.Fatalf("codefleet dev exited %d: %s", code, logs.String())
			default:
			}
			return cond()
		})
	}
}

// TestDevSecured: `codefleet dev --nats-config` runs its embedded server from
// docs/nats-security.conf with a tls block that verifies client certificates, and connects its
// worker and dispatcher with its security flags (user fleet, a client certificate). The CLI of
// tenant A, configured by the nats CLI's variables, runs code over mutual TLS; without a client
// certificate, or without the CA that knows the server's, it is refused.
func TestDevSecured(t *testing.T) {
	testutil.RequireDocker(t)
	image, agent := testutil.SandboxImage(), testutil.AgentBinary(t)
	pw := securityEnv(t)
	pki := testutil.MakeTLS(t)
	text, err := os.ReadFile(securityConf)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "nats.conf")
	text = append(text, fmt.Sprintf("\ntls {\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n  verify: true\n}\n", pki.ServerCert, pki.ServerKey, pki.CA)...)
	if err := os.WriteFile(conf, text, 0o600); err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(testutil.FreePort(t))
	url := "tls://127.0.0.1:" + port
	id := "secure-dev-" + testutil.RunID
	tlsFlags := []string{"--nats-tls-ca", pki.CA, "--nats-tls-cert", pki.ClientCert, "--nats-tls-key", pki.ClientKey}
	ready := startSecureDev(t, id, append([]string{"--nats-config", conf, "--port", port, "--http-addr=", "--worker-id", id,
		"--agent", agent, "--image", image, "--nats-user", "fleet", "--nats-password", pw["fleet"]}, tlsFlags...)...)
	ready(func() error {
		code, out, errOut := cli("", append([]string{"status", "--nats-url", url, "--nats-user", "fleet", "--nats-password", pw["fleet"]}, tlsFlags...)...)
		if code != 0 || !strings.Contains(out, id) {
			return fmt.Errorf("status: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		return nil
	})

	// Tenant A as the nats CLI would be configured.
	for k, v := range map[string]string{"NATS_USER": "tenant-a", "NATS_PASSWORD": pw["tenant-a"], "NATS_CA": pki.CA, "NATS_CERT": pki.ClientCert, "NATS_KEY": pki.ClientKey} {
		t.Setenv(k, v)
	}
	conv := []string{"--nats-url", url, "--tenant", "tenant-a", "--conversation", "tls-" + testutil.RunID}
	ready(func() error { // the dispatcher may still be starting
		code, out, errOut := cli("", append([]string{"run", "print(40+2)"}, conv...)...)
		if code != 0 || out != "42\n" {
			return fmt.Errorf("run: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		return nil
	})
	if code, out, errOut := cli("", append([]string{"close"}, conv...)...); code != 0 || !strings.HasPrefix(out, "closed ") {
		t.Errorf("close: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for _, tc := range []struct {
		name  string
		flags []string
		want  []string // one of them in stderr
	}{
		// With TLS 1.3 the server's refusal comes after the client's handshake: the client
		// reads its alert, or finds the connection closed.
		{"no client certificate", []string{"--nats-tls-cert=", "--nats-tls-key="}, []string{"tls: certificate required", "nats: tls error"}},
		{"no CA", []string{"--nats-tls-ca="}, []string{"x509: certificate signed by unknown authority"}},
	} {
		code, _, errOut := cli("", append(append([]string{"run", "print(1)"}, conv...), tc.flags...)...)
		found := false
		for _, w := range tc.want {
			found = found || strings.Contains(errOut, w)
		}
		if code != exitFleetError || !strings.Contains(errOut, "connect to NATS at "+url) || !found {
			t.Errorf("%s: exit %d, stderr %q; want the connection refused (%q)", tc.name, code, errOut, tc.want)
		}
	}
}

// TestSecurityDocShowsConfig: docs/security.md shows docs/nats-security.conf verbatim, so what
// the page says is what TestSecurityConfig runs.
func TestSecurityDocShowsConfig(t *testing.T) {
	conf, err := os.ReadFile(securityConf)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(doc, append([]byte("```text\n"), append(conf, "```\n"...)...)) {
		t.Errorf("docs/security.md does not show %s verbatim in a ```text block", securityConf)
	}
}
