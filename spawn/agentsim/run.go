package agentsim

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// A run is modelled on the real agent loop (agent.rs run_agent and
// run_tool_cycle, approval.rs):
//
//   - Cancel only sets a flag (a cancellation token). The loop looks at it
//     at the top of every turn (run_completed cancelled, no turn_completed),
//     before every inference attempt (the same), and at the top of the tool
//     loop (TOOL_CALL_CANCELLED for every undone call, turn_completed
//     cancelled, run_completed cancelled). Only an executing tool (and
//     "#sim hang") is interrupted by it; a wait for decisions, an inference
//     ("#sim sleep") and a retry back-off are not.
//   - Decisions, steering and follow-up messages are commands queued for
//     the run. Waiting for decisions, the run takes one command at a time
//     and applies decisions for its batch; at the top of a turn and after
//     each executed call it drains the queue without applying anything:
//     decisions found there are parked for a later batch with those ids
//     (which never comes), so the current batch waits forever.
//   - Deciding a call that is already decided differently, or already
//     dispatched, is an approval error: the run dies without an event.
type run struct {
	s      *Server
	sess   *session
	id     string
	prompt string
	sc     *script
	send   *validSend
	model  string
	custom bool // the model is unknown: every inference fails

	// Guarded by Server.mu.
	cancelled bool
	cancelCh  chan struct{} // closed with cancelled: executing tools select on it
	killed    bool
	killCh    chan struct{} // closed by Restart: the run vanishes
	inbox     []command
	loopOver  bool          // the agent loop returned: its command channel is closed
	notify    chan struct{} // capacity 1: "inbox is not empty"
	hooked    []message     // messages as of the last hook: what a periodic checkpoint writes
	phase     string        // what the run is blocked in, for tests: inference, backoff, executing, decisions, hang

	// Owned by the run goroutine.
	done      chan struct{} // closed when the run's agent loop is over
	messages  []message     // the agent's conversation
	steering  []string
	followUp  []string
	parked    map[string]DecisionBody
	answerFU  bool // a follow-up was taken: answer it with another turn
	emitted   int
	turn      int
	attempt   int
	parts     []any // the current answer's content parts
	turnText  strings.Builder
	textDone  bool
	turnUsage usage
	usage     usage
}

// command is one queued command: decisions, steering or follow_up.
type command struct {
	kind      string
	text      string
	decisions map[string]DecisionBody
}

// usage is the token usage object of usage_report and run_completed.
type usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// How a run ended, other than normally.
var (
	errCancelled = errors.New("run cancelled")     // run_completed cancelled
	errMaxTurns  = errors.New("max turns reached") // run_completed max_turns
	errDied      = errors.New("run died silently") // no event, failed
	errKilled    = errors.New("run killed")        // Restart: nothing at all
	errClosed    = errors.New("server closed")     // Close: nothing at all
	errApproval  = errors.New("tool decision conflict")
)

// runError ends a run with run_error.
type runError struct {
	msg       string
	retryable bool
}

func (e *runError) Error() string { return e.msg }

const (
	cancelledResult = "TOOL_CALL_CANCELLED"
	rejectedReason  = "Tool call rejected by user"
	steeringSkipped = "Skipped due to steering update"
	defaultSystem   = "You are agentsim, a simulated Stakpak agent."
)

// startRunLocked makes a run active on sess and starts it. The session is
// running at once (the real actor is spawned before the 200); run_started
// comes after Options.StartDelay. s.mu must be held.
func (s *Server) startRunLocked(sess *session, v *validSend) (*run, *apiError) {
	if s.closed {
		return nil, errf(http.StatusServiceUnavailable, codeUnavailable, "server is shutting down")
	}
	sc := v.sc
	if sc.ringSize > 0 {
		s.logForLocked(sess.id).resizeLocked(sc.ringSize)
	}
	if sc.dropAfter >= 0 {
		sess.drop = connFault{after: sc.dropAfter, left: 2}
	}
	if sc.stallAfter >= 0 {
		sess.stall = connFault{after: sc.stallAfter, left: 1}
	}
	// Model: the request's, else the session's last, else the default.
	model := v.model
	if model == "" {
		model = sess.lastModel
	}
	if model == "" {
		model = s.opts.DefaultModel
	}
	r := &run{
		s: s, sess: sess, id: uuid.NewString(), prompt: v.prompt, sc: sc, send: v,
		model: model, custom: !s.modelKnown(model),
		cancelCh: make(chan struct{}),
		killCh:   make(chan struct{}),
		notify:   make(chan struct{}, 1),
		done:     make(chan struct{}),
		parked:   make(map[string]DecisionBody),
	}
	sess.run = r
	sess.state = stateRunning
	sess.updatedAt = time.Now().UTC()
	s.runPrompts = append(s.runPrompts, v.prompt)
	s.wg.Add(1) // s.closed is false and s.mu is held: Close has not begun waiting
	go r.execute()
	return r, nil
}

// cancelLocked sets the cancellation flag; it reports whether this request
// was the one that set it.
func (r *run) cancelLocked() bool {
	if r.cancelled {
		return false
	}
	r.cancelled = true
	close(r.cancelCh)
	return true
}

// killLocked ends the run without any event (Restart).
func (r *run) killLocked() {
	if !r.killed {
		r.killed = true
		close(r.killCh)
	}
}

// commandLocked queues a command for the run.
func (r *run) commandLocked(c command) {
	r.inbox = append(r.inbox, c)
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// setPhase records what the run is blocked in (tests poll it).
func (r *run) setPhase(p string) {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.phase = p
}

// during runs f in phase p.
func (r *run) during(p string, f func() error) error {
	r.setPhase(p)
	defer r.setPhase("")
	return f()
}

func (r *run) isCancelled() bool {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	return r.cancelled
}

// execute is the run's goroutine: start-up, the agent loop, the terminal
// event, then the end (Options.EndDelay, terminal checkpoint, state).
func (r *run) execute() {
	defer r.s.wg.Done()
	err := r.startUp()
	if err == nil {
		err = r.loop()
	}
	r.s.mu.Lock()
	r.loopOver = true
	r.s.mu.Unlock()
	close(r.done)
	var rerr *runError
	switch {
	case errors.Is(err, errKilled):
		return
	case errors.Is(err, errClosed):
		r.s.mu.Lock()
		if !r.killed && r.sess.run == r {
			r.sess.run = nil
			r.sess.state = stateIdle
		}
		r.s.mu.Unlock()
		return
	case errors.Is(err, errDied), errors.Is(err, errApproval):
		r.end(false, true)
		return
	case errors.As(err, &rerr):
		// The inference failed: run_error, no turn_completed. The error
		// hook checkpoints the conversation as it is.
		if r.publish("run_error", "RunError", map[string]any{"error": rerr.msg, "retryable": rerr.retryable}) != nil {
			return
		}
		r.hook()
		r.end(false, true)
		return
	case errors.Is(err, errCancelled):
		err = r.publish("run_completed", "RunCompleted", r.completed("cancelled"))
	case errors.Is(err, errMaxTurns):
		err = r.publish("run_completed", "RunCompleted", r.completed("max_turns"))
	default:
		err = r.publish("run_completed", "RunCompleted", r.completed(r.sc.stopReason))
	}
	if err == nil {
		r.end(true, false)
	}
}

// startUp is what the real actor does before run_started: load the
// checkpoint, start the sandbox (Options.StartDelay), persist the baseline
// checkpoint (the history and the new user message).
func (r *run) startUp() error {
	if err := r.hold(r.s.opts.StartDelay); err != nil {
		return err
	}
	if r.sc.dieAtStart {
		return errDied
	}
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.killed {
		return errKilled
	}
	if s.closed {
		return errClosed
	}
	history := slices.Clone(r.sess.checkpoint)
	user := message{Role: "user", Content: r.send.content, Name: r.send.name}
	r.sess.checkpoint = append(slices.Clone(history), user)
	r.sess.lastModel = r.model
	// The agent loop adds the system prompt when the history has none.
	system := defaultSystem
	if r.send.system != "" {
		system = r.send.system
	}
	if !slices.ContainsFunc(history, func(m message) bool { return m.Role == "system" }) {
		history = append([]message{{Role: "system", Content: system}}, history...)
	}
	r.messages = append(history, user)
	r.hooked = slices.Clone(r.messages)
	s.wg.Add(1) // closed is false and s.mu is held
	go r.checkpointer()
	return nil
}

// checkpointer writes the messages of the last hook to the session's
// checkpoint every Options.CheckpointInterval while the run runs.
func (r *run) checkpointer() {
	defer r.s.wg.Done()
	t := time.NewTicker(r.s.opts.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			r.s.mu.Lock()
			if !r.killed {
				r.sess.checkpoint = slices.Clone(r.hooked)
			}
			r.s.mu.Unlock()
		case <-r.done:
			return
		case <-r.killCh:
			return
		case <-r.s.ctx.Done():
			return
		}
	}
}

// end is what the real actor does after the agent loop: sandbox shutdown
// and the rest (Options.EndDelay), clear the pending calls, write the
// terminal checkpoint (the whole conversation when the loop ended well,
// the last hook's messages otherwise), and leave running.
func (r *run) end(ok, failed bool) {
	if r.hold(r.s.opts.EndDelay) != nil {
		r.s.mu.Lock()
		if !r.killed && r.sess.run == r {
			r.sess.run, r.sess.state = nil, stateIdle
		}
		r.s.mu.Unlock()
		return
	}
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.killed {
		return
	}
	if p := r.sess.pending; p != nil && p.runID == r.id {
		r.sess.pending = nil
	}
	if ok {
		r.sess.checkpoint = slices.Clone(r.messages)
	} else {
		r.sess.checkpoint = slices.Clone(r.hooked)
	}
	r.sess.run = nil
	r.sess.state = stateIdle
	if failed {
		r.sess.state = stateFailed
	}
	r.sess.updatedAt = time.Now().UTC()
}

func (r *run) completed(reason string) map[string]any {
	return map[string]any{"total_turns": r.turn, "total_usage": r.usage, "stop_reason": reason}
}

// hook records the conversation for the next periodic checkpoint (the
// real checkpoint hook runs before and after each inference and after
// each executed tool).
func (r *run) hook() {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.hooked = slices.Clone(r.messages)
}

// publish publishes one event of this run now, without pacing. The events
// that end a turn or a run also clear the session's pending calls.
func (r *run) publish(name, variant string, payload map[string]any) error {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.killed {
		return errKilled
	}
	r.s.publishLocked(r.sess, name, variant, r.id, payload)
	switch name {
	case "turn_completed", "run_completed", "run_error":
		if p := r.sess.pending; p != nil && p.runID == r.id {
			r.sess.pending = nil
		}
	}
	return nil
}

// emit paces (Options.EventInterval), then publishes.
func (r *run) emit(name, variant string, payload map[string]any) error {
	if err := r.pace(); err != nil {
		return err
	}
	return r.publish(name, variant, payload)
}

func (r *run) pace() error {
	d := time.Duration(0)
	if r.emitted > 0 {
		d = r.s.opts.EventInterval
	}
	r.emitted++
	return r.hold(d)
}

// hold pauses for d. Only Restart and Close end it early: cancel does not
// (it is a flag the loop reads).
func (r *run) hold(d time.Duration) error {
	if d <= 0 {
		select {
		case <-r.killCh:
			return errKilled
		case <-r.s.ctx.Done():
			return errClosed
		default:
			return nil
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.killCh:
		return errKilled
	case <-r.s.ctx.Done():
		return errClosed
	case <-t.C:
		return nil
	}
}

// execWait is an executing tool's time: the cancellation token interrupts
// it (cancelled true).
func (r *run) execWait(d time.Duration) (cancelled bool, err error) {
	var tc <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		tc = t.C
	}
	select {
	case <-r.killCh:
		return false, errKilled
	case <-r.s.ctx.Done():
		return false, errClosed
	case <-r.cancelCh:
		return true, nil
	case <-tc:
		return false, nil
	}
}

// drain takes every queued command without waiting: decisions are parked
// (never applied to the current batch), texts are queued.
func (r *run) drain() {
	r.s.mu.Lock()
	cmds := r.inbox
	r.inbox = nil
	r.s.mu.Unlock()
	for _, c := range cmds {
		r.take(c, nil)
	}
}

// take files one command; decisions for ids in batch are returned (to be
// applied), the others parked.
func (r *run) take(c command, batch map[string]bool) map[string]DecisionBody {
	switch c.kind {
	case "steering":
		r.steering = append(r.steering, c.text)
	case "follow_up":
		r.followUp = append(r.followUp, c.text)
	case "decisions":
		now := map[string]DecisionBody{}
		for id, d := range c.decisions {
			if batch[id] {
				now[id] = d
			} else {
				r.parked[id] = d
			}
		}
		return now
	}
	return nil
}

// recv waits for the next command and takes it.
func (r *run) recv() (command, error) {
	for {
		r.s.mu.Lock()
		if len(r.inbox) > 0 {
			c := r.inbox[0]
			r.inbox = r.inbox[1:]
			r.s.mu.Unlock()
			return c, nil
		}
		r.phase = "decisions"
		r.s.mu.Unlock()
		select {
		case <-r.killCh:
			return command{}, errKilled
		case <-r.s.ctx.Done():
			return command{}, errClosed
		case <-r.notify:
		}
		r.setPhase("")
	}
}

// loop is the agent loop over the script's actions.
func (r *run) loop() error {
	r.emitted++
	if err := r.publish("run_started", "RunStarted", nil); err != nil {
		return err
	}
	// Once per run, an event no client knows: it must be ignored.
	if err := r.emit("future_thing", "FutureThing", map[string]any{"note": "clients must ignore unknown events"}); err != nil {
		return err
	}
	for _, a := range r.sc.actions {
		if err := r.do(a); err != nil {
			return err
		}
	}
	// A follow-up taken after the script's last turn gets an answer turn.
	for r.answerFU {
		for _, a := range []action{{kind: actTurnStart}, {kind: actText, text: defaultText}, {kind: actTurnEnd, reason: "stop"}} {
			if err := r.do(a); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *run) do(a action) error {
	switch a.kind {
	case actTurnStart:
		return r.startTurn()
	case actText:
		return r.part(a.text, []string{a.text})
	case actTextStream:
		return r.part(a.text, textChunks(a.text, 5))
	case actBigText:
		return r.bigText(a.n)
	case actBigFrame:
		return r.bigFrame(a.n)
	case actTurnEnd:
		return r.endTurn()
	case actTools:
		return r.toolTurn(a.calls)
	case actSleep:
		return r.during("inference", func() error { return r.hold(a.d) })
	case actHang:
		if err := r.answer(); err != nil {
			return err
		}
		r.setPhase("hang")
		cancelled, err := r.execWait(0)
		r.setPhase("")
		if err != nil {
			return err
		}
		if cancelled {
			if err := r.emit("turn_completed", "TurnCompleted", map[string]any{"turn": r.turn, "finish_reason": "cancelled"}); err != nil {
				return err
			}
			return errCancelled
		}
	case actError:
		return &runError{msg: a.text, retryable: a.retryable}
	case actDie:
		return errDied
	case actRetry:
		return r.failedAttempt("simulated provider rate limit")
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

// startTurn is the top of the real loop (drain, cancel, steering,
// max_turns), turn_started, and the first inference attempt's cancel
// check. An unknown model fails every attempt here.
func (r *run) startTurn() error {
	r.drain()
	if r.isCancelled() {
		return errCancelled
	}
	for _, t := range r.steering {
		if t != "" {
			r.messages = append(r.messages, message{Role: "user", Content: t})
		}
	}
	r.steering = nil
	if r.turn >= r.send.maxTurns {
		return errMaxTurns
	}
	r.turn++
	r.answerFU, r.attempt, r.textDone = false, 0, false
	r.parts = nil
	r.turnText.Reset()
	if err := r.emit("turn_started", "TurnStarted", map[string]any{"turn": r.turn}); err != nil {
		return err
	}
	if r.isCancelled() {
		return errCancelled
	}
	r.hook()
	if r.custom {
		// A custom (unknown) model: each attempt fails; after the third,
		// run_error (retryable false, as every real inference error).
		for range 2 {
			if err := r.failedAttempt("model " + r.model + " is not available (simulated provider error)"); err != nil {
				return err
			}
		}
		return &runError{msg: "Inference error: model " + r.model + " is not available (simulated provider error)"}
	}
	return nil
}

// failedAttempt is a failed inference attempt: retry_attempt, the back-off
// (not interrupted by cancel), then the next attempt's cancel check.
func (r *run) failedAttempt(reason string) error {
	r.attempt++
	delay := r.s.opts.RetryBackoff << (r.attempt - 1)
	if err := r.emit("retry_attempt", "RetryAttempt", map[string]any{
		"attempt": r.attempt, "delay_ms": delay.Milliseconds(), "reason": reason}); err != nil {
		return err
	}
	if err := r.during("backoff", func() error { return r.hold(delay) }); err != nil {
		return err
	}
	if r.isCancelled() {
		return errCancelled
	}
	return nil
}

// part emits one text part of the answer as the given deltas.
func (r *run) part(text string, deltas []string) error {
	for _, d := range deltas {
		if err := r.emit("text_delta", "TextDelta", map[string]any{"delta": d}); err != nil {
			return err
		}
	}
	r.addText(text)
	return nil
}

func (r *run) addText(text string) {
	r.turnText.WriteString(text)
	r.parts = append(r.parts, textPart(text))
}

// bigText streams n bytes of ASCII text as 1 KiB deltas (one part).
func (r *run) bigText(n int) error {
	const line = "agentsim bigtext: the quick brown fox jumps over the lazy dog..\n" // 64 bytes
	chunk := strings.Repeat(line, 1024/len(line))
	var all strings.Builder
	for n > 0 {
		c := chunk[:min(n, len(chunk))]
		if err := r.emit("text_delta", "TextDelta", map[string]any{"delta": c}); err != nil {
			return err
		}
		all.WriteString(c)
		n -= len(c)
	}
	r.addText(all.String())
	return nil
}

// bigFrame publishes one text_delta whose data line is n bytes (or the
// smallest envelope, when n is smaller than that).
func (r *run) bigFrame(n int) error {
	if err := r.pace(); err != nil {
		return err
	}
	r.s.mu.Lock()
	if r.killed {
		r.s.mu.Unlock()
		return errKilled
	}
	ts := time.Now().UTC().Format(time.RFC3339Nano)
	id := r.s.nextIDLocked(r.sess)
	base := r.s.envelopeBytes(r.sess.id, id, r.id, ts, "TextDelta", map[string]any{"delta": ""})
	delta := strings.Repeat("x", max(n-len(base), 0))
	data := r.s.envelopeBytes(r.sess.id, id, r.id, ts, "TextDelta", map[string]any{"delta": delta})
	r.s.appendLocked(r.sess, &event{name: "text_delta", data: data, noSplit: true})
	r.s.mu.Unlock()
	r.addText(delta)
	return nil
}

// answer completes the turn's model response: the assistant message
// (text and tool-call parts), text_complete, usage_report (this turn's
// usage; the run's total gets it too).
func (r *run) answer() error {
	if r.textDone {
		return nil
	}
	r.textDone = true
	text := r.turnText.String()
	u := r.usageFor(text)
	r.usage.PromptTokens += u.PromptTokens
	r.usage.CompletionTokens += u.CompletionTokens
	r.usage.TotalTokens += u.TotalTokens
	if len(r.parts) > 0 {
		r.messages = append(r.messages, message{Role: "assistant", Content: r.parts})
	}
	r.hook()
	if text != "" {
		if err := r.emit("text_complete", "TextComplete", map[string]any{"text": text}); err != nil {
			return err
		}
	}
	return r.emit("usage_report", "UsageReport", map[string]any{"turn": r.turn, "usage": u})
}

// endTurn ends a turn whose answer had no tool calls. A queued follow-up
// becomes a user message and asks for one more turn.
func (r *run) endTurn() error {
	if err := r.answer(); err != nil {
		return err
	}
	if err := r.emit("turn_completed", "TurnCompleted", map[string]any{"turn": r.turn, "finish_reason": "stop"}); err != nil {
		return err
	}
	if len(r.followUp) > 0 {
		t := r.followUp[0]
		r.followUp = r.followUp[1:]
		if t != "" {
			r.messages = append(r.messages, message{Role: "user", Content: t})
			r.answerFU = true
		}
	}
	return nil
}

// usageFor is the usage of the current turn: the "#sim usage" totals
// spread over the planned turns (the last takes the remainder), or an
// estimate of four bytes a token.
func (r *run) usageFor(text string) usage {
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

// Approval states of one proposed call (approval.rs).
const (
	callPending    = iota // waiting for a decision
	callReady             // decided, not yet dispatched
	callDispatched        // executed, rejected or given its result
)

type toolCall struct {
	id       string
	spec     toolSpec
	state    int
	decision DecisionBody
	done     bool // has its tool message and completion event
}

// toolTurn is a turn whose answer proposes tools: the answer, the
// proposal (pending: the whole batch), the tool cycle, turn_completed.
func (r *run) toolTurn(specs []toolSpec) error {
	calls := make([]*toolCall, len(specs))
	list := make([]map[string]any, len(specs))
	ids := make([]string, len(specs))
	r.s.mu.Lock()
	for i, sp := range specs {
		r.sess.callSeq++
		c := &toolCall{id: "call_" + itoa(r.sess.callSeq), spec: sp}
		if r.send.approve.allows(sp.name) {
			c.state, c.decision = callReady, DecisionBody{Action: "accept"}
		}
		calls[i], ids[i] = c, c.id
		list[i] = map[string]any{"id": c.id, "name": sp.name, "arguments": sp.args}
		r.parts = append(r.parts, map[string]any{"type": "tool_call", "id": c.id, "name": sp.name, "arguments": rawArgs(sp.args)})
	}
	r.s.mu.Unlock()
	if err := r.answer(); err != nil {
		return err
	}
	if err := r.pace(); err != nil {
		return err
	}
	r.s.mu.Lock()
	if r.killed {
		r.s.mu.Unlock()
		return errKilled
	}
	// The proposal and the pending list appear together, so a decision
	// sent on seeing the event always finds its calls listed.
	r.s.publishLocked(r.sess, "tool_calls_proposed", "ToolCallsProposed", r.id, map[string]any{"tool_calls": list})
	r.sess.pending = &pendingTools{runID: r.id, calls: list}
	r.s.mu.Unlock()
	if err := r.emit("waiting_for_tool_approval", "WaitingForToolApproval", map[string]any{"pending_tool_call_ids": ids}); err != nil {
		return err
	}
	cancelled, err := r.toolCycle(calls)
	if err != nil {
		return err
	}
	reason := "tool_calls"
	if cancelled {
		reason = "cancelled"
	}
	if err := r.emit("turn_completed", "TurnCompleted", map[string]any{"turn": r.turn, "finish_reason": reason}); err != nil {
		return err
	}
	if cancelled {
		return errCancelled
	}
	return nil
}

// toolCycle runs the batch: calls in proposal order, each once decided,
// stopping at the first undecided one to wait for a command.
func (r *run) toolCycle(calls []*toolCall) (cancelled bool, err error) {
	batch := make(map[string]bool, len(calls))
	for _, c := range calls {
		batch[c.id] = true
	}
	// Decisions parked earlier for these ids apply first.
	initial := map[string]DecisionBody{}
	for _, c := range calls {
		if d, ok := r.parked[c.id]; ok {
			delete(r.parked, c.id)
			initial[c.id] = d
		}
	}
	if err := resolve(calls, initial); err != nil {
		return false, err
	}
	next := 0
	for {
		if r.isCancelled() {
			return true, r.placeholders(calls, cancelledResult)
		}
		if len(r.steering) > 0 {
			return false, r.skipForSteering(calls)
		}
		if next < len(calls) && calls[next].state == callReady {
			c := calls[next]
			c.state = callDispatched
			next++
			cancelled, err := r.dispatch(c)
			if err != nil {
				return false, err
			}
			if cancelled {
				return true, r.placeholders(calls, cancelledResult)
			}
			r.drain()
			continue
		}
		if next >= len(calls) {
			return false, nil
		}
		cmd, err := r.recv()
		if err != nil {
			return false, err
		}
		if now := r.take(cmd, batch); len(now) > 0 {
			if err := resolve(calls, now); err != nil {
				return false, err
			}
		}
	}
}

// resolve applies decisions to the batch (approval.rs resolve_tool): a
// pending call takes it, a ready call with the same decision keeps it, and
// anything else (a different decision, a dispatched call) is an error that
// ends the run without an event.
func resolve(calls []*toolCall, decisions map[string]DecisionBody) error {
	for _, c := range calls { // proposal order: deterministic
		d, ok := decisions[c.id]
		if !ok {
			continue
		}
		switch {
		case c.state == callPending:
			c.state, c.decision = callReady, d
		case c.state == callReady && c.decision == d:
		default:
			return errApproval
		}
	}
	return nil
}

// dispatch executes, rejects or answers one decided call.
func (r *run) dispatch(c *toolCall) (cancelled bool, err error) {
	name := c.spec.name
	switch c.decision.Action {
	case "reject":
		// The decision's content is ignored: the model always reads this.
		r.toolResult(c, rejectedReason)
		return false, r.emit("tool_rejected", "ToolRejected", map[string]any{"tool_call_id": c.id, "tool_name": name, "reason": rejectedReason})
	case "custom_result":
		r.toolResult(c, c.decision.Content)
		return false, r.emit("tool_execution_completed", "ToolExecutionCompleted", map[string]any{
			"tool_call_id": c.id, "tool_name": name, "result": c.decision.Content, "is_error": false})
	}
	if err := r.emit("tool_execution_started", "ToolExecutionStarted", map[string]any{"tool_call_id": c.id, "tool_name": name}); err != nil {
		return false, err
	}
	if c.spec.time > 0 {
		r.setPhase("executing")
		cancelled, err := r.execWait(c.spec.time)
		r.setPhase("")
		if err != nil {
			return false, err
		}
		if cancelled {
			r.toolResult(c, cancelledResult)
			return true, r.emit("tool_execution_completed", "ToolExecutionCompleted", map[string]any{
				"tool_call_id": c.id, "tool_name": name, "result": cancelledResult, "is_error": true})
		}
	}
	result := "ok: " + name
	r.toolResult(c, result)
	if err := r.emit("tool_execution_completed", "ToolExecutionCompleted", map[string]any{
		"tool_call_id": c.id, "tool_name": name, "result": result, "is_error": false}); err != nil {
		return false, err
	}
	r.hook()
	return false, nil
}

// toolResult appends the call's tool message.
func (r *run) toolResult(c *toolCall, content any) {
	c.done = true
	r.messages = append(r.messages, message{Role: "tool", Content: []any{map[string]any{
		"type": "tool_result", "tool_call_id": c.id, "content": content}}})
}

// placeholders completes every undone call as cancelled.
func (r *run) placeholders(calls []*toolCall, result string) error {
	for _, c := range calls {
		if c.done {
			continue
		}
		r.toolResult(c, result)
		if err := r.emit("tool_execution_completed", "ToolExecutionCompleted", map[string]any{
			"tool_call_id": c.id, "tool_name": c.spec.name, "result": result, "is_error": true}); err != nil {
			return err
		}
	}
	return nil
}

// skipForSteering rejects every undone call: a steering message arrived.
func (r *run) skipForSteering(calls []*toolCall) error {
	for _, c := range calls {
		if c.done {
			continue
		}
		r.toolResult(c, map[string]any{"skipped": steeringSkipped})
		if err := r.emit("tool_rejected", "ToolRejected", map[string]any{
			"tool_call_id": c.id, "tool_name": c.spec.name, "reason": steeringSkipped}); err != nil {
			return err
		}
	}
	return nil
}

// garbage publishes frames a client must skip: data that is not JSON, an
// envelope with two variants, and a frame without data.
func (r *run) garbage() error {
	if err := r.pace(); err != nil {
		return err
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.killed {
		return errKilled
	}
	s, sess := r.s, r.sess
	s.appendLocked(sess, &event{name: "text_delta", data: []byte(`this is not json {"delta":"GARBAGE"`), noSplit: true})
	two := s.envelopeBytes(sess.id, s.nextIDLocked(sess), r.id, time.Now().UTC().Format(time.RFC3339Nano), "TextDelta", map[string]any{"delta": "GARBAGE"})
	two = []byte(strings.Replace(string(two), `"event":{`, `"event":{"TextComplete":{"run_id":"`+r.id+`","text":"GARBAGE"},`, 1))
	s.appendLocked(sess, &event{name: "text_delta", data: two, noSplit: true})
	s.appendLocked(sess, &event{name: "text_delta"})
	return nil
}
