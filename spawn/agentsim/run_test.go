package agentsim

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// noAuto is a send body whose run decides nothing by itself.
func withApprove(prompt string, approve any) map[string]any {
	m := msg(prompt)
	m["overrides"] = map[string]any{"auto_approve": approve}
	return m
}

func (c *client) sendWith(sid string, body map[string]any) string {
	c.t.Helper()
	st, b := c.sendBody(sid, body)
	require.Equal(c.t, http.StatusOK, st, string(b))
	var r struct {
		RunID string `json:"run_id"`
	}
	require.NoError(c.t, json.Unmarshal(b, &r))
	return r.RunID
}

func TestToolApprovalBothEndpoints(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim text let me look\n#sim tool stakpak__view {\"path\":\"/etc\"}\n#sim tool run_command {\"cmd\":\"ls\"}\n#sim text all done")

	frames := st.until("waiting_for_tool_approval")
	proposed := find(frames, "tool_calls_proposed")[0].payload(t)
	calls := proposed["tool_calls"].([]any)
	require.Len(t, calls, 2)
	c0 := calls[0].(map[string]any)
	assert.Equal(t, "call_1", c0["id"])
	assert.Equal(t, "stakpak__view", c0["name"])
	assert.Equal(t, map[string]any{"path": "/etc"}, c0["arguments"])
	waitWaiting(t, s, sid)

	dec := "/v1/sessions/" + sid + "/tools/decisions"
	one := "/v1/sessions/" + sid + "/tools/call_1/decision"
	status, b, _ := c.do("POST", one, map[string]any{"run_id": runID, "action": "custom_result"}, nil)
	requireError(t, status, b, http.StatusBadRequest, codeInvalidRequest)
	status, b, h := c.do("POST", one, map[string]any{"run_id": runID, "action": "maybe"}, nil)
	requirePlain(t, status, b, h, http.StatusUnprocessableEntity)
	status, b, _ = c.do("POST", one, map[string]any{"run_id": newID(), "action": "accept"}, nil)
	requireError(t, status, b, http.StatusConflict, codeRunMismatch)

	status, b, _ = c.do("POST", one, map[string]any{"run_id": runID, "action": "accept"}, nil)
	require.Equal(t, http.StatusOK, status, string(b))
	require.JSONEq(t, `{"accepted":true,"run_id":"`+runID+`"}`, string(b))
	frames = st.until("tool_execution_completed")
	require.Equal(t, []string{"tool_execution_started", "tool_execution_completed"}, events(frames))
	waitWaiting(t, s, sid) // call_2 is undecided: the run waits
	// The alias route; reject content never reaches the model.
	status, b, _ = c.do("POST", "/v1/sessions/"+sid+"/tools/resolve", map[string]any{"run_id": runID, "decisions": map[string]any{
		"call_2": map[string]any{"action": "reject", "content": "Blocked by profile allowed_tools (tool: run_command)"},
	}}, nil)
	require.Equal(t, http.StatusOK, status, string(b))

	frames = st.until("run_completed")
	require.Equal(t, []string{"tool_rejected", "turn_completed", "turn_started"}, events(frames)[:3])
	assert.Equal(t, rejectedReason, frames[0].payload(t)["reason"])
	assert.Equal(t, "all done", textOf(t, frames))
	assert.EqualValues(t, 2, frames[len(frames)-1].payload(t)["total_turns"])
	assert.Equal(t, []map[string]DecisionBody{{
		"call_1": {Action: "accept"},
		"call_2": {Action: "reject", Content: "Blocked by profile allowed_tools (tool: run_command)"},
	}}, s.Decisions(sid))

	waitIdle(t, s)
	status, b, _ = c.do("POST", dec, map[string]any{"run_id": runID, "decisions": map[string]any{"call_1": map[string]any{"action": "accept"}}}, nil)
	requireError(t, status, b, http.StatusConflict, codeSessionNotRunning)
	status, b, _ = c.do("POST", "/v1/sessions/"+newID()+"/tools/decisions", map[string]any{"run_id": runID, "decisions": map[string]any{}}, nil)
	requireError(t, status, b, http.StatusConflict, codeSessionNotRunning)
	status, b, _ = c.do("GET", "/v1/sessions/"+sid+"/tools/pending", nil, nil)
	require.Equal(t, http.StatusOK, status)
	require.JSONEq(t, `{"run_id":null,"tool_calls":[]}`, string(b))
}

// Point 10: the order around tools, and usage per turn.
func TestToolEventOrder(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.sendWith(sid, withApprove("#sim usage 30 9\n#sim text looking\n#sim tool view {}\n#sim tool deploy {}", []string{"view"}))
	frames := st.until("tool_execution_completed")
	i := len(frames) - 8
	require.Equal(t, []string{"turn_started", "text_delta", "text_complete", "usage_report", "tool_calls_proposed",
		"waiting_for_tool_approval", "tool_execution_started"}, events(frames)[i:i+7])
	// Every proposed id is listed as waiting, the auto-approved one too.
	assert.Equal(t, []any{"call_1", "call_2"}, find(frames, "waiting_for_tool_approval")[0].payload(t)["pending_tool_call_ids"])
	waitWaiting(t, s, sid)
	c.decide(sid, runID, map[string]any{"call_2": map[string]any{"action": "accept"}})
	frames = append(frames, st.until("run_completed")...)
	tail := events(frames)[i+8:]
	require.Equal(t, []string{"tool_execution_started", "tool_execution_completed", "turn_completed",
		"turn_started", "usage_report", "turn_completed", "run_completed"}, tail)

	var sum float64
	for _, f := range find(frames, "usage_report") {
		u := f.payload(t)["usage"].(map[string]any)
		sum += u["prompt_tokens"].(float64)
		assert.Less(t, u["prompt_tokens"].(float64), 30.0, "usage_report is one turn's usage")
	}
	assert.EqualValues(t, 30, sum)
	end := frames[len(frames)-1].payload(t)
	assert.Equal(t, map[string]any{"prompt_tokens": 30.0, "completion_tokens": 9.0, "total_tokens": 39.0}, end["total_usage"])
}

func TestToolCustomResultAndAutoApprove(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.sendWith(sid, withApprove("#sim tool stakpak__view {}\n#sim tool deploy {}", []string{"other__view"}))
	st.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid) // the view call (auto-approved: prefixes are ignored) ran
	c.decide(sid, runID, map[string]any{"call_2": map[string]any{"action": "custom_result", "content": "deployed by hand"}})
	frames := st.until("run_completed")
	var results []string
	for _, f := range find(frames, "tool_execution_completed") {
		p := f.payload(t)
		results = append(results, p["result"].(string))
		assert.Equal(t, false, p["is_error"])
	}
	assert.Equal(t, []string{"ok: stakpak__view", "deployed by hand"}, results)
	assert.Equal(t, []map[string]DecisionBody{{"call_2": {Action: "custom_result", Content: "deployed by hand"}}}, s.Decisions(sid))
}

// Point 6.
func TestRejectContentIgnored(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim tool rm {}\n#sim tool deploy {}")
	st.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid)
	status, b, _ := c.do("POST", "/v1/sessions/"+sid+"/tools/decisions", map[string]any{"run_id": runID, "decisions": map[string]any{
		"call_1": map[string]any{"action": "custom_result"},
	}}, nil)
	requireError(t, status, b, http.StatusBadRequest, codeInvalidRequest)
	c.decide(sid, runID, map[string]any{
		"call_1": map[string]any{"action": "reject", "content": "never read by anyone"},
		"call_2": map[string]any{"action": "custom_result", "content": "the custom result"},
	})
	frames := st.until("turn_completed")
	rej := find(frames, "tool_rejected")
	require.Len(t, rej, 1)
	assert.Equal(t, "Tool call rejected by user", rej[0].payload(t)["reason"])
	done := find(frames, "tool_execution_completed")
	require.Len(t, done, 1)
	assert.Equal(t, "the custom result", done[0].payload(t)["result"])
	assert.Equal(t, false, done[0].payload(t)["is_error"])
	waitIdle(t, s)
	_, b, _ = c.do("GET", "/v1/sessions/"+sid+"/messages", nil, nil)
	assert.Contains(t, string(b), `"content":"Tool call rejected by user"`)
	assert.Contains(t, string(b), `"content":"the custom result"`)
	assert.NotContains(t, string(b), "never read")
}

// Point 1: cancel is a flag. It does not end a wait for decisions; the
// next command wakes the run, which then sees the flag first.
func TestCancelIsOnlyAFlag(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{KeepAlive: 10 * time.Millisecond})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim tool deploy {}\n#sim tool check {}")
	st.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid)
	c.cancelRun(sid, runID)
	c.cancelRun(sid, runID) // accepted again, counted once
	require.Equal(t, 1, s.Cancels())
	st.quiet(100 * time.Millisecond)
	require.Equal(t, stateRunning, s.RunState(sid), "a cancelled run waiting for decisions stays paused")
	waitWaiting(t, s, sid)

	c.decide(sid, runID, map[string]any{"call_1": map[string]any{"action": "accept"}})
	frames := st.until("run_completed")
	require.Equal(t, []string{"tool_execution_completed", "tool_execution_completed", "turn_completed", "run_completed"}, events(frames))
	for _, f := range frames[:2] {
		p := f.payload(t)
		assert.Equal(t, cancelledResult, p["result"])
		assert.Equal(t, true, p["is_error"])
	}
	assert.Equal(t, "cancelled", frames[2].payload(t)["finish_reason"])
	assert.Equal(t, "cancelled", frames[3].payload(t)["stop_reason"])
	waitIdle(t, s)
}

// Point 1: an inference in flight is not interrupted, and its answer
// without tool calls ends the run completed.
func TestCancelDuringInferenceCanComplete(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim sleep 200ms\n#sim text the answer")
	waitPhase(t, s, sid, "inference")
	c.cancelRun(sid, runID)
	frames := st.until("run_completed")
	assert.Equal(t, "the answer", textOf(t, frames))
	assert.Equal(t, "stop", find(frames, "turn_completed")[0].payload(t)["finish_reason"])
	assert.Equal(t, "completed", frames[len(frames)-1].payload(t)["stop_reason"])

	// With tool calls, the tool loop sees the flag: nothing runs.
	waitIdle(t, s)
	runID = c.send(sid, "#sim sleep 200ms\n#sim tool deploy {}")
	waitPhase(t, s, sid, "inference")
	c.cancelRun(sid, runID)
	frames = st.until("run_completed")
	tail := events(frames)[len(frames)-6:]
	require.Equal(t, []string{"usage_report", "tool_calls_proposed", "waiting_for_tool_approval", "tool_execution_completed", "turn_completed", "run_completed"}, tail)
	assert.Equal(t, cancelledResult, find(frames, "tool_execution_completed")[0].payload(t)["result"])
}

// Point 1: a retry back-off is not interrupted; the next attempt's check
// ends the run (no turn_completed).
func TestCancelWaitsOutRetryBackoff(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{RetryBackoff: 300 * time.Millisecond})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim retry\n#sim text never")
	st.until("retry_attempt")
	seen := time.Now()
	waitPhase(t, s, sid, "backoff")
	c.cancelRun(sid, runID)
	frames := st.until("run_completed")
	assert.GreaterOrEqual(t, time.Since(seen), 200*time.Millisecond, "the back-off ran to its end")
	require.Equal(t, []string{"run_completed"}, events(frames))
	assert.Equal(t, "cancelled", frames[0].payload(t)["stop_reason"])
}

// Point 1: the flag is checked at the top of each turn: a run cancelled
// while starting ends with no turn at all.
func TestCancelChecksAtTopOfTurn(t *testing.T) {
	t.Parallel()
	_, base := newTestServer(t, Options{StartDelay: 300 * time.Millisecond})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "hello")
	c.cancelRun(sid, runID)
	frames := st.until("run_completed")
	require.Equal(t, []string{"run_started", "future_thing", "run_completed"}, events(frames))
	p := frames[2].payload(t)
	assert.Equal(t, "cancelled", p["stop_reason"])
	assert.EqualValues(t, 0, p["total_turns"])
}

// Point 1: an executing tool honours the token.
func TestCancelInterruptsExecutingTool(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim tool-time 1h\n#sim tool build {}\n#sim tool test {}")
	st.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid)
	c.decide(sid, runID, map[string]any{"call_1": map[string]any{"action": "accept"}, "call_2": map[string]any{"action": "accept"}})
	st.until("tool_execution_started")
	waitPhase(t, s, sid, "executing")
	c.cancelRun(sid, runID)
	frames := st.until("run_completed")
	require.Equal(t, []string{"tool_execution_completed", "tool_execution_completed", "turn_completed", "run_completed"}, events(frames))
	for i, f := range frames[:2] {
		p := f.payload(t)
		assert.Equal(t, "call_"+itoa(i+1), p["tool_call_id"])
		assert.Equal(t, cancelledResult, p["result"])
		assert.Equal(t, true, p["is_error"])
	}
}

// "#sim hang" is an executing step that honours the token.
func TestCancelHangingRun(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim hang")
	frames := st.until("usage_report")
	require.Equal(t, defaultText, textOf(t, frames))
	waitPhase(t, s, sid, "hang")
	state, rid := c.runState(sid)
	require.Equal(t, "running", state)
	require.Equal(t, runID, rid)

	cancel := "/v1/sessions/" + sid + "/cancel"
	status, b, _ := c.do("POST", cancel, map[string]any{"run_id": newID()}, nil)
	requireError(t, status, b, http.StatusConflict, codeRunMismatch)
	status, b, h := c.do("POST", cancel, map[string]any{}, nil)
	requirePlain(t, status, b, h, http.StatusUnprocessableEntity)
	require.Equal(t, 0, s.Cancels())

	status, b, _ = c.do("POST", cancel, map[string]any{"run_id": runID}, nil)
	require.Equal(t, http.StatusOK, status, string(b))
	require.JSONEq(t, `{"cancelled":true,"run_id":"`+runID+`"}`, string(b))
	frames = st.until("run_completed")
	require.Equal(t, []string{"turn_completed", "run_completed"}, events(frames))
	assert.Equal(t, "cancelled", frames[0].payload(t)["finish_reason"])
	rc := frames[1].payload(t)
	assert.Equal(t, "cancelled", rc["stop_reason"])
	assert.EqualValues(t, 1, rc["total_turns"])

	require.Equal(t, 1, s.Cancels())
	waitIdle(t, s)
	state, rid = c.runState(sid)
	require.Equal(t, "idle", state)
	require.Empty(t, rid)
	status, b, _ = c.do("POST", cancel, map[string]any{"run_id": runID}, nil)
	requireError(t, status, b, http.StatusConflict, codeSessionNotRunning)
	status, b, _ = c.do("POST", "/v1/sessions/"+newID()+"/cancel", map[string]any{"run_id": runID}, nil)
	requireError(t, status, b, http.StatusConflict, codeSessionNotRunning)
}

// Point 2: a steering message wakes a cancelled run waiting for decisions;
// the loop checks cancel first.
func TestSteeringWakesCancelledRun(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim tool deploy {}")
	st.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid)
	c.cancelRun(sid, runID)
	status, b := c.steer(sid, runID, "steering", "stop now")
	require.Equal(t, http.StatusOK, status, string(b))
	require.JSONEq(t, `{"run_id":"`+runID+`"}`, string(b))
	require.Equal(t, 1, s.Steers())
	frames := st.until("run_completed")
	require.Equal(t, []string{"tool_execution_completed", "turn_completed", "run_completed"}, events(frames))
	assert.Equal(t, cancelledResult, frames[0].payload(t)["result"])
	assert.Equal(t, "cancelled", frames[2].payload(t)["stop_reason"])
}

// Point 2: without cancel, steering skips the undone calls and becomes the
// next turn's user message; run_mismatch without the run id.
func TestSteeringSkipsUndoneCalls(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)

	status, b := c.steer(sid, newID(), "steering", "nobody runs")
	requireError(t, status, b, http.StatusConflict, codeSessionNotRunning)
	runID := c.send(sid, "#sim tool a {}\n#sim tool b {}\n#sim text done")
	st.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid)
	status, b = c.sendBody(sid, map[string]any{"message": map[string]any{"role": "user", "content": "x"}, "type": "steering"})
	requireError(t, status, b, http.StatusConflict, codeRunMismatch)
	status, b = c.steer(sid, newID(), "steering", "x")
	requireError(t, status, b, http.StatusConflict, codeRunMismatch)
	require.Equal(t, 0, s.Steers())

	status, b = c.steer(sid, runID, "steering", "change of plan")
	require.Equal(t, http.StatusOK, status, string(b))
	frames := st.until("run_completed")
	require.Equal(t, []string{"tool_rejected", "tool_rejected", "turn_completed", "turn_started"}, events(frames)[:4])
	for _, f := range frames[:2] {
		assert.Equal(t, steeringSkipped, f.payload(t)["reason"])
	}
	assert.Equal(t, "tool_calls", frames[2].payload(t)["finish_reason"])
	assert.Equal(t, "done", textOf(t, frames))
	assert.Equal(t, "completed", frames[len(frames)-1].payload(t)["stop_reason"])
	waitIdle(t, s)
	_, b, _ = c.do("GET", "/v1/sessions/"+sid+"/messages", nil, nil)
	assert.Contains(t, string(b), `{"role":"user","content":"change of plan"}`)
	assert.Contains(t, string(b), `"skipped":"Skipped due to steering update"`)
}

// Point 2: a follow_up taken by the run (the tool cycle reads commands)
// asks for one more turn after its answer without tools. One sent during
// the last inference is never read: the run completes without it.
func TestFollowUpAddsATurn(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim tool deploy {}")
	st.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid)
	status, b := c.steer(sid, runID, "follow_up", "and then?")
	require.Equal(t, http.StatusOK, status, string(b))
	waitWaiting(t, s, sid)
	c.decide(sid, runID, map[string]any{"call_1": map[string]any{"action": "accept"}})
	frames := st.until("run_completed")
	assert.Equal(t, defaultText, textOf(t, frames), "the follow-up's answer")
	assert.EqualValues(t, 3, frames[len(frames)-1].payload(t)["total_turns"])
	assert.Equal(t, 0, s.Steers())
	waitIdle(t, s)

	runID = c.send(sid, "#sim sleep 100ms\n#sim text only")
	waitPhase(t, s, sid, "inference")
	status, b = c.steer(sid, runID, "follow_up", "lost")
	require.Equal(t, http.StatusOK, status, string(b))
	frames = st.until("run_completed")
	assert.Equal(t, "only", textOf(t, frames))
	assert.EqualValues(t, 1, frames[len(frames)-1].payload(t)["total_turns"])
}

// Point 3: a decision that lands while a call of the batch executes is
// parked for a later batch: this one waits forever. A decision sent while
// the run waits is applied.
func TestDecisionWhileCallExecutesIsParked(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.sendWith(sid, withApprove("#sim tool-time 300ms\n#sim tool view {}\n#sim tool deploy {}", []string{"view"}))
	st.until("tool_execution_started")
	waitPhase(t, s, sid, "executing")
	c.decide(sid, runID, map[string]any{"call_2": map[string]any{"action": "accept"}})
	frames := st.until("tool_execution_completed")
	assert.Equal(t, "call_1", frames[len(frames)-1].payload(t)["tool_call_id"])
	waitWaiting(t, s, sid)
	st.quiet(100 * time.Millisecond)
	require.Equal(t, stateRunning, s.RunState(sid))

	// The same decision again, sent while the run waits, applies.
	c.decide(sid, runID, map[string]any{"call_2": map[string]any{"action": "accept"}})
	frames = st.until("turn_completed")
	require.Equal(t, []string{"tool_execution_started", "tool_execution_completed", "turn_completed"}, events(frames))
	st.until("run_completed")
}

// Point 3: calls run in proposal order; execution stops at the first call
// not yet decided.
func TestCallsRunInProposalOrder(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim tool a {}\n#sim tool b {}\n#sim tool c {}")
	st.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid)
	c.decide(sid, runID, map[string]any{"call_3": map[string]any{"action": "accept"}, "call_2": map[string]any{"action": "reject"}})
	waitWaiting(t, s, sid)
	st.quiet(50 * time.Millisecond)
	c.decide(sid, runID, map[string]any{"call_1": map[string]any{"action": "accept"}})
	frames := st.until("turn_completed")
	var order []string
	for _, f := range frames {
		if id, ok := f.payload(t)["tool_call_id"].(string); ok && f.Event != "tool_execution_started" {
			order = append(order, id)
		}
	}
	assert.Equal(t, []string{"call_1", "call_2", "call_3"}, order)
}

// Point 4: deciding a dispatched call again, or a decided call
// differently, kills the run with no event; the route still says
// accepted.
func TestRepeatedDecisionKillsRunSilently(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{KeepAlive: 10 * time.Millisecond})
	c := newClient(t, base, "")

	// The whole batch re-sent after its first call ran.
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim tool a {}\n#sim tool b {}")
	st.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid)
	c.decide(sid, runID, map[string]any{"call_1": map[string]any{"action": "accept"}})
	st.until("tool_execution_completed")
	waitWaiting(t, s, sid)
	c.decide(sid, runID, map[string]any{"call_1": map[string]any{"action": "accept"}, "call_2": map[string]any{"action": "accept"}})
	waitState(t, s, sid, stateFailed)
	requireKeepAlives(t, st, 3)
	state, rid := c.runState(sid)
	require.Equal(t, "failed", state)
	require.Empty(t, rid)
	_, b, _ := c.do("GET", "/v1/sessions/"+sid+"/tools/pending", nil, nil)
	require.JSONEq(t, `{"run_id":null,"tool_calls":[]}`, string(b))

	// A different decision for an auto-approved call not yet dispatched;
	// the same decision again is harmless.
	sid2 := c.createSession()
	st2 := c.subscribe(sid2, 0)
	run2 := c.sendWith(sid2, withApprove("#sim tool deploy {}\n#sim tool view {}", []string{"view"}))
	st2.until("waiting_for_tool_approval")
	waitWaiting(t, s, sid2)
	c.decide(sid2, run2, map[string]any{"call_2": map[string]any{"action": "accept"}})
	waitWaiting(t, s, sid2)
	require.Equal(t, stateRunning, s.RunState(sid2))
	c.decide(sid2, run2, map[string]any{"call_2": map[string]any{"action": "reject"}, "call_1": map[string]any{"action": "accept"}})
	waitState(t, s, sid2, stateFailed)
	st2.quiet(30 * time.Millisecond)
}

// Point 5.
func TestPendingListsWholeBatchUntilTurnCompleted(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim tool a {\"x\":1}\n#sim tool b {}")
	st.until("waiting_for_tool_approval")
	pending := func() (string, []string) {
		status, b, _ := c.do("GET", "/v1/sessions/"+sid+"/tools/pending", nil, nil)
		require.Equal(t, http.StatusOK, status)
		var p struct {
			RunID     *string `json:"run_id"`
			ToolCalls []struct {
				ID        string          `json:"id"`
				Name      string          `json:"name"`
				Arguments json.RawMessage `json:"arguments"`
			} `json:"tool_calls"`
		}
		require.NoError(t, json.Unmarshal(b, &p))
		var ids []string
		for _, tc := range p.ToolCalls {
			ids = append(ids, tc.ID)
		}
		if p.RunID == nil {
			return "", ids
		}
		return *p.RunID, ids
	}
	rid, ids := pending()
	require.Equal(t, runID, rid)
	require.Equal(t, []string{"call_1", "call_2"}, ids)
	waitWaiting(t, s, sid)
	c.decide(sid, runID, map[string]any{"call_1": map[string]any{"action": "accept"}})
	st.until("tool_execution_completed")
	waitWaiting(t, s, sid)
	_, ids = pending()
	require.Equal(t, []string{"call_1", "call_2"}, ids, "decided calls stay listed")
	c.decide(sid, runID, map[string]any{"call_2": map[string]any{"action": "reject"}})
	st.until("turn_completed")
	rid, ids = pending()
	require.Empty(t, rid)
	require.Empty(t, ids)
}

// Point 9.
func TestFinishReasonSnakeCase(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.sendWith(sid, withApprove("#sim tool view {}", "all"))
	frames := st.until("run_completed")
	waitIdle(t, s)
	runID = c.send(sid, "#sim hang")
	waitPhase(t, s, sid, "hang")
	c.cancelRun(sid, runID)
	frames = append(frames, st.until("run_completed")...)
	var reasons []string
	for _, f := range find(frames, "turn_completed") {
		reasons = append(reasons, f.payload(t)["finish_reason"].(string))
	}
	assert.Equal(t, []string{"tool_calls", "stop", "cancelled"}, reasons)
}

// Point 10: one text_delta per text part, the trap directive keeps the
// many-small-deltas framing.
func TestTextOneDeltaPerPart(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	c.send(sid, "#sim text hello wörld\n#sim text second part")
	frames := st.until("run_completed")
	var deltas []string
	for _, f := range find(frames, "text_delta") {
		deltas = append(deltas, f.payload(t)["delta"].(string))
	}
	assert.Equal(t, []string{"hello wörld", "second part"}, deltas)
	assert.Equal(t, "hello wörldsecond part", find(frames, "text_complete")[0].payload(t)["text"])

	waitIdle(t, s)
	c.send(sid, "#sim text-stream a longer streamed text")
	frames = st.until("run_completed")
	assert.Greater(t, len(find(frames, "text_delta")), 4)
	assert.Equal(t, "a longer streamed text", textOf(t, frames))
}

func TestRunErrorAndStatus(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{EventInterval: 20 * time.Millisecond})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, -1)
	runID := c.send(sid, "#sim text x\n#sim error-retryable provider exploded")
	state, rid := c.runState(sid)
	require.Equal(t, "running", state)
	require.Equal(t, runID, rid)
	frames := st.until("run_error")
	names := events(frames)
	// The failed inference is a new turn: run_error, no turn_completed.
	require.Equal(t, []string{"turn_completed", "turn_started", "run_error"}, names[len(names)-3:])
	e := frames[len(frames)-1].payload(t)
	assert.Equal(t, "provider exploded", e["error"])
	assert.Equal(t, true, e["retryable"])
	waitIdle(t, s)
	_, b, _ := c.do("GET", "/v1/sessions/"+sid, nil, nil)
	require.Contains(t, string(b), `"run_status":{"state":"failed"}`, "failed carries no error text")

	// A new run clears the failed state.
	c.send(sid, "#sim error boom")
	frames = st.until("run_error")
	assert.Equal(t, false, frames[len(frames)-1].payload(t)["retryable"])
	waitIdle(t, s)
	c.send(sid, "fine")
	st.until("run_completed")
	waitIdle(t, s)
	state, _ = c.runState(sid)
	require.Equal(t, "idle", state)
}

func TestTurnsUsageStopAndExtras(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, -1)
	c.send(sid, "#sim turns 3\n#sim usage 100 50\n#sim retry\n#sim compaction\n#sim text abcdefghijkl\n#sim stop max_turns")
	frames := st.until("run_completed")
	var sumP float64
	for _, f := range find(frames, "usage_report") {
		sumP += f.payload(t)["usage"].(map[string]any)["prompt_tokens"].(float64)
	}
	assert.Len(t, find(frames, "turn_started"), 3)
	assert.Len(t, find(frames, "usage_report"), 3)
	assert.EqualValues(t, 100, sumP)
	for _, n := range []string{"retry_attempt", "compaction_started", "compaction_completed"} {
		assert.Len(t, find(frames, n), 1, n)
	}
	assert.Equal(t, "abcdefghijkl", textOf(t, frames))
	end := frames[len(frames)-1].payload(t)
	assert.EqualValues(t, 3, end["total_turns"])
	assert.Equal(t, "max_turns", end["stop_reason"])
	assert.Equal(t, map[string]any{"prompt_tokens": 100.0, "completion_tokens": 50.0, "total_tokens": 150.0}, end["total_usage"])
	waitIdle(t, s)

	// overrides.max_turns stops the run before its turn 3.
	body := msg("#sim turns 3\n#sim text abcdef")
	body["overrides"] = map[string]any{"max_turns": 2}
	c.sendWith(sid, body)
	frames = st.until("run_completed")
	end = frames[len(frames)-1].payload(t)
	assert.Equal(t, "max_turns", end["stop_reason"])
	assert.EqualValues(t, 2, end["total_turns"])
}

// Point 14.
func TestMaxTurnsDefault64(t *testing.T) {
	t.Parallel()
	_, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, -1)
	c.send(sid, "#sim turns 70\n#sim text "+strings.Repeat("abcdefghij", 8))
	frames := st.until("run_completed")
	end := frames[len(frames)-1].payload(t)
	assert.Equal(t, "max_turns", end["stop_reason"])
	assert.EqualValues(t, 64, end["total_turns"])

	for _, tc := range []struct {
		v    any
		want int
	}{{-1, 422}, {0, 400}, {257, 400}, {"x", 422}} {
		body := msg("hi")
		body["overrides"] = map[string]any{"max_turns": tc.v}
		status, b, h := c.do("POST", "/v1/sessions/"+sid+"/messages", body, nil)
		if tc.want == 422 {
			requirePlain(t, status, b, h, 422)
		} else {
			requireError(t, status, b, tc.want, codeInvalidOverrides)
		}
	}
}

// Point 13.
func TestUnknownModelRetriesThenRunError(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{Models: []string{"openai/gpt-x"}})
	c := newClient(t, base, "")
	status, b, _ := c.do("GET", "/v1/models", nil, nil)
	require.Equal(t, http.StatusOK, status)
	var models struct {
		Models []struct{ ID, Provider string }
	}
	require.NoError(t, json.Unmarshal(b, &models))
	require.Len(t, models.Models, 2)
	assert.Equal(t, "default", models.Models[0].ID)
	assert.Equal(t, "openai", models.Models[1].Provider)

	sid := c.createSession()
	st := c.subscribe(sid, 0)
	body := msg("hi")
	body["model"] = "gpt-x"
	c.sendWith(sid, body)
	st.until("run_completed")
	waitIdle(t, s)

	body["model"] = "nope/unknown"
	c.sendWith(sid, body)
	frames := st.until("run_error")
	require.Equal(t, []string{"turn_started", "retry_attempt", "retry_attempt", "run_error"}, events(frames)[len(frames)-4:])
	assert.EqualValues(t, 2, find(frames, "retry_attempt")[1].payload(t)["attempt"])
	assert.Equal(t, false, frames[len(frames)-1].payload(t)["retryable"])
	waitState(t, s, sid, stateFailed)

	// The session keeps its last model: a send naming none fails again.
	c.send(sid, "again")
	st.until("run_error")
}

// Point 11.
func TestRunningBeforeRunStartedAndAfterRunCompleted(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{StartDelay: 300 * time.Millisecond, EndDelay: 300 * time.Millisecond})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "hi")
	state, rid := c.runState(sid)
	require.Equal(t, "running", state)
	require.Equal(t, runID, rid)
	s.mu.Lock()
	published := s.logForLocked(sid).lastID
	s.mu.Unlock()
	require.Zero(t, published, "running begins before run_started")
	st.until("run_completed")
	state, rid = c.runState(sid)
	require.Equal(t, "running", state, "running lasts after run_completed")
	require.Equal(t, runID, rid)
	// The loop is over: its command channel is closed, the token is not.
	status, b := c.steer(sid, runID, "steering", "too late")
	requireError(t, status, b, http.StatusConflict, codeSessionNotRunning)
	c.cancelRun(sid, runID)
	waitIdle(t, s)
	_, b, _ = c.do("GET", "/v1/sessions/"+sid, nil, nil)
	require.Contains(t, string(b), `"run_status":{"state":"idle"}`)
}

// Point 12.
func TestMessagesFromCheckpointAfterRunCompleted(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{EndDelay: 500 * time.Millisecond, CheckpointInterval: time.Hour})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	c.send(sid, "question\n#sim text the final answer")
	st.until("run_completed")
	_, b, _ := c.do("GET", "/v1/sessions/"+sid+"/messages", nil, nil)
	require.Equal(t, stateRunning, s.RunState(sid))
	require.NotContains(t, string(b), "assistant", "the terminal checkpoint is not written yet")
	require.JSONEq(t, `{"messages":[{"role":"user","content":"question\n#sim text the final answer"}],"total":1}`, string(b))
	waitIdle(t, s)
	_, b, _ = c.do("GET", "/v1/sessions/"+sid+"/messages", nil, nil)
	require.JSONEq(t, `{"messages":[
		{"role":"system","content":"`+defaultSystem+`"},
		{"role":"user","content":"question\n#sim text the final answer"},
		{"role":"assistant","content":[{"type":"text","text":"the final answer"}]}],"total":3}`, string(b))
}

// Point 12: a running run is checkpointed every CheckpointInterval.
func TestPeriodicCheckpoint(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{CheckpointInterval: 20 * time.Millisecond})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	c.send(sid, "#sim text checking\n#sim tool deploy {}")
	st.until("waiting_for_tool_approval")
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		_, b, _, err := c.try("GET", "/v1/sessions/"+sid+"/messages", nil, nil)
		assert.NoError(ct, err)
		assert.Contains(ct, string(b), `{"arguments":{},"id":"call_1","name":"deploy","type":"tool_call"}`)
	}, waitFor, 5*time.Millisecond)
	require.Equal(t, stateRunning, s.RunState(sid))
}

// "#sim die": a silent run death.
func TestSilentRunDeath(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{KeepAlive: 10 * time.Millisecond})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	c.send(sid, "#sim text partial\n#sim die")
	st.until("text_delta")
	waitState(t, s, sid, stateFailed)
	requireKeepAlives(t, st, 3)
	// Dying at start-up: not even run_started.
	sid2 := c.createSession()
	st2 := c.subscribe(sid2, 0)
	c.send(sid2, "#sim die")
	waitState(t, s, sid2, stateFailed)
	st2.quiet(30 * time.Millisecond)
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	s := New(Options{KeepAlive: time.Hour})
	ts := httptest.NewServer(s)
	c := newClient(t, ts.URL, "")
	for range 3 {
		sid := c.createSession()
		c.subscribe(sid, 0)
		c.subscribe(sid, -1)
		c.send(sid, "#sim tool wait {}")
		sid2 := c.createSession()
		c.subscribe(sid2, -1)
		c.send(sid2, "#sim hang")
	}
	sleeper := c.createSession()
	c.send(sleeper, "#sim sleep 1h")
	stall := c.createSession()
	c.send(stall, "#sim stall-after 1\n#sim hang")
	c.subscribe(stall, 0)
	c.subscribe(newID(), 0)
	require.Equal(t, 8, s.ActiveRuns())

	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitFor):
		require.FailNow(t, "Close did not return")
	}
	ts.Close()
	c.hc.Transport.(*http.Transport).CloseIdleConnections()
	require.Equal(t, 0, s.ActiveRuns())
	// Poll here rather than with Eventually, whose own goroutines count.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitFor)
	for runtime.NumGoroutine() > before {
		select {
		case <-tick.C:
		case <-deadline:
			buf := make([]byte, 1<<20)
			require.FailNow(t, "goroutines left after Close", "before %d, now %d\n%s",
				before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
	}

	// After Close the server answers, but starts nothing.
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/sessions", nil))
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	s.Close() // idempotent
}
