package agentsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAuth(t *testing.T) {
	s, base := newTestServer(t, Options{Token: "s3cret", Version: "9.9.9"})
	anon := newClient(t, base, "")
	wrong := newClient(t, base, "nope")
	good := newClient(t, base, "s3cret")

	status, b, _ := anon.do("GET", "/v1/health", nil, nil)
	require.Equal(t, http.StatusOK, status)
	var h map[string]any
	require.NoError(t, json.Unmarshal(b, &h))
	assert.Equal(t, "ok", h["status"])
	assert.Equal(t, "9.9.9", h["version"])
	assert.Contains(t, h, "uptime_seconds")

	status, b, _ = anon.do("GET", "/v1/openapi.json", nil, nil)
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, string(b), `"openapi":"3.1.0"`)

	status, b, _ = anon.do("POST", "/v1/sessions", map[string]any{"title": "x"}, nil)
	requireError(t, status, b, http.StatusUnauthorized, codeUnauthorized)
	assert.NotContains(t, string(b), "s3cret")
	status, b, _ = wrong.do("GET", "/v1/sessions/abc", nil, nil)
	requireError(t, status, b, http.StatusUnauthorized, codeUnauthorized)
	status, b, _ = wrong.do("GET", "/v1/sessions/abc/events", nil, nil)
	requireError(t, status, b, http.StatusUnauthorized, codeUnauthorized)
	require.Equal(t, 0, s.SessionCount())

	good.createSession()
	require.Equal(t, 1, s.SessionCount())
	status, b, _ = good.do("GET", "/v1/sessions/"+newID(), nil, nil)
	requireError(t, status, b, http.StatusNotFound, codeNotFound)

	// Without a configured token, any header or none is accepted.
	_, open := newTestServer(t, Options{})
	newClient(t, open, "").createSession()
	newClient(t, open, "whatever").createSession()
}

func TestCreateAndGetSession(t *testing.T) {
	_, base := newTestServer(t, Options{DefaultModel: "m1"})
	c := newClient(t, base, "")
	status, b, _ := c.do("POST", "/v1/sessions", map[string]any{"title": "t1", "cwd": "/work"}, nil)
	require.Equal(t, http.StatusCreated, status)
	var created map[string]any
	require.NoError(t, json.Unmarshal(b, &created))
	assert.Equal(t, "t1", created["title"])
	assert.Equal(t, "/work", created["cwd"])
	assert.Equal(t, map[string]any{"state": "idle"}, created["run_status"])
	for _, k := range []string{"created_at", "updated_at"} {
		_, err := time.Parse(time.RFC3339, created[k].(string))
		require.NoError(t, err, k)
	}

	status, b, _ = c.do("POST", "/v1/sessions", map[string]any{"title": "t2"}, nil)
	require.Equal(t, http.StatusCreated, status)
	require.Contains(t, string(b), `"cwd":null`)

	status, b, _ = c.do("GET", "/v1/sessions/"+created["id"].(string), nil, nil)
	require.Equal(t, http.StatusOK, status)
	var got struct {
		Session map[string]any `json:"session"`
		Config  map[string]any `json:"config"`
	}
	require.NoError(t, json.Unmarshal(b, &got))
	assert.Equal(t, created["id"], got.Session["id"])
	assert.Equal(t, "m1", got.Config["default_model"])
	assert.Equal(t, "none", got.Config["auto_approve_mode"])

	status, b, h := c.do("POST", "/v1/sessions", "{not json", nil)
	requirePlain(t, status, b, h, http.StatusBadRequest)
	status, b, _ = c.do("GET", "/v1/nowhere", nil, nil)
	require.Equal(t, http.StatusNotFound, status)
	require.Empty(t, b)
}

func TestIdempotencyReplayAndConflict(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	key := map[string]string{"Idempotency-Key": "k1"}

	st1, b1, _ := c.do("POST", "/v1/sessions", map[string]any{"title": "a"}, key)
	require.Equal(t, http.StatusCreated, st1)
	// The body is compared as the server re-encodes it: unknown fields are
	// dropped and null is absent.
	st2, b2, _ := c.do("POST", "/v1/sessions", `{"cwd":null,"title":"a","extra":[1,2]}`, key)
	require.Equal(t, http.StatusCreated, st2)
	require.JSONEq(t, string(b1), string(b2))
	require.Equal(t, 1, s.SessionCount())

	st, b, _ := c.do("POST", "/v1/sessions", map[string]any{"title": "b"}, key)
	requireError(t, st, b, http.StatusConflict, codeIdempotencyKeyReused)
	require.Equal(t, 1, s.SessionCount())

	// The same key on another path is another key.
	var sess struct{ ID string }
	require.NoError(t, json.Unmarshal(b1, &sess))
	sendPath := "/v1/sessions/" + sess.ID + "/messages"
	st1, b1, _ = c.do("POST", sendPath, msg("hi"), key)
	withDefaults := msg("hi")
	withDefaults["run_id"], withDefaults["context"] = nil, nil // absent and null are the same
	st2, b2, _ = c.do("POST", sendPath, withDefaults, key)
	require.Equal(t, http.StatusOK, st1, string(b1))
	require.Equal(t, http.StatusOK, st2, string(b2))
	require.JSONEq(t, string(b1), string(b2))
	require.Equal(t, 1, s.RunsStarted())
	waitIdle(t, s)
	require.Equal(t, 1, s.RunsStarted(), "a replay must not start a run")
}

// Point 7: only successful answers are stored.
func TestIdempotencyStoresSuccessesOnly(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	runID := c.send(sid, "#sim hang")
	key := map[string]string{"Idempotency-Key": "send-2"}
	path := "/v1/sessions/" + sid + "/messages"
	st, b, _ := c.do("POST", path, msg("second"), key)
	requireError(t, st, b, http.StatusConflict, codeSessionAlreadyRunning)
	waitPhase(t, s, sid, "hang")
	c.cancelRun(sid, runID)
	waitIdle(t, s)
	// The 409 was not stored: the retry runs.
	st, b1, _ := c.do("POST", path, msg("second"), key)
	require.Equal(t, http.StatusOK, st, string(b1))
	st, b2, _ := c.do("POST", path, msg("second"), key)
	require.Equal(t, http.StatusOK, st)
	require.JSONEq(t, string(b1), string(b2))
	require.Equal(t, 2, s.RunsStarted())
	require.Equal(t, 24*time.Hour, s.opts.IdempotencyTTL, "keys live 24 h by default")
}

// Point 7: there is no in-flight reservation.
func TestIdempotencyNoInFlightReservation(t *testing.T) {
	t.Parallel()
	s := New(Options{})
	arrived := make(chan struct{}, 2)
	release := make(chan struct{})
	s.afterIdemLookup = func(string) {
		arrived <- struct{}{}
		<-release
	}
	ts := httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); ts.Close() })
	c := newClient(t, ts.URL, "")
	both := func(path string, body any) [2][]byte {
		type answer struct {
			status int
			body   []byte
			err    error
		}
		out := make(chan answer, 2)
		for range 2 {
			go func() {
				st, b, _, err := c.try("POST", path, body, map[string]string{"Idempotency-Key": "same"})
				out <- answer{st, b, err}
			}()
		}
		for range 2 {
			select {
			case <-arrived:
			case <-time.After(waitFor):
				require.FailNow(t, "both requests should pass the lookup")
			}
		}
		close(release)
		var got [2][]byte
		for i := range 2 {
			select {
			case a := <-out:
				require.NoError(t, a.err)
				got[i] = append([]byte(strconv.Itoa(a.status)+" "), a.body...)
			case <-time.After(waitFor):
				require.FailNow(t, "no answer")
			}
		}
		return got
	}
	got := both("/v1/sessions", map[string]any{"title": "twice"})
	require.Equal(t, 2, s.SessionCount(), "two creates make two sessions: %s", got)
	require.NotEqual(t, string(got[0]), string(got[1]))

	var sid string
	for id := range s.sessions {
		sid = id
		break
	}
	release = make(chan struct{})
	got = both("/v1/sessions/"+sid+"/messages", msg("#sim hang"))
	statuses := []string{strings.Fields(string(got[0]))[0], strings.Fields(string(got[1]))[0]}
	assert.ElementsMatch(t, []string{"200", "409"}, statuses, "%s", got)
	assert.Contains(t, string(got[0])+string(got[1]), codeSessionAlreadyRunning)
	require.Equal(t, 1, s.RunsStarted())
}

func TestIdempotencyKeysExpire(t *testing.T) {
	s, base := newTestServer(t, Options{IdempotencyTTL: 50 * time.Millisecond})
	c := newClient(t, base, "")
	key := map[string]string{"Idempotency-Key": "ttl"}
	st, _, _ := c.do("POST", "/v1/sessions", map[string]any{"title": "a"}, key)
	require.Equal(t, http.StatusCreated, st)
	// Once the key has expired, another body under it is a new request.
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		st, _, _, err := c.try("POST", "/v1/sessions", map[string]any{"title": "b"}, key)
		assert.NoError(ct, err)
		assert.Equal(ct, http.StatusCreated, st)
	}, waitFor, 10*time.Millisecond)
	require.Equal(t, 2, s.SessionCount())
}

func TestSendValidation(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()

	items := func(n int, content string) []map[string]any {
		out := make([]map[string]any, n)
		for i := range out {
			out[i] = map[string]any{"name": fmt.Sprintf("c%d", i), "content": content}
		}
		return out
	}
	with := func(kv ...any) map[string]any {
		m := msg("hello")
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	plain := []struct {
		name   string
		body   any
		status int
	}{
		{"bad json", `{"message":`, 400},
		{"no message", map[string]any{"type": "message"}, 422},
		{"unknown role", map[string]any{"message": map[string]any{"role": "bot", "content": "x"}}, 422},
		{"no content", map[string]any{"message": map[string]any{"role": "user"}}, 422},
		{"bad type", with("type", "shout"), 422},
		{"run_id not a uuid", with("run_id", "r1"), 422},
		{"context without content", with("context", []map[string]any{{"name": "n"}}), 422},
		{"bad auto_approve", with("overrides", map[string]any{"auto_approve": 5}), 422},
	}
	for _, tc := range plain {
		t.Run(tc.name, func(t *testing.T) {
			st, b, h := c.do("POST", "/v1/sessions/"+sid+"/messages", tc.body, nil)
			requirePlain(t, st, b, h, tc.status)
		})
	}
	cases := []struct {
		name   string
		body   any
		status int
		code   string
	}{
		{"assistant role", map[string]any{"message": map[string]any{"role": "assistant", "content": "x"}}, 400, codeInvalidMessageRole},
		{"steering without run_id", with("type", "steering"), 409, codeRunMismatch},
		{"33 items", with("context", items(33, "x")), 400, codeInvalidContext},
		{"33 items, empty ones counted", with("context", append(items(31, "x"), map[string]any{"name": " ", "content": ""}, map[string]any{"name": "", "content": ""})), 400, codeInvalidContext},
		{"long name", with("context", []map[string]any{{"name": strings.Repeat("n", 257), "content": "x"}}), 400, codeInvalidContext},
		{"long content", with("context", items(1, strings.Repeat("é", 50_001))), 400, codeInvalidContext},
		{"total too long", with("context", items(11, strings.Repeat("x", 50_000))), 400, codeInvalidContext},
		{"max_turns 0", with("overrides", map[string]any{"max_turns": 0}), 400, codeInvalidOverrides},
		{"max_turns 257", with("overrides", map[string]any{"max_turns": 257}), 400, codeInvalidOverrides},
		{"long system prompt", with("overrides", map[string]any{"system_prompt": strings.Repeat("s", 32*1024+1)}), 400, codeInvalidOverrides},
		{"bad script", msg("#sim sleep forever"), 400, codeInvalidRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, b, _ := c.do("POST", "/v1/sessions/"+sid+"/messages", tc.body, nil)
			requireError(t, st, b, tc.status, tc.code)
		})
	}
	require.Equal(t, 0, s.RunsStarted())

	st, b, _ := c.do("POST", "/v1/sessions/"+newID()+"/messages", msg("x"), nil)
	requireError(t, st, b, 404, codeNotFound)

	// At the limits (raw items, empty ones included), with an unknown
	// auto_approve string (the server default), an unknown model (a custom
	// model: it fails later, in the run) and an empty prompt: accepted.
	ok := append(items(30, strings.Repeat("é", 16_000)), map[string]any{"name": " ", "content": "dropped"}, map[string]any{"name": "x", "content": ""})
	body := with("context", ok, "model", "unknown-model", "overrides", map[string]any{
		"model": "default", "max_turns": 256, "system_prompt": strings.Repeat("s", 32*1024), "auto_approve": "Some",
	})
	st, b, _ = c.do("POST", "/v1/sessions/"+sid+"/messages", body, nil)
	require.Equal(t, http.StatusOK, st, string(b))
	waitIdle(t, s)
	st, b, _ = c.do("POST", "/v1/sessions/"+sid+"/messages", msg(""), nil)
	require.Equal(t, http.StatusOK, st, string(b))
	waitIdle(t, s)

	// Content as an array of parts.
	st, b, _ = c.do("POST", "/v1/sessions/"+sid+"/messages", map[string]any{
		"message": map[string]any{"role": "user", "content": []map[string]any{{"type": "text", "text": "hi"}, {"type": "image", "url": "data:x"}}},
	}, nil)
	require.Equal(t, http.StatusOK, st, string(b))
	waitIdle(t, s)
	require.Equal(t, 3, s.RunsStarted())
}

func TestSessionAlreadyRunningAndSteering(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	path := "/v1/sessions/" + sid + "/messages"

	st, b, _ := c.do("POST", path, map[string]any{"message": map[string]any{"role": "user", "content": "more"}, "type": "follow_up", "run_id": newID()}, nil)
	requireError(t, st, b, http.StatusConflict, codeSessionNotRunning)

	runID := c.send(sid, "#sim hang")
	st, b, _ = c.do("POST", path, msg("again"), nil)
	requireError(t, st, b, http.StatusConflict, codeSessionAlreadyRunning)

	st, b, _ = c.do("POST", path, map[string]any{"message": map[string]any{"role": "user", "content": "steer"}, "type": "steering", "run_id": newID()}, nil)
	requireError(t, st, b, http.StatusConflict, codeRunMismatch)
	st, b, _ = c.do("POST", path, map[string]any{"message": map[string]any{"role": "user", "content": "again"}, "run_id": newID()}, nil)
	requireError(t, st, b, http.StatusConflict, codeRunMismatch)
	st, b, _ = c.do("POST", path, map[string]any{"message": map[string]any{"role": "user", "content": "steer"}, "type": "steering", "run_id": runID}, nil)
	require.Equal(t, http.StatusOK, st, string(b))
	require.JSONEq(t, `{"run_id":"`+runID+`"}`, string(b))
	require.Equal(t, 1, s.RunsStarted())
	require.Equal(t, 1, s.ActiveRuns())
	require.Equal(t, 1, s.Steers())
}

func TestFaultInjection(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")

	s.InjectFault(Fault{Route: RouteCreateSession, Kind: Fault503, Count: 2})
	for range 2 {
		st, b, _ := c.do("POST", "/v1/sessions", map[string]any{"title": "x"}, nil)
		requireError(t, st, b, http.StatusServiceUnavailable, codeUnavailable)
	}
	require.Equal(t, 0, s.SessionCount())
	sid := c.createSession()

	s.InjectFault(Fault{Route: RouteGetSession, Kind: Fault429, Count: 1})
	st, b, _ := c.do("GET", "/v1/sessions/"+sid, nil, nil)
	requireError(t, st, b, http.StatusTooManyRequests, codeRateLimited)
	s.InjectFault(Fault{Route: RouteAny, Kind: Fault500})
	st, b, _ = c.do("GET", "/v1/health", nil, nil)
	requireError(t, st, b, http.StatusInternalServerError, codeInternal)
	st, _, _ = c.do("GET", "/v1/sessions/"+sid, nil, nil)
	require.Equal(t, http.StatusOK, st)

	s.InjectFault(Fault{Route: RouteSendMessage, Kind: FaultReset, Count: 1})
	_, _, _, err := c.try("POST", "/v1/sessions/"+sid+"/messages", msg("hi"), nil)
	require.Error(t, err, "a reset answers nothing")
	require.Equal(t, 0, s.RunsStarted())

	s.InjectFault(Fault{Route: RouteEvents, Kind: Fault503})
	st, _, _ = c.do("GET", "/v1/sessions/"+sid+"/events", nil, nil)
	require.Equal(t, http.StatusServiceUnavailable, st)

	s.SetDown(true)
	_, _, _, err = c.try("GET", "/v1/health", nil, nil)
	require.Error(t, err)
	s.SetDown(false)
	st, _, _ = c.do("GET", "/v1/health", nil, nil)
	require.Equal(t, http.StatusOK, st)

	reqs := s.Requests()
	require.NotEmpty(t, reqs)
	assert.Equal(t, "POST", reqs[0].Method)
	assert.Equal(t, "/v1/sessions", reqs[0].Path)
	assert.Equal(t, http.StatusServiceUnavailable, reqs[0].Status)
	assert.JSONEq(t, `{"title":"x"}`, string(reqs[0].Body))
}

func TestFailSendDirectiveWithIdempotencyKey(t *testing.T) {
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	prompt := "do it\n#sim fail-send 2 503\n#sim text done"
	key := map[string]string{"Idempotency-Key": "send-1"}
	path := "/v1/sessions/" + sid + "/messages"
	for range 2 {
		st, b, _ := c.do("POST", path, msg(prompt), key)
		requireError(t, st, b, http.StatusServiceUnavailable, codeUnavailable)
	}
	st1, b1, _ := c.do("POST", path, msg(prompt), key)
	require.Equal(t, http.StatusOK, st1, string(b1))
	st2, b2, _ := c.do("POST", path, msg(prompt), key)
	require.Equal(t, http.StatusOK, st2)
	require.JSONEq(t, string(b1), string(b2))
	require.Equal(t, 1, s.RunsStarted())
	require.Equal(t, 1, s.RunsForPrompt("fail-send"))
	require.Equal(t, 0, s.RunsForPrompt("nothing like this"))

	// reset kind: the connection drops without an answer.
	sid2 := c.createSession()
	_, _, _, err := c.try("POST", "/v1/sessions/"+sid2+"/messages", msg("#sim fail-send 1 reset"), nil)
	require.Error(t, err)
	c.send(sid2, "#sim fail-send 1 reset")
	require.Equal(t, 2, s.RunsStarted())
}

func TestMessagesEndpoint(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	get := func(q string) (msgs struct {
		Messages []map[string]any
		Total    int
	},
	) {
		st, b, _ := c.do("GET", "/v1/sessions/"+sid+"/messages"+q, nil, nil)
		require.Equal(t, http.StatusOK, st, string(b))
		require.NoError(t, json.Unmarshal(b, &msgs))
		return msgs
	}
	require.Zero(t, get("").Total)
	c.send(sid, "first\n#sim text one")
	waitIdle(t, s)
	c.send(sid, "second")
	waitIdle(t, s)

	all := get("")
	require.Equal(t, 5, all.Total)
	require.Len(t, all.Messages, 5)
	var roles []string
	for _, m := range all.Messages {
		roles = append(roles, m["role"].(string))
		assert.NotContains(t, m, "id")
		assert.NotContains(t, m, "created_at")
	}
	assert.Equal(t, []string{"system", "user", "assistant", "user", "assistant"}, roles)
	assert.Equal(t, "first\n#sim text one", all.Messages[1]["content"])
	assert.Equal(t, []any{map[string]any{"type": "text", "text": "one"}}, all.Messages[2]["content"])
	assert.Equal(t, []any{map[string]any{"type": "text", "text": defaultText}}, all.Messages[4]["content"])

	page := get("?limit=2&offset=1")
	require.Equal(t, 5, page.Total)
	require.Len(t, page.Messages, 2)
	assert.Equal(t, "user", page.Messages[0]["role"])
	assert.Empty(t, get("?offset=10").Messages)

	st, b, h := c.do("GET", "/v1/sessions/"+sid+"/messages?limit=zero", nil, nil)
	requirePlain(t, st, b, h, 400)
	st, b, h = c.do("GET", "/v1/sessions/"+sid+"/messages?offset=-1", nil, nil)
	requirePlain(t, st, b, h, 400)
	st, b, _ = c.do("GET", "/v1/sessions/"+newID()+"/messages", nil, nil)
	requireError(t, st, b, 404, codeNotFound)
}
