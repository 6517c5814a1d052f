package agentsim

import (
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"
)

// RecordedRequest is one request the server received, for tests to inspect.
type RecordedRequest struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
	// Status is the status the server answered with; 0 while an answer is
	// pending, and for requests answered with a connection reset or cut.
	Status int
	At     time.Time
}

// DecisionBody is one tool decision as the server received it.
type DecisionBody struct {
	Action  string `json:"action"`
	Content string `json:"content,omitempty"`
}

// Requests returns a copy of every request received, in arrival order.
// Bodies are recorded up to the server's body limit (2 MB) and one byte more.
func (s *Server) Requests() []RecordedRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RecordedRequest, len(s.requests))
	for i, r := range s.requests {
		out[i] = *r
		out[i].Header = r.Header.Clone()
		out[i].Body = slices.Clone(r.Body)
	}
	return out
}

// RunsStarted returns how many runs were actually started. Idempotent
// replays and rejected messages do not count.
func (s *Server) RunsStarted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.runPrompts)
}

// RunsForPrompt returns how many started runs had a prompt containing substr.
func (s *Server) RunsForPrompt(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, p := range s.runPrompts {
		if strings.Contains(p, substr) {
			n++
		}
	}
	return n
}

// SessionCount returns how many sessions exist.
func (s *Server) SessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// ActiveRuns returns how many runs are starting or running (a run is
// running until Options.EndDelay after its terminal event).
func (s *Server) ActiveRuns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, sess := range s.sessions {
		if sess.run != nil {
			n++
		}
	}
	return n
}

// Decisions returns the tool decisions the session received: one map per
// run that received any (keyed by tool call id, merged over both decision
// endpoints), in run order. Calls settled by auto_approve are not included.
func (s *Server) Decisions(sessionID string) []map[string]DecisionBody {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[sessionID]
	if sess == nil {
		return nil
	}
	var out []map[string]DecisionBody
	for _, d := range sess.decisions {
		out = append(out, maps.Clone(d.byCall))
	}
	return out
}

// Steers returns how many steering messages were accepted (answered 200).
func (s *Server) Steers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.steers
}

// RunState returns the session's run_status state (idle, starting,
// running or failed), or "" for an unknown session.
func (s *Server) RunState(sessionID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[sessionID]
	if sess == nil {
		return ""
	}
	return sess.jsonLocked().RunStatus.State
}

// Cancels returns how many cancel requests set a run's cancellation flag.
func (s *Server) Cancels() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cancels
}

// statusWriter records the status of the answer on its RecordedRequest.
// Unwrap lets http.ResponseController reach Flush and Hijack.
type statusWriter struct {
	http.ResponseWriter
	s     *Server
	rec   *RecordedRequest
	wrote bool // the status is recorded; spares a lock per SSE write
}

func (w *statusWriter) record(status int) {
	if w.wrote {
		return
	}
	w.wrote = true
	w.s.mu.Lock()
	w.rec.Status = status
	w.s.mu.Unlock()
}

func (w *statusWriter) WriteHeader(status int) {
	w.record(status)
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.record(http.StatusOK)
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// UserMessages returns the text of the user messages in the session's last
// checkpoint, in order: the prompts and steering messages its runs read,
// so a test can see that a conversation's session received every message.
func (s *Server) UserMessages(sessionID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[sessionID]
	if sess == nil {
		return nil
	}
	var out []string
	for _, m := range sess.checkpoint {
		if m.Role != "user" {
			continue
		}
		switch c := m.Content.(type) {
		case string:
			out = append(out, c)
		case []any:
			for _, p := range c {
				if part, ok := p.(map[string]any); ok && part["type"] == "text" {
					t, _ := part["text"].(string)
					out = append(out, t)
				}
			}
		case []map[string]any:
			for _, part := range c {
				if part["type"] == "text" {
					t, _ := part["text"].(string)
					out = append(out, t)
				}
			}
		}
	}
	return out
}
