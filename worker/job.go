package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/internal/tracing"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
)

// A message's life in the worker is fetch → execute → settle:
//
//   - fetch: the pull loops (worker.go) hand each message to its fetcher —
//     fetchJob for a job, fetchDecision (decide.go) for a human's decision,
//     fetchControl (control.go) for a worker's own control message — which
//     reads what the message and the run record say, and either knows the
//     outcome at once (an invalid job, a redelivery of a settled one, a
//     refused decision) or returns the phase to execute;
//   - execute: run or re-attach, and follow to the next pause or the end;
//   - settle (settle.go) turns the outcome into the record transition, the
//     result, the dead letter and the message action.

// phase is one stretch of a job's run, from its start or a decision to its
// next pause or its end, and the message that carries it: the job message,
// a decision, or a control message. The message is held (heartbeats) until
// the phase is settled.
type phase struct {
	msg     jetstream.Msg
	raw     []byte // the job as received, for dead letters; nil for a decision or control message
	job     schemas.Job
	attempt int
	start   time.Time
	run     *queue.Run
	log     *slog.Logger

	decisions       map[string]schemas.ToolDecision // the human's answer, sent with the held verdicts
	cancel          bool                            // cancel the run before following
	announce        *schemas.Event                  // live event published as the phase starts
	approvalID      string                          // the approval a decision or control message names
	capped          bool                            // a pause was turned into rejections at the paused-run cap
	unreadable      bool                            // the job's id could not be read: job.ID was made up
	policyVersion   uint64                          // the policy version that rejected the job
	voter           *vote                           // the verified approver of a decision
	settledAs       schemas.ApprovalOutcome         // how the approval the phase resumes from was decided
	finalPhase      bool                            // the final result of a paused job took a phase of its own
	continueSession string                          // the conversation's session the job's run goes on in (session_key)
	finished        bool                            // the final result is out: the keys go once the message is settled (settleKeyed)

	// Set by execute.
	events *liveEvents
	active *activeJob
}

func deliveryOf(msg jetstream.Msg) (attempt int, meta *jetstream.MsgMetadata) {
	attempt = 1
	if m, err := msg.Metadata(); err == nil {
		return int(m.NumDelivered), m
	}
	return attempt, nil
}

// fetcher reads one message and what is recorded of its job: the phase,
// and the outcome when it is known without executing the phase.
type fetcher func(ctx context.Context, msg jetstream.Msg) (*phase, *outcome)

// serve takes each message of one kind from delivery to settling: fetch,
// execute (unless the outcome is already known), settle. The message is
// held (heartbeats) until it is settled.
func (w *Worker) serve(kind string, fetch fetcher) func(context.Context, jetstream.Msg, *slot) {
	return func(ctx context.Context, msg jetstream.Msg, s *slot) {
		ctx, traced := w.traceMessage(ctx, kind, msg)
		p, o := fetch(ctx, msg)
		ctx, end := traced(p, o)
		defer end()
		defer w.beats.hold(msg, p.log)()
		if o == nil && p.raw != nil {
			o = w.awaitKeys(ctx, p, s)
		}
		if o == nil {
			o = w.execute(ctx, p)
		}
		w.settleTraced(ctx, p, o)
	}
}

// settleTraced settles the phase in a span of its own. Out of serve's frame,
// which stays on the stack while the job's run is followed: the outcome's
// copy for settle is made here, after the run.
//
//go:noinline
func (w *Worker) settleTraced(ctx context.Context, p *phase, o *outcome) {
	sctx, span := tracing.Start(ctx, "settle")
	w.settle(sctx, p, *o)
	span.End()
}

// fetchJob decodes a job message and reads its run record. It returns the
// phase, and the outcome when it is known without running anything.
func (w *Worker) fetchJob(ctx context.Context, msg jetstream.Msg) (*phase, *outcome) {
	start := time.Now()
	attempt, meta := deliveryOf(msg)
	if o := w.policyHold(msg); o != nil {
		return &phase{msg: msg, attempt: attempt, start: start, log: w.log}, o
	}
	body, job, err := w.decodeJob(msg, meta)
	if err == nil {
		err = w.checkProfile(msg.Subject(), job)
	}
	if err != nil {
		var unreadable bool
		job.ID, unreadable = w.rejectedJobID(msg, body)
		p := &phase{msg: msg, raw: msg.Data(), job: schemas.Job{ID: job.ID, Metadata: job.Metadata}, attempt: attempt, start: start,
			run: queue.NewRun(queue.RunRecord{JobID: job.ID}), log: w.log.With("job_id", job.ID, "attempt", attempt), unreadable: unreadable}
		return p, &outcome{kind: outReject, err: err}
	}
	log := w.log.With("job_id", job.ID, "attempt", attempt)
	p := &phase{msg: msg, raw: msg.Data(), job: job, attempt: attempt, start: start, log: log}

	// A redelivered job may have a recorded run to re-attach to; so may a
	// first delivery of a job published before its consumer was created (a
	// job handed back at shutdown, then its consumer recreated). A job
	// published after its consumer was created and delivered once cannot:
	// skip the round trip on that, the common path.
	fresh := meta != nil && attempt == 1 && meta.Timestamp.After(w.consumerCreated(meta.Consumer))
	run, err := (*queue.Run)(nil), queue.ErrRunNotFound
	if !fresh {
		run, err = w.runs.GetRun(ctx, job.ID)
	}
	switch {
	case errors.Is(err, queue.ErrRunNotFound):
	case err != nil:
		// Never give up on a job because the store is unreadable: that
		// could orphan a run. Try again later.
		p.run = queue.NewRun(queue.RunRecord{JobID: job.ID})
		return p, &outcome{kind: outRetry, err: fmt.Errorf("read run record: %w", err)}
	case run.Stored == queue.RunDone && isNewJob(run.Record, msg, attempt):
		// A record left by an earlier job with the same id, submitted again
		// after the duplicate window: this is a new job, whose record
		// replaces it.
		p.run = &queue.Run{Rev: run.Rev, Stored: run.Stored}
		return p, w.admit(p)
	case run.Stored == queue.RunDone:
		// The outcome was published and recorded; only the ack was lost.
		p.run = run
		return p, &outcome{kind: outSettled}
	case run.Stored == queue.RunPaused:
		// The pause was recorded; make sure it was published, then ack.
		p.run = run
		return p, &outcome{kind: outRepublish}
	default:
		rec := run.Record
		log.Info("re-attaching to recorded run", "session_id", rec.SessionID, "run_id", rec.RunID, "last_event_id", rec.LastEventID)
		p.run = run
		return p, nil
	}
	p.run = queue.NewRun(queue.RunRecord{})
	return p, w.admit(p)
}

// admit holds a new job to the policy in force before any agent call: a
// job that asks for more than it allows is rejected, naming each field and
// the cap; otherwise the policy's values are filled in where the job left
// them out, and its record is made. A queued job that a policy change made
// invalid is rejected here, when it starts.
func (w *Worker) admit(p *phase) *outcome {
	pol := w.Policy()
	err := pol.CheckJob(p.job)
	requester, key, serr := requesterOf(pol, p.job, p.raw)
	if err != nil || serr != nil {
		p.run.Record = queue.RunRecord{JobID: p.job.ID, Job: withoutPrompt(p.job)}
		p.policyVersion = pol.Version
		return &outcome{kind: outReject, err: joinViolations(err, serr)}
	}
	p.job = pol.Apply(p.job)
	p.run.Record = queue.RunRecord{JobID: p.job.ID, StartedAt: p.start, Deadline: p.start.Add(pol.Timeout(p.job)),
		Job: withoutPrompt(p.job), JobDigest: schemas.JobDigest(p.raw), Requester: requester, RequesterKey: key}
	return nil
}

// maxCappedPauses bounds the pauses one message turns into rejections at
// the paused-run cap before it pauses anyway.
const maxCappedPauses = 8

// atPausedCap reports whether MaxPaused runs already wait for a human,
// fleet-wide: each paused run keeps one expiry timer on CONTROL, so the
// stream's message count is the number (cancels of paused jobs add a few
// for an instant). One stream-info request per pause, nothing scanned; two
// workers pausing at once may pass the cap by one each.
func (w *Worker) atPausedCap(ctx context.Context) bool {
	ictx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	st, err := w.js.Stream(ictx, w.qcfg.ControlStream())
	if err != nil {
		w.log.Warn("count paused runs; pausing regardless", "err", err)
		return false
	}
	return st.CachedInfo().State.Msgs >= uint64(w.Policy().MaxPaused())
}

// carryPhase keeps what a phase did when the run goes on within the same
// message (its text and counts join the earlier phases').
func (w *Worker) carryPhase(p *phase, out *spawn.Outcome, capped bool) {
	rec := &p.run.Record
	if out.WholeText {
		rec.Stdout = out.Stdout
	} else {
		rec.Stdout += out.Stdout
	}
	rec.Stdout, _ = queue.KeepTail(rec.Stdout, w.opts.MaxOutputBytes)
	rec.ToolCalls.Accepted += out.ToolCalls.Accepted
	rec.ToolCalls.Rejected += out.ToolCalls.Rejected
	rec.ToolRules = addRules(rec.ToolRules, out.ToolRules)
	rec.UsedTokens = out.UsedTokens
	rec.Held = out.Held
	p.capped = p.capped || capped
}

// pausedCapRejections rejects every call a pause waits on, with the reason.
func pausedCapRejections(pr *schemas.PauseReason, cap int) map[string]schemas.ToolDecision {
	out := map[string]schemas.ToolDecision{}
	if pr == nil {
		return out
	}
	for _, c := range pr.PendingToolCalls {
		out[c.ID] = schemas.ToolDecision{Action: schemas.ActionReject,
			Content: fmt.Sprintf("Rejected without review: %d runs are already waiting for a human (paused_cap); try something that needs no approval, or later", cap)}
	}
	return out
}

// cancelledBeforeStart is the result of a job cancelled while its run
// could not be started yet.
func (w *Worker) cancelledBeforeStart(p *phase) schemas.Result {
	res := w.baseResult(p.job.ID, p.attempt, p.start, p.job.Metadata)
	res.SetStatus(schemas.StatusCancelled)
	res.Stderr = "job cancelled before its run started"
	return res
}

// isNewJob tells a settled record left by an earlier job with the same id
// (submitted again after the duplicate window) from this job's own: by the
// job message's digest when the record has one, else by a first delivery.
func isNewJob(rec queue.RunRecord, msg jetstream.Msg, attempt int) bool {
	if rec.JobDigest != "" {
		return rec.JobDigest != schemas.JobDigest(msg.Data())
	}
	return attempt == 1
}

// jobDigest is the digest of the job message the phase's job came in: a
// producer waiting for its result tells its own job from another's with
// the same id by it.
func (p *phase) jobDigest() string {
	if p.raw != nil {
		return schemas.JobDigest(p.raw)
	}
	return p.run.Record.JobDigest
}

// execute runs or re-attaches to the phase's run and follows it to its next
// pause or its end. The job's goroutine waits in w.runner.Run for the whole
// run, with this frame and serve's below it: what comes before and after
// the run is in helpers (openPhase, cancelledEarly, ranPhase), so a run in
// flight keeps a small stack.
func (w *Worker) execute(ctx context.Context, p *phase) *outcome {
	w.m.InFlight.Inc()
	defer w.m.InFlight.Dec()
	// lost stops following when another worker has taken the job over, or
	// the record cannot be written.
	ctx, lost := context.WithCancelCause(ctx)
	defer lost(nil)
	w.openPhase(ctx, p)
	defer p.events.close()
	defer w.untrack(p.job.ID, p.active)
	if o := w.cancelledEarly(p); o != nil {
		return o
	}
	out, err := w.runner.Run(ctx, w.spec(ctx, p, lost))
	return w.ranPhase(ctx, p, lost, out, err)
}

// openPhase makes the phase the worker's own: its record's owner, its live
// events, its cancel tracking.
func (w *Worker) openPhase(ctx context.Context, p *phase) {
	rec := &p.run.Record
	rec.Owner, rec.Attempt = w.opts.Name, p.attempt
	p.events = w.newLiveEvents(p.job.ID, p.job.Metadata, w.eventSeq(ctx, p))
	p.events.tokens = w.tokenCounter(p.job)
	p.events.trace = tracing.Header(ctx)
	switch {
	case p.announce != nil:
		p.events.emit(*p.announce)
	case p.run.Stored == queue.RunRunning:
		// A take-over: the run's events from the cursor on are replayed,
		// and a bot must tell replayed text from new.
		p.events.emit(schemas.Event{Type: schemas.EventStatus, Status: "resumed"})
	}
	p.active = w.track(p.job.ID, p.events)
}

// cancelledEarly is the outcome of a phase cancelled before its run could
// start (nothing to stop), or nil; a cancelled phase with a session has
// its run cancelled by the runner.
func (w *Worker) cancelledEarly(p *phase) *outcome {
	rec := &p.run.Record
	if p.cancel || rec.CancelRequested {
		if rec.SessionID == "" {
			o := final(w.cancelledBeforeStart(p), false)
			return &o
		}
		p.active.ctl.Cancel()
	}
	return nil
}

// ranPhase turns what the runner answered into the phase's outcome. A pause
// over the paused-run cap has its calls rejected, and the run goes on from
// here.
func (w *Worker) ranPhase(ctx context.Context, p *phase, lost context.CancelCauseFunc, out *spawn.Outcome, err error) *outcome {
	rec := &p.run.Record
	if err == nil && out == nil {
		err = errors.New("the runner returned no outcome")
	}
	for range maxCappedPauses {
		if err != nil || out.Status != schemas.StatusPaused || !w.atPausedCap(ctx) {
			break
		}
		// Too many runs wait for a human fleet-wide: this pause's calls are
		// rejected (the agent learns why) and the run goes on.
		w.carryPhase(p, out, true)
		maxPaused := w.Policy().MaxPaused()
		p.decisions = pausedCapRejections(out.PauseReason, maxPaused)
		p.log.Warn("paused-run cap reached: rejecting the calls instead of pausing", "max_paused", maxPaused)
		out, err = w.runner.Run(ctx, w.spec(ctx, p, lost))
		if err == nil && out == nil {
			err = errors.New("the runner returned no outcome")
		}
	}
	if p.capped && err == nil {
		out.Warnings = append(out.Warnings, fmt.Sprintf("paused_cap: %d runs were waiting for a human (the cap), so calls that needed approval were rejected", w.Policy().MaxPaused()))
	}
	p.active.settling.Store(true)
	if err == nil && out.Status == schemas.StatusPaused && p.active.ctl.Requested() {
		// A cancel came while the phase was pausing: the pause carries
		// it on (pause publishes the cancel control message).
		rec.CancelRequested = true
	}
	if cause := context.Cause(ctx); errors.Is(cause, errLostJob) {
		return &outcome{kind: outLost, err: cause}
	} else if cause != nil && !errors.Is(cause, context.Canceled) {
		// The run record could not be written: retry from the top, up to
		// MaxDeliver deliveries (a record that can never be written must
		// not hold the job forever).
		if p.attempt >= w.opts.MaxDeliver {
			o := failed("retries_exhausted", fmt.Errorf("gave up after %d deliveries: %w", p.attempt, cause))
			return &o
		}
		o := retry(outRetry, cause)
		return &o
	}
	if err != nil {
		w.m.agentError(err)
		var o outcome
		switch {
		case ctx.Err() != nil:
			o = outcome{kind: outHandBack}
		case spawn.IsTransient(err) && rec.RunID == "":
			o = retry(outRetryStart, err)
		case spawn.IsTransient(err):
			// The run exists but could not be followed: its deadline
			// bounds the retries (a redelivery after it cancels the run
			// and reports it timed out), not a delivery count.
			o = retry(outRetry, err)
		default:
			o = failed("agent_error", err)
		}
		return &o
	}
	rec.Held = out.Held
	rec.UsedTokens = out.UsedTokens
	if out.Status == schemas.StatusPaused {
		return &outcome{kind: outPaused, res: out.Result, whole: out.WholeText}
	}
	o := final(out.Result, out.WholeText)
	return &o
}

// spec is the runner's Spec for the phase: the job, what is recorded of its
// run, and the callback that records each new cursor.
func (w *Worker) spec(ctx context.Context, p *phase, lost context.CancelCauseFunc) *spawn.Spec {
	rec := &p.run.Record
	cw := &cursorWrites{}
	spec := &spawn.Spec{
		Job:          p.job,
		Attempt:      p.attempt,
		Timeout:      time.Until(rec.Deadline),
		Policy:       w.Policy,
		UsedTokens:   rec.UsedTokens,
		OnDecision:   p.events.decided,
		Control:      p.active.ctl,
		RunStartedAt: rec.RunStartedAt,
		OnCursor: func(c spawn.Cursor) {
			if rec.SessionID == "" && c.SessionID != "" {
				p.log = p.log.With("session_id", c.SessionID)
			}
			if c.RunID != "" && c.RunID != rec.RunID {
				rec.RunStartedAt = time.Now().UTC()
			}
			rec.SessionID, rec.RunID, rec.LastEventID, rec.Decided, rec.MessageBase = c.SessionID, c.RunID, c.LastEventID, c.Decided, c.MessageBase
			rec.EventSeq = p.events.Seq()
			if !cw.due(c) {
				// Only the event cursor moved, and was recorded less than
				// cursorRecordEvery ago: the next write (a state change,
				// the settle) carries it.
				return
			}
			t := queue.TransProgress
			if p.run.Stored != queue.RunRunning {
				t = queue.TransStarted
			}
			if err := w.record(ctx, p, t); err != nil {
				// Without the record a redelivery could not re-attach:
				// stop before the run starts (or hand the job back).
				lost(err)
				return
			}
			cw.wrote(c)
		},
		OnEvent: p.events.agentEvent,
	}
	if len(p.decisions) > 0 {
		// The human's answer and the policy's held verdicts: one request.
		spec.Decisions = make(map[string]schemas.ToolDecision, len(rec.Held)+len(p.decisions))
		maps.Copy(spec.Decisions, rec.Held)
		maps.Copy(spec.Decisions, p.decisions)
	}
	if rec.SessionID == "" && p.continueSession != "" {
		spec.Continue = &spawn.Cursor{SessionID: p.continueSession}
	}
	if rec.SessionID != "" {
		spec.Resume = &spawn.Cursor{SessionID: rec.SessionID, RunID: rec.RunID, LastEventID: rec.LastEventID, Decided: rec.Decided, MessageBase: rec.MessageBase}
		p.log = p.log.With("session_id", rec.SessionID)
	}
	if spec.Timeout <= 0 {
		// A redelivered job whose deadline passed while no worker held it:
		// the runner cancels the run and reports it timed out.
		spec.Timeout = time.Millisecond
	}
	return spec
}

// cursorRecordEvery bounds how often a run's record is written while only
// its event cursor (LastEventID) moves. Every other change the runner
// reports is written at once: the session and run ids, the decided calls
// (the server kills a run whose call is decided twice), the message base,
// and the phase's first report (it makes this worker the record's owner).
// The settle's write (pause, finish, a failure to settle) carries the
// latest cursor in any case.
//
// So a take-over (a redelivery after this worker died) replays at most the
// events this run received within cursorRecordEvery after its last
// recorded cursor, plus any received after its last report (the runner
// reports at most every spawn.RunnerOptions.CursorInterval): never more,
// and the runner handles a replay in any case (events are deduplicated by
// id; text is rebuilt from the session). A short run costs one write for
// its session, one for its run id and one for its end, not one per tick.
const cursorRecordEvery = time.Second

// cursorWrites decides which cursor reports of one phase are written.
type cursorWrites struct {
	last spawn.Cursor
	at   time.Time
	any  bool
}

// due reports whether c must be written now.
func (cw *cursorWrites) due(c spawn.Cursor) bool {
	if !cw.any || c.SessionID != cw.last.SessionID || c.RunID != cw.last.RunID ||
		c.MessageBase != cw.last.MessageBase || !slices.Equal(c.Decided, cw.last.Decided) {
		return true
	}
	return c.LastEventID != cw.last.LastEventID && time.Since(cw.at) >= cursorRecordEvery
}

func (cw *cursorWrites) wrote(c spawn.Cursor) { cw.last, cw.at, cw.any = c, time.Now(), true }

// withoutPrompt is the job as kept in the runs bucket: everything a later
// phase needs (policy, metadata) without the prompt, which can be 1 MiB.
func withoutPrompt(job schemas.Job) schemas.Job {
	job.Prompt = ""
	job.CallerContext = nil
	return job
}

// addRules adds b's per-rule counts to a's.
func addRules(a, b map[string]schemas.RuleCounts) map[string]schemas.RuleCounts {
	if len(b) == 0 {
		return a
	}
	if a == nil {
		a = make(map[string]schemas.RuleCounts, len(b))
	}
	for rule, c := range b {
		s := a[rule]
		s.Accepted, s.Rejected, s.Asked = s.Accepted+c.Accepted, s.Rejected+c.Rejected, s.Asked+c.Asked
		a[rule] = s
	}
	return a
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

// pausedResult rebuilds the paused result of a recorded pause, for a
// redelivery that must make sure it was published.
func (w *Worker) pausedResult(rec *queue.RunRecord) schemas.Result {
	res := w.baseResult(rec.JobID, rec.Attempt, rec.StartedAt, rec.Job.Metadata)
	res.SetStatus(schemas.StatusPaused)
	res.SessionID, res.RunID, res.Stdout = rec.SessionID, rec.RunID, rec.Stdout
	res.PauseReason = &schemas.PauseReason{Type: schemas.PauseToolApproval, PendingToolCalls: rec.Pending}
	res.ResumeHint = resumeHint(rec.ApprovalID, rec.JobID)
	res.ToolCalls, res.JobDigest = rec.ToolCalls, rec.JobDigest
	return res
}

// rejectedJobID names a job that could not be decoded: its id if readable,
// else its Nats-Msg-Id if that is a valid id, else one made from the stream
// sequence (unreadable), so even garbage gets exactly one result someone
// can find. An unreadable message's result and dead letter carry message
// ids of their own, so a real job with the same name is not taken for a
// duplicate of it.
func (w *Worker) rejectedJobID(msg jetstream.Msg, body []byte) (id string, unreadable bool) {
	if id := schemas.JobIDOf(body); id != "" {
		return id, false
	}
	if id := msg.Headers().Get("Nats-Msg-Id"); id != "" && queue.ValidateJobID(id) == nil {
		return id, false
	}
	if meta, err := msg.Metadata(); err == nil {
		return fmt.Sprintf("invalid-%d", meta.Sequence.Stream), true
	}
	return "invalid-unknown", true
}
