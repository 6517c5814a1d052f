package agentsim

import (
	"net/http"
	"sort"
)

// activeRunLocked returns the session's active run if it is runID, or the
// 409 the real run manager answers otherwise: session_already_running
// while the run is starting, run_mismatch for another run,
// session_not_running when idle or failed (or unknown).
func (s *Server) activeRunLocked(sess *session, runID string) (*run, *apiError) {
	switch {
	case sess == nil || sess.run == nil:
		return nil, errf(http.StatusConflict, codeSessionNotRunning, "Session has no active run")
	case sess.state == stateStarting:
		return nil, errf(http.StatusConflict, codeSessionAlreadyRunning, "Session already has an active run")
	case sess.run.id != runID:
		return nil, errf(http.StatusConflict, codeRunMismatch, "Provided run_id does not match active run")
	}
	return sess.run, nil
}

// commandRunLocked is activeRunLocked for commands (decisions, steering,
// follow_up): once the agent loop has returned (the EndDelay window) its
// command channel is closed, which the real server answers 409
// session_not_running. Cancel still succeeds then.
func (s *Server) commandRunLocked(sess *session, runID string) (*run, *apiError) {
	r, e := s.activeRunLocked(sess, runID)
	if e == nil && r.loopOver {
		return nil, errf(http.StatusConflict, codeSessionNotRunning, "Session has no active run")
	}
	return r, e
}

// decisionIn is one decoded decision.
type decisionIn struct {
	action  string
	content *string
}

// decodeDecision decodes {action, content?} (an unknown action is a 422).
func decodeDecision(path string, o obj) (decisionIn, *plainError) {
	a, pe := o.enum(path, "action", true, "", "accept", "reject", "custom_result")
	if pe != nil {
		return decisionIn{}, pe
	}
	c, pe := o.str(path, "content", false)
	if pe != nil {
		return decisionIn{}, pe
	}
	return decisionIn{action: a, content: c}, nil
}

func (d decisionIn) canonical() map[string]any {
	return map[string]any{"action": d.action, "content": d.content}
}

// runRequest reads what the decision and cancel routes start with: the
// path's session id and the body's run_id, in the order the framework
// rejects them.
func runRequest(r *http.Request) (sid string, o obj, runID string, pe *plainError) {
	if sid, pe = pathUUID(r, "id"); pe != nil {
		return "", nil, "", pe
	}
	if o, pe = decodeBody(r); pe != nil {
		return "", nil, "", pe
	}
	id, pe := o.uuidStr("", "run_id", true)
	if pe != nil {
		return "", nil, "", pe
	}
	return sid, o, *id, nil
}

func (s *Server) handleDecisions(r *http.Request) (int, any) {
	sid, o, runID, pe := runRequest(r)
	if pe != nil {
		return rejected(pe)
	}
	dm, pe := o.object("", "decisions", true)
	if pe != nil {
		return rejected(pe)
	}
	in := make(map[string]decisionIn, len(dm))
	canonDec := make(map[string]any, len(dm))
	ids := make([]string, 0, len(dm))
	for id := range dm {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		d, pe := dm.object("decisions", id, true)
		if pe != nil {
			return rejected(pe)
		}
		di, pe := decodeDecision("decisions."+id, d)
		if pe != nil {
			return rejected(pe)
		}
		in[id] = di
		canonDec[id] = di.canonical()
	}
	canon := canonical(map[string]any{"run_id": runID, "decisions": canonDec})
	// Both /tools/decisions and its /tools/resolve alias store under the
	// decisions path, as the real handler does.
	return s.decide(r, sid, "/v1/sessions/"+sid+"/tools/decisions", canon, runID, in)
}

func (s *Server) handleDecision(r *http.Request) (int, any) {
	sid, o, runID, pe := runRequest(r)
	if pe != nil {
		return rejected(pe)
	}
	di, pe := decodeDecision("", o)
	if pe != nil {
		return rejected(pe)
	}
	call := r.PathValue("call")
	canon := di.canonical()
	canon["run_id"] = runID
	return s.decide(r, sid, "/v1/sessions/"+sid+"/tools/"+call+"/decision", canonical(canon), runID, map[string]decisionIn{call: di})
}

// decide queues decisions for the active run. "accepted" means queued:
// what happens to them is the run's business (applied, parked for a later
// batch, or killing the run; see run.go).
func (s *Server) decide(r *http.Request, sid, path string, canon []byte, runID string, in map[string]decisionIn) (int, any) {
	im, done, status, body := s.idemLookup(r, path, canon)
	if done {
		return status, body
	}
	decisions := make(map[string]DecisionBody, len(in))
	for id, d := range in {
		if d.action == "custom_result" && d.content == nil {
			return fail(errf(http.StatusBadRequest, codeInvalidRequest, "custom_result requires content"))
		}
		b := DecisionBody{Action: d.action}
		if d.content != nil && d.action == "custom_result" {
			b.Content = *d.content
		}
		decisions[id] = b
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[sid]
	run, e := s.commandRunLocked(sess, runID)
	if e != nil {
		return fail(e)
	}
	rec := sess.decisionsForLocked(runID)
	for id, d := range in {
		b := DecisionBody{Action: d.action}
		if d.content != nil {
			b.Content = *d.content
		}
		rec.byCall[id] = b
	}
	run.commandLocked(command{kind: "decisions", decisions: decisions})
	return im.ok(http.StatusOK, map[string]any{"accepted": true, "run_id": runID})
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

// handlePending lists the session's proposed batch (decided calls
// included) until its turn completes. Unknown sessions answer an empty
// list, as the real handler does.
func (s *Server) handlePending(r *http.Request) (int, any) {
	sid, pe := pathUUID(r, "id")
	if pe != nil {
		return rejected(pe)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	calls := []map[string]any{}
	var runID *string
	if sess := s.sessions[sid]; sess != nil && sess.pending != nil {
		id := sess.pending.runID
		runID = &id
		calls = append(calls, sess.pending.calls...)
	}
	return http.StatusOK, map[string]any{"run_id": runID, "tool_calls": calls}
}

// handleCancel sets the run's cancellation flag. It ends nothing by
// itself: see run.go for where the loop looks at it.
func (s *Server) handleCancel(r *http.Request) (int, any) {
	sid, _, runID, pe := runRequest(r)
	if pe != nil {
		return rejected(pe)
	}
	im, done, status, body := s.idemLookup(r, "/v1/sessions/"+sid+"/cancel", canonical(map[string]any{"run_id": runID}))
	if done {
		return status, body
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	run, e := s.activeRunLocked(s.sessions[sid], runID)
	if e != nil {
		return fail(e)
	}
	if run.cancelLocked() {
		s.cancels++
	}
	return im.ok(http.StatusOK, map[string]any{"cancelled": true, "run_id": run.id})
}
