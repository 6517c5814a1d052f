package agentsim

import (
	"bytes"
	"encoding/json"
	"net/http"
)

// decisionIn is one decision as sent; Content is a pointer so a missing
// content can be told from an empty one.
type decisionIn struct {
	Action  string  `json:"action"`
	Content *string `json:"content"`
}

// activeRunLocked returns the session's active run if it is runID, or the
// 409 the server answers otherwise.
func (s *Server) activeRunLocked(sess *session, runID string) (*run, *apiError) {
	switch {
	case sess.run == nil:
		return nil, errf(http.StatusConflict, codeSessionNotRunning, "session %s has no active run", sess.id)
	case sess.run.id != runID:
		return nil, errf(http.StatusConflict, codeRunMismatch, "run %s is not the active run of session %s", runID, sess.id)
	}
	return sess.run, nil
}

func (s *Server) handleDecisions(r *http.Request, body []byte) (int, any) {
	var req struct {
		RunID     string                `json:"run_id"`
		Decisions map[string]decisionIn `json:"decisions"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return fail(errf(http.StatusBadRequest, codeInvalidRequest, "invalid JSON body: %v", err))
	}
	return s.decide(r.PathValue("id"), req.RunID, req.Decisions)
}

func (s *Server) handleDecision(r *http.Request, body []byte) (int, any) {
	var req struct {
		RunID string `json:"run_id"`
		decisionIn
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return fail(errf(http.StatusBadRequest, codeInvalidRequest, "invalid JSON body: %v", err))
	}
	return s.decide(r.PathValue("id"), req.RunID, map[string]decisionIn{r.PathValue("call"): req.decisionIn})
}

// decide applies decisions to the active run's pending tool calls. It
// checks everything before changing anything: a bad entry fails the whole
// request. A call decided before keeps its first decision.
func (s *Server) decide(sessionID, runID string, in map[string]decisionIn) (int, any) {
	if runID == "" {
		return fail(errf(http.StatusBadRequest, codeInvalidRequest, "run_id is required"))
	}
	if len(in) == 0 {
		return fail(errf(http.StatusBadRequest, codeInvalidRequest, "decisions must name at least one tool call"))
	}
	for id, d := range in {
		switch d.Action {
		case "accept", "reject":
		case "custom_result":
			if d.Content == nil {
				return fail(errf(http.StatusBadRequest, codeInvalidRequest, "decision for %s: custom_result needs content", id))
			}
		default:
			return fail(errf(http.StatusBadRequest, codeInvalidRequest, "decision for %s: action must be accept, reject or custom_result, got %q", id, d.Action))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, e := s.lookupLocked(sessionID)
	if e != nil {
		return fail(e)
	}
	run, e := s.activeRunLocked(sess, runID)
	if e != nil {
		return fail(e)
	}
	byID := make(map[string]*pendingCall, len(run.calls))
	for _, c := range run.calls {
		byID[c.id] = c
	}
	for id := range in {
		if byID[id] == nil {
			return fail(errf(http.StatusBadRequest, codeInvalidRequest, "run %s has no pending tool call %s", runID, id))
		}
	}
	for id, d := range in {
		body := DecisionBody{Action: d.Action}
		if d.Content != nil {
			body.Content = *d.Content
		}
		if c := byID[id]; c.decision == nil {
			c.decision = &body
			sess.decisionsForLocked(runID).byCall[id] = body
		}
	}
	select {
	case run.decided <- struct{}{}:
	default:
	}
	return http.StatusOK, map[string]any{"accepted": true, "run_id": runID}
}

// decisionsForLocked returns the decision record of runID, adding it.
func (sess *session) decisionsForLocked(runID string) *runDecisions {
	if n := len(sess.decisions); n > 0 && sess.decisions[n-1].runID == runID {
		return sess.decisions[n-1]
	}
	rd := &runDecisions{runID: runID, byCall: make(map[string]DecisionBody)}
	sess.decisions = append(sess.decisions, rd)
	return rd
}

func (s *Server) handlePending(r *http.Request, _ []byte) (int, any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, e := s.lookupLocked(r.PathValue("id"))
	if e != nil {
		return fail(e)
	}
	calls := []map[string]any{}
	var runID *string
	if sess.run != nil {
		id := sess.run.id
		runID = &id
		for _, c := range sess.run.calls {
			if c.decision == nil {
				calls = append(calls, map[string]any{"id": c.id, "name": c.spec.name, "arguments": c.spec.args})
			}
		}
	}
	return http.StatusOK, map[string]any{"run_id": runID, "tool_calls": calls}
}

func (s *Server) handleCancel(r *http.Request, body []byte) (int, any) {
	var req struct {
		RunID string `json:"run_id"`
	}
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			return fail(errf(http.StatusBadRequest, codeInvalidRequest, "invalid JSON body: %v", err))
		}
	}
	if req.RunID == "" {
		return fail(errf(http.StatusBadRequest, codeInvalidRequest, "run_id is required"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, e := s.lookupLocked(r.PathValue("id"))
	if e != nil {
		return fail(e)
	}
	run, e := s.activeRunLocked(sess, req.RunID)
	if e != nil {
		return fail(e)
	}
	if run.cancelLocked() {
		s.cancels++
	}
	return http.StatusOK, map[string]any{"cancelled": true, "run_id": run.id}
}
