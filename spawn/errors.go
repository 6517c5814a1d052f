package spawn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
)

// Error codes the agent server uses in error bodies (AGENT_SERVER_API.md).
const (
	CodeNotFound              = "not_found"
	CodeInvalidRequest        = "invalid_request"
	CodeInvalidMessageRole    = "invalid_message_role"
	CodeInvalidContext        = "invalid_context"
	CodeInvalidOverrides      = "invalid_overrides"
	CodeInvalidModel          = "invalid_model"
	CodeUnauthorized          = "unauthorized"
	CodeRateLimited           = "rate_limited"
	CodeConnectionError       = "connection_error"
	CodeInternalError         = "internal_error"
	CodeActorStartupFailed    = "actor_startup_failed"
	CodeSessionAlreadyRunning = "session_already_running"
	CodeSessionNotRunning     = "session_not_running"
	CodeRunMismatch           = "run_mismatch"
	CodeIdempotencyKeyReused  = "idempotency_key_reused"
)

// APIError is an HTTP error answer from the agent server.
//
// It never carries request headers, so the bearer token cannot leak through
// it.
type APIError struct {
	// Op names the client call, for example "create session".
	Op string
	// StatusCode is the HTTP status.
	StatusCode int
	// Code is the server's machine-readable code ("invalid_model"), or
	// "http_<status>" when the body had none.
	Code string
	// Message is the server's message, or the status text when the body had
	// none.
	Message string
	// RequestID is the server's request id ("req_<hex>"), when given.
	RequestID string
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("agent server: %s: %d %s: %s", e.Op, e.StatusCode, e.Code, e.Message)
	if e.RequestID != "" {
		s += " (request " + e.RequestID + ")"
	}
	return s
}

// Transient reports whether the same request may succeed later: 5xx, 429,
// 408 and 401 answers. A 401 is transient because the real server makes a
// new token on every start: it means "the server restarted and the token
// source has not caught up yet" (or its storage backend refused its own
// key), never that the job is bad.
func (e *APIError) Transient() bool {
	return e.StatusCode >= 500 || e.StatusCode == http.StatusTooManyRequests ||
		e.StatusCode == http.StatusRequestTimeout || e.StatusCode == http.StatusUnauthorized
}

// IsUnauthorized reports whether err is the agent server refusing the token.
func IsUnauthorized(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.StatusCode == http.StatusUnauthorized
}

// IsAPIError reports whether err is an *APIError with the given server code.
func IsAPIError(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == code
}

// transientError marks a failure the client knows to be temporary even though
// the underlying error does not say so (a request timeout set by the client, a
// dropped or stalled event stream).
type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

func markTransient(err error) error {
	if err == nil {
		return nil
	}
	return &transientError{err: err}
}

// IsTransient reports whether err is worth retrying: connection errors
// (refused, reset, unexpected EOF), timeouts, dropped event streams, and 5xx
// or 429 answers. It is false for other 4xx answers, for bad input, and for a
// context cancelled or expired by the caller.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	var te *transientError
	if errors.As(err, &te) {
		return true
	}
	// The caller gave up: retrying inside the same context cannot help, and
	// the caller knows its own context is done.
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Transient()
	}
	if errors.Is(err, ErrFrameTooLarge) {
		return false
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, net.ErrClosed) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe)
}

// CursorError is returned by Runner.Run when it could not get a run going or
// could not follow it, and the caller may try again. Cursor is how far the
// runner got: pass it back as Spec.Resume so the retry re-attaches to the
// session and run instead of starting new ones. IsTransient sees through it.
type CursorError struct {
	Cursor Cursor
	Err    error
}

func (e *CursorError) Error() string {
	s := "run job"
	if e.Cursor.SessionID != "" {
		s += " (session " + e.Cursor.SessionID
		if e.Cursor.RunID != "" {
			s += ", run " + e.Cursor.RunID
		}
		s += fmt.Sprintf(", event %d)", e.Cursor.LastEventID)
	}
	return s + ": " + e.Err.Error()
}

func (e *CursorError) Unwrap() error { return e.Err }
