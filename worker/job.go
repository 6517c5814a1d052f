package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
)

// settleTimeout bounds each publish, KV write and ack made while settling a
// job, so a NATS outage can't hold a job slot forever; the job is then
// redelivered and settled again under the same message ids.
const settleTimeout = 10 * time.Second

// handle takes one job message from delivery to ack.
func (w *Worker) handle(ctx context.Context, msg jetstream.Msg) {
	start := time.Now()
	attempt := 1
	fresh := false // surely the first time any worker sees this job
	if meta, err := msg.Metadata(); err == nil {
		attempt = int(meta.NumDelivered)
		fresh = attempt == 1 && meta.Timestamp.After(w.consumerCreated(meta.Consumer))
	}
	job, err := schemas.DecodeJob(msg.Data())
	if err == nil {
		err = w.checkProfile(msg.Subject(), job)
	}
	if err != nil {
		w.reject(ctx, msg, job.Metadata, attempt, start, err)
		return
	}
	log := w.log.With("job_id", job.ID, "attempt", attempt)

	// A redelivered job may have a recorded run to re-attach to; so may a
	// first delivery of a job published before its consumer was created (a
	// job handed back at shutdown, then its consumer recreated). A job
	// published after its consumer was created and delivered once cannot:
	// skip the round trip on that, the common path.
	var rec queue.RunRecord
	var rev uint64
	err = queue.ErrRunNotFound
	if !fresh {
		rec, rev, err = w.runs.Get(ctx, job.ID)
	}
	found := err == nil
	if err != nil && !errors.Is(err, queue.ErrRunNotFound) {
		// Never give up on a job because the store is unreadable: that
		// could orphan a run. Try again later.
		w.nakLater(msg, attempt, fmt.Errorf("read run record: %w", err), log)
		return
	}
	if found && rec.State == queue.RunDone && attempt == 1 {
		// A record left by an earlier job with the same id, submitted again
		// after the duplicate window: this is a new job.
		found = false
	}
	if found {
		switch rec.State {
		case queue.RunDone:
			// The outcome was published and recorded; only the ack was lost.
			log.Info("job already settled, acking redelivery")
			w.ack(ctx, msg, log)
			return
		case queue.RunPaused:
			// The pause was recorded; make sure it was published, then ack.
			w.republishPause(ctx, msg, &rec, log)
			return
		}
		log.Info("re-attaching to recorded run", "session_id", rec.SessionID, "run_id", rec.RunID, "last_event_id", rec.LastEventID)
	} else {
		rec = queue.RunRecord{JobID: job.ID, StartedAt: start, Deadline: start.Add(w.timeout(job)), Job: withoutPrompt(job)}
	}
	w.follow(ctx, &phase{msg: msg, raw: msg.Data(), job: job, attempt: attempt, start: start, rec: rec, rev: rev, log: log})
}

// republishPause makes sure a recorded pause was published (a crash or an
// outage may have come between recording and publishing it), then acks msg.
func (w *Worker) republishPause(ctx context.Context, msg jetstream.Msg, rec *queue.RunRecord, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	if err := w.publishPause(ctx, rec, w.pausedResult(rec), log); err != nil {
		log.Error("republish pause; it will be redelivered", "err", err)
		return
	}
	w.ack(ctx, msg, log)
}

// phase is one stretch of a job's run, from its start or a decision to its
// next pause or its end, and the message that carries it: the job message,
// or a decision. The message is held (heartbeats) until the phase is settled.
type phase struct {
	msg       jetstream.Msg
	raw       []byte // the job as received, for dead letters; nil after the job message was acked
	job       schemas.Job
	attempt   int
	start     time.Time
	rec       queue.RunRecord
	rev       uint64                          // revision of rec in the runs bucket; 0 when not stored yet
	decisions map[string]schemas.ToolDecision // applied before following
	cancel    bool                            // cancel the run before following
	announce  *schemas.Event                  // live event published as the phase starts
	log       *slog.Logger
}

// follow runs or re-attaches to the phase's run, follows it to its next
// pause or its end, and settles the phase.
func (w *Worker) follow(ctx context.Context, p *phase) {
	w.m.InFlight.Inc()
	defer w.m.InFlight.Dec()
	defer w.beats.hold(p.msg, p.log)()
	// lost stops following when another worker has taken the job over.
	ctx, lost := context.WithCancelCause(ctx)
	defer lost(nil)
	rec := &p.rec
	rec.Owner, rec.Attempt = w.opts.Name, p.attempt
	events := w.newLiveEvents(p.job.ID, p.job.Metadata, rec.EventSeq)
	defer events.close()
	if p.announce != nil {
		events.emit(*p.announce)
	}
	active := w.track(p.job.ID)
	defer w.untrack(p.job.ID, active)

	cur := spawn.Cursor{SessionID: rec.SessionID, RunID: rec.RunID, LastEventID: rec.LastEventID, Decided: rec.Decided}
	if p.cancel || rec.CancelRequested {
		active.ctl.Cancel()
	}
	spec := spawn.Spec{
		Job:           p.job,
		Attempt:       p.attempt,
		Timeout:       time.Until(rec.Deadline),
		WorkerAllowed: w.opts.AllowedTools,
		Control:       active.ctl,
		RunStartedAt:  rec.RunStartedAt,
		OnCursor: func(c spawn.Cursor) {
			if rec.SessionID == "" && c.SessionID != "" {
				p.log = p.log.With("session_id", c.SessionID)
			}
			if c.RunID != "" && c.RunID != rec.RunID {
				rec.RunStartedAt = time.Now().UTC()
			}
			rec.SessionID, rec.RunID, rec.LastEventID, rec.Decided = c.SessionID, c.RunID, c.LastEventID, c.Decided
			rec.State = queue.RunRunning
			rec.EventSeq = events.Seq()
			if err := w.save(ctx, p, active); err != nil {
				// Without the record a redelivery could not re-attach:
				// stop before the run starts (or hand the job back).
				lost(err)
			}
		},
		OnEvent: events.agentEvent,
	}
	if len(p.decisions) > 0 {
		// The human's answer and the policy's held verdicts: one request.
		spec.Decisions = make(map[string]schemas.ToolDecision, len(rec.Held)+len(p.decisions))
		maps.Copy(spec.Decisions, rec.Held)
		maps.Copy(spec.Decisions, p.decisions)
	}
	if rec.SessionID != "" {
		spec.Resume = &cur
		p.log = p.log.With("session_id", rec.SessionID)
	}
	if spec.Timeout <= 0 {
		// A redelivered job whose deadline passed while no worker held it:
		// the runner cancels the run and reports it timed out.
		spec.Timeout = time.Millisecond
	}

	out, err := w.runner.Run(ctx, spec)
	active.settling.Store(true)
	if cause := context.Cause(ctx); errors.Is(cause, errLostJob) {
		p.log.Warn("another worker took the job over; no longer following it", "err", cause)
		return
	} else if cause != nil && !errors.Is(cause, context.Canceled) {
		// The run record could not be written: retry from the top, up to
		// MaxDeliver deliveries (a record that can never be written must
		// not hold the job forever).
		if p.attempt >= w.opts.MaxDeliver {
			w.fail(ctx, p, "retries_exhausted", fmt.Errorf("gave up after %d deliveries: %w", p.attempt, cause))
			return
		}
		w.nakLater(p.msg, p.attempt, cause, p.log)
		return
	}
	if err != nil {
		w.m.agentError(err)
		switch {
		case ctx.Err() != nil:
			w.handBack(p.msg, *rec, p.log)
		case spawn.IsTransient(err) && rec.RunID == "":
			w.retryStart(ctx, p, err)
		case spawn.IsTransient(err):
			w.retryRun(p, err)
		default:
			w.fail(ctx, p, "agent_error", err)
		}
		return
	}
	p.rec.Held = out.Held
	w.settle(ctx, p, out.Result, events)
}

// Caps on the job a dead letter carries; see deadLetter.
const (
	maxDeadJobBytes = 768 << 10
	maxDeadRawBytes = 128 << 10
)

// errLostJob: the job's record moved on under this worker (another worker
// took the job over after this one's heartbeats failed).
var errLostJob = errors.New("run record changed by another worker")

// save writes the phase's record with compare-and-set against the revision
// this worker last read or wrote, so a worker that lost the job cannot
// overwrite newer state. A cancel request is the one change another worker
// makes to a record it does not hold: it is merged, and acted on.
func (w *Worker) save(ctx context.Context, p *phase, active *activeJob) error {
	for range 3 {
		var rev uint64
		var err error
		if p.rev == 0 {
			rev, err = w.runs.Create(ctx, p.rec)
		} else {
			rev, err = w.runs.Update(ctx, p.rec, p.rev)
		}
		if err == nil {
			p.rev = rev
			return nil
		}
		if !errors.Is(err, queue.ErrRevisionMismatch) && !errors.Is(err, queue.ErrRunExists) {
			return fmt.Errorf("record run: %w", err)
		}
		cur, curRev, err := w.runs.Get(ctx, p.rec.JobID)
		if err != nil {
			return fmt.Errorf("record run: re-read after a conflict: %w", err)
		}
		if p.rev == 0 && cur.State == queue.RunDone {
			// Left by an earlier job with the same id (resubmitted after
			// the duplicate window): this job's record replaces it.
			p.rev = curRev
			continue
		}
		if cur.Owner != p.rec.Owner || cur.Phase != p.rec.Phase || cur.State == queue.RunDone || cur.State == queue.RunPaused {
			return fmt.Errorf("%w: now %s by %s at phase %d", errLostJob, cur.State, cur.Owner, cur.Phase)
		}
		if cur.CancelRequested && !p.rec.CancelRequested {
			p.rec.CancelRequested = true
			if active != nil {
				active.requestCancel()
			}
		}
		p.rev = curRev
	}
	return fmt.Errorf("%w: the record keeps changing", errLostJob)
}

// truncateHead drops the start of *s so it is at most max bytes, on a UTF-8
// boundary, and returns how many bytes it dropped.
func truncateHead(s *string, max int) int {
	if len(*s) <= max {
		return 0
	}
	cut := len(*s) - max
	for cut < len(*s) && !utf8.RuneStart((*s)[cut]) {
		cut++
	}
	*s = (*s)[cut:]
	return cut
}

// withoutPrompt is the job as kept in the runs bucket: everything a later
// phase needs (policy, metadata) without the prompt, which can be 1 MiB.
func withoutPrompt(job schemas.Job) schemas.Job {
	job.Prompt = ""
	job.CallerContext = nil
	return job
}

// timeout is the job's effective timeout: its own, capped by MaxTimeout.
func (w *Worker) timeout(job schemas.Job) time.Duration {
	d, err := job.TimeoutDuration()
	if err != nil || d <= 0 || d > w.opts.MaxTimeout {
		return w.opts.MaxTimeout
	}
	return d
}

// checkProfile refuses a job whose body names another profile than the
// subject it was published on: routing and policy would disagree.
func (w *Worker) checkProfile(subject string, job schemas.Job) error {
	want := w.qcfg.JobSubject(job.ProfileOrDefault())
	if subject == want {
		return nil
	}
	return &schemas.ValidationError{Problems: []schemas.FieldError{{
		Field:  "profile",
		Reason: fmt.Sprintf("job is for profile %q but was published on %q; publish it on %q", job.ProfileOrDefault(), subject, want),
	}}}
}

// settle publishes a phase's outcome and only then acks its message.
func (w *Worker) settle(ctx context.Context, p *phase, res schemas.Result, events *liveEvents) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	rec := &p.rec
	log := p.log.With("status", res.Status)
	res.Worker = w.opts.Name
	// A resumed run's final result already carries the run's whole text
	// (rebuilt from the session); a phase result carries only its own.
	if !strings.HasPrefix(res.Stdout, rec.Stdout) {
		res.Stdout = rec.Stdout + res.Stdout
	}
	if cut := truncateHead(&res.Stdout, w.opts.MaxOutputBytes); cut > 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf("stdout truncated: the first %d bytes were dropped to keep the result under %d bytes; the session's messages have the whole text", cut, w.opts.MaxOutputBytes))
	}
	res.ToolCalls.Accepted += rec.ToolCalls.Accepted
	res.ToolCalls.Rejected += rec.ToolCalls.Rejected
	rec.EventSeq = events.Seq()
	if res.Status == schemas.StatusPaused {
		if err := w.pause(ctx, p, &res, log); err != nil {
			log.Error("publish pause; it will be redelivered", "err", err)
			return
		}
		events.emit(schemas.Event{Type: schemas.EventApprovalRequested, Status: string(res.Status), ApprovalID: rec.ApprovalID})
		w.m.Jobs.WithLabelValues(string(res.Status)).Inc()
	} else {
		if !w.finish(ctx, p, res, log) {
			return
		}
		events.emit(schemas.Event{Type: schemas.EventStatus, Status: string(res.Status)})
	}
	w.m.SessionDuration.WithLabelValues(string(res.Status)).Observe(res.FinishedAt.Sub(res.StartedAt).Seconds())
	log.Info("job phase settled", "phase", rec.Phase, "duration_ms", res.DurationMS, "turns", res.TotalTurns)
	w.ack(ctx, p.msg, log)
}

// finish publishes a phase's final result: the job on dead first when it
// failed or was rejected, then the result, then the record marked done (when
// there is one). It reports whether the message may now be settled; when it
// may not, the message is left to be redelivered and finished again under the
// same message ids.
func (w *Worker) finish(ctx context.Context, p *phase, res schemas.Result, log *slog.Logger) bool {
	if res.Status == schemas.StatusFailed || res.Status == schemas.StatusRejected {
		if err := w.deadLetter(ctx, p, res.Error, res.Stderr); err != nil {
			log.Error("dead-letter job; it will be redelivered", "err", err, "status", res.Status)
			return false
		}
		res.DeadLettered = true
	}
	if _, err := queue.PublishResult(ctx, w.js, w.qcfg, res, p.rec.Phase); err != nil {
		log.Error("publish result; it will be redelivered", "err", err, "status", res.Status)
		return false
	}
	if p.rev != 0 {
		p.rec.State = queue.RunDone
		if err := w.save(ctx, p, nil); err != nil {
			log.Warn("record run done", "err", err)
		}
	}
	w.m.Jobs.WithLabelValues(string(res.Status)).Inc()
	return true
}

// pausedResult rebuilds the paused result of a recorded pause, for a
// redelivery that must make sure it was published.
func (w *Worker) pausedResult(rec *queue.RunRecord) schemas.Result {
	res := w.baseResult(rec.JobID, rec.Attempt, rec.StartedAt, rec.Job.Metadata)
	res.SetStatus(schemas.StatusPaused)
	res.SessionID, res.RunID, res.Stdout = rec.SessionID, rec.RunID, rec.Stdout
	res.PauseReason = &schemas.PauseReason{Type: schemas.PauseToolApproval, PendingToolCalls: rec.Pending}
	res.ResumeHint = resumeHint(rec.ApprovalID, rec.JobID)
	res.ToolCalls = rec.ToolCalls
	return res
}

// retryStart hands back a job whose run could not be started because the
// agent server is unreachable, failing or refusing the token. It is retried
// for StartBudget, counted from the first failed start (kept in the run
// record, so it holds across deliveries and workers), not for a number of
// deliveries: an agent-server outage shorter than the budget dead-letters
// nothing. Past the budget the job fails and is dead-lettered.
func (w *Worker) retryStart(ctx context.Context, p *phase, cause error) {
	rec := &p.rec
	if rec.StartFailedAt.IsZero() {
		rec.StartFailedAt = time.Now().UTC()
		if rec.State == "" {
			rec.State = queue.RunStarting
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
		err := w.save(sctx, p, nil)
		cancel()
		if err != nil {
			p.log.Warn("record the failed start; the start budget counts from the next one", "err", err)
		}
	}
	if spent := time.Since(rec.StartFailedAt); spent >= w.opts.StartBudget {
		w.fail(ctx, p, "agent_unavailable", fmt.Errorf("could not start the run for %s (start budget %s): %w",
			spent.Round(time.Second), w.opts.StartBudget, cause))
		return
	}
	w.nakRetry(p, cause)
}

// retryRun hands back a job whose run exists but could not be followed
// (the agent server went away for longer than the runner waits). The run's
// deadline bounds it: a redelivery after the deadline cancels the run and
// reports it timed out, so no delivery count is needed.
func (w *Worker) retryRun(p *phase, cause error) { w.nakRetry(p, cause) }

func (w *Worker) nakRetry(p *phase, cause error) {
	delay := w.backoff(p.attempt)
	p.log.Warn("agent server unavailable; retrying", "err", cause, "retry_in", delay)
	w.m.Retries.Inc()
	if err := p.msg.NakWithDelay(delay); err != nil {
		p.log.Warn("nak; it comes back after AckWait", "err", err)
	}
}

// backoff is the delay before the delivery after attempt: exponential from
// RetryInitial to RetryMax, with jitter so jobs that failed together in an
// outage don't all come back in the same instant.
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

// fail ends a job with a failed result and a dead letter. A run still going
// on the agent server is cancelled first: nobody will follow it again.
func (w *Worker) fail(ctx context.Context, p *phase, code string, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	rec := &p.rec
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
	if !w.finish(ctx, p, res, p.log) {
		return
	}
	p.log.Error("job failed", "code", code, "err", cause)
	w.term(p.msg, code, p.log)
}

// reject answers an invalid job: one rejected result naming every bad field,
// the job on dead, and Term so it is never redelivered.
// md is the job's metadata when it could be read, so the answer reaches the
// producer's thread or channel.
func (w *Worker) reject(ctx context.Context, msg jetstream.Msg, md map[string]string, attempt int, start time.Time, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	id := w.rejectedJobID(msg)
	log := w.log.With("job_id", id, "attempt", attempt)
	res := w.baseResult(id, attempt, start, md)
	res.SetStatus(schemas.StatusRejected)
	var ve *schemas.ValidationError
	if errors.As(cause, &ve) {
		res.Error = ve.ToError()
	} else {
		res.Error = &schemas.Error{Code: "invalid_job", Message: cause.Error()}
	}
	res.Stderr = res.Error.Message
	p := &phase{msg: msg, raw: msg.Data(), job: schemas.Job{ID: id, Metadata: md}, attempt: attempt, log: log}
	if !w.finish(ctx, p, res, log) {
		return
	}
	log.Warn("job rejected", "reason", res.Error.Message)
	w.term(msg, "rejected", log)
}

// rejectedJobID names a job that could not be decoded: its id if readable,
// else its Nats-Msg-Id if that is a valid id, else one made from the stream
// sequence, so even garbage gets exactly one result someone can find.
func (w *Worker) rejectedJobID(msg jetstream.Msg) string {
	if id := schemas.JobIDOf(msg.Data()); id != "" {
		return id
	}
	if id := msg.Headers().Get("Nats-Msg-Id"); id != "" && queue.ValidateJobID(id) == nil {
		return id
	}
	if meta, err := msg.Metadata(); err == nil {
		return fmt.Sprintf("invalid-%d", meta.Sequence.Stream)
	}
	return "invalid-unknown"
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
	}
	raw := p.raw
	if raw == nil {
		raw, _ = json.Marshal(p.job)
	}
	dl.SetJob(raw)
	// The dead letter must fit a NATS message or the job could never be
	// settled: a JSON job is embedded as is up to maxDeadJobBytes; other
	// bytes are escaped (up to six times longer), so they are kept shorter.
	if len(dl.Job) > maxDeadJobBytes || len(dl.Raw) > maxDeadRawBytes {
		keep := min(len(raw), maxDeadRawBytes)
		dl.Job, dl.Raw = nil, strings.ToValidUTF8(string(raw[:keep]), "\uFFFD")
		dl.Error += fmt.Sprintf(" (the job as received was %d bytes; raw keeps its first %d)", len(raw), keep)
	}
	if _, err := queue.PublishDead(ctx, w.js, w.qcfg, dl); err != nil {
		return err
	}
	w.m.DeadLetters.Inc()
	return nil
}

// handBack returns a job whose run is still going when the worker shuts
// down: the run is left for the next worker to re-attach to, or cancelled.
func (w *Worker) handBack(msg jetstream.Msg, rec queue.RunRecord, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	if w.opts.ShutdownMode == ShutdownCancel && rec.RunID != "" {
		if err := w.runner.CancelRun(ctx, spawn.Cursor{SessionID: rec.SessionID, RunID: rec.RunID}); err != nil {
			log.Warn("cancel run at shutdown", "err", err, "session_id", rec.SessionID)
		}
	}
	log.Info("handing job back at shutdown", "session_id", rec.SessionID, "mode", w.opts.ShutdownMode)
	if err := msg.Nak(); err != nil {
		log.Warn("nak job at shutdown; it comes back after AckWait", "err", err)
	}
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

func (w *Worker) ack(ctx context.Context, msg jetstream.Msg, log *slog.Logger) {
	// A plain ack: if it is lost, the redelivery finds the run recorded as
	// settled and is acked then, so waiting for the server's confirmation
	// would only cost a round trip per job.
	if err := msg.Ack(); err != nil {
		log.Warn("ack; a redelivery will find it settled", "err", err)
	}
}

func (w *Worker) term(msg jetstream.Msg, reason string, log *slog.Logger) {
	if err := msg.TermWithReason(reason); err != nil {
		log.Warn("term job", "err", err)
	}
}
