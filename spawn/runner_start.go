package spawn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jetpilot-dev/jetpilot/internal/tracing"
	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// runState is one Run: everything learned about the session and run so far.
// It is used from Run's goroutine only (the stall timer only cancels a
// context).
type runState struct {
	r      *Runner
	c      *Client
	opts   *RunnerOptions
	spec   *Spec
	narrow policy.Narrowing
	log    *slog.Logger
	// followNext: the setup (run and what it calls) got the run going and
	// leaves its following to Run (see followLater).
	followNext bool

	started     time.Time
	sessionID   string
	runID       string
	lastID      uint64
	startID     uint64 // the cursor's event id when this phase began
	msgBase     int    // messages the session had before this job's run (Cursor.MessageBase)
	shared      bool   // the session is a conversation's: earlier jobs' runs are in it
	liveFirst   bool   // subscribe without Last-Event-ID until an event is seen: the ring holds earlier runs
	steerOK     bool   // guidance can be sent now (see sendSteers)
	steerUnread int    // steering messages sent that no turn has started after yet

	// Open event stream, if any.
	stream       *EventStream
	streamCtx    context.Context
	streamCancel context.CancelCauseFunc
	streamTimer  *time.Timer

	streamFrom  uint64      // the Last-Event-ID the open stream was asked from
	quietTimer  *time.Timer // liveness probe of the open stream; nil when none
	opened      bool        // a stream was opened in this follow: later opens are reconnects
	jumps       int         // reconnects made for ids that jumped forward
	gaps        int         // reconnects made to replay the ring after a gap
	replayGap   bool        // the replay of an ended run began with a gap notice
	ringReached bool        // the replay of an ended run still had the event at the cursor
	cutMu       sync.Mutex  // guards cut, called from Control's goroutine
	cut         context.CancelCauseFunc

	stdout       *tailText
	turns        int
	turnUsage    schemas.Usage
	sawUsage     bool
	final        *RunCompleted
	tools        schemas.ToolCallCounts
	byRule       map[string]schemas.RuleCounts // calls each rule decided in this phase
	policyAt     uint64                        // the policy version of the last decision
	overBudget   bool                          // usage passed jobs.max_tokens: the run is being cancelled
	budget       int64                         // the max_tokens that was passed
	decided      []string                      // tool call ids decided (see Cursor.Decided)
	held         map[string]schemas.ToolDecision
	warnings     []string
	rebuild      bool     // the streamed text may be incomplete: rebuild it from messages
	wholeText    bool     // stdout was rebuilt from the session's messages: the run's whole text
	rebuiltTotal int64    // bytes of text the session's messages had
	lostWhy      []string // why events were lost
	ended        bool     // following a run known to have ended: decide nothing
	runAt        time.Time
	lastReport   Cursor
	reportedAt   time.Time
	reported     bool

	// Cancelling: a cancel was sent (Control or timeout); proposals are not
	// decided but answered with another wake-up, and the grace timer cuts
	// base when the server does not confirm the end in time.
	stopBase   context.CancelCauseFunc
	cancelling bool
	cancelSent bool
	timedOut   bool
	graceTimer *time.Timer
	// unconfirmedEnd: the phase ended on the grace timer, the run may still
	// be going: its messages are not worth waiting for.
	unconfirmedEnd bool
}

func newRunState(r *Runner, spec *Spec) *runState {
	st := &runState{
		r:       r,
		c:       r.c,
		opts:    &r.opts,
		spec:    spec,
		narrow:  policy.NarrowingOf(spec.Job),
		started: time.Now().UTC(),
		runAt:   spec.RunStartedAt,
		stdout:  newTailText(r.opts.MaxTextBytes),
	}
	if spec.Resume != nil {
		st.decided = slices.Clone(spec.Resume.Decided)
		st.msgBase = spec.Resume.MessageBase
	}
	st.shared = spec.Job.SessionKey != ""
	st.log = r.opts.Logger.With("job_id", spec.Job.ID, "attempt", spec.Attempt)
	return st
}

func (st *runState) cursor() Cursor {
	return Cursor{SessionID: st.sessionID, RunID: st.runID, LastEventID: st.lastID, Decided: slices.Clone(st.decided), MessageBase: st.msgBase}
}

func (st *runState) isDecided(id string) bool { return slices.Contains(st.decided, id) }

// outcome wraps a finalized Result with the verdicts held for a pause.
func (st *runState) outcome(res schemas.Result) Outcome {
	o := Outcome{Result: res, WholeText: st.startID == 0 || st.wholeText, UsedTokens: st.usedTokens()}
	if res.Status == schemas.StatusPaused && len(st.held) > 0 {
		o.Held = st.held
	}
	return o
}

// followLater ends the setup of a run that is to be followed: Run then
// follows it from its own frame, so the setup's frames (and their Result
// values) are off the stack while the goroutine waits for events.
func (st *runState) followLater() (schemas.Result, error) {
	st.followNext = true
	return schemas.Result{}, nil
}

// setRun records the run id the phase follows.
func (st *runState) setRun(runID string) {
	st.runID = runID
	if st.runAt.IsZero() {
		st.runAt = time.Now()
	}
	st.log = st.log.With("run_id", runID)
}

// reportCursor calls OnCursor when the cursor changed: at once when force (or
// the session or run id is new), else at most every CursorInterval.
func (st *runState) reportCursor(force bool) {
	if st.spec.OnCursor == nil || st.sessionID == "" {
		return
	}
	cur := st.cursor()
	if st.reported && cur.equal(st.lastReport) {
		return
	}
	idsChanged := !st.reported || cur.SessionID != st.lastReport.SessionID || cur.RunID != st.lastReport.RunID
	if !force && !idsChanged && time.Since(st.reportedAt) < st.opts.CursorInterval {
		return
	}
	st.lastReport, st.reportedAt, st.reported = cur, time.Now(), true
	st.spec.OnCursor(cur)
}

func (st *runState) warn(msg string) {
	// Warnings quote what the server sent (event names, errors): never a
	// credential.
	msg = scrubSecrets(msg, st.c.tokens()...)
	if !slices.Contains(st.warnings, msg) {
		st.warnings = append(st.warnings, msg)
		st.log.Warn(msg, "session_id", st.sessionID, "run_id", st.runID)
	}
}

// run gets the run going (or finds it) and follows it to a Result.
func (st *runState) run(ctx context.Context) (schemas.Result, error) {
	if st.spec.Resume != nil {
		return st.resume(ctx)
	}
	if st.spec.Continue != nil {
		res, done, err := st.continueSession(ctx)
		if err != nil || done {
			return res, err
		}
		if st.sessionID != "" {
			return st.startRun(ctx)
		}
	}
	job := st.spec.Job
	sctx, span := tracing.Start(ctx, "session.create")
	sess, err := st.c.CreateSession(sctx, CreateSessionRequest{
		Title: "jetpilot: " + job.ProfileOrDefault(),
		Cwd:   job.Workdir,
	}, sessionKey(job.ID))
	tracing.End(span, err)
	if err != nil {
		if isJobRejection(err) {
			return st.failed(apiErrorCode(err, "invalid_request"), err.Error()), nil
		}
		return schemas.Result{}, fmt.Errorf("create session: %w", err)
	}
	st.sessionID = sess.ID
	st.log = st.log.With("session_id", sess.ID)
	st.reportCursor(true)
	return st.startRun(ctx)
}

// continueSession takes the conversation's session for the job's run: it
// must exist and be idle. It leaves sessionID empty when the server no
// longer has the session, so a new one is created (with a warning).
func (st *runState) continueSession(ctx context.Context) (schemas.Result, bool, error) {
	st.sessionID = st.spec.Continue.SessionID
	gs, err := st.getSession(ctx)
	switch {
	case isSessionLost(err):
		st.warn(fmt.Sprintf("the agent server no longer has session %s of session_key %s; the conversation goes on in a new session, without its earlier context",
			st.sessionID, st.spec.Job.SessionKey))
		st.sessionID = ""
		return schemas.Result{}, false, nil
	case err != nil:
		return schemas.Result{}, false, fmt.Errorf("continue session: %w", err)
	case gs.Session.RunStatus.Active():
		// Most often the previous job's run, which ended moments ago: the
		// server keeps a session running for a while after run_completed.
		if busy := gs.Session.RunStatus.RunID; busy == "" || !st.awaitSettled(ctx, busy) {
			return schemas.Result{}, false, markTransient(fmt.Errorf("continue session %s: %w (run %s)", st.sessionID, ErrSessionBusy, busy))
		}
	}
	page, err := st.messages(ctx, 1, 0)
	if err != nil {
		return schemas.Result{}, false, fmt.Errorf("continue session: %w", err)
	}
	st.msgBase = max(page.Total, len(page.Messages))
	st.liveFirst = true
	st.log = st.log.With("session_id", st.sessionID)
	st.reportCursor(true)
	return schemas.Result{}, false, nil
}

// startRun subscribes from event 0, sends the prompt and follows the run.
// The stream is opened first, and with Last-Event-ID 0, so no event of the
// run can be missed even when it ends before the message call returns.
func (st *runState) startRun(ctx context.Context) (schemas.Result, error) {
	if err := st.openStream(ctx, st.opts.StallTimeout); err != nil {
		if ctx.Err() != nil {
			return schemas.Result{}, fmt.Errorf("subscribe to events: %w", err)
		}
		// Not fatal: follow reconnects (with Last-Event-ID) after the send.
		st.log.Info("could not subscribe before sending; will retry after", "err", err)
	}
	runID, res, done, err := st.send(ctx)
	if err != nil || done {
		return res, err
	}
	st.setRun(runID)
	st.armProbe()
	st.reportCursor(true)
	return st.followLater()
}

// sendRequest is the message that starts the job's run.
func (st *runState) sendRequest() SendMessageRequest {
	job := st.spec.Job
	req := SendMessageRequest{
		Message: MessageInput{Role: "user", Content: job.Prompt},
		Type:    MessageTypeMessage,
		Model:   job.Model,
		Sandbox: job.Sandbox,
		Context: job.CallerContext,
		// auto_approve is always "none": every call comes back to the runner,
		// whose policy applies the job's auto_approve capped by the worker.
		Overrides: &RunOverrides{AutoApprove: &schemas.AutoApprove{Mode: schemas.AutoApproveNone}},
	}
	if ov := job.Overrides; ov != nil {
		if ov.Model != "" {
			req.Model = ov.Model
			req.Overrides.Model = ov.Model
		}
		req.Overrides.SystemPrompt = ov.SystemPrompt
		req.Overrides.MaxTurns = ov.MaxTurns
	}
	return req
}

// send starts the run with the job's stable idempotency key. done is true
// when res is the phase's Result (a permanent rejection, or a run that
// turned out to be over already).
func (st *runState) send(ctx context.Context) (runID string, res schemas.Result, done bool, err error) {
	ctx, span := tracing.Start(ctx, "send")
	defer func() { tracing.End(span, err) }()
	runID, err = st.c.SendMessage(ctx, st.sessionID, st.sendRequest(), runKey(st.spec.Job.ID))
	if err == nil {
		return runID, res, false, nil
	}
	var ae *APIError
	switch {
	case isJobRejection(err):
		return "", st.failed(apiErrorCode(err, "invalid_request"), err.Error()), true, nil
	case errors.As(err, &ae) && ae.StatusCode == http.StatusNotFound:
		return "", st.sessionLost(err), true, nil
	case errors.As(err, &ae) && ae.StatusCode == http.StatusConflict && st.shared && IsAPIError(err, CodeIdempotencyKeyReused):
		// A conversation's session holds other jobs' runs: a run can be
		// found only by the key it was sent with, which now names
		// another request. Never take another job's run for ours.
		return "", st.failed(CodeIdempotencyKeyReused, "a job with this id was already sent to the conversation's session with a different request (the same id resubmitted with another prompt?); submit it with a new id"), true, nil
	case errors.As(err, &ae) && ae.StatusCode == http.StatusConflict && st.shared:
		// A conversation's session: the active run may be an earlier job's,
		// and our send (its key unknown to the server) did not start one.
		return "", res, false, markTransient(fmt.Errorf("send message: %w: %w", ErrSessionBusy, err))
	case errors.As(err, &ae) && ae.StatusCode == http.StatusConflict:
		// The session already has (or had) a run: ours, since the session is
		// the job's own. Never start another one; find it instead.
		st.log.Info("send answered with a conflict; looking for the existing run", "err", err)
		if IsAPIError(err, CodeIdempotencyKeyReused) {
			st.warn("a job with this id was already sent to the agent server with a different request; this is that run's result")
		}
		gs, gerr := st.getSession(ctx)
		if gerr != nil {
			if isSessionLost(gerr) {
				return "", st.sessionLost(gerr), true, nil
			}
			return "", res, false, fmt.Errorf("send message: %w; then look up session: %w", err, gerr)
		}
		if rs := gs.Session.RunStatus; rs.Active() && rs.RunID != "" {
			return rs.RunID, res, false, nil
		}
		st.warn("the session's run had already ended when the job was (re)started; result rebuilt from the session")
		res, err = st.finishEnded(ctx, &gs)
		return "", res, true, err
	}
	return "", res, false, fmt.Errorf("send message: %w", err)
}

// resume re-attaches to the run of spec.Resume.
func (st *runState) resume(ctx context.Context) (schemas.Result, error) {
	cur := *st.spec.Resume
	st.sessionID, st.runID, st.lastID, st.startID = cur.SessionID, cur.RunID, cur.LastEventID, cur.LastEventID
	st.log = st.log.With("session_id", cur.SessionID)
	if cur.RunID != "" {
		st.log = st.log.With("run_id", cur.RunID)
	}
	gs, err := st.getSession(ctx)
	if err != nil {
		if isSessionLost(err) {
			return st.sessionLost(err), nil
		}
		return schemas.Result{}, fmt.Errorf("resume: %w", err)
	}
	rs := gs.Session.RunStatus
	if st.runID == "" && st.shared {
		return st.resumeShared(ctx, &gs)
	}
	if st.runID == "" {
		if rs.Active() && rs.RunID != "" {
			st.setRun(rs.RunID)
			st.reportCursor(true)
			return st.followLater()
		}
		page, err := st.messages(ctx, 1, 0)
		if err != nil {
			return schemas.Result{}, fmt.Errorf("resume: %w", err)
		}
		if page.Total == 0 && len(page.Messages) == 0 {
			// The run never started: start it now (same idempotency key).
			return st.startRun(ctx)
		}
		// A run happened and is over, but its id was never recorded. Do not
		// send again: if the server forgot the idempotency key that would
		// start a second run. Rebuild the result from the replay instead.
		st.warn("re-attached to a session whose run had already ended; result rebuilt from the session")
		return st.finishEnded(ctx, &gs)
	}
	st.reportCursor(true)
	if rs.Active() && rs.RunID == st.runID {
		if len(st.spec.Decisions) > 0 {
			if err := st.decide(ctx, st.spec.Decisions); err != nil {
				return schemas.Result{}, fmt.Errorf("resume: %w", err)
			}
		} else if !st.spec.Control.Requested() {
			// The cursor may be past a proposal that was never paused or
			// decided (a crash between recording the cursor and the
			// pause): the replay would not show it again, and the run
			// would wait for decisions nobody sends. Ask the server.
			if res, done, err := st.reconcile(ctx); err != nil || done {
				return res, err
			}
		}
		return st.followLater()
	}
	if len(st.spec.Decisions) > 0 {
		st.warn("the run was no longer running when its decisions were to be sent; they were not applied")
	}
	return st.finishEnded(ctx, &gs)
}

// resumeShared re-attaches to a conversation's session whose run id was
// never recorded (a crash between the send and its record). The job holds
// the session (its key's lease), so a message after MessageBase is its
// own: then the run happened, and is followed (active: from the ring's
// start, by run id) or rebuilt (over); else it never started, and is sent
// again with the job's idempotency key.
func (st *runState) resumeShared(ctx context.Context, gs *SessionState) (schemas.Result, error) {
	page, err := st.messages(ctx, 1, 0)
	if err != nil {
		return schemas.Result{}, fmt.Errorf("resume: %w", err)
	}
	if max(page.Total, len(page.Messages)) <= st.msgBase {
		st.liveFirst, st.lastID = true, 0
		return st.startRun(ctx)
	}
	if rs := gs.Session.RunStatus; rs.Active() && rs.RunID != "" {
		st.setRun(rs.RunID)
		st.lastID, st.rebuild = 0, true
		st.reportCursor(true)
		if res, done, err := st.reconcile(ctx); err != nil || done {
			return res, err
		}
		return st.followLater()
	}
	st.warn("re-attached to the conversation's session after the job's run had ended; result rebuilt from the session")
	return st.finishEnded(ctx, gs)
}

func isSessionLost(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.StatusCode == http.StatusNotFound
}

// sessionLost is the Result when the agent server no longer knows the session
// (it restarted, or the session was deleted). Starting a new one could run the
// job twice, so the job fails.
func (st *runState) sessionLost(err error) schemas.Result {
	return st.failed("session_not_found",
		fmt.Sprintf("agent server no longer has session %s: %v", st.sessionID, err))
}

// openStream subscribes from st.lastID. The stream is cancelled when no byte
// arrives for idle (the stall timer); reads then fail with errStalled as the
// context cause.
func (st *runState) openStream(ctx context.Context, idle time.Duration) error {
	return st.openStreamTimed(ctx, idle, true)
}

// openReplay subscribes from st.lastID to read the replay of a run known to
// be over: the stream is cut when no event (keep-alives do not count: they
// never stop) arrives for idle; the reader resets the timer per event.
func (st *runState) openReplay(ctx context.Context, idle time.Duration) error {
	return st.openStreamTimed(ctx, idle, false)
}

func (st *runState) openStreamTimed(ctx context.Context, idle time.Duration, bytesCount bool) error {
	st.closeStream()
	connCtx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(idle, func() { cancel(errStalled) })
	from := st.lastID
	opts := StreamOptions{LastEventID: &from, MaxFrameBytes: st.opts.MaxFrameBytes}
	if st.liveFirst && from == 0 {
		// A continued session's ring holds earlier runs' events (up to
		// 4096): subscribed before the send, live events are all of ours.
		opts.LastEventID = nil
	}
	// Only the subscription made before the send: a later one, with no
	// event seen yet, must replay the run's start (from 0, filtered by
	// run id).
	st.liveFirst = false
	if bytesCount {
		opts.OnActivity = func() { timer.Reset(idle) }
	}
	stream, err := st.c.OpenEvents(connCtx, st.sessionID, opts)
	if err != nil {
		timer.Stop()
		stalled := context.Cause(connCtx) == errStalled
		cancel(nil)
		if stalled && ctx.Err() == nil {
			return markTransient(fmt.Errorf("subscribe to events: no answer within %s", idle))
		}
		return fmt.Errorf("subscribe to events: %w", err)
	}
	st.stream, st.streamCtx, st.streamCancel, st.streamTimer = stream, connCtx, cancel, timer
	st.streamFrom = from
	st.cutMu.Lock()
	st.cut = cancel
	st.cutMu.Unlock()
	st.armProbe()
	return nil
}

// armProbe starts the open stream's liveness probe once the run id is known.
func (st *runState) armProbe() {
	if st.stream != nil && st.quietTimer == nil && st.runID != "" && !st.ended {
		st.quietTimer = st.probeWhenQuiet(st.streamCtx, st.streamCancel)
	}
}

var (
	errStalled = errors.New("event stream stalled")
	// errPoked: Control.Cancel interrupted the read to get the cancel sent.
	errPoked = errors.New("event stream interrupted to cancel the run")
	// errRunQuiet: the liveness probe found the session not running the run.
	errRunQuiet = errors.New("the session no longer runs the followed run")
)

// probeWhenQuiet arms the liveness probe of a stream: when no event arrives
// for LivenessInterval, it asks the server for the session, and cuts the
// stream (errRunQuiet) when the session is gone or no longer runs our run,
// so the follow loop finds out how it ended. Keep-alives do not count: the
// real server keeps sending them for a run that died without an event. The
// probe runs on the timer's goroutine and ends with ctx (the stream's).
func (st *runState) probeWhenQuiet(ctx context.Context, cut context.CancelCauseFunc) *time.Timer {
	sid, rid, every := st.sessionID, st.runID, st.opts.LivenessInterval
	var (
		mu sync.Mutex // orders the assignment of t before the callback reads it
		t  *time.Timer
	)
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(every, func() {
		pctx, cancel := context.WithTimeout(ctx, st.opts.CancelTimeout)
		defer cancel()
		gs, err := st.c.GetSession(pctx, sid)
		if ctx.Err() != nil {
			return
		}
		rs := gs.Session.RunStatus
		if isSessionLost(err) || (err == nil && !(rs.Active() && rs.RunID == rid)) {
			cut(errRunQuiet)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		t.Reset(every)
	})
	return t
}

// poke interrupts the open stream's read (from Control's goroutine) so the
// follow loop sees a cancel request at once.
func (st *runState) poke() {
	st.cutMu.Lock()
	cut := st.cut
	st.cutMu.Unlock()
	if cut != nil {
		cut(errPoked)
	}
}

func (st *runState) closeStream() {
	if st.stream == nil {
		return
	}
	st.cutMu.Lock()
	st.cut = nil
	st.cutMu.Unlock()
	if st.quietTimer != nil {
		st.quietTimer.Stop()
		st.quietTimer = nil
	}
	st.streamTimer.Stop()
	st.streamCancel(nil)
	_ = st.stream.Close()
	st.stream, st.streamCtx, st.streamCancel, st.streamTimer = nil, nil, nil, nil
}

// result assembles a Result with everything known so far.
func (st *runState) result(status schemas.Status) schemas.Result {
	job := st.spec.Job
	res := schemas.Result{
		JobID:         job.ID,
		SessionID:     st.sessionID,
		RunID:         st.runID,
		Stdout:        st.stdout.String(),
		ToolCalls:     st.tools,
		ToolRules:     maps.Clone(st.byRule),
		PolicyVersion: st.policyAt,
		Attempt:       st.spec.Attempt,
		Worker:        st.opts.Worker,
		StartedAt:     st.started,
		Metadata:      maps.Clone(job.Metadata),
		TotalTurns:    st.turns,
	}
	if st.sawUsage {
		u := st.turnUsage
		res.Usage = &u
	}
	if f := st.final; f != nil {
		if f.TotalTurns > 0 {
			res.TotalTurns = f.TotalTurns
		}
		res.StopReason = f.StopReason
		if u := f.TotalUsage; u != (TokenUsage{}) {
			res.Usage = toUsage(u)
		}
	}
	res.SetStatus(status)
	return res
}

func toUsage(u TokenUsage) *schemas.Usage {
	out := &schemas.Usage{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.TotalTokens}
	if out.TotalTokens == 0 {
		out.TotalTokens = out.PromptTokens + out.CompletionTokens
	}
	return out
}

// policy is the operator's policy in force.
func (st *runState) policy() *policy.Policy {
	if st.spec.Policy != nil {
		if p := st.spec.Policy(); p != nil {
			return p
		}
	}
	return policy.Default()
}

// countRule counts a policy decision under the rule that made it.
func (st *runState) countRule(d policy.Decision) {
	if st.byRule == nil {
		st.byRule = map[string]schemas.RuleCounts{}
	}
	c := st.byRule[d.Verdict.Rule]
	switch d.Kind {
	case policy.Accept:
		c.Accepted++
	case policy.Reject:
		c.Rejected++
	case policy.Ask:
		c.Asked++
	}
	st.byRule[d.Verdict.Rule] = c
	st.policyAt = d.Verdict.Version
}

// CodeBudgetExceeded is the error code of a job whose token usage passed
// the policy's jobs.max_tokens.
const CodeBudgetExceeded = "budget_exceeded"

// usedTokens is what the job has used: its earlier phases' and this one's
// turns, or the run's total when the server reported it (the run spans
// the job's phases).
func (st *runState) usedTokens() int64 {
	n := st.spec.UsedTokens + int64(st.turnUsage.TotalTokens)
	if f := st.final; f != nil {
		n = max(n, int64(toUsage(f.TotalUsage).TotalTokens))
	}
	return n
}

// checkBudget cancels the run (with the wake-up a cancel needs) once its
// usage passes the policy's max_tokens, read live. The run then ends
// failed with budget_exceeded (budgetResult).
func (st *runState) checkBudget(ctx context.Context) {
	if st.overBudget || st.ended {
		return
	}
	limit := st.policy().MaxTokens()
	if limit <= 0 || st.usedTokens() <= limit {
		return
	}
	st.overBudget, st.budget = true, limit
	st.log.Warn("token budget exceeded: cancelling the run", "used", st.usedTokens(), "max_tokens", limit)
	st.beginCancel(ctx)
}

// budgetResult turns how an over-budget run ended into its failed result,
// with its usage and its text so far.
func (st *runState) budgetResult(res schemas.Result) schemas.Result {
	used := st.usedTokens()
	res.PauseReason = nil
	res.SetStatus(schemas.StatusFailed)
	res.Stderr = fmt.Sprintf("token budget exceeded: the job used %d tokens, over the policy's jobs.max_tokens of %d; the run was cancelled", used, st.budget)
	res.Error = &schemas.Error{Code: CodeBudgetExceeded, Message: res.Stderr}
	return res
}

func (st *runState) failed(code, msg string) schemas.Result {
	msg = scrubSecrets(msg, st.c.tokens()...)
	res := st.result(schemas.StatusFailed)
	res.Stderr = msg
	res.Error = &schemas.Error{Code: code, Message: msg}
	return res
}

// finalize stamps the end of the phase, rebuilds the text from the session's
// messages when the stream could not give all of it (or a resumed phase
// ends: its stream had only this phase's text), and reports the final
// cursor. The rebuild waits for the session to settle first: the server
// writes the checkpoint the messages are read from after run_completed.
func (st *runState) finalize(ctx context.Context, res schemas.Result) schemas.Result {
	if st.overBudget && !st.timedOut && (res.Status.Final() || res.Status == schemas.StatusPaused) {
		res = st.budgetResult(res)
	}
	resumedFinal := st.startID > 0 && res.Status.Final() && res.Status != schemas.StatusTimedOut
	final := res.Status.Final() && !st.unconfirmedEnd
	if (st.rebuild || resumedFinal) && final && st.sessionID != "" && ctx.Err() == nil {
		// Bounded: the phase is over, a slow server must not hold the result.
		rctx, cancel := context.WithTimeout(ctx, st.opts.SettleWait+st.opts.CancelTimeout)
		settled := st.awaitSettled(rctx, st.runID)
		text, total, err := st.assistantText(rctx)
		cancel()
		switch {
		case err != nil:
			st.warn(fmt.Sprintf("could not rebuild the agent's text from the session's messages: %v", err))
		case text == res.Stdout:
			st.wholeText, st.rebuiltTotal = true, total
		case total < st.stdout.Total():
			// The messages have less than was streamed (a checkpoint not yet
			// written): keep the longer text.
			if st.rebuild {
				st.warn(fmt.Sprintf("events were lost (%s) and the session's messages had less text than was streamed; the streamed text is kept and may miss parts", strings.Join(st.lostWhy, ", ")))
			}
		case text != res.Stdout:
			res.Stdout = text
			st.wholeText, st.rebuiltTotal = true, total
			if st.rebuild {
				st.warn(fmt.Sprintf("events were lost (%s); the agent's text was rebuilt from the session's messages", strings.Join(st.lostWhy, ", ")))
			}
		}
		if !settled {
			st.warn(fmt.Sprintf("the session was still running %s after the run ended; its messages may miss the final turn", st.opts.SettleWait))
		}
	}
	all := st.stdout.Total()
	if st.wholeText {
		all = max(all, st.rebuiltTotal)
	}
	if kept := int64(len(res.Stdout)); all > kept {
		st.warn(fmt.Sprintf("stdout keeps the last %d bytes of the agent's text; the first %d were dropped (the session's messages have the whole text)", kept, all-kept))
	}
	res.Warnings = slices.Clone(st.warnings)
	res.FinishedAt = time.Now().UTC()
	res.DurationMS = res.FinishedAt.Sub(res.StartedAt).Milliseconds()
	st.reportCursor(true)
	return res
}

// awaitSettled waits until the session no longer runs st.runID (the server
// keeps "running" for a while after run_completed), within SettleWait.
func (st *runState) awaitSettled(ctx context.Context, runID string) bool {
	ctx, cancel := context.WithTimeout(ctx, st.opts.SettleWait)
	defer cancel()
	wait := 50 * time.Millisecond
	for {
		gs, err := st.c.GetSession(ctx, st.sessionID)
		if err == nil {
			if rs := gs.Session.RunStatus; !rs.Active() || rs.RunID != runID {
				return true
			}
		} else if !IsTransient(err) {
			return false
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// afterTimeout runs when the phase's deadline passed while its run was
// followed or started: it cancels and wakes the run and follows it for up to
// CancelGrace, so the timed_out result says how the run really ended.
func (st *runState) afterTimeout(ctx context.Context) (schemas.Result, error) {
	st.timedOut = true
	st.closeStream()
	if st.runID == "" && st.sessionID != "" {
		cctx, cancel := context.WithTimeout(ctx, st.opts.CancelTimeout)
		if gs, err := st.c.GetSession(cctx, st.sessionID); err == nil {
			if rs := gs.Session.RunStatus; rs.Active() && rs.RunID != "" {
				st.setRun(rs.RunID)
			}
		}
		cancel()
	}
	if st.runID == "" {
		return st.timedOutResult(st.result(schemas.StatusTimedOut)), nil
	}
	st.beginCancel(ctx)
	res, err := st.follow(ctx)
	if err != nil {
		return res, err
	}
	return st.timedOutResult(res), nil
}

// timedOutResult turns how the run ended into the phase's timed_out result.
func (st *runState) timedOutResult(res schemas.Result) schemas.Result {
	res.PauseReason, res.Error = nil, nil
	res.SetStatus(schemas.StatusTimedOut)
	res.Stderr = fmt.Sprintf("job timed out after %s", st.spec.Timeout)
	return res
}

// unconfirmed is the result of a cancelled (or timed out) run whose end the
// server did not confirm within CancelGrace.
func (st *runState) unconfirmed() schemas.Result {
	st.unconfirmedEnd = true
	st.warn(fmt.Sprintf("the agent server did not confirm the end of the run within %s of the cancel; it may still be running there", st.opts.CancelGrace))
	if st.timedOut {
		return st.timedOutResult(st.result(schemas.StatusTimedOut))
	}
	res := st.result(schemas.StatusCancelled)
	res.Stderr = "job cancelled"
	return res
}

// beginCancel sends the cancel (once the run id is known) and arms the grace
// timer that ends the phase if the server never confirms.
func (st *runState) beginCancel(ctx context.Context) {
	if !st.cancelling {
		st.cancelling = true
		st.graceTimer = time.AfterFunc(st.opts.CancelGrace, func() { st.stopBase(errCancelUnconfirmed) })
		st.log.Info("cancelling the run", "grace", st.opts.CancelGrace)
	}
	if st.cancelSent || st.runID == "" {
		return
	}
	st.cancelSent = true
	cctx, cancel := context.WithTimeout(ctx, st.opts.CancelTimeout)
	defer cancel()
	_, err := retry(cctx, st, "cancel", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, st.c.Cancel(ctx, st.sessionID, st.runID)
	})
	if err != nil && !isNotActive(err) {
		st.warn(fmt.Sprintf("could not cancel the run on the agent server: %v", err))
		return
	}
	if err == nil {
		st.wake(cctx)
	}
}

// wake sends the steering message that makes a cancelled run notice its
// cancel flag (a run waiting for tool decisions sleeps until a command
// comes).
func (st *runState) wake(ctx context.Context) {
	_, err := retry(ctx, st, "wake", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, st.c.Steer(ctx, st.sessionID, st.runID, wakeText)
	})
	if err != nil && !isNotActive(err) {
		st.log.Info("could not wake the cancelled run", "err", err)
	}
}

func (st *runState) stopGrace() {
	if st.graceTimer != nil {
		st.graceTimer.Stop()
	}
}
