package agentsim

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// run is one agent run: a goroutine executing a compiled script and
// publishing its events on the session.
type run struct {
	s      *Server
	sess   *session
	id     string
	prompt string
	sc     *script
	send   *validSend

	cancelOnce sync.Once
	cancelCh   chan struct{} // closed by a cancel request
	decided    chan struct{} // capacity 1: "a decision arrived"

	// Guarded by Server.mu.
	started   bool           // run_started was published
	cancelled bool           // a cancel request was accepted
	calls     []*pendingCall // the current tool proposal

	// Owned by the run goroutine.
	emitted   int
	turn      int
	turnOpen  bool
	textDone  bool // text_complete was sent for this turn
	turnText  strings.Builder
	usage     usage
	retries   int
	lastTools bool
}

type pendingCall struct {
	id       string
	spec     toolSpec
	decision *DecisionBody // nil until decided
}

// usage is the token usage object of usage_report and run_completed.
type usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// How a run ended, other than normally.
var (
	errCancelled = errors.New("run cancelled")
	errClosed    = errors.New("server closed")
	errMaxTurns  = errors.New("max turns reached")
)

// runError ends a run with run_error.
type runError struct {
	msg       string
	retryable bool
}

func (e *runError) Error() string { return e.msg }

// startRunLocked makes a run active on sess and starts it: it begins
// publishing at once, before the answer to the send request is written.
// s.mu must be held.
func (s *Server) startRunLocked(sess *session, v *validSend, sc *script) (*run, *apiError) {
	if s.closed {
		return nil, errf(http.StatusServiceUnavailable, codeUnavailable, "server is shutting down")
	}
	if sc.ringSize > 0 {
		sess.ringSize = sc.ringSize
		if over := len(sess.ring) - sess.ringSize; over > 0 {
			clear(sess.ring[:over])
			sess.ring = sess.ring[over:]
		}
	}
	if sc.dropAfter >= 0 {
		sess.drop = connFault{after: sc.dropAfter, left: 2}
	}
	if sc.stallAfter >= 0 {
		sess.stall = connFault{after: sc.stallAfter, left: 1}
	}
	r := &run{
		s: s, sess: sess, id: uuid.NewString(), prompt: v.prompt, sc: sc, send: v,
		cancelCh: make(chan struct{}),
		decided:  make(chan struct{}, 1),
	}
	sess.run = r
	sess.failed = false
	sess.updatedAt = time.Now()
	sess.addMessageLocked("user", v.prompt)
	s.runPrompts = append(s.runPrompts, v.prompt)
	s.wg.Add(1) // s.closed is false and s.mu is held: Close has not begun waiting
	go r.execute()
	return r, nil
}

// cancelLocked asks the run to stop; it reports whether this request was
// the one that cancelled it.
func (r *run) cancelLocked() bool {
	if r.cancelled {
		return false
	}
	r.cancelled = true
	r.cancelOnce.Do(func() { close(r.cancelCh) })
	return true
}

// execute runs the script and publishes the run's one terminal event.
func (r *run) execute() {
	defer r.s.wg.Done()
	err := r.steps()
	var rerr *runError
	switch {
	case errors.Is(err, errClosed):
		r.s.mu.Lock()
		r.sess.run = nil
		r.s.mu.Unlock()
	case errors.As(err, &rerr):
		if r.turnOpen {
			r.publish("turn_completed", "TurnCompleted", map[string]any{"turn": r.turn, "finish_reason": "Error"})
		}
		r.finish("run_error", "RunError", map[string]any{"error": rerr.msg, "retryable": rerr.retryable}, true)
	case errors.Is(err, errCancelled):
		if r.turnOpen {
			r.publish("turn_completed", "TurnCompleted", map[string]any{"turn": r.turn, "finish_reason": "Cancelled"})
		}
		r.finish("run_completed", "RunCompleted", r.completed("cancelled"), false)
	case errors.Is(err, errMaxTurns):
		r.finish("run_completed", "RunCompleted", r.completed("max_turns"), false)
	default:
		r.finish("run_completed", "RunCompleted", r.completed(r.sc.stopReason), false)
	}
}

func (r *run) completed(reason string) map[string]any {
	return map[string]any{"total_turns": r.turn, "total_usage": r.usage, "stop_reason": reason}
}

// finish publishes the terminal event and makes the session idle in one
// step, so a client that sees run_completed can start the next run at once.
func (r *run) finish(name, variant string, payload map[string]any, failed bool) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.s.publishLocked(r.sess, name, variant, r.id, payload)
	r.sess.run = nil
	r.sess.failed = failed
	r.calls = nil
}

// publish publishes one event of this run now, without pacing.
func (r *run) publish(name, variant string, payload map[string]any) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.s.publishLocked(r.sess, name, variant, r.id, payload)
}

// emit paces (Options.EventInterval), then publishes, unless the run was
// cancelled or the server closed.
func (r *run) emit(name, variant string, payload map[string]any) error {
	if err := r.pace(); err != nil {
		return err
	}
	r.publish(name, variant, payload)
	return nil
}

func (r *run) pace() error {
	d := time.Duration(0)
	if r.emitted > 0 {
		d = r.s.opts.EventInterval
	}
	r.emitted++
	return r.wait(d)
}

// wait pauses for d (0: only checks) unless the run is cancelled or the
// server closes first.
func (r *run) wait(d time.Duration) error {
	if d <= 0 {
		select {
		case <-r.s.ctx.Done():
			return errClosed
		case <-r.cancelCh:
			return errCancelled
		default:
			return nil
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.s.ctx.Done():
		return errClosed
	case <-r.cancelCh:
		return errCancelled
	case <-t.C:
		return nil
	}
}

// steps executes the script's actions in order.
func (r *run) steps() error {
	r.s.mu.Lock()
	r.started = true
	r.s.publishLocked(r.sess, "run_started", "RunStarted", r.id, nil)
	r.s.mu.Unlock()
	r.emitted++
	// Once per run, an event no client knows: it must be ignored.
	if err := r.emit("future_thing", "FutureThing", map[string]any{"note": "clients must ignore unknown events"}); err != nil {
		return err
	}
	for _, a := range r.sc.actions {
		if err := r.do(a); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) do(a action) error {
	switch a.kind {
	case actTurnStart:
		if a.n > r.send.maxTurns {
			return errMaxTurns
		}
		r.turn, r.turnOpen, r.textDone = a.n, true, false
		r.turnText.Reset()
		return r.emit("turn_started", "TurnStarted", map[string]any{"turn": a.n})
	case actText:
		for _, c := range textChunks(a.text, 5) {
			if err := r.delta(c); err != nil {
				return err
			}
		}
	case actBigText:
		return r.bigText(a.n)
	case actBigFrame:
		return r.bigFrame(a.n)
	case actTurnEnd:
		return r.endTurn(a.reason)
	case actTools:
		return r.propose(a.calls)
	case actAwaitTools:
		return r.awaitTools()
	case actSleep:
		return r.wait(a.d)
	case actHang:
		select {
		case <-r.s.ctx.Done():
			return errClosed
		case <-r.cancelCh:
			return errCancelled
		}
	case actError:
		return &runError{msg: a.text, retryable: a.retryable}
	case actRetry:
		r.retries++
		return r.emit("retry_attempt", "RetryAttempt", map[string]any{
			"attempt": r.retries, "delay_ms": 250, "reason": "simulated provider rate limit"})
	case actCompaction:
		if err := r.emit("compaction_started", "CompactionStarted", map[string]any{"reason": "context_window_exceeded"}); err != nil {
			return err
		}
		return r.emit("compaction_completed", "CompactionCompleted", map[string]any{
			"tokens_before": 120000, "tokens_after": 30000, "truncated": false})
	case actGarbage:
		return r.garbage()
	}
	return nil
}

func (r *run) delta(text string) error {
	if err := r.emit("text_delta", "TextDelta", map[string]any{"delta": text}); err != nil {
		return err
	}
	r.turnText.WriteString(text)
	return nil
}

// bigText streams n bytes of ASCII text as 1 KiB deltas.
func (r *run) bigText(n int) error {
	const line = "agentsim bigtext: the quick brown fox jumps over the lazy dog..\n" // 64 bytes
	chunk := strings.Repeat(line, 1024/len(line))
	for n > 0 {
		c := chunk[:min(n, len(chunk))]
		if err := r.delta(c); err != nil {
			return err
		}
		n -= len(c)
	}
	return nil
}

// bigFrame publishes one text_delta whose data line is n bytes (or the
// smallest envelope, when n is smaller than that).
func (r *run) bigFrame(n int) error {
	if err := r.pace(); err != nil {
		return err
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	id := r.sess.lastID + 1
	base := r.s.envelopeBytes(r.sess, id, r.id, ts, "TextDelta", map[string]any{"delta": ""})
	pad := max(n-len(base), 0)
	delta := strings.Repeat("x", pad)
	data := r.s.envelopeBytes(r.sess, id, r.id, ts, "TextDelta", map[string]any{"delta": delta})
	r.s.appendLocked(r.sess, &event{name: "text_delta", data: data, noSplit: true})
	r.turnText.WriteString(delta)
	return nil
}

// completeText sends text_complete once per turn, if the turn has text.
func (r *run) completeText() error {
	text := r.turnText.String()
	if text == "" || r.textDone {
		return nil
	}
	r.textDone = true
	return r.emit("text_complete", "TextComplete", map[string]any{"text": text})
}

func (r *run) endTurn(reason string) error {
	text := r.turnText.String()
	if err := r.completeText(); err != nil {
		return err
	}
	u := r.turnUsage(text)
	if err := r.emit("usage_report", "UsageReport", map[string]any{"turn": r.turn, "usage": u}); err != nil {
		return err
	}
	if err := r.pace(); err != nil {
		return err
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.s.publishLocked(r.sess, "turn_completed", "TurnCompleted", r.id, map[string]any{"turn": r.turn, "finish_reason": reason})
	if text != "" {
		r.sess.addMessageLocked("assistant", text)
	}
	r.turnOpen = false
	r.usage.PromptTokens += u.PromptTokens
	r.usage.CompletionTokens += u.CompletionTokens
	r.usage.TotalTokens += u.TotalTokens
	return nil
}

// turnUsage is the usage of the current turn: the "#sim usage" totals
// spread over the planned turns (the last takes the remainder), or an
// estimate of four bytes a token.
func (r *run) turnUsage(text string) usage {
	var u usage
	if tot := r.sc.usage; tot != nil {
		t := int64(max(r.sc.turns, 1))
		u.PromptTokens, u.CompletionTokens = tot[0]/t, tot[1]/t
		if r.turn >= r.sc.turns {
			u.PromptTokens = tot[0] - (t-1)*(tot[0]/t)
			u.CompletionTokens = tot[1] - (t-1)*(tot[1]/t)
		}
	} else {
		u.PromptTokens = int64(20 + len(r.prompt)/4)
		u.CompletionTokens = int64(1 + len(text)/4)
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

// propose publishes tool_calls_proposed and makes the calls pending, in one
// step, so a decision sent on seeing the event always finds them.
func (r *run) propose(specs []toolSpec) error {
	if err := r.completeText(); err != nil {
		return err
	}
	if err := r.pace(); err != nil {
		return err
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.calls = r.calls[:0]
	list := make([]map[string]any, 0, len(specs))
	for _, sp := range specs {
		r.sess.callSeq++
		c := &pendingCall{id: "call_" + itoa(r.sess.callSeq), spec: sp}
		if r.send.approve.allows(sp.name) {
			c.decision = &DecisionBody{Action: "accept"}
		}
		r.calls = append(r.calls, c)
		list = append(list, map[string]any{"id": c.id, "name": sp.name, "arguments": sp.args})
	}
	r.s.publishLocked(r.sess, "tool_calls_proposed", "ToolCallsProposed", r.id, map[string]any{"tool_calls": list})
	return nil
}

// awaitTools waits until every proposed call is decided, then executes or
// rejects each one in order.
func (r *run) awaitTools() error {
	r.s.mu.Lock()
	var pending []string
	for _, c := range r.calls {
		if c.decision == nil {
			pending = append(pending, c.id)
		}
	}
	r.s.mu.Unlock()
	if len(pending) > 0 {
		if err := r.emit("waiting_for_tool_approval", "WaitingForToolApproval", map[string]any{"pending_tool_call_ids": pending}); err != nil {
			return err
		}
	}
	for !r.allDecided() {
		select {
		case <-r.s.ctx.Done():
			return errClosed
		case <-r.cancelCh:
			return errCancelled
		case <-r.decided:
		}
	}
	r.s.mu.Lock()
	calls := r.calls
	r.calls = nil
	r.s.mu.Unlock()
	for _, c := range calls {
		if err := r.execCall(c); err != nil {
			return err
		}
	}
	return nil
}

func (r *run) allDecided() bool {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	for _, c := range r.calls {
		if c.decision == nil {
			return false
		}
	}
	return true
}

func (r *run) execCall(c *pendingCall) error {
	d, name := c.decision, c.spec.name
	switch d.Action {
	case "reject":
		reason := d.Content
		if reason == "" {
			reason = "rejected"
		}
		return r.emit("tool_rejected", "ToolRejected", map[string]any{"tool_call_id": c.id, "tool_name": name, "reason": reason})
	case "custom_result":
		// The client supplied the result: nothing is executed.
		return r.emit("tool_execution_completed", "ToolExecutionCompleted", map[string]any{
			"tool_call_id": c.id, "tool_name": name, "result": d.Content, "is_error": false})
	}
	if err := r.emit("tool_execution_started", "ToolExecutionStarted", map[string]any{"tool_call_id": c.id, "tool_name": name}); err != nil {
		return err
	}
	if err := r.emit("tool_execution_progress", "ToolExecutionProgress", map[string]any{"tool_call_id": c.id, "message": "running " + name}); err != nil {
		return err
	}
	return r.emit("tool_execution_completed", "ToolExecutionCompleted", map[string]any{
		"tool_call_id": c.id, "tool_name": name, "result": "ok: " + name, "is_error": false})
}

// garbage publishes frames a client must skip: data that is not JSON, an
// envelope with two variants, and a frame without data.
func (r *run) garbage() error {
	if err := r.pace(); err != nil {
		return err
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	s, sess := r.s, r.sess
	s.appendLocked(sess, &event{name: "text_delta", data: []byte(`this is not json {"delta":"GARBAGE"`), noSplit: true})
	two := s.envelopeBytes(sess, sess.lastID+1, r.id, time.Now().UTC().Format(time.RFC3339Nano), "TextDelta", map[string]any{"delta": "GARBAGE"})
	two = []byte(strings.Replace(string(two), `"event":{`, `"event":{"TextComplete":{"run_id":"`+r.id+`","text":"GARBAGE"},`, 1))
	s.appendLocked(sess, &event{name: "text_delta", data: two, noSplit: true})
	s.appendLocked(sess, &event{name: "text_delta"})
	return nil
}
