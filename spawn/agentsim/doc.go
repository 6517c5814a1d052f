// Package agentsim is a faithful simulator of the Stakpak agent server
// (AGENT_SERVER_API.md), scripted per prompt. Tests run it with
// NewTestServer; `jetpilot agentsim` and `jetpilot dev` run it with
// ListenAndServe or Serve.
//
// It owns the wire behaviour of the server, traps included, so the client
// in package spawn meets the bugs a real server would expose: bearer auth
// (health and openapi.json are public), error bodies with request ids,
// Idempotency-Key replay and conflict, the send-message limits, run state,
// tool approval, cancel, the message history, and the event stream. It
// does not own any client logic, and must not import package spawn.
//
// # Event stream
//
// Event ids start at 1 per session. Every event is kept in the session's
// ring (Options.RingSize). Runs publish from the moment their message is
// accepted, before any subscriber: a stream opened without Last-Event-ID
// gets only later events, so a client that subscribes late misses the
// start of the run (or all of it). With Last-Event-ID N, newer events
// still in the ring are replayed first; when N+1 has already left the ring
// the first frame is gap_detected and nothing is replayed. Keep-alive
// comments come every Options.KeepAlive.
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
// send request fail with 400 invalid_request naming the line. Without any
// text, bigtext, bigframe or tool directive before the first hang or error,
// the run says "Hello from agentsim." first; nothing after hang or error
// runs. A normal run is run_started, turn_started,
// text_delta..., text_complete, usage_report, turn_completed (Stop),
// run_completed {total_turns, total_usage, stop_reason "completed"}.
//
//	#sim text <text...>        stream text as ~5-byte text_delta events (on rune
//	                           boundaries; the wire may still cut inside a rune)
//	                           and text_complete at the turn's end; "\n" is a newline
//	#sim bigtext <n>           stream n bytes of ASCII text as 1 KiB deltas
//	#sim bigframe <n>          one text_delta whose data line is n bytes
//	#sim tool <name> [json]    consecutive tool lines are one tool_calls_proposed;
//	                           the turn ends with ToolCalls, then
//	                           waiting_for_tool_approval (pending ids) and the run
//	                           waits for every decision (or cancel). Then per call:
//	                           accept: tool_execution_started, _progress, _completed
//	                           (result "ok: <name>"); custom_result:
//	                           tool_execution_completed with the content; reject:
//	                           tool_rejected (reason = content or "rejected").
//	                           Ids are call_1, call_2, ... per session. Calls that
//	                           overrides.auto_approve allows are accepted at once.
//	                           A run that ends after tools gets a last empty turn.
//	#sim sleep <duration>      pause (Go duration; cancel and Close interrupt it)
//	#sim hang                  wait for cancel: run_completed stop_reason cancelled
//	#sim error <msg...>        end with run_error {error, retryable: false}
//	#sim error-retryable <msg> the same with retryable: true
//	#sim retry                 a retry_attempt event
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
// A cancel ends a run promptly: turn_completed Cancelled if a turn is
// open, then run_completed stop_reason cancelled. A run whose turn would
// exceed overrides.max_turns ends with stop_reason max_turns. After
// run_error the session's run_status is failed until the next run.
//
// # Tests
//
// Requests, RunsStarted, RunsForPrompt, SessionCount, ActiveRuns, Decisions
// and Cancels let tests see what a client did; InjectFault and SetDown make
// the server fail the way networks and proxies do.
package agentsim
