package spawn

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

func testRunnerOptions() RunnerOptions {
	return RunnerOptions{
		Worker:           "w1",
		StallTimeout:     5 * time.Second,
		MaxReconnectTime: 10 * time.Second,
		EndedReplayWait:  200 * time.Millisecond,
		Logger:           slog.New(slog.DiscardHandler),
	}
}

func newSimRunner(t *testing.T, simOpts agentsim.Options, opts RunnerOptions) (*agentsim.Server, *Client, *Runner) {
	t.Helper()
	srv, base := agentsimtest.New(t, simOpts)
	c := newTestClient(t, base, simOpts.Token)
	return srv, c, NewRunner(c, opts)
}

// recorder collects what a Run reports through its callbacks.
type recorder struct {
	mu      sync.Mutex
	events  []Event
	cursors []Cursor
	runID   chan Cursor // gets the first cursor with a run id
	sent    bool
}

func newRecorder() *recorder { return &recorder{runID: make(chan Cursor, 1)} }

func (r *recorder) attach(spec *Spec) *Spec {
	spec.OnEvent = func(ev Event) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.events = append(r.events, ev)
	}
	spec.OnCursor = func(c Cursor) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.cursors = append(r.cursors, c)
		if c.RunID != "" && !r.sent {
			r.sent = true
			r.runID <- c
		}
	}
	return spec
}

func (r *recorder) lastCursor() Cursor {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cursors) == 0 {
		return Cursor{}
	}
	return r.cursors[len(r.cursors)-1]
}

// assertOrdered checks events arrived once each, in id order.
func (r *recorder) assertOrdered(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 1; i < len(r.events); i++ {
		require.Greater(t, r.events[i].ID, r.events[i-1].ID, "event %d after %d", r.events[i].ID, r.events[i-1].ID)
	}
}

func requestsTo(srv *agentsim.Server, method, suffix string) []agentsim.RecordedRequest {
	var out []agentsim.RecordedRequest
	for _, r := range srv.Requests() {
		if r.Method == method && strings.HasSuffix(r.Path, suffix) {
			out = append(out, r)
		}
	}
	return out
}

func TestRunCompleted(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{Token: "tok", Models: []string{"override-model"}}, testRunnerOptions())
	rec := newRecorder()
	job := schemas.Job{
		ID:       "job-1",
		Prompt:   "say hi\n#sim usage 10 20\n#sim turns 2\n#sim text héllo wörld ✓ done, all good",
		Profile:  "ops",
		Workdir:  "/srv/app",
		Model:    "base-model",
		Metadata: map[string]string{"channel": "C1"},
		Overrides: &schemas.Overrides{
			Model: "override-model", MaxTurns: 8, SystemPrompt: "be brief",
			AutoApprove: &schemas.AutoApprove{Mode: schemas.AutoApproveAll},
		},
	}
	res, err := r.Run(t.Context(), rec.attach(&Spec{Policy: humanAsks, Job: job, Attempt: 2}))
	require.NoError(t, err)

	assert.Equal(t, schemas.StatusCompleted, res.Status)
	require.NotNil(t, res.ExitCode)
	assert.Equal(t, 0, *res.ExitCode)
	assert.Equal(t, "héllo wörld ✓ done, all good", res.Stdout)
	assert.Equal(t, &schemas.Usage{PromptTokens: 10, CompletionTokens: 20, TotalTokens: 30}, res.Usage)
	assert.Equal(t, 2, res.TotalTurns)
	assert.Equal(t, "completed", res.StopReason)
	assert.Equal(t, "job-1", res.JobID)
	assert.NotEmpty(t, res.SessionID)
	assert.NotEmpty(t, res.RunID)
	assert.Equal(t, 2, res.Attempt)
	assert.Equal(t, "w1", res.Worker)
	assert.Equal(t, map[string]string{"channel": "C1"}, res.Metadata)
	assert.False(t, res.FinishedAt.Before(res.StartedAt))
	assert.GreaterOrEqual(t, res.DurationMS, int64(0))
	assert.Empty(t, res.Warnings)
	assert.Nil(t, res.Error)
	rec.assertOrdered(t)
	last := rec.lastCursor()
	assert.Equal(t, res.SessionID, last.SessionID)
	assert.Equal(t, res.RunID, last.RunID)
	assert.Positive(t, last.LastEventID)

	// The wire: idempotency keys, title, cwd, subscription from 0 before
	// the message, and the message body.
	creates := requestsTo(srv, http.MethodPost, "/v1/sessions")
	require.Len(t, creates, 1)
	assert.Equal(t, "jetpilot-job-1-session", creates[0].Header.Get("Idempotency-Key"))
	assert.JSONEq(t, `{"title":"jetpilot: ops","cwd":"/srv/app"}`, string(creates[0].Body))
	sends := requestsTo(srv, http.MethodPost, "/messages")
	require.Len(t, sends, 1)
	assert.Equal(t, "jetpilot-job-1-run", sends[0].Header.Get("Idempotency-Key"))
	assert.Equal(t, "Bearer tok", sends[0].Header.Get("Authorization"))
	assert.JSONEq(t, `{
		"message": {"role": "user", "content": `+mustJSON(t, job.Prompt)+`},
		"type": "message", "run_id": null, "model": "override-model",
		"overrides": {"model": "override-model", "auto_approve": "none", "system_prompt": "be brief", "max_turns": 8}
	}`, string(sends[0].Body))
	evs := requestsTo(srv, http.MethodGet, "/events")
	require.NotEmpty(t, evs)
	assert.Equal(t, "0", evs[0].Header.Get("Last-Event-ID"))
	assert.True(t, evs[0].At.Before(sends[0].At), "subscribed before sending")
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

func TestRunSendsSandboxAndContext(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	job := schemas.Job{ID: "j-ctx", Prompt: "p", Sandbox: true,
		CallerContext: []schemas.ContextItem{{Name: "ticket", Content: "T-1", Priority: "high"}}}
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: job})
	require.NoError(t, err)
	assert.Equal(t, "Hello from agentsim.", res.Stdout)
	sends := requestsTo(srv, http.MethodPost, "/messages")
	require.Len(t, sends, 1)
	assert.JSONEq(t, `{"message":{"role":"user","content":"p"},"type":"message","run_id":null,"sandbox":true,
		"context":[{"name":"ticket","content":"T-1","priority":"high"}],"overrides":{"auto_approve":"none"}}`, string(sends[0].Body))
}

// TestRunCompletesBeforeSubscribe: the event stream only opens once the run
// is over; the Last-Event-ID 0 replay must still end the job.
func TestRunCompletesBeforeSubscribe(t *testing.T) {
	sim := agentsim.New(agentsim.Options{})
	t.Cleanup(sim.Close)
	var sent atomic.Bool
	base := rawServer(t, func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.Method == http.MethodGet && strings.HasSuffix(req.URL.Path, "/events"):
			if !sent.Load() {
				http.Error(w, `{"error":"not yet","code":"internal_error"}`, http.StatusServiceUnavailable)
				return
			}
			deadline := time.Now().Add(5 * time.Second)
			for sim.ActiveRuns() > 0 && time.Now().Before(deadline) {
				select {
				case <-req.Context().Done():
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
			// An HTTP handler is not the test goroutine: assert, not require.
			if !assert.Zero(t, sim.ActiveRuns(), "the run should be over before the stream opens") {
				http.Error(w, `{"error":"run still active","code":"internal_error"}`, http.StatusInternalServerError)
				return
			}
		case req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/messages"):
			defer sent.Store(true)
		}
		sim.ServeHTTP(w, req)
	})
	c := newTestClient(t, base, "")
	r := NewRunner(c, testRunnerOptions())
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "fast", Prompt: "#sim text quick one"}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, "quick one", res.Stdout)
	assert.Equal(t, "completed", res.StopReason)
	assert.Equal(t, 1, sim.RunsStarted())
}

func TestRunToolPolicyRejects(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	prompt := "#sim tool stakpak__run_command {\"cmd\":\"ls\"}\n#sim tool stakpak__delete_all {}\n#sim tool view {}\n#sim text done"
	res, err := r.Run(t.Context(), &Spec{
		Job:    schemas.Job{ID: "tools", Prompt: prompt},
		Policy: allowOnly(t, "run_command", "stakpak__view", "view"),
	})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, schemas.ToolCallCounts{Accepted: 2, Rejected: 1}, res.ToolCalls)
	assert.Contains(t, res.Stdout, "done")

	decisions := srv.Decisions(res.SessionID)
	require.Len(t, decisions, 1, "one run")
	byAction := map[string]agentsim.DecisionBody{}
	for _, d := range decisions[0] {
		byAction[d.Action+":"+d.Content] = d
	}
	assert.Len(t, decisions[0], 3)
	// The server ignores a reject's content: the reason goes as the tool's
	// result, so the model learns why; it is still counted as rejected.
	assert.Contains(t, byAction, "custom_result:Blocked by profile allowed_tools (tool: delete_all)")
	reqs := requestsTo(srv, http.MethodPost, "/tools/decisions")
	require.Len(t, reqs, 1)
	assert.True(t, strings.HasPrefix(reqs[0].Header.Get("Idempotency-Key"), "jetpilot-tools-decide-"), reqs[0].Header.Get("Idempotency-Key"))
}

func TestRunPauseThenResume(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	rec := newRecorder()
	job := schemas.Job{
		ID:              "pause-1",
		Prompt:          "#sim text before tools. \n#sim tool stakpak__view {\"path\":\"/\"}\n#sim tool stakpak__run_command {\"cmd\":\"rm -rf /tmp/x\"}\n#sim text after tools.",
		PauseOnApproval: true,
		AllowedTools:    []string{"view"},
	}
	res, err := r.Run(t.Context(), rec.attach(&Spec{Policy: humanAsks, Job: job}))
	require.NoError(t, err)
	require.Equal(t, schemas.StatusPaused, res.Status)
	require.NotNil(t, res.ExitCode)
	assert.Equal(t, 10, *res.ExitCode)
	assert.True(t, res.Paused)
	require.NotNil(t, res.PauseReason)
	assert.Equal(t, schemas.PauseToolApproval, res.PauseReason.Type)
	require.Len(t, res.PauseReason.PendingToolCalls, 1)
	pending := res.PauseReason.PendingToolCalls[0]
	assert.Equal(t, "stakpak__run_command", pending.Name)
	assert.JSONEq(t, `{"cmd":"rm -rf /tmp/x"}`, string(pending.Arguments))
	assert.Equal(t, schemas.ToolCallCounts{}, res.ToolCalls, "nothing is sent before the human answers")
	assert.Equal(t, map[string]schemas.ToolDecision{"call_1": {Action: schemas.ActionAccept}}, res.Held,
		"the policy's verdict on the allowed call is held for the human's answer")
	assert.Contains(t, res.Stdout, "before tools.")
	assert.Empty(t, requestsTo(srv, http.MethodPost, "/tools/decisions"))
	cur := rec.lastCursor()
	require.Equal(t, res.RunID, cur.RunID)
	require.Positive(t, cur.LastEventID)
	assert.Equal(t, 1, srv.ActiveRuns(), "the run waits for the human")

	// A human decides; the worker resumes from the cursor with the held
	// verdicts and the human's answer, sent in one request.
	decisions := maps.Clone(res.Held)
	decisions[pending.ID] = schemas.ToolDecision{Action: schemas.ActionAccept}
	rec2 := newRecorder()
	res2, err := r.Run(t.Context(), rec2.attach(&Spec{Policy: humanAsks, Job: job, Resume: &cur, Attempt: 1, Decisions: decisions}))
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res2.Status, "%+v %v", res2.Error, res2.Warnings)
	assert.Equal(t, res.RunID, res2.RunID)
	assert.Equal(t, schemas.ToolCallCounts{Accepted: 2}, res2.ToolCalls)
	assert.Contains(t, res2.Stdout, "after tools.")
	assert.Contains(t, res2.Stdout, "before tools.", "a final result carries the run's whole text")
	rec2.mu.Lock()
	require.NotEmpty(t, rec2.events)
	assert.Greater(t, rec2.events[0].ID, cur.LastEventID, "only events after the cursor")
	rec2.mu.Unlock()
	assert.Equal(t, 1, srv.RunsStarted())
	got := srv.Decisions(res.SessionID)
	require.Len(t, got, 1, "one run")
	assert.Len(t, got[0], 2, "the policy's call and the human's")
	require.Len(t, requestsTo(srv, http.MethodPost, "/tools/decisions"), 1, "one request for the whole proposal")
	final := rec2.lastCursor()
	assert.ElementsMatch(t, []string{"call_1", pending.ID}, final.Decided)

	// A take-over from the same cursor never decides the calls again.
	res3, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: job, Resume: &final, Attempt: 2, Decisions: decisions})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res3.Status)
	assert.Len(t, requestsTo(srv, http.MethodPost, "/tools/decisions"), 1)
}

func TestRunPauseWithoutJobListAsksEverything(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "p2", Prompt: "#sim tool view {}", PauseOnApproval: true}})
	require.NoError(t, err)
	require.Equal(t, schemas.StatusPaused, res.Status)
	require.Len(t, res.PauseReason.PendingToolCalls, 1)
	assert.Empty(t, srv.Decisions(res.SessionID), "nothing decided unattended")
}

func TestRunError(t *testing.T) {
	_, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "err", Prompt: "#sim text partial\n#sim error model exploded"}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusFailed, res.Status)
	require.NotNil(t, res.ExitCode)
	assert.Equal(t, 1, *res.ExitCode)
	assert.Equal(t, "model exploded", res.Stderr)
	assert.Equal(t, &schemas.Error{Code: "run_error", Message: "model exploded"}, res.Error)
	assert.Equal(t, "partial", res.Stdout)
}

func TestRunPermanentRejectionIsAFailedResult(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	items := make([]schemas.ContextItem, 33)
	for i := range items {
		items[i] = schemas.ContextItem{Name: fmt.Sprintf("c%d", i), Content: "x"}
	}
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "bad-context", Prompt: "x", CallerContext: items}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusFailed, res.Status)
	require.NotNil(t, res.Error)
	assert.Equal(t, "invalid_context", res.Error.Code)
	assert.NotEmpty(t, res.SessionID)
	assert.Zero(t, srv.RunsStarted())
}

// The real server takes any model name and fails the run only after its
// inference retries (AGENT_SERVER_API.md r2).
func TestRunUnknownModelFailsAfterRetries(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "bad-model", Prompt: "x", Model: "no-such/model"}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusFailed, res.Status)
	require.NotNil(t, res.Error)
	assert.Equal(t, "run_error", res.Error.Code)
	assert.Equal(t, 1, srv.RunsStarted())
}

func TestRunCancelled(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	rec := newRecorder()
	ctl := NewControl()
	cancelOnEvent(t, rec, ctl, EventTextComplete)
	res, err := r.Run(t.Context(), rec.attach(&Spec{Policy: humanAsks, Job: schemas.Job{ID: "cancel", Prompt: "#sim text waiting\n#sim hang"}, Control: ctl}))
	require.NoError(t, err)
	assert.Empty(t, res.Warnings, "the server confirmed the end")
	assert.Equal(t, schemas.StatusCancelled, res.Status)
	assert.Equal(t, "cancelled", res.StopReason)
	require.NotNil(t, res.ExitCode)
	assert.Equal(t, 1, *res.ExitCode)
	assert.Equal(t, "waiting", res.Stdout)
	assert.Equal(t, 1, srv.Cancels())
}

func TestRunTimeout(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "slow", Prompt: "#sim text partial text\n#sim hang"}, Timeout: 500 * time.Millisecond})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusTimedOut, res.Status)
	assert.Nil(t, res.ExitCode)
	assert.True(t, res.TimedOut)
	assert.NotEmpty(t, res.SessionID)
	assert.NotEmpty(t, res.RunID)
	assert.Equal(t, "partial text", res.Stdout)
	assert.Contains(t, res.Stderr, "timed out")
	assert.Equal(t, 1, srv.Cancels())
	cancels := requestsTo(srv, http.MethodPost, "/cancel")
	require.Len(t, cancels, 1)
	assert.JSONEq(t, `{"run_id":`+mustJSON(t, res.RunID)+`}`, string(cancels[0].Body))
	require.Eventually(t, func() bool { return srv.ActiveRuns() == 0 }, 5*time.Second, 10*time.Millisecond)
}

func TestRunReconnectsAfterDrop(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	rec := newRecorder()
	text := "a much longer text, streamed in many small deltas — with ünïcödé ✓ — so the drops land mid-run"
	res, err := r.Run(t.Context(), rec.attach(&Spec{Policy: humanAsks, Job: schemas.Job{ID: "drop", Prompt: "#sim drop-after 3\n#sim text " + text}}))
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, text, res.Stdout, "no lost or duplicated text")
	rec.assertOrdered(t)
	evs := requestsTo(srv, http.MethodGet, "/events")
	require.GreaterOrEqual(t, len(evs), 3, "two cut streams, then one that finishes")
	for _, e := range evs[1:] {
		assert.NotEqual(t, "0", e.Header.Get("Last-Event-ID"), "reconnects resume after the last event")
	}
	assert.Empty(t, res.Warnings)
}

func TestRunReconnectsAfterStall(t *testing.T) {
	opts := testRunnerOptions()
	opts.StallTimeout = 300 * time.Millisecond
	logs := &testsupport.SyncBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	srv, _, r := newSimRunner(t, agentsim.Options{}, opts)
	text := "stalled streams are noticed and replaced"
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "stall", Prompt: "#sim stall-after 3\n#sim text " + text}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, text, res.Stdout)
	assert.GreaterOrEqual(t, len(requestsTo(srv, http.MethodGet, "/events")), 2)
	assert.Contains(t, logs.String(), "event stream stalled")
}

func TestRunGapRebuildsFromMessages(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	text := "this text outlives a tiny event ring, so a reconnect finds a gap"
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "gap", Prompt: "#sim ring 4\n#sim drop-after 2\n#sim text " + text}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, text, res.Stdout)
	require.NotEmpty(t, res.Warnings)
	assert.Contains(t, strings.Join(res.Warnings, "\n"), "gap")
	assert.Equal(t, 1, srv.RunsStarted())
}

func TestRunSkipsGarbageAndOversizedFrames(t *testing.T) {
	opts := testRunnerOptions()
	opts.MaxFrameBytes = 64 << 10
	_, _, r := newSimRunner(t, agentsim.Options{}, opts)
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "garbage", Prompt: "#sim garbage\n#sim text fine"}})
	require.NoError(t, err)
	assert.Equal(t, "fine", res.Stdout)
	assert.Empty(t, res.Warnings)

	res, err = r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "big", Prompt: "#sim text start\n#sim bigframe 200000\n#sim text end"}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.True(t, strings.HasPrefix(res.Stdout, "start"), "%.40q", res.Stdout)
	assert.True(t, strings.HasSuffix(res.Stdout, "end"), "%.40q", res.Stdout[max(0, len(res.Stdout)-40):])
	assert.Greater(t, len(res.Stdout), 100000, "the skipped text is rebuilt from the messages")
	assert.Contains(t, strings.Join(res.Warnings, "\n"), "larger than")
}

func TestRunFailedSendRetriedByCaller(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	job := schemas.Job{ID: "retry-503", Prompt: "#sim fail-send 1 503\n#sim text ok"}
	_, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: job})
	require.Error(t, err)
	assert.True(t, IsTransient(err), "%v", err)
	var ce *CursorError
	require.ErrorAs(t, err, &ce)
	require.NotEmpty(t, ce.Cursor.SessionID)
	assert.Empty(t, ce.Cursor.RunID)
	assert.Zero(t, srv.RunsStarted())

	// The caller retries from the cursor.
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: job, Resume: &ce.Cursor, Attempt: 2})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, "ok", res.Stdout)
	assert.Equal(t, ce.Cursor.SessionID, res.SessionID)

	// A redelivery that lost the cursor starts over: the same keys
	// find the same session and the same run.
	res2, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: job, Attempt: 3})
	require.NoError(t, err)
	assert.Equal(t, res.SessionID, res2.SessionID)
	assert.Equal(t, res.RunID, res2.RunID)
	assert.Equal(t, "ok", res2.Stdout)
	assert.Equal(t, 1, srv.RunsStarted())
	assert.Equal(t, 1, srv.SessionCount())
}

// A send whose connection is reset before any answer, on a kept-alive
// connection: net/http sends a request that carries an Idempotency-Key again
// on a new connection by itself, so the run starts once and the phase
// completes without the caller retrying.
func TestRunSendResetIsReplayedByTheTransport(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "retry-reset", Prompt: "#sim fail-send 1 reset\n#sim text ok"}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, "ok", res.Stdout)
	assert.Equal(t, 1, srv.RunsStarted())
	assert.Len(t, requestsTo(srv, http.MethodPost, "/messages"), 2, "the reset send and its replay")
}

func TestRunReattachToEndedRun(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	job := schemas.Job{ID: "ended", Prompt: "#sim usage 5 6\n#sim text all finished"}
	rec := newRecorder()
	first, err := r.Run(t.Context(), rec.attach(&Spec{Policy: humanAsks, Job: job}))
	require.NoError(t, err)
	final := rec.lastCursor()
	require.Positive(t, final.LastEventID)

	// With the run id, from the start: the replay has everything.
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: job, Resume: &Cursor{SessionID: first.SessionID, RunID: first.RunID}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, "all finished", res.Stdout)
	assert.Equal(t, first.Usage, res.Usage)
	assert.Empty(t, res.Warnings)

	// Without the run id: found from the replay, never sent again.
	res, err = r.Run(t.Context(), &Spec{Policy: humanAsks, Job: job, Resume: &Cursor{SessionID: first.SessionID}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, first.RunID, res.RunID)
	assert.Equal(t, "all finished", res.Stdout)
	assert.Equal(t, first.Usage, res.Usage)

	// Past the final event (processed, but its result not published): the
	// replay from one before the cursor has the run's end again.
	res, err = r.Run(t.Context(), &Spec{Policy: humanAsks, Job: job, Resume: &final})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, "all finished", res.Stdout)
	assert.Equal(t, first.Usage, res.Usage)
	assert.Empty(t, res.Warnings)

	assert.Equal(t, 1, srv.RunsStarted())
	assert.Len(t, requestsTo(srv, http.MethodPost, "/messages"), 1)
}

func TestRunReattachToFailedRunSnapshot(t *testing.T) {
	_, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	job := schemas.Job{ID: "ended-bad", Prompt: "#sim error broke"}
	rec := newRecorder()
	_, err := r.Run(t.Context(), rec.attach(&Spec{Policy: humanAsks, Job: job}))
	require.NoError(t, err)
	final := rec.lastCursor()
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: job, Resume: &final})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusFailed, res.Status)
	require.NotNil(t, res.Error)
	assert.Equal(t, "run_error", res.Error.Code)
}

func TestRunCallerCancelLeavesRunGoing(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	rec := newRecorder()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		select {
		case <-rec.runID:
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err := r.Run(ctx, rec.attach(&Spec{Policy: humanAsks, Job: schemas.Job{ID: "shutdown", Prompt: "#sim hang"}}))
	require.Error(t, err)
	require.ErrorIs(t, err, context.Canceled)
	assert.False(t, IsTransient(err))
	var ce *CursorError
	require.ErrorAs(t, err, &ce)
	require.NotEmpty(t, ce.Cursor.RunID)
	assert.Equal(t, 1, srv.ActiveRuns(), "the caller decides whether to cancel")
	assert.Zero(t, srv.Cancels())

	require.NoError(t, r.CancelRun(t.Context(), ce.Cursor))
	require.Eventually(t, func() bool { return srv.ActiveRuns() == 0 }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, r.CancelRun(t.Context(), ce.Cursor), "an ended run is not an error")
	require.NoError(t, r.CancelRun(t.Context(), Cursor{SessionID: ce.Cursor.SessionID}), "no active run")
	require.Error(t, r.CancelRun(t.Context(), Cursor{}))
}

func TestRunGivesUpWhenServerGone(t *testing.T) {
	opts := testRunnerOptions()
	opts.MaxReconnectTime = 600 * time.Millisecond
	opts.StallTimeout = 300 * time.Millisecond
	srv, _, r := newSimRunner(t, agentsim.Options{}, opts)
	rec := newRecorder()
	go func() {
		select {
		case <-rec.runID:
			srv.SetDown(true)
		case <-time.After(10 * time.Second):
		}
	}()
	job := schemas.Job{ID: "outage", Prompt: "#sim text before outage\n#sim hang"}
	_, err := r.Run(t.Context(), rec.attach(&Spec{Policy: humanAsks, Job: job}))
	require.Error(t, err)
	assert.True(t, IsTransient(err), "%v", err)
	var ce *CursorError
	require.ErrorAs(t, err, &ce)
	require.NotEmpty(t, ce.Cursor.RunID)

	// Back up: the retry re-attaches and, on timeout, cancels the run.
	srv.SetDown(false)
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: job, Resume: &ce.Cursor, Timeout: 400 * time.Millisecond})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusTimedOut, res.Status)
	assert.Equal(t, ce.Cursor.RunID, res.RunID)
	assert.Equal(t, 1, srv.Cancels())
	assert.Equal(t, 1, srv.RunsStarted())
}

func TestRunSessionLost(t *testing.T) {
	_, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "lost"}, Resume: &Cursor{SessionID: "00000000-0000-0000-0000-000000000000", RunID: "r"}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusFailed, res.Status)
	assert.Equal(t, "session_not_found", res.Error.Code)
}

func TestRunBadSpec(t *testing.T) {
	_, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	for _, spec := range []Spec{
		{},
		{Job: schemas.Job{ID: "x"}},
		{Job: schemas.Job{ID: "x", Prompt: "p"}, Timeout: -time.Second},
		{Job: schemas.Job{ID: "x"}, Resume: &Cursor{}},
	} {
		_, err := r.Run(t.Context(), &spec)
		require.Error(t, err)
		assert.False(t, IsTransient(err))
	}
}

// TestRunSendConflictAdoptsActiveRun: the session already has a run the
// send's key does not know (the key expired): never start a second one,
// follow the active one.
func TestRunSendConflictAdoptsActiveRun(t *testing.T) {
	srv, c, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	sess, err := c.CreateSession(t.Context(), CreateSessionRequest{Title: "jetpilot: default"}, sessionKey("conflict"))
	require.NoError(t, err)
	runID, err := c.SendMessage(t.Context(), sess.ID, SendMessageRequest{Message: MessageInput{Content: "#sim text earlier\n#sim hang"}}, "some-other-key")
	require.NoError(t, err)

	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "conflict", Prompt: "#sim text new"}, Timeout: 300 * time.Millisecond})
	require.NoError(t, err)
	assert.Equal(t, sess.ID, res.SessionID)
	assert.Equal(t, runID, res.RunID)
	assert.Equal(t, schemas.StatusTimedOut, res.Status)
	assert.Equal(t, "earlier", res.Stdout)
	assert.Equal(t, 1, srv.RunsStarted())
	assert.Equal(t, 1, srv.Cancels())
}

// TestRunKeyReusedRebuildsEndedRun: a redelivered job whose body changed
// (the key is remembered with another body) must not start a second run.
func TestRunKeyReusedRebuildsEndedRun(t *testing.T) {
	srv, _, r := newSimRunner(t, agentsim.Options{}, testRunnerOptions())
	first, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "reused", Prompt: "#sim text first body"}})
	require.NoError(t, err)
	res, err := r.Run(t.Context(), &Spec{Policy: humanAsks, Job: schemas.Job{ID: "reused", Prompt: "#sim text second body"}})
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, first.SessionID, res.SessionID)
	assert.Equal(t, first.RunID, res.RunID)
	assert.Equal(t, "first body", res.Stdout)
	assert.NotEmpty(t, res.Warnings)
	assert.Equal(t, 1, srv.RunsStarted())
}
