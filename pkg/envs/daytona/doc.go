// Package daytona is the Daytona backend of codefleet: one Daytona sandbox per conversation,
// reached over Daytona's REST API from wherever the worker runs.
//
// # The API
//
// The official Go SDK cannot be fetched through the Go module proxy, so Client is a small typed
// client of the few endpoints used: create, get, list (by labels, with cursor pages or the old
// bare-array answer), delete, start and labels on the management API, and /process/code-run,
// /process/execute, /process/session (create, exec, command, logs, delete) and /files
// (bulk-upload, ranged download, list, delete) on a sandbox's toolbox (at
// {toolboxProxyUrl}/{sandboxId}, read from the sandbox). Env only depends on the API
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
// # Streaming
//
// A run with envs.Exec.Stream goes through a session whatever its timeout, and its supervisor
// also writes the snippet's output, as it comes, to a file of the run's directory in /tmp,
// which it leaves behind when the run ends (the shell supervisor's output file always was that
// file; the Python one copies each read to it). Between the polls of the command, the backend
// reads what the file gained with a ranged /files/download (the daemon serves files with Go's
// http.ServeFile, which honours Range, behind a proxy that passes it on) and writes it into an
// output.Streamer, which numbers and bounds the chunks. Once the command has ended the file is
// read to its end, the Streamer closed (every chunk handed over before Run returns), the
// directory removed in the background, and the result taken from the session's logs as for
// any session run: the same supervisor output, so the same envs.Result as without a stream.
// The logs themselves are not polled: each read answers the whole log (the cost of a long
// stream would grow with the square of its output), and the daemon writes them a line at a
// time (a progress line without a newline would wait for the end). stream.go has the details.
//
// Polling: the first read 10 ms after the command is sent, then each a quarter later up to
// 100 ms apart while output comes; a read that finds nothing new is followed by a look at the
// command, and the reads slow down, a quarter at a time, to 250 ms apart, back to 100 ms when
// output comes again. A read takes at most 256 KiB; more than that between two reads is
// passed over (a Streamer emits at most 800 KiB/s anyway) and counted in Result.StreamDropped.
// Measured on the fake (TestStreamLatency: python printing its clock every 50 ms for 3 s; the
// time from a print to its chunk in the worker): median 30 to 50 ms, 90th percentile 75 to
// 100 ms, at most about 100 ms, on a 2-CPU machine busy with other tests; that is the polling's
// period (up to 100 ms) plus the Streamer's 20 ms spacing, the fake's reads taking about a
// millisecond. A stream costs a trivial run 10 to 20 ms on the fake (BenchmarkRun: `true`
// streamed 33 to 39 ms, through a session without a stream 16 to 21 ms; `sleep 0.1` the same
// with and without, 120 to 230 ms on the loaded machine). Against the service each read is one
// round trip through the toolbox proxy, which adds its latency (tens of milliseconds from the
// same region, more from afar) to every chunk, and each look at the command another; a
// streamed run costs one toolbox call every 100 ms while it prints, two every 250 ms while it
// is silent.
//
// # Files
//
// envs.FileSystem goes through the toolbox's files API, but its daemon is a plain Go file
// server running as the sandbox's user that follows symbolic links everywhere: its list and
// info stat each entry through links (a link is reported as what it points to, a dangling one
// not at all), its download reads through them, its uploads write through them. So every file
// operation first runs a small sh script (/process/execute, fsscript.go) that walks the path
// from the workspace one element at a time, refusing any element that is a link
// (envs.ErrPathRefused, before anything is read or written), entering each directory with
// cd -P and checking the physical path of the directory it ends in (pwd -P), which catches an
// element swapped for a link during the walk. The workspace is Config.Workdir, else the
// daemon's working directory (where runs start); paths are checked against it by
// workspace.Rel first. Lists come from the script too
// (GNU find, else Python: links listed as links, never followed); deletes and the last step of
// puts are done by the script from the directory it checked; a get's bytes are read by a ranged
// /files/download after the script checked the path, its size against MaxSize and, for a read
// from 0 that will not hold the whole file, its SHA-256 (sha256sum, else Python).
//
// The race that remains: between a get's check and its download (about one toolbox round
// trip), a process a snippet left running could swap an element of the path for a link, and
// the download would read what it points to. It is acceptable because it gains nothing: the
// toolbox and the snippets run as the same user in the same sandbox (the daemon, the commands
// it runs and the runs all have the sandbox user's uid: the runner sets no other user), so
// whatever the download could read through the link, the snippet can read, and copy into the
// workspace, itself. What the check must stop, a link planted and left for a later get (ln -s
// /etc/passwd leak.txt), is stopped whatever the timing. Puts and deletes leave no such window
// but on the last element, where a rename replaces a link (it does not follow it) and rm
// removes the link itself (TestSwapRace runs a swapper against them).
//
// Puts are staged in the sandbox (Config.UploadDir, default /tmp/codefleet-files), never
// uploaded to their path: a whole file to a stage of its own; an upload's pieces each as a part
// file "p<start>-<end>" of a stage named after the sandbox, the path and the upload id, so that
// a piece may reach any worker (a conversation that moves keeps its upload), a worker's memory
// holds no upload, and a broken part (its size not the one its name says) is simply sent again.
// The upload's size is read back from a listing of the stage; a piece at it is stored, one
// already there (a retry) taken as it is, one further on refused. The last piece's script joins
// the parts, checks the size and the SHA-256 (nothing is written when it differs), walks the
// path making the missing directories, sets the mode and renames the file into place from a
// temporary name beside it: the file appears whole or not at all, owned by the snippets' user.
// A marker of the result stays in the stage, so that a last piece sent again (its answer lost)
// is answered as the first was; stages untouched for a day are removed by the next upload.
// Costs: a whole file, two toolbox calls (an upload, a script); a piece, two (a listing, an
// upload) and one more for the first (the path's check) and the last (the script); a get, two;
// a list or a delete, one.
//
// Toolbox refusals of file operations are handled as a run's (a sandbox gone is
// ErrSandboxGone, a stopped one started again); the file handlers' own answers (404, 403, 400
// with no body) are the operation's: ErrFileNotFound, ErrFileFailed.
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
