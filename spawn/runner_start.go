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
	"time"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// runState is one Run: everything learned about the session and run so far.
// It is used from Run's goroutine only (the stall timer only cancels a
// context).
type runState struct {
	r      *Runner
	c      *Client
	opts   *RunnerOptions
	spec   Spec
	policy Policy
	log    *slog.Logger

	started   time.Time
	sessionID string
	runID     string
	lastID    uint64
	startID   uint64 // the cursor's event id when this phase began

	// Open event stream, if any.
	stream       *EventStream
	streamCtx    context.Context
	streamCancel context.CancelCauseFunc
	streamTimer  *time.Timer

	stdout     strings.Builder
	turns      int
	turnUsage  schemas.Usage
	sawUsage   bool
	final      *RunCompleted
	tools      schemas.ToolCallCounts
	decided    map[string]bool
	warnings   []string
	rebuild    bool // the streamed text may be incomplete: rebuild it from messages
	ended      bool // following a run known to have ended: decide nothing
	lastReport Cursor
	reportedAt time.Time
	reported   bool
}

func newRunState(r *Runner, spec Spec) *runState {
	st := &runState{
		r:       r,
		c:       r.c,
		opts:    &r.opts,
		spec:    spec,
		policy:  NewPolicy(spec.WorkerAllowed, spec.Job),
		started: time.Now().UTC(),
		decided: map[string]bool{},
	}
	st.log = r.opts.Logger.With("job_id", spec.Job.ID, "attempt", spec.Attempt)
	return st
}

func (st *runState) cursor() Cursor {
	return Cursor{SessionID: st.sessionID, RunID: st.runID, LastEventID: st.lastID}
}

// reportCursor calls OnCursor when the cursor changed: at once when force (or
// the session or run id is new), else at most every CursorInterval.
func (st *runState) reportCursor(force bool) {
	if st.spec.OnCursor == nil || st.sessionID == "" {
		return
	}
	cur := st.cursor()
	if st.reported && cur == st.lastReport {
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
	job := st.spec.Job
	sess, err := st.c.CreateSession(ctx, CreateSessionRequest{
		Title: "jetpilot: " + job.ProfileOrDefault(),
		Cwd:   job.Workdir,
	}, sessionKey(job.ID))
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
	st.runID = runID
	st.log = st.log.With("run_id", runID)
	st.reportCursor(true)
	return st.follow(ctx)
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
	case errors.As(err, &ae) && ae.StatusCode == http.StatusConflict:
		// The session already has (or had) a run: ours, since the session is
		// the job's own. Never start another one; find it instead.
		st.log.Info("send answered with a conflict; looking for the existing run", "err", err)
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
	if st.runID == "" {
		if rs.Active() && rs.RunID != "" {
			st.runID = rs.RunID
			st.log = st.log.With("run_id", rs.RunID)
			st.reportCursor(true)
			return st.follow(ctx)
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
		return st.follow(ctx)
	}
	return st.finishEnded(ctx, &gs)
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
	st.closeStream()
	connCtx, cancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(idle, func() { cancel(errStalled) })
	from := st.lastID
	stream, err := st.c.OpenEvents(connCtx, st.sessionID, StreamOptions{
		LastEventID:   &from,
		MaxFrameBytes: st.opts.MaxFrameBytes,
		OnActivity:    func() { timer.Reset(idle) },
	})
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
	return nil
}

var errStalled = errors.New("event stream stalled")

// streamStalled reports whether the open stream was cut by the stall timer.
func (st *runState) streamStalled() bool {
	return st.streamCtx != nil && context.Cause(st.streamCtx) == errStalled
}

func (st *runState) closeStream() {
	if st.stream == nil {
		return
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
		JobID:      job.ID,
		SessionID:  st.sessionID,
		RunID:      st.runID,
		Stdout:     st.stdout.String(),
		ToolCalls:  st.tools,
		Attempt:    st.spec.Attempt,
		Worker:     st.opts.Worker,
		StartedAt:  st.started,
		Metadata:   maps.Clone(job.Metadata),
		TotalTurns: st.turns,
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

func (st *runState) failed(code, msg string) schemas.Result {
	res := st.result(schemas.StatusFailed)
	res.Stderr = msg
	res.Error = &schemas.Error{Code: code, Message: msg}
	return res
}

// finalize stamps the end of the phase, rebuilds the text from the session's
// messages when the stream could not give all of it, and reports the final
// cursor.
func (st *runState) finalize(ctx context.Context, res schemas.Result) schemas.Result {
	// A resumed phase only streamed the text after its cursor; a final
	// result should carry the run's whole text.
	resumedFinal := st.startID > 0 && res.Status.Final() && res.Status != schemas.StatusTimedOut
	if (st.rebuild || resumedFinal) && st.sessionID != "" && ctx.Err() == nil {
		// Bounded: the phase is over, a slow server must not hold the result.
		rctx, cancel := context.WithTimeout(ctx, st.opts.CancelTimeout)
		text, err := st.assistantText(rctx)
		cancel()
		switch {
		case err != nil:
			st.warn(fmt.Sprintf("could not rebuild the agent's text from the session's messages: %v", err))
		case text != "":
			res.Stdout = text
		}
	}
	res.Warnings = slices.Clone(st.warnings)
	res.FinishedAt = time.Now().UTC()
	res.DurationMS = res.FinishedAt.Sub(res.StartedAt).Milliseconds()
	st.reportCursor(true)
	return res
}

// timedOut cancels the run on the server (with a fresh, short context: the
// phase's is spent) and reports timed_out with what is known so far.
func (st *runState) timedOut(ctx context.Context) schemas.Result {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), st.opts.CancelTimeout)
	defer cancel()
	if st.runID == "" && st.sessionID != "" {
		if gs, err := st.c.GetSession(cctx, st.sessionID); err == nil {
			if rs := gs.Session.RunStatus; rs.Active() && rs.RunID != "" {
				st.runID = rs.RunID
			}
		}
	}
	if st.runID != "" {
		if err := st.c.Cancel(cctx, st.sessionID, st.runID); err != nil && !isNotActive(err) {
			st.warn(fmt.Sprintf("could not cancel the run after the timeout: %v", err))
		}
	}
	res := st.result(schemas.StatusTimedOut)
	res.Stderr = fmt.Sprintf("job timed out after %s", st.spec.Timeout)
	return st.finalize(ctx, res)
}
