package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
)

// settleTimeout bounds each publish, KV write and ack made while settling a
// message, so a NATS outage can't hold a slot forever; the message is then
// redelivered and settled again under the same message ids.
const settleTimeout = 10 * time.Second

// outcome is what handling one message came to. Fetching a message (job,
// decision or control message) and executing its phase return one; settle
// turns it into the record transition, the result, the dead letter, the
// live event and the message action. Nothing else acks, naks or terms a
// message (heartbeats only say InProgress).
type outcome struct {
	kind outcomeKind
	// res is the phase's Result (outFinal, outPaused); whole reports
	// whether its Stdout is the run's whole text (spawn.Outcome.WholeText).
	res   schemas.Result
	whole bool
	// code is the error code of outFail and outRefuse.
	code string
	// err says why (outFail, outReject, outRetry*, outRefuse, outDrop).
	err error
	// refusal is the decision error of outRefuse.
	refusal *schemas.Error
	// delay is how long outWait waits.
	delay time.Duration
	// event is the live event outVoted publishes.
	event *schemas.Event
}

type outcomeKind int

const (
	// outFinal: the phase's run ended; res is the job's final result.
	outFinal outcomeKind = iota
	// outPaused: the run waits for a human; res is the paused result.
	outPaused
	// outFail: the job fails for good without a final result from the run
	// (start budget spent, a permanent agent error, a record that cannot be
	// written); its run, if any, is cancelled.
	outFail
	// outReject: the message is not a valid job.
	outReject
	// outRetryStart: the run could not start (agent server unavailable):
	// retried within the start budget.
	outRetryStart
	// outRetry: a transient failure with a run or record to come back to:
	// handed back with backoff.
	outRetry
	// outHandBack: the worker is shutting down: handed back now.
	outHandBack
	// outSettled: the recorded outcome is published already: only the ack
	// was missing.
	outSettled
	// outRepublish: a recorded pause, maybe never published: publish it
	// again (same message ids), then ack.
	outRepublish
	// outWait: a control message that is not due yet: redelivered after
	// delay.
	outWait
	// outRefuse: a decision that changes nothing: answered by a
	// decision_error event.
	outRefuse
	// outDrop: a control message with nothing left to do.
	outDrop
	// outLost: another worker took the job over: this one lets go.
	outLost
	// outVoted: an approver's allow was recorded; the quorum is not met
	// yet, so the run stays paused.
	outVoted
)

func final(res schemas.Result, whole bool) outcome {
	return outcome{kind: outFinal, res: res, whole: whole}
}
func failed(code string, err error) outcome {
	return outcome{kind: outFail, code: code, err: err}
}
func retry(kind outcomeKind, err error) outcome { return outcome{kind: kind, err: err} }
func refuse(e *schemas.Error) outcome           { return outcome{kind: outRefuse, refusal: e, code: e.Code} }
func drop(why string) outcome                   { return outcome{kind: outDrop, err: errors.New(why)} }

// settle carries out o for the phase p: in the order the contract needs —
// dead letter, result (and approval request), record, then the message
// action — so a crash between any two steps leads to a redelivery that
// finds the record and settles again under the same message ids.
func (w *Worker) settle(ctx context.Context, p *phase, o outcome) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	switch o.kind {
	case outFinal:
		w.settleFinal(ctx, p, o.res, o.whole)
	case outPaused:
		w.settlePaused(ctx, p, o.res, o.whole)
	case outFail:
		w.settleFail(ctx, p, o.code, o.err)
	case outReject:
		w.settleReject(ctx, p, o.err)
	case outRetryStart:
		w.settleRetryStart(ctx, p, o.err)
	case outRetry:
		w.nak(p, w.backoff(p.attempt), o.err)
	case outHandBack:
		w.settleHandBack(ctx, p)
	case outSettled:
		p.log.Info("already settled, acking redelivery")
		w.ack(p)
	case outRepublish:
		err := w.publishPause(ctx, &p.run.Record, w.pausedResult(&p.run.Record), p.log)
		if err == nil && p.run.Record.CancelRequested {
			// A cancel came while the run was pausing: send it on now.
			err = w.publishControl(ctx, p.run.Record.JobID, p.run.Record.ApprovalID, schemas.ControlCancel)
		}
		if err != nil {
			if p.attempt >= w.opts.MaxDeliver {
				// Nobody can be asked: end the job (its run is cancelled).
				w.settleFail(ctx, p, "unsettled", fmt.Errorf("the pause could not be published after %d deliveries: %w", p.attempt, err))
				return
			}
			p.log.Error("republish pause; it will be redelivered", "err", err)
			w.nak(p, w.backoff(p.attempt), nil)
			return
		}
		w.ack(p)
	case outWait:
		if err := p.msg.NakWithDelay(o.delay); err != nil {
			p.log.Warn("re-arm control message", "err", err)
		}
	case outRefuse:
		w.settleRefuse(ctx, p, o.refusal)
	case outDrop:
		w.term(p, o.err.Error())
	case outLost:
		p.log.Warn("another worker took the job over; no longer following it", "err", o.err)
	case outVoted:
		if err := w.publishJobEvent(ctx, *o.event); err != nil {
			p.log.Warn("publish vote event", "err", err)
		}
		w.ack(p)
	}
}

// settleFinal publishes a phase's final result and acks (or, for a failed
// job, terms) its message.
func (w *Worker) settleFinal(ctx context.Context, p *phase, res schemas.Result, whole bool) {
	w.mergeEarlierPhases(p, &res, whole)
	if !w.finish(ctx, p, res) {
		return
	}
	if p.events != nil {
		p.events.emit(schemas.Event{Type: schemas.EventStatus, Status: string(res.Status)})
	}
	w.m.SessionDuration.WithLabelValues(string(res.Status)).Observe(res.FinishedAt.Sub(res.StartedAt).Seconds())
	p.log.Info("job settled", "status", res.Status, "phase", p.run.Record.Phase, "duration_ms", res.DurationMS, "turns", res.TotalTurns)
	if res.Status == schemas.StatusFailed && res.Error != nil {
		w.term(p, res.Error.Code)
		return
	}
	w.ack(p)
}

// mergeEarlierPhases gives a phase's result what earlier phases of the run
// did: their text, unless the runner already has the run's whole text (it
// rebuilds a resumed run's final text from the session), and their
// tool-call counts.
func (w *Worker) mergeEarlierPhases(p *phase, res *schemas.Result, whole bool) {
	rec := &p.run.Record
	res.Worker = w.opts.Name
	if !whole {
		res.Stdout = rec.Stdout + res.Stdout
	}
	var cut int
	if res.Stdout, cut = queue.KeepTail(res.Stdout, w.opts.MaxOutputBytes); cut > 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("stdout truncated: the first %d bytes were dropped to keep the result under %d bytes; the session's messages have the whole text", cut, w.opts.MaxOutputBytes))
	}
	res.ToolCalls.Accepted += rec.ToolCalls.Accepted
	res.ToolCalls.Rejected += rec.ToolCalls.Rejected
	res.ToolRules = addRules(maps.Clone(rec.ToolRules), res.ToolRules)
	if res.Status.Final() {
		res.Approvals = slices.Clone(rec.Approvals)
	}
	if res.PolicyVersion == 0 {
		res.PolicyVersion = w.Policy().Version
	}
	if p.events != nil {
		rec.EventSeq = p.events.Seq()
	}
}

// settlePaused records and publishes a pause, then acks its message.
func (w *Worker) settlePaused(ctx context.Context, p *phase, res schemas.Result, whole bool) {
	w.mergeEarlierPhases(p, &res, whole)
	res.SessionKey = p.job.SessionKey
	if err := w.pause(ctx, p, &res); err != nil {
		w.unsettled(ctx, p, res, fmt.Errorf("publish pause: %w", err))
		return
	}
	if p.events != nil {
		p.events.emit(schemas.Event{Type: schemas.EventApprovalRequested, Status: string(res.Status), ApprovalID: p.run.Record.ApprovalID})
	}
	w.m.Jobs.WithLabelValues(string(res.Status)).Inc()
	w.m.SessionDuration.WithLabelValues(string(res.Status)).Observe(res.FinishedAt.Sub(res.StartedAt).Seconds())
	p.log.Info("job phase paused", "phase", p.run.Record.Phase, "approval_id", p.run.Record.ApprovalID)
	w.ack(p)
}

// finish publishes a final result: the job on dead first when it failed or
// was rejected, then the result, then the record's finish transition (when
// there is a record). It reports whether the message may now be settled;
// when it may not, the message is left to be redelivered and finished again
// under the same message ids.
func (w *Worker) finish(ctx context.Context, p *phase, res schemas.Result) bool {
	if err := w.publishFinal(ctx, p, res); err != nil {
		w.unsettled(ctx, p, res, err)
		return false
	}
	if p.run.Rev != 0 {
		if err := w.record(ctx, p, queue.TransFinish); err != nil {
			p.log.Warn("record run done", "err", err)
		}
	}
	p.finished = true // its keys are let go once the message is settled (ack, term)
	w.m.Jobs.WithLabelValues(string(res.Status)).Inc()
	return true
}

// publishFinal publishes a final result, the job on dead first when it
// failed or was rejected.
func (w *Worker) publishFinal(ctx context.Context, p *phase, res schemas.Result) error {
	res.JobDigest = p.jobDigest()
	res.SessionKey = p.job.SessionKey
	if p.run.Stored == queue.RunPaused && !p.finalPhase {
		// A paused job that ends for good: its final result is a phase
		// of its own, or it would share the paused result's message id
		// and be dropped as a duplicate.
		p.run.Record.Phase++
		p.finalPhase = true
	}
	if res.Status == schemas.StatusFailed || res.Status == schemas.StatusRejected {
		if err := w.deadLetter(ctx, p, res.Error, res.Stderr); err != nil {
			return fmt.Errorf("dead-letter job: %w", err)
		}
		res.DeadLettered = true
	}
	msgID := queue.ResultMsgID(res.JobID, p.run.Record.Phase)
	if p.unreadable {
		// '~' is in no job id, so no real job's "<job_id>:<phase>" can be
		// this; the stream sequence is the message's own (a redelivery
		// republishes under the same id).
		msgID = "~" + res.JobID
	}
	if _, err := queue.PublishResultAs(ctx, w.js, w.qcfg, res, msgID); err != nil {
		return fmt.Errorf("publish %s result: %w", res.Status, err)
	}
	return nil
}

// unsettled handles a phase whose outcome could not be published: the
// message is handed back to be settled again (its run re-attached, never
// started twice), and the failure counted in the run record (or, for a job
// with none, by its deliveries). After MaxDeliver such failures the job
// ends with a minimal failed result and dead letter, which always fit: no
// message is settled forever.
func (w *Worker) unsettled(ctx context.Context, p *phase, res schemas.Result, cause error) {
	rec := &p.run.Record
	failures := p.attempt
	if p.run.Stored == queue.RunRunning {
		rec.SettleFailures++
		failures = rec.SettleFailures
		if err := w.record(ctx, p, queue.TransProgress); err != nil {
			p.log.Warn("record a failure to settle", "err", err)
		}
	}
	if failures < w.opts.MaxDeliver {
		p.log.Error("could not settle; it will be redelivered", "err", cause, "status", res.Status, "failures", failures)
		w.nak(p, w.backoff(failures), nil)
		return
	}
	min := queue.MinimalResult(res)
	min.SetStatus(schemas.StatusFailed)
	min.Error = &schemas.Error{Code: "unsettled", Message: queue.CapError(fmt.Sprintf("the job's %s outcome could not be published after %d tries: %v", res.Status, failures, cause))}
	min.Stderr = min.Error.Message
	p.raw = nil // the dead letter then carries the job as recorded, which fits
	if rec.RunID != "" {
		// The job ends here: nobody will follow its run again.
		if err := w.runner.CancelRun(ctx, spawn.Cursor{SessionID: rec.SessionID, RunID: rec.RunID}); err != nil {
			p.log.Warn("cancel abandoned run", "err", err)
		}
	}
	if err := w.publishFinal(ctx, p, min); err != nil {
		p.log.Error("could not settle even a minimal result; it will be redelivered", "err", err)
		w.nak(p, w.backoff(failures), nil)
		return
	}
	if p.run.Rev != 0 {
		if err := w.record(ctx, p, queue.TransFinish); err != nil {
			p.log.Warn("record run done", "err", err)
		}
	}
	p.finished = true // its keys are let go once the message is settled (ack, term)
	w.m.Jobs.WithLabelValues(string(min.Status)).Inc()
	p.log.Error("job failed: its outcome could not be published", "err", cause, "failures", failures)
	w.term(p, "unsettled")
}

// settleFail ends a job with a failed result and a dead letter. A run still
// going on the agent server is cancelled first: nobody will follow it again.
func (w *Worker) settleFail(ctx context.Context, p *phase, code string, cause error) {
	rec := &p.run.Record
	res := w.baseResult(p.job.ID, p.attempt, p.start, p.job.Metadata)
	res.SetStatus(schemas.StatusFailed)
	res.Error = &schemas.Error{Code: code, Message: cause.Error()}
	res.Stderr = cause.Error()
	res.SessionID, res.RunID, res.Stdout, res.ToolCalls = rec.SessionID, rec.RunID, rec.Stdout, rec.ToolCalls
	if rec.RunID != "" {
		if err := w.runner.CancelRun(ctx, spawn.Cursor{SessionID: rec.SessionID, RunID: rec.RunID}); err != nil {
			p.log.Warn("cancel abandoned run", "err", err)
		}
	}
	if !w.finish(ctx, p, res) {
		return
	}
	p.log.Error("job failed", "code", code, "err", cause)
	w.term(p, code)
}

// settleReject answers an invalid job: one rejected result naming every bad
// field, the job on dead, and Term so it is never redelivered.
func (w *Worker) settleReject(ctx context.Context, p *phase, cause error) {
	res := w.baseResult(p.job.ID, p.attempt, p.start, p.job.Metadata)
	res.SetStatus(schemas.StatusRejected)
	res.PolicyVersion = p.policyVersion
	var ve *schemas.ValidationError
	if errors.As(cause, &ve) {
		res.Error = ve.ToError()
	} else {
		res.Error = &schemas.Error{Code: "invalid_job", Message: cause.Error()}
	}
	res.Stderr = res.Error.Message
	if !w.finish(ctx, p, res) {
		return
	}
	p.log.Warn("job rejected", "reason", res.Error.Message)
	w.term(p, "rejected")
}

// settleRetryStart hands back a job whose run could not be started because
// the agent server is unreachable, failing or refusing the token. It is
// retried for StartBudget, counted from the first failed start (kept in the
// run record, so it holds across deliveries and workers), not for a number
// of deliveries: an agent-server outage shorter than the budget
// dead-letters nothing. Past the budget the job fails and is dead-lettered.
func (w *Worker) settleRetryStart(ctx context.Context, p *phase, cause error) {
	rec := &p.run.Record
	if rec.StartFailedAt.IsZero() {
		rec.StartFailedAt = time.Now().UTC()
		t := queue.TransStartFailed
		if p.run.Stored == queue.RunRunning {
			t = queue.TransProgress // the session exists; the send failed
		}
		if err := w.record(ctx, p, t); err != nil {
			p.log.Warn("record the failed start; the start budget counts from the next one", "err", err)
		}
	}
	if spent := time.Since(rec.StartFailedAt); spent >= w.opts.StartBudget {
		w.settleFail(ctx, p, "agent_unavailable", fmt.Errorf("could not start the run for %s (start budget %s): %w",
			spent.Round(time.Second), w.opts.StartBudget, cause))
		return
	}
	w.nak(p, w.backoff(p.attempt), cause)
}

// settleHandBack returns a job whose run is still going when the worker
// shuts down: the run is left for the next worker to re-attach to, or
// cancelled (ShutdownCancel).
func (w *Worker) settleHandBack(ctx context.Context, p *phase) {
	rec := &p.run.Record
	if w.opts.ShutdownMode == ShutdownCancel && rec.RunID != "" {
		if err := w.runner.CancelRun(ctx, spawn.Cursor{SessionID: rec.SessionID, RunID: rec.RunID}); err != nil {
			p.log.Warn("cancel run at shutdown", "err", err, "session_id", rec.SessionID)
		}
	}
	p.log.Info("handing job back at shutdown", "session_id", rec.SessionID, "mode", w.opts.ShutdownMode)
	w.nak(p, 0, nil)
}

// settleRefuse answers a decision that changes nothing: an error event on
// the job's events subject and a log line; the message is not redelivered.
func (w *Worker) settleRefuse(ctx context.Context, p *phase, e *schemas.Error) {
	// The approval id is what the decision said: quoted back capped.
	jobID, approvalID := p.job.ID, queue.CapID(p.approvalID)
	w.log.Warn("decision refused", "job_id", jobID, "approval_id", approvalID, "code", e.Code, "reason", e.Message)
	w.noteRefusal(ctx, p, e, p.voter)
	w.m.Decisions.WithLabelValues("refused", e.Code).Inc()
	if jobID != "" && queue.ValidateJobID(jobID) == nil {
		ev := schemas.Event{Schema: schemas.EventSchemaID, JobID: jobID, Type: schemas.EventDecisionError, At: time.Now().UTC(), ApprovalID: approvalID, Error: e}
		if err := w.publishJobEvent(ctx, ev); err != nil {
			w.log.Warn("publish decision error event", "job_id", jobID, "err", err)
		}
	}
	w.term(p, e.Code)
}

// deadLetter publishes the phase's job with why it died: the job message as
// received when the phase has it, else the job as recorded.
func (w *Worker) deadLetter(ctx context.Context, p *phase, e *schemas.Error, message string) error {
	dl := schemas.DeadLetter{
		Schema:   schemas.DeadSchemaID,
		JobID:    p.job.ID,
		Reason:   e.Code,
		Error:    message,
		Fields:   e.Fields,
		Attempt:  p.attempt,
		Worker:   w.opts.Name,
		DeadAt:   time.Now().UTC(),
		Metadata: p.job.Metadata,
		// A made-up name: the dead letter's id comes from the bytes.
		Unreadable: p.unreadable,
	}
	raw := p.raw
	if raw == nil {
		raw, _ = json.Marshal(p.job)
	}
	// Exactly as received; queue.PublishDead fits it to a message.
	dl.SetJob(raw)
	if _, err := queue.PublishDead(ctx, w.js, w.qcfg, dl); err != nil {
		return err
	}
	w.m.DeadLetters.Inc()
	return nil
}

// backoff is the delay before the delivery after attempt: exponential from
// RetryInitial to RetryMax, with jitter so messages that failed together in
// an outage don't all come back in the same instant.
func (w *Worker) backoff(attempt int) time.Duration {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     w.opts.RetryInitial,
		RandomizationFactor: 0.2,
		Multiplier:          2,
		MaxInterval:         w.opts.RetryMax,
	}
	b.Reset()
	d := b.NextBackOff()
	for i := 1; i < attempt && i < 64; i++ {
		d = b.NextBackOff()
	}
	return d
}

func (w *Worker) baseResult(jobID string, attempt int, start time.Time, md map[string]string) schemas.Result {
	now := time.Now().UTC()
	return schemas.Result{
		JobID:      jobID,
		Attempt:    attempt,
		Worker:     w.opts.Name,
		StartedAt:  start.UTC(),
		FinishedAt: now,
		DurationMS: now.Sub(start).Milliseconds(),
		Metadata:   md,
	}
}

// The message actions. A plain ack: if it is lost, the redelivery finds the
// run recorded as settled and is acked then, so waiting for the server's
// confirmation would only cost a round trip per job.
func (w *Worker) ack(p *phase) {
	if w.settleKeyed(p, func(ctx context.Context) error { return p.msg.DoubleAck(ctx) }) {
		return
	}
	if err := p.msg.Ack(); err != nil {
		p.log.Warn("ack; a redelivery will find it settled", "err", err)
	}
}

// settleKeyed settles the message of a finished keyed job and then lets go
// of its keys, in that order: the next job of the key looks for this one's
// message in JOBS, so it must be gone (the ack confirmed) before the lease
// write wakes it. It reports false for any other message.
func (w *Worker) settleKeyed(p *phase, settle func(context.Context) error) bool {
	if !p.finished || p.job.SessionKey == "" && p.job.ConcurrencyKey == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	if err := settle(ctx); err != nil {
		p.log.Warn("settle the job message; a redelivery will find it settled", "err", err)
	}
	w.releaseKeys(ctx, p)
	return true
}

// nak hands the message back after delay (0: at once); cause, when set, is
// logged as why.
func (w *Worker) nak(p *phase, delay time.Duration, cause error) {
	if cause != nil {
		p.log.Warn("transient failure; retrying", "err", cause, "retry_in", delay)
		w.m.Retries.Inc()
	}
	var err error
	if delay > 0 {
		err = p.msg.NakWithDelay(delay)
	} else {
		err = p.msg.Nak()
	}
	if err != nil {
		p.log.Warn("nak; it comes back after AckWait", "err", err)
	}
}

func (w *Worker) term(p *phase, reason string) {
	if w.settleKeyed(p, func(context.Context) error { return p.msg.TermWithReason(reason) }) {
		return
	}
	if err := p.msg.TermWithReason(reason); err != nil {
		p.log.Warn("term", "err", err)
	}
}

// record writes the phase's run record as transition t, with
// compare-and-set against the revision this worker last read or wrote, so a
// worker that lost the job cannot overwrite newer state. A cancel request is
// the one change another worker makes to a record it does not hold: it is
// merged, and acted on. A record left done by an earlier job with the same
// id (resubmitted after the duplicate window) is replaced.
func (w *Worker) record(ctx context.Context, p *phase, t queue.Transition) error {
	for range 3 {
		err := w.runs.Transition(ctx, p.run, t)
		if err == nil {
			return nil
		}
		if !errors.Is(err, queue.ErrRevisionMismatch) && !errors.Is(err, queue.ErrRunExists) {
			return fmt.Errorf("record run: %w", err)
		}
		cur, err := w.runs.GetRun(ctx, p.job.ID)
		if err != nil {
			return fmt.Errorf("record run: re-read after a conflict: %w", err)
		}
		rec := &p.run.Record
		switch {
		case p.run.Rev == 0 && cur.Stored == queue.RunDone:
			// This job's record replaces the earlier job's.
		case cur.Record.Owner != rec.Owner || cur.Record.Phase != rec.Phase || cur.Stored == queue.RunDone || cur.Stored == queue.RunPaused:
			return fmt.Errorf("%w: now %s by %s at phase %d", errLostJob, cur.Stored, cur.Record.Owner, cur.Record.Phase)
		case cur.Record.CancelRequested && !rec.CancelRequested:
			rec.CancelRequested = true
			if p.active != nil {
				p.active.requestCancel()
			}
		}
		p.run.Rev, p.run.Stored = cur.Rev, cur.Stored
	}
	return fmt.Errorf("%w: the record keeps changing", errLostJob)
}

// errLostJob: the job's record moved on under this worker (another worker
// took the job over after this one's heartbeats failed).
var errLostJob = errors.New("run record changed by another worker")
