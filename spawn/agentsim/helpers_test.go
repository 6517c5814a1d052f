package agentsim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
)

const waitFor = 5 * time.Second

// newTestServer is agentsimtest.New for this package's own tests, which
// cannot import agentsimtest (it imports agentsim: an import cycle).
func newTestServer(t testing.TB, opts Options) (*Server, string) {
	t.Helper()
	s := New(opts)
	return s, testsupport.LocalServer(t, s, s.Close).URL
}

// client is a minimal test client of the simulator.
type client struct {
	t     testing.TB
	base  string
	token string
	hc    *http.Client
}

func newClient(t testing.TB, base, token string) *client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &client{t: t, base: base, token: token, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// do sends a request; body is encoded as JSON unless it is a string or
// []byte. It returns the status and the response body.
func (c *client) do(method, path string, body any, hdr map[string]string) (int, []byte, http.Header) {
	c.t.Helper()
	status, b, h, err := c.try(method, path, body, hdr)
	require.NoError(c.t, err, "%s %s", method, path)
	return status, b, h
}

func (c *client) try(method, path string, body any, hdr map[string]string) (int, []byte, http.Header, error) {
	var rd io.Reader
	switch v := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(v)
	case []byte:
		rd = bytes.NewReader(v)
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return 0, nil, nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header, err
}

func (c *client) createSession() string {
	c.t.Helper()
	status, b, _ := c.do("POST", "/v1/sessions", map[string]any{"title": "jetpilot: test"}, nil)
	require.Equal(c.t, http.StatusCreated, status, string(b))
	var s struct {
		ID string `json:"id"`
	}
	require.NoError(c.t, json.Unmarshal(b, &s))
	require.NotEmpty(c.t, s.ID)
	return s.ID
}

// send starts a run with prompt and returns its run id.
func (c *client) send(sid, prompt string) string {
	c.t.Helper()
	status, b, _ := c.do("POST", "/v1/sessions/"+sid+"/messages", msg(prompt), nil)
	require.Equal(c.t, http.StatusOK, status, string(b))
	var r struct {
		RunID string `json:"run_id"`
	}
	require.NoError(c.t, json.Unmarshal(b, &r))
	require.NotEmpty(c.t, r.RunID)
	return r.RunID
}

func msg(prompt string) map[string]any {
	return map[string]any{"message": map[string]any{"role": "user", "content": prompt}, "type": "message"}
}

// requireError checks an error answer's status and code, and its request id.
func requireError(t testing.TB, status int, b []byte, wantStatus int, wantCode string) {
	t.Helper()
	require.Equal(t, wantStatus, status, string(b))
	var e errorBody
	require.NoError(t, json.Unmarshal(b, &e), string(b))
	require.Equal(t, wantCode, e.Code, string(b))
	require.NotEmpty(t, e.Error)
	if wantCode == codeUnauthorized {
		require.JSONEq(t, `{"error":"Unauthorized","code":"unauthorized"}`, string(b))
		return
	}
	require.True(t, strings.HasPrefix(e.RequestID, "req_"), "request_id %q", e.RequestID)
}

// requirePlain checks a framework rejection: the status and a body that is
// plain text, not a JSON error.
func requirePlain(t testing.TB, status int, b []byte, h http.Header, wantStatus int) {
	t.Helper()
	require.Equal(t, wantStatus, status, string(b))
	require.False(t, json.Valid(b) && len(b) > 0, "a framework error is plain text, got %s", b)
	if len(b) > 0 {
		require.True(t, strings.HasPrefix(h.Get("Content-Type"), "text/plain"), h.Get("Content-Type"))
	}
}

// newID is a random UUID, for ids that must parse but match nothing.
func newID() string { return uuid.NewString() }

// sendBody posts a send-message body and returns the status and body.
func (c *client) sendBody(sid string, body any) (int, []byte) {
	c.t.Helper()
	st, b, _ := c.do("POST", "/v1/sessions/"+sid+"/messages", body, nil)
	return st, b
}

// steer sends a steering (or follow_up) message to the run.
func (c *client) steer(sid, runID, kind, text string) (int, []byte) {
	c.t.Helper()
	return c.sendBody(sid, map[string]any{"message": map[string]any{"role": "user", "content": text}, "type": kind, "run_id": runID})
}

// decide posts decisions for the run and requires the 200.
func (c *client) decide(sid, runID string, decisions map[string]any) {
	c.t.Helper()
	st, b, _ := c.do("POST", "/v1/sessions/"+sid+"/tools/decisions", map[string]any{"run_id": runID, "decisions": decisions}, nil)
	require.Equal(c.t, http.StatusOK, st, string(b))
	require.JSONEq(c.t, `{"accepted":true,"run_id":"`+runID+`"}`, string(b))
}

// cancelRun posts a cancel for the run and requires the 200.
func (c *client) cancelRun(sid, runID string) {
	c.t.Helper()
	st, b, _ := c.do("POST", "/v1/sessions/"+sid+"/cancel", map[string]any{"run_id": runID}, nil)
	require.Equal(c.t, http.StatusOK, st, string(b))
}

// waitPhase waits until the session's run is blocked in phase
// (inference, backoff, executing, decisions, hang).
func waitPhase(t testing.TB, s *Server, sid, phase string) {
	t.Helper()
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		sess := s.sessions[sid]
		return sess != nil && sess.run != nil && sess.run.phase == phase
	}, waitFor, time.Millisecond, "phase %s", phase)
}

// waitWaiting waits until the session's run waits for a command in its
// tool cycle.
func waitWaiting(t testing.TB, s *Server, sid string) { t.Helper(); waitPhase(t, s, sid, "decisions") }

// waitState waits until the session's run_status state is want.
func waitState(t testing.TB, s *Server, sid, want string) {
	t.Helper()
	require.Eventually(t, func() bool { return s.RunState(sid) == want }, waitFor, time.Millisecond, "state %s", want)
}

// quiet requires that no event frame arrives on st within d (keep-alive
// comments are allowed). It is a bounded observation, not a
// synchronisation: the run is known to be blocked.
func (st *stream) quiet(d time.Duration) {
	st.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case f := <-st.frames:
			if f.Comment == "" {
				require.FailNow(st.t, "an event arrived", "%+v", f)
			}
		case <-deadline:
			return
		}
	}
}

// payload returns the frame's variant payload.
func (f frame) payload(t testing.TB) map[string]any {
	t.Helper()
	_, _, _, p := f.env(t)
	return p
}

// find returns the frames named name.
func find(frames []frame, name string) []frame {
	var out []frame
	for _, f := range frames {
		if f.Event == name {
			out = append(out, f)
		}
	}
	return out
}

// runState returns the session's run_status state and run id.
func (c *client) runState(sid string) (string, string) {
	c.t.Helper()
	status, b, _ := c.do("GET", "/v1/sessions/"+sid, nil, nil)
	require.Equal(c.t, http.StatusOK, status, string(b))
	var g struct {
		Session struct {
			RunStatus struct {
				State string `json:"state"`
				RunID string `json:"run_id"`
			} `json:"run_status"`
		} `json:"session"`
	}
	require.NoError(c.t, json.Unmarshal(b, &g))
	return g.Session.RunStatus.State, g.Session.RunStatus.RunID
}

// frame is one parsed SSE frame; Comment frames carry the comment text.
type frame struct {
	ID      string
	Event   string
	Data    string
	HasData bool
	Comment string
}

// envelope decodes the frame's data as an event envelope.
func (f frame) env(t testing.TB) (id uint64, runID, variant string, payload map[string]any) {
	t.Helper()
	var e struct {
		ID    uint64                     `json:"id"`
		RunID *string                    `json:"run_id"`
		Event map[string]json.RawMessage `json:"event"`
	}
	require.NoError(t, json.Unmarshal([]byte(f.Data), &e), "frame %s data %q", f.ID, f.Data)
	require.Len(t, e.Event, 1, "frame %s", f.ID)
	for k, v := range e.Event {
		variant = k
		require.NoError(t, json.Unmarshal(v, &payload))
	}
	if e.RunID != nil {
		runID = *e.RunID
	}
	return e.ID, runID, variant, payload
}

// stream is an open event stream read by a goroutine into frames.
type stream struct {
	t      testing.TB
	frames chan frame
	done   chan error // the reader's end: nil on clean EOF
	cancel context.CancelFunc
}

// subscribe opens the session's event stream; lastID < 0 sends no
// Last-Event-ID. It returns once the response headers have arrived, so the
// subscription is registered.
func (c *client) subscribe(sid string, lastID int) *stream {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/v1/sessions/"+sid+"/events", nil)
	require.NoError(c.t, err)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if lastID >= 0 {
		req.Header.Set("Last-Event-ID", strconv.Itoa(lastID))
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		cancel()
		require.NoError(c.t, err)
	}
	require.Equal(c.t, http.StatusOK, resp.StatusCode)
	require.Equal(c.t, "text/event-stream", resp.Header.Get("Content-Type"))
	st := &stream{t: c.t, frames: make(chan frame, 100_000), done: make(chan error, 1), cancel: cancel}
	go func() {
		defer resp.Body.Close()
		st.done <- readFrames(resp.Body, st.frames)
	}()
	c.t.Cleanup(st.close)
	return st
}

func (st *stream) close() { st.cancel() }

// readFrames parses SSE per the spec subset the server uses: lines end in
// LF or CRLF, comment lines start with ':', a field's value may follow the
// colon with or without one space, data lines are joined with "\n", and a
// blank line ends a frame.
func readFrames(r io.Reader, out chan<- frame) error {
	br := bufio.NewReaderSize(r, 1<<16)
	var f frame
	var data []string
	for range 10_000_000 { // bounded: far more lines than any test writes
		line, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && line == "" {
				return nil
			}
			return err
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		switch {
		case line == "":
			if f.HasData {
				f.Data = strings.Join(data, "\n")
			}
			if f.ID != "" || f.Event != "" || f.HasData {
				out <- f
			}
			f, data = frame{}, nil
		case strings.HasPrefix(line, ":"):
			out <- frame{Comment: strings.TrimSpace(line[1:])}
		default:
			name, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch name {
			case "id":
				f.ID = value
			case "event":
				f.Event = value
			case "data":
				f.HasData = true
				data = append(data, value)
			}
		}
	}
	return errors.New("too many lines")
}

// next returns the next non-comment frame.
func (st *stream) next() frame {
	st.t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case f := <-st.frames:
			if f.Comment != "" {
				continue
			}
			return f
		case err := <-st.done:
			st.done <- err
			select { // frames are queued before done: drain them first
			case f := <-st.frames:
				if f.Comment == "" {
					return f
				}
				continue
			default:
			}
			require.FailNow(st.t, "stream ended", "err: %v", err)
		case <-deadline:
			require.FailNow(st.t, "no frame within deadline")
		}
	}
}

// until collects frames up to and including the first with event name.
func (st *stream) until(name string) []frame {
	st.t.Helper()
	var got []frame
	for range 100_000 {
		f := st.next()
		got = append(got, f)
		if f.Event == name {
			return got
		}
	}
	require.FailNow(st.t, "event never came", name)
	return nil
}

// ended waits for the stream to end and returns the reader's error.
func (st *stream) ended() error {
	st.t.Helper()
	select {
	case err := <-st.done:
		return err
	case <-time.After(waitFor):
		require.FailNow(st.t, "stream did not end")
		return nil
	}
}

// waitIdle waits until the server has no active run.
func waitIdle(t testing.TB, s *Server) {
	t.Helper()
	require.Eventually(t, func() bool { return s.ActiveRuns() == 0 }, waitFor, 5*time.Millisecond)
}

// events returns the event names of frames.
func events(frames []frame) []string {
	var out []string
	for _, f := range frames {
		out = append(out, f.Event)
	}
	return out
}

// textOf joins the TextDelta deltas of frames.
func textOf(t testing.TB, frames []frame) string {
	var b strings.Builder
	for _, f := range frames {
		if f.Event != "text_delta" {
			continue
		}
		_, _, variant, p := f.env(t)
		require.Equal(t, "TextDelta", variant)
		b.WriteString(p["delta"].(string))
	}
	return b.String()
}

// requireKeepAlives requires n keep-alive comments and no event on st.
func requireKeepAlives(t testing.TB, st *stream, n int) {
	t.Helper()
	deadline := time.After(waitFor)
	for got := 0; got < n; {
		select {
		case f := <-st.frames:
			require.NotEmpty(t, f.Comment, "only keep-alives expected: %+v", f)
			got++
		case <-deadline:
			require.FailNow(t, "too few keep-alives")
		}
	}
}
