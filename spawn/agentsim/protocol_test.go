package agentsim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Point 8: any UUID gets a stream; a path id that is not one is a 400.
func TestEventsNeverNotFound(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{KeepAlive: 10 * time.Millisecond})
	c := newClient(t, base, "")
	st := c.subscribe(newID(), 0)
	requireKeepAlives(t, st, 2)
	require.Zero(t, s.SessionCount())
	status, b, h := c.do("GET", "/v1/sessions/not-a-uuid/events", nil, nil)
	requirePlain(t, status, b, h, http.StatusBadRequest)
}

// Point 8: a keep-alive only after KeepAlive without an event; the timer
// restarts on every event. KeepAlive is 80 event intervals: a loaded race
// build once stalled the simulator's run for a whole second (1 s here was
// not enough), and the idle keep-alive must still come within waitFor.
func TestKeepAliveOnlyAfterIdle(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{KeepAlive: 2500 * time.Millisecond, EventInterval: 30 * time.Millisecond})
	c := newClient(t, base, "")
	sid := c.createSession()
	st := c.subscribe(sid, 0)
	c.send(sid, "#sim text-stream "+strings.Repeat("0123456789", 10)) // ~30 events, 30ms apart
	deadline := time.After(waitFor)
	events := 0
	for done := false; !done; {
		select {
		case f := <-st.frames:
			require.Empty(t, f.Comment, "a keep-alive while events flow (after %d events)", events)
			events++
			done = f.Event == "run_completed"
		case <-deadline:
			require.FailNow(t, "run did not complete")
		}
	}
	require.Greater(t, events, 20)
	waitIdle(t, s)
	requireKeepAlives(t, st, 1)
}

// Point 8: the ring keeps 4096 events per session by default.
func TestRingHolds4096(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	c.send(sid, "#sim bigtext 5000000") // ~4900 deltas
	waitIdle(t, s)
	s.mu.Lock()
	l := s.logs[sid]
	size, oldest, newest := len(l.ring), l.ring[0].id, l.lastID
	s.mu.Unlock()
	require.Equal(t, 4096, size)
	require.Equal(t, newest-4095, oldest)
	gap := c.subscribe(sid, 0).next()
	require.Equal(t, "gap_detected", gap.Event)
	var g map[string]any
	require.NoError(t, json.Unmarshal([]byte(gap.Data), &g))
	assert.EqualValues(t, oldest, g["oldest_available_id"])
	frames := c.subscribe(sid, int(oldest)-1).until("run_completed")
	assert.Len(t, frames, 4096, "the whole ring replays")
}

// Point 8: a subscriber that falls more than SubscriberLag events behind
// loses the oldest of them: its ids jump. The subscriber here is never
// read while the run publishes.
func TestSubscriberLagLosesEvents(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{SubscriberLag: 4})
	require.Equal(t, 8192, New(Options{}).opts.SubscriberLag, "default: twice the ring")
	c := newClient(t, base, "")
	sid := c.createSession()
	sub := &subscriber{notify: make(chan struct{}, 1), lag: s.opts.SubscriberLag}
	s.mu.Lock()
	s.logForLocked(sid).subs[sub] = struct{}{}
	s.mu.Unlock()
	c.send(sid, "#sim turns 5\n#sim text abcdefghij")
	waitIdle(t, s)
	s.mu.Lock()
	defer s.mu.Unlock()
	last := s.logs[sid].lastID
	require.Greater(t, last, uint64(10))
	var ids []uint64
	for _, ev := range sub.queue {
		ids = append(ids, ev.id)
	}
	assert.Equal(t, []uint64{last - 3, last - 2, last - 1, last}, ids, "only the newest SubscriberLag events are left")

	// On the wire: a stream blocked by a client that does not read.
	s2, base2 := newTestServer(t, Options{SubscriberLag: 2})
	c2 := newClient(t, base2, "")
	sid2 := c2.createSession()
	req, err := http.NewRequest("GET", base2+"/v1/sessions/"+sid2+"/events", nil)
	require.NoError(t, err)
	resp, err := c2.hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	c2.send(sid2, strings.Repeat("#sim bigframe 1000000\n", 24)+"#sim text end")
	// 24 MB of frames: more than loopback socket buffers hold. Slow under
	// the race detector, hence the longer deadline.
	require.Eventually(t, func() bool { return s2.ActiveRuns() == 0 }, 60*time.Second, 10*time.Millisecond)
	out := make(chan frame, 1000)
	go func() { _ = readFrames(resp.Body, out) }()
	var prev uint64
	jumped := false
	deadline := time.After(60 * time.Second)
	for done := false; !done; {
		select {
		case f := <-out:
			if f.Comment != "" {
				continue
			}
			id, err := strconv.ParseUint(f.ID, 10, 64)
			require.NoError(t, err)
			if prev != 0 && id != prev+1 {
				jumped = true
			}
			prev = id
			done = f.Event == "run_completed"
		case <-deadline:
			require.FailNow(t, "stream did not reach run_completed")
		}
	}
	assert.True(t, jumped, "a lagging stream loses events")
}

// Point 14.
func TestBodyCap2MB(t *testing.T) {
	t.Parallel()
	_, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	big := `{"title":"` + strings.Repeat("t", 2<<20) + `"}`
	status, b, h := c.do("POST", "/v1/sessions", big, nil)
	requirePlain(t, status, b, h, http.StatusRequestEntityTooLarge)
	justUnder := `{"title":"` + strings.Repeat("t", 2<<20-20) + `"}`
	status, b, _ = c.do("POST", "/v1/sessions", justUnder, nil)
	require.Equal(t, http.StatusCreated, status, string(b[:min(len(b), 200)]))
}

// Point 15.
func TestFrameworkErrorsArePlainText(t *testing.T) {
	t.Parallel()
	_, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	sid := c.createSession()
	runID := newID()
	cases := []struct {
		name, method, path string
		body               any
		contentType        string
		status             int
	}{
		{"malformed json", "POST", "/v1/sessions", `{"title":`, "application/json", 400},
		{"trailing data", "POST", "/v1/sessions", `{"title":"a"} x`, "application/json", 400},
		{"wrong type", "POST", "/v1/sessions", `{"title":5}`, "application/json", 422},
		{"not an object", "POST", "/v1/sessions", `["a"]`, "application/json", 422},
		{"missing field", "POST", "/v1/sessions/" + sid + "/cancel", `{}`, "application/json", 422},
		{"unknown action", "POST", "/v1/sessions/" + sid + "/tools/decisions", `{"run_id":"` + runID + `","decisions":{"c":{"action":"maybe"}}}`, "application/json", 422},
		{"no content type", "POST", "/v1/sessions", `{"title":"a"}`, "", 415},
		{"text content type", "POST", "/v1/sessions", `{"title":"a"}`, "text/plain", 415},
		{"path id not a uuid", "GET", "/v1/sessions/abc", nil, "", 400},
		{"decision path id not a uuid", "POST", "/v1/sessions/abc/tools/c/decision", `{"run_id":"` + runID + `","action":"accept"}`, "application/json", 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var rd io.Reader
			if s, ok := tc.body.(string); ok {
				rd = strings.NewReader(s)
			}
			req, err := http.NewRequest(tc.method, base+tc.path, rd)
			require.NoError(t, err)
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			resp, err := c.hc.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			requirePlain(t, resp.StatusCode, b, resp.Header, tc.status)
			require.NotEmpty(t, b)
		})
	}
	// A JSON content type with parameters or a +json suffix is JSON.
	status, b, _ := c.do("POST", "/v1/sessions", map[string]any{"title": "x"}, map[string]string{"Content-Type": "application/vnd.x+json; charset=utf-8"})
	require.Equal(t, http.StatusCreated, status, string(b))

	for _, p := range []string{"/v1/nope", "/v1/sessions/" + sid + "/nope", "/"} {
		status, b, _ := newClient(t, base, "").do("GET", p, nil, nil)
		require.Equal(t, http.StatusNotFound, status, p)
		require.Empty(t, b, p)
	}
	status, b, _ = c.do("DELETE", "/v1/health", nil, nil)
	require.Equal(t, http.StatusMethodNotAllowed, status)
	require.Empty(t, b)
}

// Point 15.
func TestTitleRequired(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{})
	c := newClient(t, base, "")
	for _, body := range []string{`{}`, `{"cwd":"/w"}`, `{"title":null}`, `{"Title":"case matters"}`} {
		status, b, h := c.do("POST", "/v1/sessions", body, nil)
		requirePlain(t, status, b, h, http.StatusUnprocessableEntity)
	}
	require.Zero(t, s.SessionCount())
	status, b, _ := c.do("POST", "/v1/sessions", `{"title":""}`, nil)
	require.Equal(t, http.StatusCreated, status, string(b))
}

// Point 16: uptime counts from the (last) start.
func TestHealthUptimeFromLastStart(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{Token: "tok"})
	anon := newClient(t, base, "")
	s.mu.Lock()
	s.start = time.Now().Add(-time.Hour)
	s.mu.Unlock()
	health := func() map[string]any {
		status, b, _ := anon.do("GET", "/v1/health", nil, nil)
		require.Equal(t, http.StatusOK, status)
		var h map[string]any
		require.NoError(t, json.Unmarshal(b, &h))
		return h
	}
	h := health()
	assert.Equal(t, "ok", h["status"])
	assert.True(t, strings.HasPrefix(h["version"].(string), "0.3.88"), h["version"])
	assert.GreaterOrEqual(t, h["uptime_seconds"].(float64), 3600.0)
	assert.Len(t, h, 3)
	s.Restart("tok")
	assert.Less(t, health()["uptime_seconds"].(float64), 60.0, "uptime restarts with the server")
}

// Point 17: the auth layer's exact answer.
func TestAuthUnauthorizedBody(t *testing.T) {
	t.Parallel()
	_, base := newTestServer(t, Options{Token: "tok"})
	anon := newClient(t, base, "")
	for _, hdr := range []string{"", "Bearer nope", "bearer tok", "tok", "Bearer  tok"} {
		status, b, _ := anon.do("GET", "/v1/models", nil, map[string]string{"Authorization": hdr})
		require.Equal(t, http.StatusUnauthorized, status, hdr)
		require.Equal(t, `{"error":"Unauthorized","code":"unauthorized"}`, string(b), hdr)
	}
	status, _, _ := anon.do("GET", "/v1/models", nil, map[string]string{"Authorization": "Bearer tok"})
	require.Equal(t, http.StatusOK, status)
	// Unknown routes answer 404 before auth (the layer guards routes only).
	status, _, _ = anon.do("GET", "/v1/unknown", nil, nil)
	require.Equal(t, http.StatusNotFound, status)
}

func TestSetToken(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{Token: "one"})
	sid := newClient(t, base, "one").createSession()
	s.SetToken("two")
	status, b, _ := newClient(t, base, "one").do("GET", "/v1/sessions/"+sid, nil, nil)
	requireError(t, status, b, http.StatusUnauthorized, codeUnauthorized)
	status, _, _ = newClient(t, base, "two").do("GET", "/v1/sessions/"+sid, nil, nil)
	require.Equal(t, http.StatusOK, status)
}

// Restart: sessions and their checkpointed messages stay; runs, rings,
// keys, pending calls, streams and the token go.
func TestRestartKeepsSessionsLosesRuns(t *testing.T) {
	t.Parallel()
	s, base := newTestServer(t, Options{Token: "old", KeepAlive: 10 * time.Millisecond})
	c := newClient(t, base, "old")
	done := c.createSession()
	c.send(done, "#sim text kept")
	waitIdle(t, s)
	_, before, _ := c.do("GET", "/v1/sessions/"+done+"/messages", nil, nil)

	busy := c.createSession()
	st := c.subscribe(busy, 0)
	c.send(busy, "#sim tool deploy {}")
	st.until("waiting_for_tool_approval")
	key := map[string]string{"Idempotency-Key": "k"}
	status, _, _ := c.do("POST", "/v1/sessions", map[string]any{"title": "a"}, key)
	require.Equal(t, http.StatusCreated, status)
	sessions := s.SessionCount()

	s.Restart("new")
	require.Error(t, st.ended(), "open streams are cut")
	status, b, _ := c.do("GET", "/v1/sessions/"+busy, nil, nil)
	requireError(t, status, b, http.StatusUnauthorized, codeUnauthorized)

	c = newClient(t, base, "new")
	require.Equal(t, sessions, s.SessionCount())
	require.Zero(t, s.ActiveRuns())
	for _, sid := range []string{done, busy} {
		_, b, _ := c.do("GET", "/v1/sessions/"+sid, nil, nil)
		require.Contains(t, string(b), `"run_status":{"state":"idle"}`)
	}
	_, after, _ := c.do("GET", "/v1/sessions/"+done+"/messages", nil, nil)
	require.JSONEq(t, string(before), string(after))
	_, b, _ = c.do("GET", "/v1/sessions/"+busy+"/tools/pending", nil, nil)
	require.JSONEq(t, `{"run_id":null,"tool_calls":[]}`, string(b))
	// The key is forgotten: another body under it is a new request.
	status, _, _ = c.do("POST", "/v1/sessions", map[string]any{"title": "b"}, key)
	require.Equal(t, http.StatusCreated, status)

	// The ring is gone: only keep-alives, then a new run's ids from 1.
	st = c.subscribe(busy, 0)
	requireKeepAlives(t, st, 2)
	runID := c.send(busy, "again")
	f := st.next()
	require.Equal(t, "1", f.ID)
	_, rid, _, _ := f.env(t)
	require.Equal(t, runID, rid)
	st.until("run_completed")
	// The killed run left nothing behind: no event after the restart but
	// the new run's.
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range s.logs[busy].ring {
		require.True(t, bytes.Contains(ev.data, []byte(runID)), "event %d of another run", ev.id)
	}
}
