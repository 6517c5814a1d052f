// Package spawn runs one jetpilot job phase as a session on a Stakpak agent
// server and turns what happened into one schemas.Result.
//
// It owns three things:
//
//   - Client: a thin, typed HTTP client for the agent-server API v1
//     (AGENT_SERVER_API.md): sessions, messages, tool decisions, cancel and
//     the SSE event stream. Errors from the server are *APIError; IsTransient
//     tells a caller whether retrying the same call can help.
//   - The SSE reader (SSEReader, EventStream): a byte-level parser that follows
//     the SSE specification (LF, CRLF and lone CR line ends, multi-line data,
//     comments and keep-alives, frames split anywhere, including inside a UTF-8
//     rune) with a hard cap on frame size so a hostile or buggy server cannot
//     make the worker allocate without bound.
//   - Runner: the session runner. It creates the session, subscribes to its
//     events with Last-Event-ID 0 (so a run that finishes before the stream
//     opens is never missed), starts the run with stable Idempotency-Keys
//     (jetpilot-<job_id>-session / jetpilot-<job_id>-run, so a redelivered job
//     never starts a second run), follows only the events of its own run,
//     reconnects dropped or stalled streams from the last event id it
//     processed, applies the tool policy, and cancels the run on the server
//     when the phase times out.
//
// # Tool policy
//
// The worker's --allowed-tools list caps every job (DESIGN.md "Tool policy"):
// a job can narrow what runs unattended, never widen it. A tool name may carry
// a server prefix ("stakpak__run_command"); its bare name is what follows the
// first "__" if anything follows it. An allow-list entry matches a call when it
// equals the bare name or the full name. An empty worker list allows every
// tool.
//
// The job's overrides.auto_approve is treated as policy and is never passed
// through: the runner always sends overrides.auto_approve "none" to the agent
// server, so every proposed call comes back to jetpilot and the worker's list
// cannot be bypassed. Instead:
//
//   - a job auto_approve list, or "all", acts as the job's allowed list when
//     allowed_tools is absent (when both are given, a call must match both);
//     it is still capped by the worker's list;
//   - auto_approve "none" means nothing is accepted unattended: with
//     pause_on_approval every call waits for a human, without it every call
//     is rejected.
//
// Without pause_on_approval a call outside the effective list is rejected with
// the content "Blocked by profile allowed_tools (tool: <bare name>)". With
// pause_on_approval, calls in the job's effective list are accepted at once and
// the rest wait for a human (the Result is "paused", exit code 10); a job
// without any list then makes every call wait.
//
// # Re-attaching
//
// Run with Spec.Resume follows the recorded run from its last processed event
// (the server replays the rest). A run that has already ended is rebuilt from
// its replayed final event, or, when the ring no longer has it, from the
// session snapshot (run state plus the assistant messages) with a Warning. A
// session that has messages but no recorded run id is never sent the prompt
// again (had the server forgotten the Idempotency-Key, that would start a
// second run): the run is found from the replay instead. A send answered
// with a conflict (session_already_running, idempotency_key_reused) likewise
// adopts the session's existing run.
//
// # What spawn does not own
//
// It does not talk to NATS, persist cursors, publish results or approvals,
// decide on retries or dead-lettering, or take human decisions: the worker
// does, using the Cursor values the runner reports (Spec.OnCursor), the errors
// it returns (*CursorError, IsTransient), Runner.CancelRun and Client.Decide. It
// does not start or supervise the agent server either. The simulator used by
// tests lives in spawn/agentsim.
package spawn
