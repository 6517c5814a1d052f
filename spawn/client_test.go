package spawn

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

func newTestClient(t *testing.T, base, token string) *Client {
	t.Helper()
	// The transport the worker ships with: event streams on connections of
	// their own (JETPILOT_TEST_NETHTTP_SSE=1 runs the suite through net/http).
	c, err := NewClient(ClientOptions{BaseURL: base + "/", Token: token,
		DirectEventStreams: os.Getenv("JETPILOT_TEST_NETHTTP_SSE") != "1"})
	require.NoError(t, err)
	return c
}

// rawServer serves h on 127.0.0.1.
func rawServer(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	return testsupport.LocalServer(t, h, nil).URL
}

func TestNewClientBadInput(t *testing.T) {
	t.Parallel()
	for _, base := range []string{"", "  ", "ftp://x", "http://", "http://user:pw@127.0.0.1:1", "://bad"} {
		_, err := NewClient(ClientOptions{BaseURL: base})
		assert.Error(t, err, base)
	}
	_, err := NewClient(ClientOptions{BaseURL: "http://127.0.0.1:1", Token: "a\nb"})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "a\nb")

	c := newTestClient(t, "http://127.0.0.1:1", "")
	_, err = c.GetSession(t.Context(), "")
	require.ErrorContains(t, err, "session id is required")
	require.ErrorContains(t, c.Decide(t.Context(), "s", "r", map[string]schemas.ToolDecision{"c": {Action: "custom_result"}}, ""), "needs content")
	require.ErrorContains(t, c.Decide(t.Context(), "s", "r", map[string]schemas.ToolDecision{"c": {Action: "maybe"}}, ""), "unknown action")
	require.ErrorContains(t, c.Decide(t.Context(), "s", "", map[string]schemas.ToolDecision{"c": {Action: "accept"}}, ""), "run id")
	require.ErrorContains(t, c.Cancel(t.Context(), "s", ""), "run id")
}

func TestClientAuthHeader(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []http.Header
	base := rawServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Clone())
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok","version":"1","uptime_seconds":3}`))
	})
	h, err := newTestClient(t, base, "").Health(t.Context())
	require.NoError(t, err)
	assert.Equal(t, Health{Status: "ok", Version: "1", UptimeSeconds: 3}, h)
	_, err = newTestClient(t, base, "s3cret").Health(t.Context())
	require.NoError(t, err)

	mu.Lock()
	defer mu.Unlock()
	require.Len(t, seen, 2)
	_, has := seen[0]["Authorization"]
	assert.False(t, has, "no token: no Authorization header")
	assert.Equal(t, "Bearer s3cret", seen[1].Get("Authorization"))
	assert.Equal(t, "jetpilot", seen[1].Get("User-Agent"))
}

func TestClientTokenNeverInErrors(t *testing.T) {
	t.Parallel()
	const secret = "very-secret-token-123"
	srv, base := agentsimtest.New(t, agentsim.Options{Token: "the-right-one"})
	c := newTestClient(t, base, secret)
	_, err := c.CreateSession(t.Context(), CreateSessionRequest{Title: "t"}, "k")
	var ae *APIError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusUnauthorized, ae.StatusCode)
	assert.Equal(t, CodeUnauthorized, ae.Code)
	assert.True(t, IsTransient(err), "a 401 means the server restarted with a new token, not a bad job")
	assert.NotContains(t, err.Error(), secret)

	// Health is public.
	_, err = c.Health(t.Context())
	require.NoError(t, err)

	// Transport errors do not carry the token either.
	srv.SetDown(true)
	_, err = c.GetSession(t.Context(), "x")
	require.Error(t, err)
	assert.True(t, IsTransient(err), "%v", err)
	assert.NotContains(t, err.Error(), secret)

	dead := newTestClient(t, "http://127.0.0.1:1", secret)
	_, err = dead.Health(t.Context())
	require.Error(t, err)
	assert.True(t, IsTransient(err), "connection refused is transient: %v", err)
	assert.NotContains(t, err.Error(), secret)

	// Run errors and logs neither.
	srv.SetDown(false)
	logs := &testsupport.SyncBuffer{}
	r := NewRunner(c, RunnerOptions{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	_, err = r.Run(t.Context(), &Spec{Job: schemas.Job{ID: "j", Prompt: "p"}})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), secret)
	assert.NotEmpty(t, logs.String())
	assert.NotContains(t, logs.String(), secret)
}

func TestClientErrorCodes(t *testing.T) {
	t.Parallel()
	srv, base := agentsimtest.New(t, agentsim.Options{Token: "tok"})
	c := newTestClient(t, base, "tok")
	ctx := t.Context()
	sess, err := c.CreateSession(ctx, CreateSessionRequest{Title: "jetpilot: test", Cwd: "/tmp"}, "")
	require.NoError(t, err)
	require.NotEmpty(t, sess.ID)
	require.NotNil(t, sess.Cwd)
	assert.Equal(t, "/tmp", *sess.Cwd)

	msg := func(content string) SendMessageRequest {
		return SendMessageRequest{Message: MessageInput{Content: content}}
	}
	manyCtx := make([]schemas.ContextItem, 33)
	for i := range manyCtx {
		manyCtx[i] = schemas.ContextItem{Name: "n", Content: "c"}
	}
	cases := []struct {
		name   string
		req    SendMessageRequest
		status int
		code   string
	}{
		{"role", SendMessageRequest{Message: MessageInput{Role: "assistant", Content: "x"}}, 400, CodeInvalidMessageRole},
		{"context", SendMessageRequest{Message: MessageInput{Content: "x"}, Context: manyCtx}, 400, CodeInvalidContext},
		{"overrides", SendMessageRequest{Message: MessageInput{Content: "x"}, Overrides: &RunOverrides{MaxTurns: 257}}, 400, CodeInvalidOverrides},
	}
	for _, tc := range cases {
		_, err := c.SendMessage(ctx, sess.ID, tc.req, "")
		var ae *APIError
		require.ErrorAs(t, err, &ae, tc.name)
		assert.Equal(t, tc.status, ae.StatusCode, tc.name)
		assert.Equal(t, tc.code, ae.Code, tc.name)
		assert.True(t, strings.HasPrefix(ae.RequestID, "req_"), tc.name)
		assert.NotEmpty(t, ae.Message, tc.name)
		assert.False(t, IsTransient(err), tc.name)
		assert.True(t, IsAPIError(err, tc.code))
	}

	// The framework's own errors are plain text: an unknown enum value is a
	// 422 with no JSON code, a path id that is not a UUID a 400.
	_, err = c.SendMessage(ctx, sess.ID, SendMessageRequest{Message: MessageInput{Content: "x"}, Type: "bogus"}, "")
	var ae *APIError
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusUnprocessableEntity, ae.StatusCode)
	assert.Equal(t, "http_422", ae.Code)
	assert.False(t, IsTransient(err))
	_, err = c.GetSession(ctx, "not-a-uuid")
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusBadRequest, ae.StatusCode)

	_, err = c.GetSession(ctx, "00000000-0000-0000-0000-000000000000")
	assert.True(t, IsAPIError(err, CodeNotFound), "%v", err)

	runID, err := c.SendMessage(ctx, sess.ID, msg("#sim text hi\n#sim hang"), "key-1")
	require.NoError(t, err)
	// Same key, same body: the first answer again, no second run.
	again, err := c.SendMessage(ctx, sess.ID, msg("#sim text hi\n#sim hang"), "key-1")
	require.NoError(t, err)
	assert.Equal(t, runID, again)
	assert.Equal(t, 1, srv.RunsStarted())
	// Same key, different body.
	_, err = c.SendMessage(ctx, sess.ID, msg("other"), "key-1")
	assert.True(t, IsAPIError(err, CodeIdempotencyKeyReused), "%v", err)
	// A run is active.
	_, err = c.SendMessage(ctx, sess.ID, msg("other"), "key-2")
	assert.True(t, IsAPIError(err, CodeSessionAlreadyRunning), "%v", err)

	gs, err := c.GetSession(ctx, sess.ID)
	require.NoError(t, err)
	assert.True(t, gs.Session.RunStatus.Active())
	assert.Equal(t, runID, gs.Session.RunStatus.RunID)

	err = c.Decide(ctx, sess.ID, "00000000-0000-4000-8000-000000000001", map[string]schemas.ToolDecision{"call_1": {Action: "accept"}}, "")
	assert.True(t, IsAPIError(err, CodeRunMismatch), "%v", err)

	require.NoError(t, c.Cancel(ctx, sess.ID, runID))
	require.Eventually(t, func() bool { return srv.ActiveRuns() == 0 }, 5*time.Second, 10*time.Millisecond)
	err = c.Cancel(ctx, sess.ID, runID)

	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusConflict, ae.StatusCode)
	err = c.Decide(ctx, sess.ID, runID, map[string]schemas.ToolDecision{"call_1": {Action: "accept"}}, "")
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, http.StatusConflict, ae.StatusCode)

	page, err := c.Messages(ctx, sess.ID, 10, 0)
	require.NoError(t, err)
	// The checkpoint has the server's system prompt first, then the prompt.
	require.GreaterOrEqual(t, len(page.Messages), 2)
	assert.Equal(t, "system", page.Messages[0].Role)
	assert.Equal(t, "user", page.Messages[1].Role)
	assert.Equal(t, "#sim text hi\n#sim hang", page.Messages[1].Content)

	pend, err := c.PendingTools(ctx, sess.ID)
	require.NoError(t, err)
	assert.Empty(t, pend.ToolCalls)
}

func TestClientTransientClassification(t *testing.T) {
	t.Parallel()
	status := func(code int, body string) string {
		return rawServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(code)
			_, _ = w.Write([]byte(body))
		})
	}
	for _, tc := range []struct {
		code      int
		body      string
		transient bool
		wantCode  string
		wantMsg   string
	}{
		{503, `{"error":"busy","code":"internal_error","request_id":"req_1"}`, true, "internal_error", "busy"},
		{500, `{"error":"boom","code":"actor_startup_failed"}`, true, "actor_startup_failed", "boom"},
		{502, `<html>bad gateway</html>`, true, "http_502", "Bad Gateway"},
		{429, `{"error":"slow down","code":"rate_limited"}`, true, "rate_limited", "slow down"},
		{400, `{"error":"bad","code":"invalid_request"}`, false, "invalid_request", "bad"},
		{404, ``, false, "http_404", "Not Found"},
		{409, `{"error":"x","code":"session_already_running"}`, false, "session_already_running", "x"},
		{401, `{"error":"Unauthorized","code":"unauthorized"}`, true, "unauthorized", "Unauthorized"},
	} {
		c := newTestClient(t, status(tc.code, tc.body), "tok")
		_, err := c.GetSession(t.Context(), "s")
		var ae *APIError
		require.ErrorAs(t, err, &ae, tc.code)
		assert.Equal(t, tc.code, ae.StatusCode)
		assert.Equal(t, tc.wantCode, ae.Code)
		assert.Equal(t, tc.wantMsg, ae.Message)
		assert.Equal(t, tc.transient, IsTransient(err), "%d", tc.code)
		assert.Equal(t, tc.transient, IsTransient(&CursorError{Err: err}), "through CursorError")
	}

	// Reset without an answer.
	srv, base := agentsimtest.New(t, agentsim.Options{})
	c := newTestClient(t, base, "")
	srv.InjectFault(agentsim.Fault{Route: "create_session", Kind: "reset", Count: 1})
	_, err := c.CreateSession(t.Context(), CreateSessionRequest{Title: "t"}, "k")
	require.Error(t, err)
	assert.True(t, IsTransient(err), "reset: %v", err)
	_, err = c.CreateSession(t.Context(), CreateSessionRequest{Title: "t"}, "k")
	require.NoError(t, err)

	// The caller's cancellation is not transient; the client's own request
	// timeout is.
	block := rawServer(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = newTestClient(t, block, "").Health(ctx)
	require.ErrorIs(t, err, context.Canceled)
	assert.False(t, IsTransient(err))

	slow, err := NewClient(ClientOptions{BaseURL: block, RequestTimeout: 100 * time.Millisecond})
	require.NoError(t, err)
	_, err = slow.Health(t.Context())
	require.Error(t, err)
	assert.True(t, IsTransient(err), "request timeout: %v", err)

	assert.False(t, IsTransient(nil))
	assert.False(t, IsTransient(errors.New("plain")))
	assert.False(t, IsTransient(ErrFrameTooLarge))
}

func TestClientMessagesContentForms(t *testing.T) {
	t.Parallel()
	base := rawServer(t, func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "/v1/sessions/s%2F1/messages", r.URL.EscapedPath())
		assert.Equal(t, "5", r.URL.Query().Get("limit"))
		assert.Equal(t, "2", r.URL.Query().Get("offset"))
		_, _ = w.Write([]byte(`{"messages":[
			{"id":"m1","role":"user","content":"plain","created_at":"2025-01-01T00:00:00Z"},
			{"id":2,"role":"assistant","content":[{"type":"text","text":"a"},{"type":"tool_use","id":"x"},{"type":"text","text":"b"}]},
			{"id":"m3","role":"assistant","content":null}],"total":9}`))
	})
	page, err := newTestClient(t, base, "").Messages(t.Context(), "s/1", 5, 2)
	require.NoError(t, err)
	assert.Equal(t, 9, page.Total)
	require.Len(t, page.Messages, 3)
	assert.Equal(t, "plain", page.Messages[0].Content)
	assert.Equal(t, "m1", page.Messages[0].ID)
	assert.Equal(t, "ab", page.Messages[1].Content)
	assert.Equal(t, "2", page.Messages[1].ID)
	assert.Equal(t, "", page.Messages[2].Content)
}

func TestClientEventsRejectsNonSSE(t *testing.T) {
	t.Parallel()
	base := rawServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	})
	_, err := newTestClient(t, base, "").Events(t.Context(), "s", nil)
	require.ErrorContains(t, err, "content type")
}

func TestClientEventsLastEventIDHeader(t *testing.T) {
	t.Parallel()
	got := make(chan string, 2)
	base := rawServer(t, func(w http.ResponseWriter, r *http.Request) {
		v, ok := r.Header["Last-Event-Id"]
		if ok {
			got <- v[0]
		} else {
			got <- "<none>"
		}
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte("id: 1\nevent: run_started\ndata: {\"id\":1,\"run_id\":\"r\",\"event\":{\"RunStarted\":{\"run_id\":\"r\"}}}\n\n"))
	})
	c := newTestClient(t, base, "")
	s, err := c.Events(t.Context(), "s", nil)
	require.NoError(t, err)
	ev, err := s.Next()
	require.NoError(t, err)
	assert.Equal(t, "r", ev.RunID)
	require.NoError(t, s.Close())
	zero := uint64(0)
	s, err = c.Events(t.Context(), "s", &zero)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	assert.Equal(t, "<none>", <-got)
	assert.Equal(t, "0", <-got)
}

// Request bodies are measured as sent: < > & are not escaped to six bytes
// each, so a prompt of shell redirects stays its own size.
func TestClientDoesNotEscapeHTML(t *testing.T) {
	t.Parallel()
	srv, base := agentsimtest.New(t, agentsim.Options{})
	c := newTestClient(t, base, "")
	sess, err := c.CreateSession(t.Context(), CreateSessionRequest{Title: "<&>"}, "")
	require.NoError(t, err)
	prompt := "cat <in >out && echo done " + strings.Repeat("<", 600_000)
	_, err = c.SendMessage(t.Context(), sess.ID, SendMessageRequest{Message: MessageInput{Content: prompt}}, "")
	require.NoError(t, err, "600 KB of '<' is 600 KB on the wire, under the 2 MB cap")
	sends := requestsTo(srv, http.MethodPost, "/messages")
	require.Len(t, sends, 1)
	assert.Less(t, len(sends[0].Body), 700_000)
	assert.Contains(t, string(sends[0].Body), "cat <in >out && echo done")
}
