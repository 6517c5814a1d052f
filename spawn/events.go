package spawn

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
)

// Event names on the wire (the SSE "event:" field).
const (
	EventRunStarted             = "run_started"
	EventTurnStarted            = "turn_started"
	EventTurnCompleted          = "turn_completed"
	EventRunCompleted           = "run_completed"
	EventRunError               = "run_error"
	EventTextDelta              = "text_delta"
	EventThinkingDelta          = "thinking_delta"
	EventTextComplete           = "text_complete"
	EventToolCallsProposed      = "tool_calls_proposed"
	EventWaitingForToolApproval = "waiting_for_tool_approval"
	EventToolExecutionStarted   = "tool_execution_started"
	EventToolExecutionProgress  = "tool_execution_progress"
	EventToolExecutionCompleted = "tool_execution_completed"
	EventToolRejected           = "tool_rejected"
	EventRetryAttempt           = "retry_attempt"
	EventCompactionStarted      = "compaction_started"
	EventCompactionCompleted    = "compaction_completed"
	EventUsageReport            = "usage_report"
	// EventGapDetected is not an agent event: the server says the requested
	// Last-Event-ID is older than its ring keeps. See Event.Gap.
	EventGapDetected = "gap_detected"
)

// variantNames maps each known envelope variant to its event name. Frames
// with another variant are skipped: the server adds events over time.
var variantNames = map[string]string{
	"RunStarted":             EventRunStarted,
	"TurnStarted":            EventTurnStarted,
	"TurnCompleted":          EventTurnCompleted,
	"RunCompleted":           EventRunCompleted,
	"RunError":               EventRunError,
	"TextDelta":              EventTextDelta,
	"ThinkingDelta":          EventThinkingDelta,
	"TextComplete":           EventTextComplete,
	"ToolCallsProposed":      EventToolCallsProposed,
	"WaitingForToolApproval": EventWaitingForToolApproval,
	"ToolExecutionStarted":   EventToolExecutionStarted,
	"ToolExecutionProgress":  EventToolExecutionProgress,
	"ToolExecutionCompleted": EventToolExecutionCompleted,
	"ToolRejected":           EventToolRejected,
	"RetryAttempt":           EventRetryAttempt,
	"CompactionStarted":      EventCompactionStarted,
	"CompactionCompleted":    EventCompactionCompleted,
	"UsageReport":            EventUsageReport,
}

// Event is one decoded agent-server event.
type Event struct {
	// ID is the event's id in its session (1, 2, ...); 0 for a gap notice.
	ID uint64
	// Name is the SSE event name, for example "text_delta".
	Name      string
	SessionID string
	// RunID is the run the event belongs to; "" for session-level events.
	RunID string
	Time  time.Time
	// Variant is the envelope's variant, for example "TextDelta".
	Variant string
	// Payload is the variant's JSON object; see Decode and the payload types.
	Payload json.RawMessage
	// Gap is set (and Name is "gap_detected") when the server could not
	// replay from the requested Last-Event-ID.
	Gap *GapDetected
	// Jump is set when the event's id is more than one past the previous
	// frame's on this stream (or past the Last-Event-ID it was opened
	// with): ids are contiguous, so the server dropped the events between,
	// as it does for a subscriber that falls too far behind.
	Jump bool
}

// Decode unmarshals the payload into v, for example a *TextDelta.
func (e Event) Decode(v any) error {
	if err := json.Unmarshal(e.Payload, v); err != nil {
		return fmt.Errorf("decode %s event %d: %w", e.Name, e.ID, err)
	}
	return nil
}

// GapDetected is the server's answer when the requested Last-Event-ID is
// older than its ring buffer keeps: nothing was replayed, live events follow.
type GapDetected struct {
	RequestedAfterID  uint64 `json:"requested_after_id"`
	OldestAvailableID uint64 `json:"oldest_available_id"`
	NewestAvailableID uint64 `json:"newest_available_id"`
	ResumeHint        string `json:"resume_hint"`
}

// TokenUsage is the usage block of RunCompleted and UsageReport.
type TokenUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// Payload types, one per variant the runner uses. Every payload carries the
// run id.
type (
	RunStarted struct {
		RunID string `json:"run_id"`
	}
	TurnStarted struct {
		RunID string `json:"run_id"`
		Turn  int    `json:"turn"`
	}
	TurnCompleted struct {
		RunID        string `json:"run_id"`
		Turn         int    `json:"turn"`
		FinishReason string `json:"finish_reason"`
	}
	RunCompleted struct {
		RunID      string     `json:"run_id"`
		TotalTurns int        `json:"total_turns"`
		TotalUsage TokenUsage `json:"total_usage"`
		StopReason string     `json:"stop_reason"`
	}
	RunError struct {
		RunID     string `json:"run_id"`
		Error     string `json:"error"`
		Retryable bool   `json:"retryable"`
	}
	TextDelta struct {
		RunID string `json:"run_id"`
		Delta string `json:"delta"`
	}
	ThinkingDelta struct {
		RunID string `json:"run_id"`
		Delta string `json:"delta"`
	}
	TextComplete struct {
		RunID string `json:"run_id"`
		Text  string `json:"text"`
	}
	ToolCallsProposed struct {
		RunID     string             `json:"run_id"`
		ToolCalls []ToolCallProposal `json:"tool_calls"`
	}
	WaitingForToolApproval struct {
		RunID              string   `json:"run_id"`
		PendingToolCallIDs []string `json:"pending_tool_call_ids"`
	}
	ToolExecutionStarted struct {
		RunID      string `json:"run_id"`
		ToolCallID string `json:"tool_call_id"`
		ToolName   string `json:"tool_name"`
	}
	ToolExecutionProgress struct {
		RunID      string `json:"run_id"`
		ToolCallID string `json:"tool_call_id"`
		Message    string `json:"message"`
	}
	ToolExecutionCompleted struct {
		RunID      string          `json:"run_id"`
		ToolCallID string          `json:"tool_call_id"`
		ToolName   string          `json:"tool_name"`
		Result     json.RawMessage `json:"result"`
		IsError    bool            `json:"is_error"`
	}
	ToolRejected struct {
		RunID      string `json:"run_id"`
		ToolCallID string `json:"tool_call_id"`
		ToolName   string `json:"tool_name"`
		Reason     string `json:"reason"`
	}
	RetryAttempt struct {
		RunID   string `json:"run_id"`
		Attempt int    `json:"attempt"`
		DelayMS int64  `json:"delay_ms"`
		Reason  string `json:"reason"`
	}
	CompactionStarted struct {
		RunID  string `json:"run_id"`
		Reason string `json:"reason"`
	}
	CompactionCompleted struct {
		RunID        string `json:"run_id"`
		TokensBefore int64  `json:"tokens_before"`
		TokensAfter  int64  `json:"tokens_after"`
		Truncated    bool   `json:"truncated"`
	}
	UsageReport struct {
		RunID string     `json:"run_id"`
		Turn  int        `json:"turn"`
		Usage TokenUsage `json:"usage"`
	}
)

// EventStream reads decoded events from an open event stream. Frames that
// are not events the client knows (unknown variants, malformed envelopes,
// frames without data or id) are skipped and counted, never fatal. An
// event's Name comes from its variant, the envelope's source of truth.
// Next must be called from one goroutine; Close may be called from any.
type EventStream struct {
	body io.ReadCloser
	sse  *SSEReader

	prevID     uint64 // id of the last frame read (skipped ones included)
	prevKnown  bool   // prevID is known: opened with a Last-Event-ID, or a frame had an id
	mu         sync.Mutex
	skipped    int
	keepAlives int
	lastSkip   string
	closeOnce  sync.Once
}

type activityReader struct {
	r  io.Reader
	fn func()
}

func (a activityReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.fn()
	}
	return n, err
}

// NewEventStream reads events from r (for example a recorded stream). The
// stream owns r and closes it on Close.
func NewEventStream(r io.ReadCloser, opts StreamOptions) *EventStream {
	return newEventStream(r, opts)
}

func newEventStream(body io.ReadCloser, opts StreamOptions) *EventStream {
	s := &EventStream{body: body}
	if opts.LastEventID != nil {
		s.prevID, s.prevKnown = *opts.LastEventID, true
	}
	var rd io.Reader = body
	if opts.OnActivity != nil {
		rd = activityReader{r: body, fn: opts.OnActivity}
	}
	s.sse = NewSSEReader(rd, SSEOptions{
		MaxFrameBytes: opts.MaxFrameBytes,
		OnComment: func(string) {
			s.mu.Lock()
			s.keepAlives++
			s.mu.Unlock()
		},
	})
	return s
}

// Next returns the next event. It returns io.EOF when the server ended the
// stream, a *FrameTooLargeError for an oversized frame (the stream stays
// usable), or the read error (a closed body, a reset connection).
func (s *EventStream) Next() (Event, error) {
	var ev Event
	err := s.next(&ev)
	return ev, err
}

// next is Next into ev. A run's goroutine waits in it for the whole run, so
// its frame is kept small: the frame's decoding is in accept.
func (s *EventStream) next(ev *Event) error {
	for {
		f, err := s.sse.Next()
		if done, err := s.accept(&f, err, ev); done {
			return err
		}
	}
}

// accept decodes what the SSE reader gave into ev. done is false for a
// frame that is skipped (it could not be decoded).
//
//go:noinline
func (s *EventStream) accept(f *Frame, err error, ev *Event) (done bool, _ error) {
	if err != nil {
		var big *FrameTooLargeError
		if errors.As(err, &big) {
			s.notePrev(big.ID)
		}
		*ev = Event{}
		return true, err
	}
	if f.DroppedID != "" {
		s.notePrev(f.DroppedID)
	}
	e, err := decodeFrame(*f)
	if err == nil && e.Gap != nil {
		s.prevID, s.prevKnown = e.Gap.NewestAvailableID, true
	} else if err == nil {
		e.Jump = s.prevKnown && e.ID > s.prevID+1
		s.prevID, s.prevKnown = e.ID, true
	} else if f.HasID {
		s.notePrev(f.ID)
	}
	if err != nil {
		s.mu.Lock()
		s.skipped++
		s.lastSkip = err.Error()
		s.mu.Unlock()
		return false, nil
	}
	*ev = e
	return true, nil
}

// notePrev records the id of a frame that is not returned (skipped or too
// large), so the next event is not taken for a jump.
func (s *EventStream) notePrev(id string) {
	if n, err := strconv.ParseUint(id, 10, 64); err == nil && n > 0 {
		s.prevID, s.prevKnown = n, true
	}
}

// Skipped is how many frames were skipped, and why the last one was.
func (s *EventStream) Skipped() (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.skipped, s.lastSkip
}

// KeepAlives is how many comment frames (keep-alives) arrived.
func (s *EventStream) KeepAlives() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keepAlives
}

// Close ends the stream; a blocked Next returns an error.
func (s *EventStream) Close() error {
	var err error
	s.closeOnce.Do(func() { err = s.body.Close() })
	return err
}

// envelope is an event frame's data: the fields an Event keeps, and its one
// variant.
type envelope struct {
	ID        *uint64    `json:"id"`
	SessionID string     `json:"session_id"`
	RunID     *string    `json:"run_id"`
	Timestamp *time.Time `json:"timestamp"`
	variant   string
	payload   json.RawMessage
}

// decodeEnvelope is the fast path for a well-formed frame: the envelope's
// fields are decoded into a struct, and the variant's object is sliced out
// of the event field, not copied into a map. ok is false for anything it
// is not sure of (an escaped variant name, not exactly one variant,
// trailing data): decodeEnvelopeSlow then decides, with its errors.
func decodeEnvelope(data []byte) (envelope, bool) {
	var env struct {
		envelope
		Event json.RawMessage `json:"event"`
	}
	if json.Unmarshal(data, &env) != nil {
		return envelope{}, false
	}
	ev := bytes.TrimSpace(env.Event)
	if len(ev) < 2 || ev[0] != '{' || ev[len(ev)-1] != '}' {
		return envelope{}, false
	}
	rest := bytes.TrimLeft(ev[1:len(ev)-1], " \t\r\n")
	if len(rest) == 0 || rest[0] != '"' {
		return envelope{}, false
	}
	end := bytes.IndexByte(rest[1:], '"')
	if end < 0 || bytes.IndexByte(rest[1:end+1], '\\') >= 0 {
		return envelope{}, false
	}
	variant := string(rest[1 : end+1])
	rest = bytes.TrimLeft(rest[end+2:], " \t\r\n")
	if len(rest) == 0 || rest[0] != ':' {
		return envelope{}, false
	}
	// One valid value after the colon, and nothing else: a second variant
	// ("…}, \"B\": {…}") is not a valid value, and goes the slow way.
	payload := bytes.TrimSpace(rest[1:])
	if !json.Valid(payload) {
		return envelope{}, false
	}
	e := env.envelope
	e.variant, e.payload = variant, payload
	return e, true
}

// decodeEnvelopeSlow decodes the envelope with a map of variants: every
// frame the fast path is unsure of, with the errors that say why it is
// skipped.
func decodeEnvelopeSlow(f Frame) (envelope, error) {
	var env struct {
		ID        *uint64                    `json:"id"`
		SessionID string                     `json:"session_id"`
		RunID     *string                    `json:"run_id"`
		Timestamp *time.Time                 `json:"timestamp"`
		Event     map[string]json.RawMessage `json:"event"`
	}
	dec := json.NewDecoder(bytes.NewReader(f.Data))
	if err := dec.Decode(&env); err != nil {
		return envelope{}, fmt.Errorf("frame %q: envelope: %w", f.Event, err)
	}
	if len(env.Event) != 1 {
		return envelope{}, fmt.Errorf("frame %q: envelope has %d variants, want 1", f.Event, len(env.Event))
	}
	e := envelope{ID: env.ID, SessionID: env.SessionID, RunID: env.RunID, Timestamp: env.Timestamp}
	for k, v := range env.Event {
		e.variant, e.payload = k, v
	}
	return e, nil
}

// decodeFrame turns one frame into an Event, or says why it is skipped.
func decodeFrame(f Frame) (Event, error) {
	if f.Event == EventGapDetected {
		var g GapDetected
		if err := json.Unmarshal(f.Data, &g); err != nil {
			return Event{}, fmt.Errorf("gap_detected: %w", err)
		}
		return Event{Name: EventGapDetected, Gap: &g}, nil
	}
	env, ok := decodeEnvelope(f.Data)
	if !ok {
		var err error
		if env, err = decodeEnvelopeSlow(f); err != nil {
			return Event{}, err
		}
	}
	var ev Event
	ev.Variant, ev.Payload = env.variant, env.payload
	name, known := variantNames[ev.Variant]
	if !known {
		return Event{}, fmt.Errorf("frame %q: unknown variant %q", f.Event, ev.Variant)
	}
	// The variant is the source of truth: a frame whose name disagrees with
	// it is still understood by its variant (and named after it).
	ev.Name = name
	if len(bytes.TrimSpace(ev.Payload)) == 0 || ev.Payload[0] != '{' {
		// Tolerate unit variants encoded as null or {}; anything else is malformed.
		if string(bytes.TrimSpace(ev.Payload)) != "null" {
			return Event{}, fmt.Errorf("frame %q: payload is not an object", f.Event)
		}
		ev.Payload = json.RawMessage("{}")
	}
	switch {
	case env.ID != nil:
		ev.ID = *env.ID
	case f.HasID:
		id, err := strconv.ParseUint(f.ID, 10, 64)
		if err != nil {
			return Event{}, fmt.Errorf("frame %q: id %q: %w", f.Event, f.ID, err)
		}
		ev.ID = id
	}
	if ev.ID == 0 {
		return Event{}, errors.New("frame " + strconv.Quote(f.Event) + ": no event id")
	}
	ev.SessionID = env.SessionID
	if env.RunID != nil {
		ev.RunID = *env.RunID
	}
	if ev.RunID == "" {
		var p struct {
			RunID string `json:"run_id"`
		}
		if json.Unmarshal(ev.Payload, &p) == nil {
			ev.RunID = p.RunID
		}
	}
	if env.Timestamp != nil {
		ev.Time = *env.Timestamp
	}
	return ev, nil
}
