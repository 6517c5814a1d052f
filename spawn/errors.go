package spawn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"unicode/utf8"
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
// It never carries request headers, and its texts are scrubbed of the
// bearer token and of anything written "Bearer <credential>" (a server or
// proxy that echoes the Authorization header back), so the token cannot
// leak through it. Message is at most MaxErrorMessageBytes.
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

// MaxErrorMessageBytes caps APIError.Message: a longer message from the
// server is cut, and the cut says how much was dropped.
const MaxErrorMessageBytes = 2 << 10

// maxErrorFieldBytes caps APIError.Code and RequestID, which are short
// words from an honest server.
const maxErrorFieldBytes = 128

// redacted stands in for a scrubbed credential.
const redacted = "[REDACTED]"

// bearerRE finds "Bearer <credential>" in any case, the way an echoed
// Authorization header reads.
var bearerRE = regexp.MustCompile(`(?i)(bearer)(\s+|%20|\+)[^\s"'\\,;&<>]+`)

// scrubSecrets removes every occurrence of the given tokens (empty ones are
// skipped) and every "Bearer <credential>" from s.
func scrubSecrets(s string, tokens ...string) string {
	for _, tok := range tokens {
		if tok != "" {
			s = strings.ReplaceAll(s, tok, redacted)
		}
	}
	if strings.Contains(strings.ToLower(s), "bearer") {
		s = bearerRE.ReplaceAllString(s, "${1}${2}"+redacted)
	}
	return s
}

// capText cuts s to at most n bytes on a character boundary, noting the
// cut.
func capText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "… (" + strconv.Itoa(len(s)-cut) + " more bytes cut)"
}

// scrubbedError is an error whose text had a credential in it: Error is the
// scrubbed text, and Unwrap keeps the original for errors.Is and As (so
// IsTransient still sees a dropped connection).
type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// scrubError returns err itself when its text holds no credential, else
// err with the credentials scrubbed from its text.
func scrubError(err error, tokens ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if clean := scrubSecrets(msg, tokens...); clean != msg {
		return &scrubbedError{msg: clean, err: err}
	}
	return err
}

// RedirectError is a 3xx answer from the agent server. Its API has no
// redirects, and following one would send the bearer token wherever the
// answer points (net/http keeps the Authorization header on a redirect to
// the same host, even on another port), so the client never follows it.
type RedirectError struct {
	// Op names the client call, for example "create session".
	Op string
	// StatusCode is the HTTP status.
	StatusCode int
	// Location is the host (and port) the answer pointed to, without any
	// credentials, path or query; "" when it gave none or it did not parse.
	Location string
}

func (e *RedirectError) Error() string {
	to := "no Location"
	if e.Location != "" {
		to = "Location host " + e.Location
	}
	return fmt.Sprintf("agent server: %s: answered %d %s (%s): redirects are refused, the agent server's API has none; check --agent-url",
		e.Op, e.StatusCode, http.StatusText(e.StatusCode), to)
}

// redirectError builds the RedirectError for a 3xx answer to req.
func redirectError(op string, resp *http.Response) *RedirectError {
	e := &RedirectError{Op: op, StatusCode: resp.StatusCode}
	if loc := resp.Header.Get("Location"); loc != "" {
		var u *url.URL
		var err error
		if resp.Request != nil && resp.Request.URL != nil {
			u, err = resp.Request.URL.Parse(loc)
		} else {
			u, err = url.Parse(loc)
		}
		if err == nil {
			e.Location = capText(u.Host, maxErrorFieldBytes)
		}
	}
	return e
}

// isRedirect reports whether status is a 3xx.
func isRedirect(status int) bool { return status >= 300 && status < 400 }
