package agentsim

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// session is one agent session: its event log (a ring), its subscribers,
// its active run and its message history. Guarded by Server.mu.
type session struct {
	id        string
	title     string
	cwd       *string
	createdAt time.Time
	updatedAt time.Time

	ring     []*event // oldest first; ids contiguous
	ringSize int
	lastID   uint64 // id of the newest event published (0: none yet)
	subs     map[*subscriber]struct{}

	run      *run // the active run, nil when idle
	failed   bool // the last run ended with run_error
	messages []message

	decisions []*runDecisions // per run that received decisions, in order
	callSeq   int             // tool call ids: call_1, call_2, ... per session

	// Connection faults set by "#sim drop-after" / "#sim stall-after".
	drop, stall connFault
}

// connFault cuts or stalls up to left event streams after they have
// written after event frames.
type connFault struct{ after, left int }

type runDecisions struct {
	runID  string
	byCall map[string]DecisionBody
}

// message is one entry of GET /v1/sessions/{id}/messages.
type message struct {
	ID        string    `json:"id"`
	Role      string    `json:"role"`
	Content   string    `json:"content"`
	CreatedAt time.Time `json:"created_at"`
}

// event is one published event, kept in the ring as its encoded data.
type event struct {
	id   uint64
	name string
	data []byte // the data field; nil for a frame without data
	// noSplit keeps the data on one line (big frames, garbage).
	noSplit bool
}

// subscriber is one open event stream: publish queues events on it.
type subscriber struct {
	notify chan struct{} // capacity 1: "queue is not empty"
	queue  []*event
}

// envelope is the data of every event frame.
type envelope struct {
	ID        uint64         `json:"id"`
	SessionID string         `json:"session_id"`
	RunID     *string        `json:"run_id"`
	Timestamp string         `json:"timestamp"`
	Event     map[string]any `json:"event"`
}

// publishLocked appends an event to sess's log and hands it to every
// subscriber. payload gets run_id added. s.mu must be held.
func (s *Server) publishLocked(sess *session, name, variant, runID string, payload map[string]any) *event {
	if payload == nil {
		payload = map[string]any{}
	}
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	data := s.envelopeBytes(sess, sess.lastID+1, runID, ts, variant, payload)
	return s.appendLocked(sess, &event{name: name, data: data})
}

// appendLocked gives ev the next id and stores and fans it out.
func (s *Server) appendLocked(sess *session, ev *event) *event {
	sess.lastID++
	ev.id = sess.lastID
	sess.ring = append(sess.ring, ev)
	if over := len(sess.ring) - sess.ringSize; over > 0 {
		clear(sess.ring[:over])
		sess.ring = sess.ring[over:]
	}
	sess.updatedAt = time.Now()
	for sub := range sess.subs {
		sub.queue = append(sub.queue, ev)
		select {
		case sub.notify <- struct{}{}:
		default:
		}
	}
	return ev
}

// lookupLocked returns the session or a 404.
func (s *Server) lookupLocked(id string) (*session, *apiError) {
	sess := s.sessions[id]
	if sess == nil {
		return nil, errf(http.StatusNotFound, codeNotFound, "session %s not found", id)
	}
	return sess, nil
}

// sessionJSON is the session object of the API.
type sessionJSON struct {
	ID        string    `json:"id"`
	Title     string    `json:"title"`
	Cwd       *string   `json:"cwd"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	RunStatus runStatus `json:"run_status"`
}

type runStatus struct {
	State string `json:"state"`
	RunID string `json:"run_id,omitempty"`
}

func (sess *session) jsonLocked() sessionJSON {
	st := runStatus{State: "idle"}
	switch {
	case sess.run != nil && !sess.run.started:
		st = runStatus{State: "starting", RunID: sess.run.id}
	case sess.run != nil:
		st = runStatus{State: "running", RunID: sess.run.id}
	case sess.failed:
		st.State = "failed"
	}
	return sessionJSON{
		ID: sess.id, Title: sess.title, Cwd: sess.cwd,
		CreatedAt: sess.createdAt, UpdatedAt: sess.updatedAt, RunStatus: st,
	}
}

func (s *Server) handleHealth(*http.Request, []byte) (int, any) {
	return http.StatusOK, map[string]any{
		"status":         "ok",
		"version":        s.opts.Version,
		"uptime_seconds": int64(time.Since(s.start).Seconds()),
	}
}

func (s *Server) handleCreateSession(_ *http.Request, body []byte) (int, any) {
	var req struct {
		Title *string `json:"title"`
		Cwd   *string `json:"cwd"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return fail(errf(http.StatusBadRequest, codeInvalidRequest, "invalid JSON body: %v", err))
	}
	now := time.Now().UTC()
	sess := &session{
		id:        uuid.NewString(),
		cwd:       req.Cwd,
		createdAt: now,
		updatedAt: now,
		ringSize:  s.opts.RingSize,
		subs:      make(map[*subscriber]struct{}),
	}
	if req.Title != nil {
		sess.title = *req.Title
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions[sess.id] = sess
	return http.StatusCreated, sess.jsonLocked()
}

func (s *Server) handleGetSession(r *http.Request, _ []byte) (int, any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, e := s.lookupLocked(r.PathValue("id"))
	if e != nil {
		return fail(e)
	}
	return http.StatusOK, map[string]any{
		"session": sess.jsonLocked(),
		"config": map[string]any{
			"default_model":     s.opts.DefaultModel,
			"auto_approve_mode": "none",
		},
	}
}

const (
	defaultMessagesLimit = 50
	maxMessagesLimit     = 1000
)

func (s *Server) handleListMessages(r *http.Request, _ []byte) (int, any) {
	limit, e := queryInt(r, "limit", defaultMessagesLimit, 1, maxMessagesLimit)
	if e != nil {
		return fail(e)
	}
	offset, e := queryInt(r, "offset", 0, 0, -1)
	if e != nil {
		return fail(e)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, e := s.lookupLocked(r.PathValue("id"))
	if e != nil {
		return fail(e)
	}
	total := len(sess.messages)
	start := min(offset, total)
	end := min(start+limit, total)
	page := make([]message, end-start)
	copy(page, sess.messages[start:end])
	return http.StatusOK, map[string]any{"messages": page, "total": total}
}

// queryInt parses the query parameter name: def when absent, an error when
// not an integer in [lo, hi] (hi < 0: no upper bound).
func queryInt(r *http.Request, name string, def, lo, hi int) (int, *apiError) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < lo || (hi >= 0 && n > hi) {
		if hi >= 0 {
			return 0, errf(http.StatusBadRequest, codeInvalidRequest, "%s must be an integer in %d..=%d, got %q", name, lo, hi, raw)
		}
		return 0, errf(http.StatusBadRequest, codeInvalidRequest, "%s must be an integer >= %d, got %q", name, lo, raw)
	}
	return n, nil
}

// addMessageLocked appends to the session's message history.
func (sess *session) addMessageLocked(role, content string) {
	sess.messages = append(sess.messages, message{
		ID: uuid.NewString(), Role: role, Content: content, CreatedAt: time.Now().UTC(),
	})
}

// envelopeBytes encodes the envelope of event id with a fixed timestamp.
func (s *Server) envelopeBytes(sess *session, id uint64, runID, ts, variant string, payload map[string]any) []byte {
	payload["run_id"] = runID
	rid := runID
	data, err := marshal(envelope{ID: id, SessionID: sess.id, RunID: &rid, Timestamp: ts, Event: map[string]any{variant: payload}})
	if err != nil {
		s.log.Warn("agentsim: encode event", "variant", variant, "err", err)
		return []byte(`{}`)
	}
	return data
}

func itoa(n int) string { return strconv.Itoa(n) }
