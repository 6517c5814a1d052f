package spawn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/jetpilot-dev/jetpilot/internal/tracing"
	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

func (st *runState) newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = st.opts.ReconnectInitialInterval
	b.MaxInterval = st.opts.ReconnectMaxInterval
	b.Reset()
	return b
}

// retry runs a lookup or decision inside the follow loop, retrying transient
// failures with backoff for up to MaxReconnectTime.
func retry[T any](ctx context.Context, st *runState, op string, fn func(context.Context) (T, error)) (T, error) {
	return backoff.Retry(ctx, func() (T, error) {
		v, err := fn(ctx)
		if err != nil && !IsTransient(err) {
			return v, backoff.Permanent(err)
		}
		return v, err
	},
		backoff.WithBackOff(st.newBackoff()),
		backoff.WithMaxElapsedTime(st.opts.MaxReconnectTime),
		backoff.WithNotify(func(err error, d time.Duration) {
			st.log.Info("agent server call failed; retrying", "op", op, "err", err, "retry_in", d)
		}))
}

func (st *runState) getSession(ctx context.Context) (SessionState, error) {
	return retry(ctx, st, "get session", func(ctx context.Context) (SessionState, error) {
		return st.c.GetSession(ctx, st.sessionID)
	})
}

func (st *runState) messages(ctx context.Context, limit, offset int) (MessagePage, error) {
	return retry(ctx, st, "messages", func(ctx context.Context) (MessagePage, error) {
		return st.c.Messages(ctx, st.sessionID, limit, offset)
	})
}

// maxMessagePages bounds the paging through a session's messages.
const (
	messagePageSize = 20
	maxMessagePages = 1000
)

// assistantText is the text of the session's assistant messages, in order:
// the last MaxTextBytes of it, and how many bytes it had in all. A jetpilot
// session holds one job's run, so that is the run's text. Bounded: at most
// maxMessagePages pages, and maxRebuildBytes of text read.
func (st *runState) assistantText(ctx context.Context) (string, int64, error) {
	text := newTailText(st.opts.MaxTextBytes)
	offset := st.msgBase // a continued session: earlier jobs' messages come first
	for range maxMessagePages {
		page, err := st.messages(ctx, messagePageSize, offset)
		if err != nil {
			return "", 0, fmt.Errorf("list messages: %w", err)
		}
		for _, m := range page.Messages {
			if m.Role == "assistant" {
				text.WriteString(m.Content)
			}
		}
		offset += len(page.Messages)
		if len(page.Messages) == 0 || offset >= page.Total {
			break
		}
		if text.Total() > maxRebuildBytes {
			st.warn(fmt.Sprintf("stopped reading the session's messages after %d bytes of text", text.Total()))
			break
		}
	}
	return text.String(), text.Total(), nil
}

// maxRebuildBytes bounds the text read from a session's messages.
const maxRebuildBytes = 64 << 20

// follow reads the run's events until it ends or pauses, reconnecting a
// dropped or stalled stream from the last event processed.
func (st *runState) follow(ctx context.Context) (schemas.Result, error) {
	res, err := st.followEvents(ctx)
	if res == nil {
		return schemas.Result{}, err
	}
	return *res, err
}

// followStep is what the follow loop does after a step.
type followStep uint8

const (
	stepRead  followStep = iota // read the next event
	stepAgain                   // go round again (a reconnect, a skipped frame)
	stepDone                    // the phase ended: its Result (or error) is in
)

// followEvents is follow's loop. A run's goroutine spends the run blocked in
// its st.stream.Next, so this frame (and those above it) is what a run in
// flight keeps on its stack: everything else is done in helpers that return
// before the next read (beforeRead, afterRead), and the Result comes by
// pointer. A goroutine stack is halved at GC only while under a quarter of
// it is in use: a small chain keeps idle runs at 8 KiB stacks.
func (st *runState) followEvents(ctx context.Context) (*schemas.Result, error) {
	ctx, span := tracing.Start(ctx, "follow")
	defer span.End()
	st.opened = st.stream != nil // a stream opened before the send: the next open is a reconnect
	return st.readEvents(ctx, &reconnector{st: st, b: st.newBackoff()})
}

// readEvents is followEvents's loop, in a frame of its own.
//
//go:noinline
func (st *runState) readEvents(ctx context.Context, rc *reconnector) (*schemas.Result, error) {
	var ev Event
	for {
		if step, res, err := st.beforeRead(ctx, rc); step == stepDone {
			return res, err
		} else if step == stepAgain {
			continue
		}
		err := st.stream.next(&ev)
		if step, res, err := st.afterRead(ctx, rc, &ev, err); step == stepDone {
			return res, err
		}
	}
}

// beforeRead makes the stream ready for the next read: a cancel to send,
// steering to pass on, a stream to (re)open.
func (st *runState) beforeRead(ctx context.Context, rc *reconnector) (followStep, *schemas.Result, error) {
	if err := ctx.Err(); err != nil {
		return stepDone, nil, fmt.Errorf("follow events: %w", context.Cause(ctx))
	}
	if st.spec.Control.Requested() || st.cancelling {
		st.beginCancel(ctx)
	}
	if st.stream != nil && st.steerOK {
		st.sendSteers(ctx)
	}
	if st.stream == nil {
		res, done, err := st.reopen(ctx)
		switch {
		case done:
			return stepDone, &res, nil
		case err != nil && (ctx.Err() != nil || !IsTransient(err)):
			return stepDone, nil, err
		case err != nil:
			if werr := rc.wait(ctx, err); werr != nil {
				return stepDone, nil, werr
			}
			return stepAgain, nil, nil
		}
	}
	return stepRead, nil, nil
}

// afterRead handles what a read of the stream gave: an event, or why there
// was none.
func (st *runState) afterRead(ctx context.Context, rc *reconnector, ev *Event, err error) (followStep, *schemas.Result, error) {
	if err != nil {
		var big *FrameTooLargeError
		if errors.As(err, &big) {
			if res, done, herr := st.onOversize(ctx, big); herr != nil || done {
				return stepDone, &res, herr
			}
			return stepAgain, nil, nil
		}
		if ferr := st.streamFailed(ctx, err, rc); ferr != nil {
			return stepDone, nil, ferr
		}
		return stepAgain, nil, nil
	}
	rc.reset()
	if st.quietTimer != nil {
		st.quietTimer.Reset(st.opts.LivenessInterval)
	}
	res, done, err := st.handle(ctx, *ev)
	if err != nil || done {
		return stepDone, &res, err
	}
	return stepRead, nil, nil
}

// reopen opens the event stream again. After the first open it is a
// reconnect, and first asks the server how the run is doing: it may have
// ended, or died without an event, while nobody listened.
func (st *runState) reopen(ctx context.Context) (schemas.Result, bool, error) {
	if st.opened && !st.ended {
		if res, done, err := st.reconcile(ctx); err != nil || done {
			return res, done, err
		}
	}
	if err := st.openStream(ctx, st.opts.StallTimeout); err != nil {
		if isSessionLost(err) {
			return st.sessionLost(err), true, nil
		}
		return schemas.Result{}, false, err
	}
	st.opened = true
	return schemas.Result{}, false, nil
}

// streamFailed closes a stream whose read failed and says whether to go on:
// nil to reconnect (at once when the runner cut the stream itself, after a
// backoff otherwise), or the error to give up with.
func (st *runState) streamFailed(ctx context.Context, err error, rc *reconnector) error {
	cause := context.Cause(st.streamCtx)
	st.closeStream()
	if ctx.Err() != nil {
		return fmt.Errorf("follow events: %w", context.Cause(ctx))
	}
	switch {
	case cause == errPoked || cause == errRunQuiet:
		return nil // the reconnect's check says what happened
	case cause == errStalled:
		err = markTransient(fmt.Errorf("event stream stalled: no bytes for %s", st.opts.StallTimeout))
	case errors.Is(err, io.EOF):
		err = markTransient(errors.New("event stream ended by the server"))
	default:
		err = markTransient(fmt.Errorf("read event stream: %w", err))
	}
	return rc.wait(ctx, err)
}

// reconnector paces the reconnects of one follow: exponential backoff, and
// a give-up after MaxReconnectTime of consecutive failures.
type reconnector struct {
	st    *runState
	b     *backoff.ExponentialBackOff
	since time.Time // first of the current run of failures; zero when none
}

// wait notes a failure to follow and waits before the next try, or returns
// the (transient) error to give up with.
func (rc *reconnector) wait(ctx context.Context, err error) error {
	st := rc.st
	if rc.since.IsZero() {
		rc.since = time.Now()
	}
	wait := rc.b.NextBackOff()
	if time.Since(rc.since)+wait > st.opts.MaxReconnectTime {
		return markTransient(fmt.Errorf("follow events: gave up after %s of failures: %w",
			time.Since(rc.since).Round(time.Millisecond), err))
	}
	st.log.Info("event stream failed; reconnecting", "err", err, "retry_in", wait, "last_event_id", st.lastID)
	if !sleepCtx(ctx, wait) {
		return fmt.Errorf("follow events: %w", context.Cause(ctx))
	}
	return nil
}

func (rc *reconnector) reset() {
	if !rc.since.IsZero() {
		rc.since = time.Time{}
		rc.b.Reset()
	}
}

// sleepCtx waits d or until ctx is done; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// maxJumpReconnects bounds the reconnects made because event ids jumped
// forward (events the server dropped for a slow subscriber); after that the
// loss is accepted and the text rebuilt from the messages.
const maxJumpReconnects = 16

// handle processes one event. done is true when res is the phase's Result.
func (st *runState) handle(ctx context.Context, ev Event) (res schemas.Result, done bool, err error) {
	if ev.Gap != nil {
		return st.onGap(ctx, ev.Gap)
	}
	if ev.ID <= st.lastID && st.ended {
		return res, false, nil // a replay of a run known to be over
	}
	if ev.ID <= st.lastID {
		// The server replays only ids after the one asked for: an older id
		// means its ids started again at 1, which a restart does. The
		// check finds out whether our run survived (it never does).
		st.log.Warn("event ids went backwards: the agent server may have restarted", "event_id", ev.ID, "last_event_id", st.lastID)
		st.closeStream()
		return st.reconcile(ctx)
	}
	if ev.Jump && !st.ended {
		st.jumps++
		if st.jumps <= maxJumpReconnects {
			// Ids are contiguous: a jump means the server dropped events
			// for this subscriber. The ring still has them: reconnect.
			st.log.Info("event ids jumped; reconnecting to replay the missed events", "event_id", ev.ID, "last_event_id", st.lastID)
			st.closeStream()
			return res, false, nil
		}
		st.lost("ids that jumped")
	}
	if st.runID == "" && st.ended && !st.shared && ev.RunID != "" && ev.Name == EventRunStarted {
		// Re-attaching to a session whose run id was never recorded: the
		// session is the job's own, so its run is ours.
		st.setRun(ev.RunID)
	}
	if ev.RunID == "" || ev.RunID != st.runID {
		st.lastID = ev.ID // another run of the session, or session-level
		return res, false, nil
	}
	switch ev.Name {
	case EventTurnStarted, EventToolCallsProposed, EventTurnCompleted, EventRunCompleted, EventRunError:
		st.steerOK = false // thinking, or a proposal waits for our decision
	}
	switch ev.Name {
	case EventTurnStarted:
		st.steerUnread = 0 // the agent loop takes steering in before a turn
	case EventRunCompleted, EventRunError:
		if st.steerUnread > 0 {
			// The real agent loop reads steering only before a turn or
			// in a tool cycle: this run had neither after it was sent.
			st.warn(fmt.Sprintf("%d steering message(s) reached the agent server but the run ended before the agent read them", st.steerUnread))
		}
	}
	if st.spec.OnEvent != nil {
		st.spec.OnEvent(ev)
	}
	res, done, err = st.process(ctx, ev)
	if err != nil {
		return res, false, err // not marked processed: a retry sees it again
	}
	st.lastID = ev.ID
	if done {
		// The Result was built before lastID moved; keep them consistent.
		res.RunID = st.runID
		return res, true, nil
	}
	st.reportCursor(false)
	return res, false, nil
}

// process applies one event of our run.
func (st *runState) process(ctx context.Context, ev Event) (schemas.Result, bool, error) {
	var none schemas.Result
	switch ev.Name {
	case EventTextDelta:
		var p TextDelta
		if err := ev.Decode(&p); err != nil {
			st.lost("a malformed text event")
			st.warn(fmt.Sprintf("skipped a malformed text_delta event: %v", err))
			return none, false, nil
		}
		st.stdout.WriteString(p.Delta)
	case EventTurnStarted:
		var p TurnStarted
		if ev.Decode(&p) == nil && p.Turn > st.turns {
			st.turns = p.Turn
		}
	case EventUsageReport:
		var p UsageReport
		if ev.Decode(&p) == nil {
			st.sawUsage = true
			u := toUsage(p.Usage)
			st.turnUsage.PromptTokens += u.PromptTokens
			st.turnUsage.CompletionTokens += u.CompletionTokens
			st.turnUsage.TotalTokens += u.TotalTokens
			st.checkBudget(ctx)
		}
	case EventToolCallsProposed:
		if st.ended {
			return none, false, nil // the run is over: nothing to decide
		}
		if st.cancelling {
			// Cancelled during the inference that proposed these: the run
			// now waits for decisions, and only a command wakes it to see
			// its cancel flag.
			st.wake(ctx)
			return none, false, nil
		}
		var p ToolCallsProposed
		if err := ev.Decode(&p); err != nil {
			// Without the calls the run would wait forever: ask the server.
			st.warn(fmt.Sprintf("malformed tool_calls_proposed event: %v; using the pending list", err))
			return st.reconcile(ctx)
		}
		return st.proposed(ctx, p.ToolCalls)
	case EventRunCompleted:
		var p RunCompleted
		if err := ev.Decode(&p); err != nil {
			st.warn(fmt.Sprintf("malformed run_completed event: %v", err))
		}
		st.final = &p
		switch p.StopReason {
		case "cancelled":
			return st.result(schemas.StatusCancelled), true, nil
		case "error":
			return st.failed("run_error", "the run stopped with stop_reason error"), true, nil
		}
		return st.result(schemas.StatusCompleted), true, nil
	case EventRunError:
		var p RunError
		if err := ev.Decode(&p); err != nil || p.Error == "" {
			p.Error = "the run failed (no error message)"
		}
		res := st.failed("run_error", p.Error)
		return res, true, nil
	}
	return none, false, nil
}

// proposed applies the policy to a proposal. Without calls left for a human,
// it sends the policy's verdicts in one request. With calls left for a human
// it sends nothing: the verdicts are held (Outcome.Held) and go with the
// human's answer, because a decision that arrives while another call of the
// batch runs is never applied, and the run would wait forever.
func (st *runState) proposed(ctx context.Context, calls []ToolCallProposal) (schemas.Result, bool, error) {
	decisions := map[string]schemas.ToolDecision{}
	var pending []schemas.ToolCall
	// The policy in force now: a new version reaches a run already going
	// at its next proposal.
	pol := st.policy()
	for _, call := range calls {
		if call.ID == "" || st.isDecided(call.ID) {
			continue
		}
		tc := schemas.ToolCall{ID: call.ID, Name: call.Name, Arguments: call.Arguments}
		d := pol.Decide(st.narrow, policy.Call{Name: call.Name, Arguments: call.Arguments})
		if d.Kind == policy.Ask && len(pending) >= MaxPendingCalls {
			// A human could not review them, nor would they fit an
			// approval request: the agent learns why.
			d = policy.Decision{Kind: policy.Reject, Verdict: d.Verdict,
				Content: fmt.Sprintf("Too many tool calls in one proposal for a human to review (at most %d); propose fewer at a time", MaxPendingCalls)}
		}
		st.countRule(d)
		if st.spec.OnDecision != nil {
			st.spec.OnDecision(tc, d)
		}
		switch d.Kind {
		case policy.Accept:
			decisions[call.ID] = schemas.ToolDecision{Action: schemas.ActionAccept}
		case policy.Reject:
			decisions[call.ID] = schemas.ToolDecision{Action: schemas.ActionReject, Content: d.Content}
		case policy.Ask:
			tc.Rule = d.Verdict.Rule
			pending = append(pending, tc)
		}
	}
	if len(pending) > 0 {
		st.held = decisions
		res := st.result(schemas.StatusPaused)
		res.PauseReason = &schemas.PauseReason{Type: schemas.PauseToolApproval, PendingToolCalls: pending}
		res.ToolCalls.Accepted, res.ToolCalls.Rejected = st.tools.Accepted, st.tools.Rejected
		return res, true, nil
	}
	if len(decisions) == 0 {
		return schemas.Result{}, false, nil
	}
	if err := st.decide(ctx, decisions); err != nil {
		return schemas.Result{}, false, err
	}
	return schemas.Result{}, false, nil
}

// MaxPendingCalls caps the calls of one proposal left for a human; the rest
// are rejected with the reason.
const MaxPendingCalls = 128

// decide sends decisions on one batch in one request, with an
// Idempotency-Key derived from the job and the batch, skipping calls this
// job already decided; the calls are then counted and remembered as decided
// (Cursor.Decided). A refusal other than a transient one means the run moved
// on (ended, cancelled): its events say what happened.
func (st *runState) decide(ctx context.Context, decisions map[string]schemas.ToolDecision) error {
	send := make(map[string]schemas.ToolDecision, len(decisions))
	for id, d := range decisions {
		if !st.isDecided(id) {
			send[id] = d
		}
	}
	if len(send) == 0 {
		return nil
	}
	ctx, span := tracing.Start(ctx, "decide", tracing.Count("calls", len(send)))
	defer span.End()
	key := decideKey(st.spec.Job.ID, st.runID, send)
	wire := WireDecisions(send)
	_, err := retry(ctx, st, "decide", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, st.c.Decide(ctx, st.sessionID, st.runID, wire, key)
	})
	switch {
	case err == nil:
	case IsAPIError(err, CodeIdempotencyKeyReused):
		// The server stored an answer under this batch's key, so an earlier
		// copy of this request was applied (only successes are stored).
	case ctx.Err() != nil || IsTransient(err):
		return fmt.Errorf("decide tool calls: %w", err)
	default:
		st.warn(fmt.Sprintf("tool decisions were refused: %v", err))
	}
	st.steerOK = true // the batch is decided: it runs until the turn ends
	for _, id := range slices.Sorted(maps.Keys(send)) {
		st.decided = addDecided(st.decided, id)
		if send[id].Action == schemas.ActionAccept {
			st.tools.Accepted++
		} else {
			st.tools.Rejected++
		}
	}
	st.reportCursor(true)
	return nil
}

// onGap handles gap_detected: the events between our cursor and the ring's
// oldest are gone, and the server replayed none of the ring. The ring still
// holds oldest..newest (the run's end may be among them), so the runner
// reconnects from just before the oldest to have them replayed; the lost
// text is rebuilt from the messages at the end. Bounded: after
// maxGapReconnects it takes the live events as they come.
func (st *runState) onGap(ctx context.Context, g *GapDetected) (schemas.Result, bool, error) {
	st.lost("a gap in the event stream")
	st.log.Warn("event stream gap: events were no longer kept by the agent server",
		"requested_after_id", g.RequestedAfterID, "oldest_available_id", g.OldestAvailableID)
	st.gaps++
	if st.gaps <= maxGapReconnects && g.OldestAvailableID > st.lastID+1 {
		st.lastID = g.OldestAvailableID - 1
		st.closeStream()
		return schemas.Result{}, false, nil
	}
	if g.NewestAvailableID > st.lastID {
		st.lastID = g.NewestAvailableID
	}
	return st.reconcile(ctx)
}

// lost notes that events were lost, and why: the text is rebuilt from the
// session's messages at the end.
func (st *runState) lost(why string) {
	st.rebuild = true
	if !slices.Contains(st.lostWhy, why) {
		st.lostWhy = append(st.lostWhy, why)
	}
}

// maxGapReconnects bounds the reconnects made to replay what is left of the
// ring after a gap.
const maxGapReconnects = 4

// onOversize handles a frame over the cap: it is skipped (its id, when known,
// is marked processed so reconnects skip it too) and the session is checked
// in case it was an event the run depends on.
func (st *runState) onOversize(ctx context.Context, big *FrameTooLargeError) (schemas.Result, bool, error) {
	st.lost("an oversized event")
	st.warn(fmt.Sprintf("skipped an event larger than %d bytes (%s)",
		big.Limit, strings.TrimSpace(big.Event+" "+big.ID)))
	if id, err := strconv.ParseUint(big.ID, 10, 64); err == nil && id > st.lastID {
		st.lastID = id
	}
	if st.ended {
		return schemas.Result{}, false, nil
	}
	return st.reconcile(ctx)
}

// reconcile asks the server what events could not tell: whether our run is
// still active, and whether it waits on tool calls.
func (st *runState) reconcile(ctx context.Context) (schemas.Result, bool, error) {
	if st.ended {
		return schemas.Result{}, false, nil
	}
	gs, err := st.getSession(ctx)
	if err != nil {
		if isSessionLost(err) {
			return st.sessionLost(err), true, nil
		}
		return schemas.Result{}, false, fmt.Errorf("check session after lost events: %w", err)
	}
	if rs := gs.Session.RunStatus; !rs.Active() || rs.RunID != st.runID {
		res, err := st.finishEnded(ctx, &gs)
		return res, err == nil, err
	}
	pend, err := retry(ctx, st, "pending tools", func(ctx context.Context) (Pending, error) {
		return st.c.PendingTools(ctx, st.sessionID)
	})
	if err != nil {
		return schemas.Result{}, false, fmt.Errorf("check pending tool calls after lost events: %w", err)
	}
	if pend.RunID == st.runID && len(pend.ToolCalls) > 0 {
		return st.proposed(ctx, pend.ToolCalls)
	}
	return schemas.Result{}, false, nil
}

// finishEnded builds the Result of a run that is known to be over: from its
// final event if the replay still has it, else from the session snapshot.
func (st *runState) finishEnded(ctx context.Context, gs *SessionState) (schemas.Result, error) {
	st.closeStream()
	st.ended = true
	if res, done := st.replayEnded(ctx); done {
		return res, nil
	}
	st.closeStream()
	if ctx.Err() != nil {
		return schemas.Result{}, fmt.Errorf("replay ended run: %w", context.Cause(ctx))
	}
	return st.snapshot(ctx, gs), nil
}

// firstReplayFrameWait is how long a replay waits for its first frame.
const firstReplayFrameWait = 5 * time.Second

// replayOpens bounds the streams opened to read an ended run's replay (a
// cut stream is reopened from the last event read; a gap is followed by one
// replay from the ring's oldest event).
const replayOpens = 4

// replayEnded reads the replay of a run known to be over, looking for its
// final event. Bounded: at most replayOpens streams of at most
// maxReplayEvents events each, each cut when events stop for
// EndedReplayWait.
func (st *runState) replayEnded(ctx context.Context) (schemas.Result, bool) {
	for range replayOpens {
		res, done, again := st.readReplay(ctx)
		st.closeStream()
		if done {
			return res, true
		}
		if !again || ctx.Err() != nil {
			return schemas.Result{}, false
		}
	}
	return schemas.Result{}, false
}

// readReplay reads one replay stream. done: res is the run's end. again:
// the stream was cut, or a gap moved the cursor to the ring's oldest event,
// so another stream may find more.
func (st *runState) readReplay(ctx context.Context) (res schemas.Result, done, again bool) {
	// From one before the cursor: the event at the cursor shows the ring
	// still reaches it (after a restart ids start again at 1), and if it
	// is the run's end, a re-attach after the end was processed (but not
	// published) still gets the Result.
	at := st.lastID
	if at > 0 {
		st.lastID--
	}
	// The first frame may be slow to come (a server serialising a huge
	// event): wait for it longer than for the ones after it.
	err := st.openReplay(ctx, max(st.opts.EndedReplayWait, firstReplayFrameWait))
	st.lastID = max(st.lastID, at)
	if err != nil {
		return schemas.Result{}, false, false
	}
	for range maxReplayEvents {
		ev, err := st.stream.Next()
		if err != nil {
			var big *FrameTooLargeError
			if errors.As(err, &big) {
				// A frame over the cap is an event of the ring too, and the
				// rest of it is still to be read past: give that the stall
				// timeout, not the replay's quiet time. Its id is the last
				// one read (this frame's, or the one before when its id line
				// comes after the cut).
				st.streamTimer.Reset(st.opts.StallTimeout)
				if id, perr := strconv.ParseUint(big.ID, 10, 64); perr == nil && at > 0 && (id == at || id+1 == at) {
					st.ringReached = true
				}
				_, _, _ = st.onOversize(ctx, big)
				continue
			}
			// Events stopped (the quiet timer): the replay is over. Any
			// other error cut the stream: read on from a new one.
			return schemas.Result{}, false, context.Cause(st.streamCtx) != errStalled
		}
		if ev.Gap != nil {
			// The ring moved past our cursor: it still holds its oldest
			// events, the run's end perhaps; read them from there.
			st.replayGap = true
			st.lost("a gap in the event stream")
			if ev.Gap.OldestAvailableID <= st.lastID+1 {
				return schemas.Result{}, false, false
			}
			st.lastID = ev.Gap.OldestAvailableID - 1
			return schemas.Result{}, false, true
		}
		st.streamTimer.Reset(st.opts.EndedReplayWait)
		if ev.ID == at && at > 0 {
			st.ringReached = true
			if ev.RunID != st.runID || (ev.Name != EventRunCompleted && ev.Name != EventRunError) {
				continue
			}
			st.lastID = at - 1 // process the run's end once more
		}
		res, done, err := st.handle(ctx, ev)
		if done && err == nil {
			return res, true, false
		}
		if err != nil || st.stream == nil {
			return schemas.Result{}, false, false
		}
	}
	return schemas.Result{}, false, false
}

// snapshot is the Result of a run that is over but whose final event was
// never seen. The real server's session state says how it ended: idle after
// a run that returned normally (completed, cancelled, max turns) or after a
// restart, failed after run_error or a silent death (a sandbox, checkpoint
// or tool-decision failure, which emits nothing). A restart is told by the
// server's uptime or by a ring that no longer reaches our cursor (a replay
// that gives neither our events nor a gap notice). So:
//   - a restart, or a failure that emitted nothing: failed, code run_lost;
//   - idle, the ring evicted the final event (replay gap): completed, with a
//     warning that the stop reason and usage are unknown;
//   - failed, the ring evicted the final event: failed, code run_error.
//
// A lost run is never reported completed and never started again.
func (st *runState) snapshot(ctx context.Context, gs *SessionState) schemas.Result {
	st.lost("no final event")
	if fresh, err := st.getSession(ctx); err == nil {
		gs = &fresh
	}
	state := "unknown"
	if gs != nil {
		state = gs.Session.RunStatus.State
	}
	hctx, cancel := context.WithTimeout(ctx, st.opts.CancelTimeout)
	h, herr := st.c.Health(hctx)
	cancel()
	// Uptime has whole seconds: allow for the rounding.
	restarted := herr == nil && !st.runAt.IsZero() &&
		time.Duration(h.UptimeSeconds+2)*time.Second < time.Since(st.runAt)
	lost := func(why string) schemas.Result {
		return st.failed(CodeRunLost, fmt.Sprintf("%s (session %s is %s); the job is not run again", why, st.sessionID, state))
	}
	switch {
	case restarted:
		return lost(fmt.Sprintf("the agent server restarted (up %ds) after the run started %s ago; runs do not survive a restart",
			h.UptimeSeconds, time.Since(st.runAt).Round(time.Second)))
	case !st.replayGap && state == RunStateFailed:
		return lost("the run failed on the agent server without an error event (a sandbox, checkpoint or tool-decision failure)")
	case !st.replayGap && !st.ringReached && st.lastID > 0:
		return lost("the run is gone from the agent server without a final event, and so are its events: the server restarted")
	case !st.replayGap:
		return lost("the run ended on the agent server without a final event")
	case state == RunStateFailed:
		return st.failed("run_error", "the run failed; its error event was no longer kept by the agent server")
	case herr != nil:
		return lost(fmt.Sprintf("the run ended without a final event seen, and the agent server's health could not be read: %v", herr))
	}
	st.warn("the run's final event was no longer kept by the agent server; the session says it ended normally " +
		"(stop reason, usage and turns may be missing)")
	if st.cancelling {
		return st.result(schemas.StatusCancelled) // it ended after our cancel
	}
	return st.result(schemas.StatusCompleted)
}

// maxReplayEvents bounds the events read from the replay of a run that is
// over: twice the real server's ring.
const maxReplayEvents = 8192

// CodeRunLost is the Result error code of a run that ended without a final
// event.
const CodeRunLost = "run_lost"

// sendSteers sends the steering messages Control.Steer queued, each
// answered with its outcome. The follow loop calls it only at a safe
// point (steerOK): the agent server reads steering when its agent loop
// next looks at its commands, which is also when it waits for tool
// decisions; steering that arrives while a proposal waits for ours makes
// it skip those calls, and our decision then finds them gone. So guidance
// goes in only while the run executes calls this job has decided (from
// the decision request until the turn ends), where the server skips the
// batch's undone calls and the agent reads it at its next turn: the same
// moment it would have read it anyway.
func (st *runState) sendSteers(ctx context.Context) {
	for _, req := range st.spec.Control.takeSteers() {
		var err error
		switch {
		case st.runID == "":
			err = fmt.Errorf("%w: its run has not started yet", ErrNotSteerable)
		case st.ended || st.cancelling:
			err = fmt.Errorf("%w: its run is ending", ErrNotSteerable)
		default:
			sctx, cancel := context.WithTimeout(ctx, st.opts.CancelTimeout)
			err = st.c.Steer(sctx, st.sessionID, st.runID, req.text)
			cancel()
			if isNotActive(err) {
				err = fmt.Errorf("%w: the agent server says the run is no longer active", ErrNotSteerable)
			} else if err == nil {
				st.steerUnread++
				st.log.Info("steering message sent", "bytes", len(req.text))
			}
		}
		req.done <- err
	}
}
