package agentsim

import (
	"net/http"
)

// apiFunc is a JSON endpoint: it gets the request and its body and returns
// the status and the value to encode (an errorBody for errors).
type apiFunc func(r *http.Request, body []byte) (int, any)

// fail turns e into an apiFunc answer.
func fail(e *apiError) (int, any) { return e.status, e.body() }

// jsonRoute adapts h to an http.HandlerFunc. Mutating routes honour the
// Idempotency-Key header: the first answer to a key (and path) is replayed
// for the same body, and a different body is a 409.
func (s *Server) jsonRoute(mutating bool, h apiFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.serveAPI(w, r, mutating, h)
	}
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, mutating bool, h apiFunc) {
	body := requestBody(r)
	key := r.Header.Get("Idempotency-Key")
	if !mutating || key == "" {
		status, v := h(r, body)
		s.respond(w, status, v)
		return
	}
	outcome, e, err := s.idem.begin(r.Context(), key, r.URL.Path, body)
	if err != nil {
		// The client went away while an identical request was in flight.
		writeError(w, errf(http.StatusServiceUnavailable, codeUnavailable, "request cancelled while waiting for the first use of its Idempotency-Key"))
		return
	}
	switch outcome {
	case idemConflict:
		writeError(w, errf(http.StatusConflict, codeIdempotencyKeyReused,
			"Idempotency-Key was already used with a different request body"))
		return
	case idemReplay:
		w.Header().Set("Idempotent-Replayed", "true")
		writeJSON(w, e.status, e.body)
		return
	}
	status, v := h(r, body)
	b, err := marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, mustErrorJSON(codeInternal, "encode response")
	}
	s.idem.finish(key, r.URL.Path, e, status, b)
	writeJSON(w, status, b)
}

// respond encodes v and writes it with status.
func (s *Server) respond(w http.ResponseWriter, status int, v any) {
	b, err := marshal(v)
	if err != nil {
		s.log.Warn("agentsim: encode response", "err", err)
		status, b = http.StatusInternalServerError, mustErrorJSON(codeInternal, "encode response")
	}
	writeJSON(w, status, b)
}

func mustErrorJSON(code, msg string) []byte {
	b, _ := marshal(errorBody{Error: msg, Code: code, RequestID: newRequestID()})
	return b
}

// sendRoute is the send-message route: before idempotency it serves the
// failures a "#sim fail-send" directive asks for, which model a flaky proxy
// in front of the server (so they are never remembered under a key).
func (s *Server) sendRoute() http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if kind := s.takeSendFailure(requestBody(r)); kind != "" {
			s.failWith(w, kind)
			return
		}
		s.serveAPI(w, r, true, s.handleSendMessage)
	}
}

// takeSendFailure returns the failure kind when body is a send-message
// request whose prompt has "#sim fail-send N KIND" and fewer than N of its
// sends have failed yet.
func (s *Server) takeSendFailure(body []byte) string {
	prompt, ok := peekPrompt(body)
	if !ok {
		return ""
	}
	n, kind, ok := failSendDirective(prompt)
	if !ok {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failedSends[prompt] >= n {
		return ""
	}
	s.failedSends[prompt]++
	return kind
}
