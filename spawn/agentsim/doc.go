// Package agentsim is a faithful simulator of the Stakpak agent server
// (AGENT_SERVER_API.md revision 2; where the page and the server's code
// disagree, it follows the code), scripted per prompt. Tests run it with
// agentsimtest.New (a package of its own, so programs that run the
// simulator do not link package testing); `jetpilot agentsim` and
// `jetpilot dev` run it with ListenAndServe or Serve.
//
// It owns the wire behaviour of the server, traps included, so the client
// in package spawn meets the bugs a real server would expose. It does not
// own any client logic, and must not import package spawn.
//
// # Transport
//
// Bearer auth on every route but health and openapi.json: a wrong or
// missing token is 401 {"error":"Unauthorized","code":"unauthorized"} (no
// request_id); SetToken rotates it. Handler errors are JSON with a
// request_id; framework rejections are plain text, as axum's: malformed
// JSON 400, a missing field, a wrong type or an unknown enum value 422, no
// JSON Content-Type 415, a body over 2 MB 413, a path id that is not a
// UUID 400, an unknown route 404 with an empty body (before auth).
// Idempotency-Key (create session, send message, decisions, cancel) stores
// successful answers only, for Options.IdempotencyTTL (24 h), in memory,
// scoped by method, path and key, comparing bodies as the server
// re-encodes them (unknown fields dropped, null = absent); there is no
// in-flight reservation, so two identical requests at once both run. An
// unknown model is accepted; GET /v1/models lists Options.DefaultModel and
// Options.Models.
//
// # Runs
//
// A session is running (with its run_id) from the 200 of the send, for
// Options.StartDelay before run_started, and for Options.EndDelay after
// the terminal event (the real server spends seconds and up to ~2 s
// there); then idle, or failed (no error text) after run_error or a silent
// death. In the EndDelay window decisions and steering answer 409
// session_not_running (the loop's command channel is closed); cancel still
// answers 200. GET /messages serves the last checkpoint: the history and the new
// user message when the run starts, the conversation as of the last
// inference or tool every Options.CheckpointInterval (5 s), and the whole
// conversation at the end of EndDelay. Items are {role, content, name?}
// (system, user, assistant, tool), content a string or parts.
//
// The run follows the real agent loop. Cancel only sets a flag: the loop
// reads it at the top of each turn and before each inference attempt
// (run_completed cancelled, no turn_completed) and at the top of the tool
// loop (tool_execution_completed "TOOL_CALL_CANCELLED" is_error true for
// each undone call, turn_completed cancelled, run_completed cancelled).
// It interrupts only an executing tool ("#sim tool-time") and "#sim hang";
// a wait for decisions, an inference ("#sim sleep") and a retry back-off
// run on. Decisions, steering and follow_up messages are queued commands:
// waiting for decisions, the run takes them one at a time (any command
// wakes it: a steering message skips the undone calls with tool_rejected
// "Skipped due to steering update" and becomes the next turn's user
// message); at the top of a turn and after each executed call it drains
// the queue, parking decisions for a later batch that never comes (so a
// decision that lands while a call executes leaves the batch waiting
// forever), queueing texts. A follow_up is read after an answer without
// tool calls and asks for one more turn; one sent during the last
// inference is never read. Calls run in proposal order and stop at the
// first undecided one. Deciding a dispatched call again, or a decided call
// differently, kills the run with no event (the route still answers
// accepted). GET /tools/pending lists the whole batch until its
// turn_completed. reject content is ignored (the reason is always "Tool
// call rejected by user"); custom_result content is the tool's result.
//
// Restart simulates a server restart: sessions and their checkpoints
// stay; runs die without an event; rings (ids restart at 1), keys, pending
// calls and open streams are lost; the token changes; uptime restarts.
//
// # Event stream
//
// Any UUID gets a stream (keep-alives only for a session that does not
// exist). Event ids start at 1 per session. The ring keeps
// Options.RingSize events (4096). Runs publish from the moment they start,
// before any subscriber: a stream opened without Last-Event-ID gets only
// later events. With Last-Event-ID N, newer events still in the ring are
// replayed first; when N+1 has already left the ring the first frame is
// gap_detected and nothing is replayed, and live events follow either way.
// A stream more than Options.SubscriberLag events (8192) behind loses the
// oldest: its ids jump. ": keepalive" comes after Options.KeepAlive (15 s)
// without an event.
//
// The wire format varies deterministically with the event id so parsers
// meet everything the SSE spec allows: CRLF line ends (id%3 == 0), no
// space after colons (id%7 == 3), the JSON data on two data lines
// (id%5 == 2), and frames written in flushed pieces, cut inside a field,
// inside a multi-byte character and between CR and LF (id%4 == 1). Every
// run also emits one event no client knows (future_thing / FutureThing)
// right after run_started.
//
// # Scripts
//
// Lines of the prompt that start with "#sim " are directives, run in order
// as the run's script; other lines are ignored. A bad directive makes the
// send request fail with 400 invalid_request naming the line. A turn is
// its inference (sleep, retry, compaction, error), then its answer (text
// parts), then tool calls or nothing; an inference directive after answer
// content starts the next turn. Without any text, text-stream, bigtext,
// bigframe or tool directive before the first hang, error or die, the run
// says "Hello from agentsim." first; nothing after hang, error or die
// runs. A normal run is run_started, future_thing, turn_started,
// text_delta (one per text part), text_complete, usage_report (this turn's
// usage), turn_completed (stop), run_completed {total_turns, total_usage
// (the sum), stop_reason "completed"}.
//
//	#sim text <text...>        one text part: one text_delta with the whole text;
//	                           "\n" is a newline
//	#sim text-stream <text...> a text part as ~5-byte text_delta events (on rune
//	                           boundaries; the wire may still cut inside a rune)
//	#sim bigtext <n>           a part of n bytes of ASCII text as 1 KiB deltas
//	#sim bigframe <n>          one text_delta whose data line is n bytes
//	#sim tool <name> [json]    consecutive tool lines are one proposal: after the
//	                           answer's text_complete and usage_report come
//	                           tool_calls_proposed, waiting_for_tool_approval
//	                           (every id), then per call in order, once decided:
//	                           accept: tool_execution_started, _completed (result
//	                           "ok: <name>"); custom_result: tool_execution_completed
//	                           with the content; reject: tool_rejected; then
//	                           turn_completed (tool_calls). Ids are call_1, call_2,
//	                           ... per session. Calls the run's auto_approve allows
//	                           are decided accept at once. A run that ends after
//	                           tools gets a last empty turn.
//	#sim tool-time <duration>  accepted calls of later tool lines execute this long
//	                           (cancel interrupts them: TOOL_CALL_CANCELLED)
//	#sim sleep <duration>      inference time (Go duration): only Close and Restart
//	                           interrupt it, not cancel
//	#sim hang                  after the answer, a tool-like step that only cancel
//	                           (or Close, Restart) ends: turn_completed cancelled,
//	                           run_completed cancelled. Steering does not wake it.
//	#sim error <msg...>        the inference fails: run_error {error, retryable:
//	                           false}, no turn_completed; the session is failed
//	#sim error-retryable <msg> the same with retryable: true (the real server
//	                           always says false: a trap)
//	#sim retry                 a failed inference attempt: retry_attempt {attempt,
//	                           delay_ms}, then its back-off (Options.RetryBackoff,
//	                           doubling per attempt; cancel does not end it)
//	#sim die                   the run dies silently here (sandbox, checkpoint or
//	                           hook failure): no event, the session is failed after
//	                           EndDelay, streams carry keep-alives only. Before any
//	                           content directive: it dies at start-up, before
//	                           run_started.
//	#sim compaction            compaction_started, compaction_completed
//	#sim usage <p> <c>         total prompt/completion tokens of run_completed
//	                           (spread over the turns' usage_report events)
//	#sim stop <reason>         run_completed stop_reason (default completed)
//	#sim turns <n>             spread the text of each later text directive (or the
//	                           default text) over n turns, each with turn_started,
//	                           usage_report and turn_completed
//	#sim garbage               three frames to skip: data that is not JSON, an
//	                           envelope with two variants, a frame without data
//	#sim ring <n>              the session keeps only n events (forces gap_detected)
//	#sim drop-after <n>        the session's next 2 event streams are cut (TCP
//	                           close, no terminator) after writing n event frames
//	#sim stall-after <n>       the session's next event stream goes silent (no
//	                           events, no keep-alives, no close) after n frames
//	#sim fail-send <n> <kind>  the first n send requests with exactly this prompt
//	                           fail with kind: 503, 429, 500 or reset (before
//	                           idempotency, so the retry starts the run)
//
// A run on a model that is neither DefaultModel nor in Models (a custom
// model) fails every inference: turn_started, two retry_attempt events,
// run_error. A run whose turn would exceed overrides.max_turns (default
// 64) ends with stop_reason max_turns.
//
// # Tests
//
// Requests, RunsStarted, RunsForPrompt, SessionCount, ActiveRuns,
// Decisions, Cancels, Steers and RunState let tests see what a client did;
// InjectFault, SetDown, SetToken and Restart make the server fail the way
// networks, proxies and restarts do; the fault kind "reset-after" serves a
// request and then resets the connection instead of answering (applied,
// answer lost; a retry with its Idempotency-Key replays the 200).
package agentsim
