package agentsim

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
)

// Error codes of AGENT_SERVER_API.md.
const (
	codeNotFound              = "not_found"
	codeInvalidRequest        = "invalid_request"
	codeInvalidMessageRole    = "invalid_message_role"
	codeInvalidContext        = "invalid_context"
	codeInvalidOverrides      = "invalid_overrides"
	codeUnauthorized          = "unauthorized"
	codeRateLimited           = "rate_limited"
	codeInternal              = "internal_error"
	codeUnavailable           = "service_unavailable"
	codeSessionAlreadyRunning = "session_already_running"
	codeSessionNotRunning     = "session_not_running"
	codeRunMismatch           = "run_mismatch"
	codeIdempotencyKeyReused  = "idempotency_key_reused"
	requestIDPrefix           = "req_"
	// maxRequestBody is axum's default body limit, which the real server
	// keeps: bigger JSON bodies answer 413.
	maxRequestBody int64 = 2 << 20
)

// apiError is a handler error: the status and the body's code and message.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// errorBody is the error body handlers answer with.
type errorBody struct {
	Error     string `json:"error"`
	Code      string `json:"code"`
	RequestID string `json:"request_id,omitempty"`
}

func (e *apiError) body() errorBody {
	return errorBody{Error: e.msg, Code: e.code, RequestID: newRequestID()}
}

// newRequestID returns "req_" and 16 hex digits.
func newRequestID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+).
	return requestIDPrefix + hex.EncodeToString(b[:])
}

// marshal encodes v as compact JSON without HTML escaping, so multi-byte
// text stays raw UTF-8 on the wire (the SSE writer relies on that to split
// frames inside a character).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode json: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// writeJSON writes an already encoded JSON body with its status.
func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError writes e as the standard error body.
func writeError(w http.ResponseWriter, e *apiError) {
	b, err := marshal(e.body())
	if err != nil { // cannot happen for errorBody; keep a valid answer anyway
		b = []byte(`{"error":"internal error","code":"internal_error"}`)
	}
	writeJSON(w, e.status, b)
}

// plainError is a framework (axum) rejection: a status and a plain-text
// body, not the JSON error body of handlers.
type plainError struct {
	status int
	msg    string
}

func (e *plainError) Error() string { return e.msg }

func plainf(status int, format string, args ...any) *plainError {
	return &plainError{status: status, msg: fmt.Sprintf(format, args...)}
}

// writePlain writes a framework rejection.
func writePlain(w http.ResponseWriter, e *plainError) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(e.status)
	_, _ = w.Write([]byte(e.msg))
}
