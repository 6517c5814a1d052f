package agentsim

import (
	"net/http"
)

// rawJSON is an already encoded JSON answer (an idempotent replay).
type rawJSON []byte

// fail turns e into a handler answer.
func fail(e *apiError) (int, any) { return e.status, e.body() }

// rejected turns a framework rejection into a handler answer.
func rejected(e *plainError) (int, any) { return e.status, e }

// respond writes a handler answer: a framework rejection as plain text,
// anything else as JSON.
func (s *Server) respond(w http.ResponseWriter, status int, v any) {
	switch x := v.(type) {
	case *plainError:
		writePlain(w, x)
		return
	case rawJSON:
		writeJSON(w, status, x)
		return
	}
	b, err := marshal(v)
	if err != nil {
		s.log.Warn("agentsim: encode response", "err", err)
		status, b = http.StatusInternalServerError, mustErrorJSON(codeInternal, "encode response")
	}
	writeJSON(w, status, b)
}

// api adapts a handler returning (status, value) to an http.HandlerFunc.
func (s *Server) api(h func(*http.Request) (int, any)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		status, v := h(r)
		s.respond(w, status, v)
	}
}

func mustErrorJSON(code, msg string) []byte {
	b, _ := marshal(errorBody{Error: msg, Code: code, RequestID: newRequestID()})
	return b
}

// idem is one request's Idempotency-Key state: k is nil without a key.
type idem struct {
	s     *Server
	k     *idemKey
	canon []byte
	store *idemStore // the store of the server life that saw the request
}

// idemLookup looks the request's Idempotency-Key up (method + canonical
// path + key) with its canonical body. done is true when the answer is
// already decided: a replay of the stored answer, or 409
// idempotency_key_reused.
func (s *Server) idemLookup(r *http.Request, path string, canon []byte) (im idem, done bool, status int, v any) {
	s.mu.Lock()
	store := s.idem
	s.mu.Unlock()
	im = idem{s: s, canon: canon, store: store}
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		return im, false, 0, nil
	}
	k := idemKey{method: r.Method, path: path, key: key}
	im.k = &k
	out, e := store.lookup(k, canon)
	if out == idemProceed && s.afterIdemLookup != nil {
		s.afterIdemLookup(path)
	}
	switch out {
	case idemConflict:
		st, body := fail(errf(http.StatusConflict, codeIdempotencyKeyReused, "Idempotency key was reused with different payload"))
		return im, true, st, body
	case idemReplay:
		return im, true, e.status, rawJSON(e.body)
	}
	return im, false, 0, nil
}

// ok answers a successful request and stores the answer under its key.
func (im idem) ok(status int, v any) (int, any) {
	b, err := marshal(v)
	if err != nil {
		return fail(errf(http.StatusInternalServerError, codeInternal, "encode response"))
	}
	if im.k != nil {
		im.store.save(*im.k, im.canon, status, b)
	}
	return status, rawJSON(b)
}

// sendRoute is the send-message route: before anything else it serves the
// failures a "#sim fail-send" directive asks for, which model a flaky proxy
// in front of the server (so they are never remembered under a key).
func (s *Server) sendRoute(w http.ResponseWriter, r *http.Request) {
	if kind := s.takeSendFailure(requestBody(r)); kind != "" {
		s.failWith(w, kind)
		return
	}
	s.api(s.handleSendMessage)(w, r)
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
