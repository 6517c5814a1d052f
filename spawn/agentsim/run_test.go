package agentsim

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestToolApprovalBothEndpoints(t *testing.T) {
	s, base := NewTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim text let me look\n#sim tool stakpak__view {\"path\":\"/etc\"}\n#sim tool run_command {\"cmd\":\"ls\"}\n#sim text all done")

	frames := st.until("waiting_for_tool_approval")
	names := events(frames)
	require.Equal(t, []string{"text_complete", "tool_calls_proposed", "usage_report", "turn_completed", "waiting_for_tool_approval"}, names[len(names)-5:])
	_, _, _, proposed := frames[len(frames)-4].env(t)
	calls := proposed["tool_calls"].([]any)
	require.Len(t, calls, 2)
	c0 := calls[0].(map[string]any)
	assert.Equal(t, "call_1", c0["id"])
	assert.Equal(t, "stakpak__view", c0["name"])
	assert.Equal(t, map[string]any{"path": "/etc"}, c0["arguments"])
	_, _, _, tc := frames[len(frames)-2].env(t)
	assert.Equal(t, "ToolCalls", tc["finish_reason"])
	_, _, _, waiting := frames[len(frames)-1].env(t)
	assert.Equal(t, []any{"call_1", "call_2"}, waiting["pending_tool_call_ids"])

	status, b, _ := c.do("GET", "/v1/sessions/"+sid+"/tools/pending", nil, nil)
	require.Equal(t, http.StatusOK, status)
	var pending struct {
		RunID     string `json:"run_id"`
		ToolCalls []struct {
			ID, Name  string
			Arguments json.RawMessage
		} `json:"tool_calls"`
	}
	require.NoError(t, json.Unmarshal(b, &pending))
	require.Equal(t, runID, pending.RunID)
	require.Len(t, pending.ToolCalls, 2)
	assert.JSONEq(t, `{"cmd":"ls"}`, string(pending.ToolCalls[1].Arguments))

	dec := "/v1/sessions/" + sid + "/tools/decisions"
	one := "/v1/sessions/" + sid + "/tools/call_1/decision"
	status, b, _ = c.do("POST", one, map[string]any{"run_id": runID, "action": "custom_result"}, nil)
	requireError(t, status, b, http.StatusBadRequest, codeInvalidRequest)
	status, b, _ = c.do("POST", one, map[string]any{"run_id": runID, "action": "maybe"}, nil)
	requireError(t, status, b, http.StatusBadRequest, codeInvalidRequest)
	status, b, _ = c.do("POST", one, map[string]any{"run_id": "other", "action": "accept"}, nil)
	requireError(t, status, b, http.StatusConflict, codeRunMismatch)
	status, b, _ = c.do("POST", "/v1/sessions/"+sid+"/tools/call_9/decision", map[string]any{"run_id": runID, "action": "accept"}, nil)
	requireError(t, status, b, http.StatusBadRequest, codeInvalidRequest)

	status, b, _ = c.do("POST", one, map[string]any{"run_id": runID, "action": "accept"}, nil)
	require.Equal(t, http.StatusOK, status, string(b))
	require.JSONEq(t, `{"accepted":true,"run_id":"`+runID+`"}`, string(b))
	select {
	case f := <-st.frames:
		require.FailNow(t, "the run went on with a call undecided", "%+v", f)
	case <-time.After(50 * time.Millisecond):
	}
	status, b, _ = c.do("POST", dec, map[string]any{"run_id": runID, "decisions": map[string]any{
		"call_2": map[string]any{"action": "reject", "content": "Blocked by profile allowed_tools (tool: run_command)"},
	}}, nil)
	require.Equal(t, http.StatusOK, status, string(b))

	frames = st.until("run_completed")
	names = events(frames)
	require.Equal(t, []string{"tool_execution_started", "tool_execution_progress", "tool_execution_completed", "tool_rejected", "turn_started"}, names[:5])
	_, _, _, done := frames[2].env(t)
	assert.Equal(t, "ok: stakpak__view", done["result"])
	assert.Equal(t, false, done["is_error"])
	_, _, _, rej := frames[3].env(t)
	assert.Equal(t, "call_2", rej["tool_call_id"])
	assert.Equal(t, "Blocked by profile allowed_tools (tool: run_command)", rej["reason"])
	assert.Equal(t, "all done", textOf(t, frames))
	_, _, _, end := frames[len(frames)-1].env(t)
	assert.EqualValues(t, 2, end["total_turns"])

	assert.Equal(t, []map[string]DecisionBody{{
		"call_1": {Action: "accept"},
		"call_2": {Action: "reject", Content: "Blocked by profile allowed_tools (tool: run_command)"},
	}}, s.Decisions(sid))

	waitIdle(t, s)
	status, b, _ = c.do("POST", dec, map[string]any{"run_id": runID, "decisions": map[string]any{"call_1": map[string]any{"action": "accept"}}}, nil)
	requireError(t, status, b, http.StatusConflict, codeSessionNotRunning)
	status, b, _ = c.do("GET", "/v1/sessions/"+sid+"/tools/pending", nil, nil)
	require.Equal(t, http.StatusOK, status)
	require.JSONEq(t, `{"run_id":null,"tool_calls":[]}`, string(b))
}

func TestToolCustomResultAndAutoApprove(t *testing.T) {
	s, base := NewTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	body := msg("#sim tool stakpak__view {}\n#sim tool deploy {}")
	body["overrides"] = map[string]any{"auto_approve": []string{"view"}}
	status, b, _ := c.do("POST", "/v1/sessions/"+sid+"/messages", body, nil)
	require.Equal(t, http.StatusOK, status, string(b))
	var r struct {
		RunID string `json:"run_id"`
	}
	require.NoError(t, json.Unmarshal(b, &r))

	frames := st.until("waiting_for_tool_approval")
	_, _, _, waiting := frames[len(frames)-1].env(t)
	assert.Equal(t, []any{"call_2"}, waiting["pending_tool_call_ids"], "view is auto-approved")
	status, b, _ = c.do("POST", "/v1/sessions/"+sid+"/tools/decisions", map[string]any{"run_id": r.RunID, "decisions": map[string]any{
		"call_2": map[string]any{"action": "custom_result", "content": "deployed by hand"},
	}}, nil)
	require.Equal(t, http.StatusOK, status, string(b))
	frames = st.until("run_completed")
	var results []string
	for _, f := range frames {
		if f.Event == "tool_execution_completed" {
			_, _, _, p := f.env(t)
			results = append(results, p["result"].(string))
		}
	}
	assert.Equal(t, []string{"ok: stakpak__view", "deployed by hand"}, results)
	assert.Equal(t, []map[string]DecisionBody{{"call_2": {Action: "custom_result", Content: "deployed by hand"}}}, s.Decisions(sid))
}

func TestCancelHangingRun(t *testing.T) {
	s, base := NewTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim hang")
	var text []frame
	for textOf(t, text) != defaultText {
		text = append(text, st.next())
	}
	state, rid := c.runState(sid)
	require.Equal(t, "running", state)
	require.Equal(t, runID, rid)

	cancel := "/v1/sessions/" + sid + "/cancel"
	status, b, _ := c.do("POST", cancel, map[string]any{"run_id": "other"}, nil)
	requireError(t, status, b, http.StatusConflict, codeRunMismatch)
	status, b, _ = c.do("POST", cancel, map[string]any{}, nil)
	requireError(t, status, b, http.StatusBadRequest, codeInvalidRequest)
	require.Equal(t, 0, s.Cancels())

	status, b, _ = c.do("POST", cancel, map[string]any{"run_id": runID}, nil)
	require.Equal(t, http.StatusOK, status, string(b))
	require.JSONEq(t, `{"cancelled":true,"run_id":"`+runID+`"}`, string(b))
	frames := st.until("run_completed")
	require.Equal(t, []string{"turn_completed", "run_completed"}, events(frames))
	_, _, _, tc := frames[0].env(t)
	assert.Equal(t, "Cancelled", tc["finish_reason"])
	_, _, _, rc := frames[1].env(t)
	assert.Equal(t, "cancelled", rc["stop_reason"])
	assert.EqualValues(t, 1, rc["total_turns"])

	require.Equal(t, 1, s.Cancels())
	require.Equal(t, 0, s.ActiveRuns())
	state, rid = c.runState(sid)
	require.Equal(t, "idle", state)
	require.Empty(t, rid)
	status, b, _ = c.do("POST", cancel, map[string]any{"run_id": runID}, nil)
	requireError(t, status, b, http.StatusConflict, codeSessionNotRunning)
}

func TestCancelWhileWaitingForTools(t *testing.T) {
	s, base := NewTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	runID := c.send(sid, "#sim tool deploy {}")
	st.until("waiting_for_tool_approval")
	status, b, _ := c.do("POST", "/v1/sessions/"+sid+"/cancel", map[string]any{"run_id": runID}, nil)
	require.Equal(t, http.StatusOK, status, string(b))
	frames := st.until("run_completed")
	require.Equal(t, []string{"run_completed"}, events(frames))
	waitIdle(t, s)
	require.Empty(t, s.Decisions(sid))
}

func TestRunErrorAndStatus(t *testing.T) {
	s, base := NewTestServer(t, Options{EventInterval: 20 * time.Millisecond})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, -1)
	runID := c.send(sid, "#sim text x\n#sim error-retryable provider exploded")
	state, rid := c.runState(sid)
	require.Contains(t, []string{"starting", "running"}, state)
	require.Equal(t, runID, rid)
	frames := st.until("run_error")
	names := events(frames)
	require.Equal(t, []string{"turn_completed", "run_error"}, names[len(names)-2:])
	_, _, _, e := frames[len(frames)-1].env(t)
	assert.Equal(t, "provider exploded", e["error"])
	assert.Equal(t, true, e["retryable"])
	waitIdle(t, s)
	state, rid = c.runState(sid)
	require.Equal(t, "failed", state)
	require.Empty(t, rid)

	// A new run clears the failed state.
	c.send(sid, "#sim error boom")
	frames = st.until("run_error")
	_, _, _, e = frames[len(frames)-1].env(t)
	assert.Equal(t, false, e["retryable"])
	c.send(sid, "fine")
	st.until("run_completed")
	waitIdle(t, s)
	state, _ = c.runState(sid)
	require.Equal(t, "idle", state)
}

func TestTurnsUsageStopAndExtras(t *testing.T) {
	s, base := NewTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, -1)
	c.send(sid, "#sim turns 3\n#sim usage 100 50\n#sim retry\n#sim compaction\n#sim text abcdefghijkl\n#sim stop max_turns")
	frames := st.until("run_completed")
	var starts, reports int
	var sumP float64
	seen := map[string]bool{}
	for _, f := range frames {
		seen[f.Event] = true
		switch f.Event {
		case "turn_started":
			starts++
		case "usage_report":
			reports++
			_, _, _, p := f.env(t)
			sumP += p["usage"].(map[string]any)["prompt_tokens"].(float64)
		}
	}
	assert.Equal(t, 3, starts)
	assert.Equal(t, 3, reports)
	assert.EqualValues(t, 100, sumP)
	assert.True(t, seen["retry_attempt"] && seen["compaction_started"] && seen["compaction_completed"])
	assert.Equal(t, "abcdefghijkl", textOf(t, frames))
	_, _, _, end := frames[len(frames)-1].env(t)
	assert.EqualValues(t, 3, end["total_turns"])
	assert.Equal(t, "max_turns", end["stop_reason"])
	assert.Equal(t, map[string]any{"prompt_tokens": 100.0, "completion_tokens": 50.0, "total_tokens": 150.0}, end["total_usage"])
	waitIdle(t, s)

	// overrides.max_turns stops the run before its turn 3.
	body := msg("#sim turns 3\n#sim text abcdef")
	body["overrides"] = map[string]any{"max_turns": 2}
	status, b, _ := c.do("POST", "/v1/sessions/"+sid+"/messages", body, nil)
	require.Equal(t, http.StatusOK, status, string(b))
	frames = st.until("run_completed")
	_, _, _, end = frames[len(frames)-1].env(t)
	assert.Equal(t, "max_turns", end["stop_reason"])
	assert.EqualValues(t, 2, end["total_turns"])
}

func TestSleepIsPacedAndCancellable(t *testing.T) {
	_, base := NewTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, -1)
	runID := c.send(sid, "#sim text a\n#sim sleep 1h\n#sim text b")
	st.until("text_delta")
	status, _, _ := c.do("POST", "/v1/sessions/"+sid+"/cancel", map[string]any{"run_id": runID}, nil)
	require.Equal(t, http.StatusOK, status)
	frames := st.until("run_completed")
	assert.Equal(t, "", textOf(t, frames), "text after the sleep is never sent")
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
	stall := c.createSession()
	c.send(stall, "#sim stall-after 1\n#sim hang")
	c.subscribe(stall, 0)
	require.Equal(t, 7, s.ActiveRuns())

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
