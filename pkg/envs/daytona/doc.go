// Package daytona is the Daytona backend of codefleet: one Daytona sandbox per conversation,
// reached over Daytona's REST API from wherever the worker runs.
//
// # The API
//
// The official Go SDK cannot be fetched through the Go module proxy, so Client is a small typed
// client of the few endpoints used: create, get, list (by labels, with cursor pages or the old
// bare-array answer), delete, start and labels on the management API, and /process/code-run,
// /process/execute and /process/session (create, exec, command, logs, delete) on a sandbox's
// toolbox (at {toolboxProxyUrl}/{sandboxId}, read from the sandbox). Env only depends on the API
// interface, which an adapter around the SDK could implement instead. Client retries a 429 on
// any call after the Retry-After-<bucket> the service sends (up to MaxRetryWait, 90 s, and
// within the call's deadline), and 502/503/504 only on calls safe to repeat: a create or a run
// is never sent twice once it may have reached the service.
//
// # Lifecycle
//
// Create asks for a sandbox (a snapshot, "snapshot:<name>", or an image built with buildInfo
// "FROM <image>"; the env of the spec; our labels and the SDKs' code-toolbox-language; auto-stop
// off; the account's target), polls it until it is started with the SDKs' backoff (failing at
// once on error or build_failed, with the service's errorReason), then asks its toolbox which
// interpreters it has. The service holds a create from a snapshot for up to 30 s while the
// sandbox starts (its answer shows the sandbox as it was before); an image is built first
// (pending_build), which may take minutes: StartTimeout and BuildTimeout are the budgets, counted
// from the create's answer. Whatever fails, the sandbox is deleted before Create returns: by id,
// or by its unique name when the create's answer was lost, waiting out the 409s of a sandbox
// stuck in a transition. Delete is asynchronous on the service's side; an unknown sandbox, or one
// already being deleted, counts as deleted. Open (and a run that finds it so) starts a sandbox
// that is stopped or archived, resumes one that is paused, and waits out the transitions
// between (waitStarted).
//
// # Runs
//
// The toolbox alone cannot keep envs.Result's promises (on its timeout it discards the output;
// it reports a shell killed by a signal as -1; it returns output of any size), so each run is
// sent wrapped in a small supervisor (see script.go): Python through /process/code-run for python
// (falling back to piping it to python3 through /process/execute on daemons before v0.167, as
// the SDKs did), POSIX sh through /process/execute for bash, javascript and typescript. It runs
// the snippet as a fresh process in a process session of its own (setsid), keeps the head and tail of its
// interleaved output, kills its process group at the timeout or when it ends, and reports the
// exit code (124 on timeout, 128+N for signal N) in a trailer line with a per-run nonce. A run
// whose caller gives up is killed in the sandbox by a second, short command.
//
// How the supervisor is sent depends on the run's timeout. Up to Config.LongRun (45 s), in one
// blocking call: Daytona's own timeout (in seconds) is set a few seconds later as a backstop, a
// 408 from it is still a timeout (exit 124, output lost), and the HTTP deadline is above that.
// Longer, as the command of a toolbox session made for the run (runAsync), polled until it has an
// exit code, its stdout read from the command's logs, the session deleted in the background:
// the load balancer in front of Daytona's toolbox proxy cuts any call silent for about 60 s with
// a bare 502 (daytonaio/daytona#4545), and a session's calls are all short. Sessions take no env,
// so the supervisor exports the run's; python is piped to python3, as on old daemons.
//
// A toolbox refusal (401, 400, 404, 410) is not taken at its word: Daytona's proxy answers 401
// "Bearer token is invalid" for a sandbox it does not know as for a wrong key, 400 or 404 while
// it caches the token, 400 for a sandbox that is not started. The run asks the management API:
// a sandbox it does not have, or is deleting, or has in error, is envs.ErrSandboxGone (the worker
// then makes a new one, marked recreated); a key it refuses too is envs.ErrBackendUnavailable;
// a sandbox stopped, archived or paused is started or resumed and the run sent again, once,
// when the toolbox had refused it before it started (else the run is lost: ErrSandboxGone, and
// the worker opens the sandbox again).
//
// # Soft affinity
//
// A Daytona sandbox does not live on its worker. Env implements envs.Reattacher: when a
// conversation comes to a worker that has no sandbox for it (its worker died), the worker's
// manager calls Reattach, which finds the conversation's sandbox by its labels, relabels it with
// the new worker's id and opens it: the conversation goes on with its files. A worker that lost
// a conversation this way (cut off, not dead) does not delete the sandbox when it reaps its old
// session: Destroy leaves alone a sandbox whose worker label is no longer the one it was taken
// with. A restarted worker re-adopts the sandboxes labelled with its id, as with Docker.
//
// # Accounts
//
// The default account is DAYTONA_API_KEY, DAYTONA_API_URL and DAYTONA_TARGET; Config.Tenants
// overrides it per tenant. A field may hold ${name} placeholders, filled from the request's
// sandbox.variables when the conversation's sandbox is created or re-attached (AG2's Variable
// markers): a tenant can bring its own API key. Sandboxes of accounts whose key only comes with a
// request are found again only by requests that bring it.
package daytona
