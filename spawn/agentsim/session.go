package agentsim

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Run states of run_status.
const (
	stateIdle     = "idle"
	stateStarting = "starting"
	stateRunning  = "running"
	stateFailed   = "failed"
)

// session is one agent session: durable data (kept by Restart) and the
// runtime state of its run. Guarded by Server.mu.
type session struct {
	id        string
	title     string
	cwd       *string
	createdAt time.Time
	updatedAt time.Time

	// Durable: what the session store and the checkpoint files keep.
	checkpoint []message // the last checkpoint: what GET /messages serves
	lastModel  string    // active model of the last checkpoint ("" none)

	// Runtime, lost by Restart.
	run     *run   // the active run (starting or running), nil otherwise
	state   string // run_status.state
	pending *pendingTools

	decisions []*runDecisions // per run that received decisions, in order
	callSeq   int             // tool call ids: call_1, call_2, ... per session

	// Connection faults set by "#sim drop-after" / "#sim stall-after".
	drop, stall connFault
}

// pendingTools is what GET /tools/pending lists: the whole proposed batch
// until its turn completes.
type pendingTools struct {
	runID string
	calls []map[string]any
}

// connFault cuts or stalls up to left event streams after they have
// written after event frames.
type connFault struct{ after, left int }

type runDecisions struct {
	runID  string
	byCall map[string]DecisionBody
}

// message is one item of GET /v1/sessions/{id}/messages: a model message
// (no id, no timestamp), content a string or a list of parts.
type message struct {
	Role    string  `json:"role"`
	Content any     `json:"content"`
	Name    *string `json:"name,omitempty"`
}

func textPart(text string) map[string]any { return map[string]any{"type": "text", "text": text} }

// eventLog is one session's event ring and its subscribers. The server
// keeps one per session id ever subscribed to or published on, whether or
// not the session exists (the real event log does the same). Guarded by
// Server.mu.
type eventLog struct {
	ring   []*event // oldest first; ids contiguous
	size   int      // ring capacity
	lastID uint64   // id of the newest event published (0: none yet)
	subs   map[*subscriber]struct{}
}

// event is one published event, kept in the ring as its encoded data.
type event struct {
	id   uint64
	name string
	data []byte // the data field; nil for a frame without data
	// noSplit keeps the data on one line (big frames, garbage).
	noSplit bool
}

// subscriber is one open event stream: publish queues events on it. A
// queue longer than lag loses its oldest events, as a lagging receiver of
// the real broadcast channel does.
type subscriber struct {
	notify chan struct{} // capacity 1: "queue is not empty"
	queue  []*event
	lag    int
}

// envelope is the data of every event frame.
type envelope struct {
	ID        uint64         `json:"id"`
	SessionID string         `json:"session_id"`
	RunID     *string        `json:"run_id"`
	Timestamp string         `json:"timestamp"`
	Event     map[string]any `json:"event"`
}

// logForLocked returns the event log of session id, creating it.
func (s *Server) logForLocked(id string) *eventLog {
	l := s.logs[id]
	if l == nil {
		l = &eventLog{size: s.opts.RingSize, subs: make(map[*subscriber]struct{})}
		s.logs[id] = l
	}
	return l
}

// resizeLocked sets the ring capacity, dropping what no longer fits.
func (l *eventLog) resizeLocked(n int) {
	l.size = n
	if over := len(l.ring) - l.size; over > 0 {
		clear(l.ring[:over])
		l.ring = l.ring[over:]
	}
}

// publishLocked appends an event to the session's log and hands it to every
// subscriber. payload gets run_id added. s.mu must be held.
func (s *Server) publishLocked(sess *session, name, variant, runID string, payload map[string]any) *event {
	if payload == nil {
		payload = map[string]any{}
	}
	l := s.logForLocked(sess.id)
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	data := s.envelopeBytes(sess.id, l.lastID+1, runID, ts, variant, payload)
	return s.appendLocked(sess, &event{name: name, data: data})
}

// appendLocked gives ev the next id of the session's log and stores and
// fans it out.
func (s *Server) appendLocked(sess *session, ev *event) *event {
	l := s.logForLocked(sess.id)
	l.lastID++
	ev.id = l.lastID
	l.ring = append(l.ring, ev)
	l.resizeLocked(l.size)
	sess.updatedAt = time.Now().UTC()
	for sub := range l.subs {
		sub.queue = append(sub.queue, ev)
		if over := len(sub.queue) - sub.lag; over > 0 {
			clear(sub.queue[:over])
			sub.queue = sub.queue[over:]
		}
		select {
		case sub.notify <- struct{}{}:
		default:
		}
	}
	return ev
}

// nextIDLocked is the id the session's next event gets.
func (s *Server) nextIDLocked(sess *session) uint64 { return s.logForLocked(sess.id).lastID + 1 }

// lookupLocked returns the session or a 404.
func (s *Server) lookupLocked(id string) (*session, *apiError) {
	sess := s.sessions[id]
	if sess == nil {
		return nil, errf(http.StatusNotFound, codeNotFound, "Session not found: %s", id)
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
	st := runStatus{State: sess.state}
	if st.State == "" {
		st.State = stateIdle
	}
	if sess.run != nil && (st.State == stateStarting || st.State == stateRunning) {
		st.RunID = sess.run.id
	}
	return sessionJSON{
		ID: sess.id, Title: sess.title, Cwd: sess.cwd,
		CreatedAt: sess.createdAt, UpdatedAt: sess.updatedAt, RunStatus: st,
	}
}

func (s *Server) handleHealth(*http.Request) (int, any) {
	s.mu.Lock()
	up := time.Since(s.start)
	s.mu.Unlock()
	return http.StatusOK, map[string]any{
		"status":         "ok",
		"version":        s.opts.Version,
		"uptime_seconds": int64(up.Seconds()),
	}
}

// knownModels is DefaultModel and Models, without duplicates.
func (s *Server) knownModels() []string {
	out := []string{s.opts.DefaultModel}
	for _, m := range s.opts.Models {
		if m != "" && !strings.EqualFold(m, s.opts.DefaultModel) && !contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// splitModel cuts "provider/id"; a bare id has provider "agentsim".
func splitModel(m string) (provider, id string) {
	if p, i, ok := strings.Cut(m, "/"); ok {
		return p, i
	}
	return "agentsim", m
}

// modelKnown reports whether requested names a known model: "provider/id"
// must match both, a bare id matches any provider (as the real lookup).
func (s *Server) modelKnown(requested string) bool {
	rp, rid := splitModel(requested)
	bare := !strings.Contains(requested, "/")
	for _, m := range s.knownModels() {
		p, id := splitModel(m)
		if id == rid && (bare || p == rp) {
			return true
		}
	}
	return false
}

func (s *Server) handleModels(*http.Request) (int, any) {
	models := []map[string]any{}
	for _, m := range s.knownModels() {
		p, id := splitModel(m)
		models = append(models, map[string]any{
			"id": id, "name": id, "provider": p, "reasoning": false,
			"limit": map[string]any{"context": 128000, "output": 16384},
		})
	}
	return http.StatusOK, map[string]any{"models": models}
}

func (s *Server) handleCreateSession(r *http.Request) (int, any) {
	o, pe := decodeBody(r)
	if pe != nil {
		return rejected(pe)
	}
	title, pe := o.str("", "title", true)
	if pe != nil {
		return rejected(pe)
	}
	cwd, pe := o.str("", "cwd", false)
	if pe != nil {
		return rejected(pe)
	}
	canon := canonical(map[string]any{"title": *title, "cwd": cwd})
	im, done, status, v := s.idemLookup(r, "/v1/sessions", canon)
	if done {
		return status, v
	}
	now := time.Now().UTC()
	sess := &session{
		id:        uuid.NewString(),
		title:     *title,
		cwd:       cwd,
		createdAt: now,
		updatedAt: now,
		state:     stateIdle,
	}
	s.mu.Lock()
	s.sessions[sess.id] = sess
	body := sess.jsonLocked()
	s.mu.Unlock()
	return im.ok(http.StatusCreated, body)
}

func (s *Server) handleGetSession(r *http.Request) (int, any) {
	id, pe := pathUUID(r, "id")
	if pe != nil {
		return rejected(pe)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, e := s.lookupLocked(id)
	if e != nil {
		return fail(e)
	}
	mode := "none"
	if len(s.opts.AutoApprove) > 0 {
		mode = "custom"
	}
	return http.StatusOK, map[string]any{
		"session": sess.jsonLocked(),
		"config": map[string]any{
			"default_model":     s.opts.DefaultModel,
			"auto_approve_mode": mode,
		},
	}
}

const defaultMessagesLimit = 100

func (s *Server) handleListMessages(r *http.Request) (int, any) {
	id, pe := pathUUID(r, "id")
	if pe != nil {
		return rejected(pe)
	}
	limit, pe := queryUsize(r, "limit", defaultMessagesLimit)
	if pe != nil {
		return rejected(pe)
	}
	offset, pe := queryUsize(r, "offset", 0)
	if pe != nil {
		return rejected(pe)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, e := s.lookupLocked(id)
	if e != nil {
		return fail(e)
	}
	total := len(sess.checkpoint)
	start := min(offset, total)
	end := min(start+min(limit, total), total)
	page := make([]message, end-start)
	copy(page, sess.checkpoint[start:end])
	return http.StatusOK, map[string]any{"messages": page, "total": total}
}

// queryUsize parses an optional usize query parameter: a value that is not
// one is axum's plain-text 400.
func queryUsize(r *http.Request, name string, def int) (int, *plainError) {
	q := r.URL.Query()
	if !q.Has(name) {
		return def, nil
	}
	raw := q.Get(name)
	n, err := strconv.ParseUint(raw, 10, 63)
	if err != nil {
		return 0, plainf(http.StatusBadRequest, "Failed to deserialize query string: %s: invalid digit found in string", name)
	}
	return int(n), nil
}

// envelopeBytes encodes the envelope of event id with a fixed timestamp.
func (s *Server) envelopeBytes(sessionID string, id uint64, runID, ts, variant string, payload map[string]any) []byte {
	payload["run_id"] = runID
	rid := runID
	data, err := marshal(envelope{ID: id, SessionID: sessionID, RunID: &rid, Timestamp: ts, Event: map[string]any{variant: payload}})
	if err != nil {
		s.log.Warn("agentsim: encode event", "variant", variant, "err", err)
		return []byte(`{}`)
	}
	return data
}

// rawArgs decodes tool arguments for a message part.
func rawArgs(raw json.RawMessage) any { return rawValue(raw) }

func itoa(n int) string { return strconv.Itoa(n) }
