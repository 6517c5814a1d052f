package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// ExpiryAction is what happens to a paused run whose approval expires.
type ExpiryAction string

const (
	// ExpireReject rejects every pending call and lets the run go on. The default.
	ExpireReject ExpiryAction = "reject"
	// ExpireCancel cancels the run; the job ends cancelled.
	ExpireCancel ExpiryAction = "cancel"
)

// Control messages share the decisions stream with humans' decisions, so
// that one durable consumer, with JetStream's redelivery, carries every
// event that resumes a paused run. They are told apart by this header.
const (
	controlHeader = "Jetpilot-Control"
	controlExpiry = "expiry" // the approval's timer: redelivered with delay until it is due
	controlCancel = "cancel" // cancel a paused job
	approvalIDHdr = "Jetpilot-Approval-Id"
)

func resumeHint(approvalID, jobID string) string {
	return fmt.Sprintf("jetpilot approve %s --job %s --allow", approvalID, jobID)
}

// armExpiry publishes the approval's timer. JetStream is the clock: the
// decider that receives it early naks it with the time still to wait, so
// exactly one worker (whichever holds it when it is due) applies the expiry,
// and a worker crash only delays it by AckWait.
func (w *Worker) armExpiry(ctx context.Context, rec *queue.RunRecord) error {
	return w.publishControl(ctx, rec.JobID, rec.ApprovalID, controlExpiry)
}

func (w *Worker) publishControl(ctx context.Context, jobID, approvalID, kind string) error {
	m := nats.NewMsg(w.qcfg.DecisionSubject(jobID))
	m.Header.Set(controlHeader, kind)
	m.Header.Set(approvalIDHdr, approvalID)
	m.Header.Set(nats.MsgIdHdr, kind+":"+approvalID)
	m.Data = []byte(fmt.Sprintf(`{"job_id":%q,"approval_id":%q}`, jobID, approvalID))
	if _, err := w.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish %s control for approval %s: %w", kind, approvalID, err)
	}
	return nil
}

// handleDecision takes one message of the decisions stream: a human's
// decision, or an expiry or cancel control message.
func (w *Worker) handleDecision(ctx context.Context, msg jetstream.Msg) {
	start := time.Now()
	attempt := 1
	if meta, err := msg.Metadata(); err == nil {
		attempt = int(meta.NumDelivered)
	}
	if kind := msg.Headers().Get(controlHeader); kind != "" {
		w.handleControl(ctx, msg, kind, attempt, start)
		return
	}
	d, err := schemas.DecodeDecision(msg.Data())
	if err != nil {
		var e *schemas.Error
		var ve *schemas.ValidationError
		if errors.As(err, &ve) {
			e = ve.ToError()
		} else {
			e = &schemas.Error{Code: "invalid_decision", Message: err.Error()}
		}
		w.decisionError(ctx, msg, bodyJobID(msg.Data()), "", e)
		return
	}
	log := w.log.With("job_id", d.JobID, "approval_id", d.ApprovalID, "attempt", attempt)
	rec, rev, err := w.runs.Get(ctx, d.JobID)
	if errors.Is(err, queue.ErrRunNotFound) {
		w.decisionError(ctx, msg, d.JobID, d.ApprovalID, &schemas.Error{Code: "unknown_job", Message: fmt.Sprintf("no run is recorded for job %q", d.JobID)})
		return
	}
	if err != nil {
		w.nakLater(msg, attempt, fmt.Errorf("read run record: %w", err), log)
		return
	}
	p := &phase{msg: msg, job: rec.Job, attempt: attempt, start: start, rec: rec, rev: rev, log: log}
	decided := messageKey(d.ApprovalID, msg)
	if rec.DecidedApproval == decided {
		// Our own decision, redelivered after a crash or a transient
		// failure: the compare-and-set already happened, carry on.
		p.decisions = expandDecision(d, rec.DecidedPending)
		w.carryOn(ctx, p)
		return
	}
	if e := checkDecision(rec, d, start); e != nil {
		w.decisionError(ctx, msg, d.JobID, d.ApprovalID, e)
		return
	}
	p.decisions = expandDecision(d, rec.Pending)
	if !w.take(ctx, p, rev, decided) {
		return
	}
	p.announce = &schemas.Event{Type: schemas.EventApprovalDecided, ApprovalID: d.ApprovalID, Text: decisionSummary(d)}
	log.Info("approval decided; resuming run", "decided_by", d.DecidedBy)
	w.follow(ctx, p)
}

// take moves a paused record to running for this worker with a
// compare-and-set, so of two decisions racing for one approval exactly one
// wins, whichever workers receive them.
func (w *Worker) take(ctx context.Context, p *phase, rev uint64, decided string) bool {
	p.rec.DecidedPending = p.rec.Pending
	p.rec.State = queue.RunRunning
	p.rec.DecidedApproval = decided
	p.rec.Owner = w.opts.Name
	p.rec.Phase++
	approvalID := p.rec.ApprovalID
	p.rec.ApprovalID = ""
	newRev, err := w.runs.Update(ctx, p.rec, rev)
	if err != nil {
		if errors.Is(err, queue.ErrRevisionMismatch) {
			w.decisionError(ctx, p.msg, p.rec.JobID, approvalID, &schemas.Error{Code: "approval_settled", Message: fmt.Sprintf("approval %s was settled by another decision first", approvalID)})
			return false
		}
		w.nakLater(p.msg, p.attempt, fmt.Errorf("record decision: %w", err), p.log)
		return false
	}
	p.rev = newRev
	return true
}

// messageKey names a message of the decisions stream that resumed a run: the
// approval and the message's place in the stream, so a redelivery of the
// winner is told apart from a rival (or a duplicate timer) for the same approval.
func messageKey(approvalID string, msg jetstream.Msg) string {
	if meta, err := msg.Metadata(); err == nil {
		return fmt.Sprintf("%s@%d", approvalID, meta.Sequence.Stream)
	}
	return approvalID
}

// carryOn resumes the work of a decisions-stream message that already won
// its compare-and-set, after a crash or a failure: follow the run if it is
// still this phase's, make sure a pause it reached was published, or just
// ack if the phase was settled.
func (w *Worker) carryOn(ctx context.Context, p *phase) {
	switch p.rec.State {
	case queue.RunPaused:
		w.republishPause(ctx, p.msg, &p.rec, p.log)
	case queue.RunDone:
		w.ack(ctx, p.msg, p.log)
	default:
		w.follow(ctx, p)
	}
}

// checkDecision says what is wrong with applying d to rec, or nil.
func checkDecision(rec queue.RunRecord, d schemas.Decision, now time.Time) *schemas.Error {
	if rec.State != queue.RunPaused || rec.ApprovalID == "" {
		return &schemas.Error{Code: "approval_settled", Message: fmt.Sprintf("approval %s is not pending: job %s is %s", d.ApprovalID, d.JobID, stateWord(rec.State))}
	}
	if rec.ApprovalID != d.ApprovalID {
		return &schemas.Error{Code: "approval_mismatch", Message: fmt.Sprintf("approval %s is not the pending one for job %s (%s is)", d.ApprovalID, d.JobID, rec.ApprovalID)}
	}
	if !rec.ApprovalExpiresAt.IsZero() && now.After(rec.ApprovalExpiresAt) {
		return &schemas.Error{Code: "approval_expired", Message: fmt.Sprintf("approval %s expired at %s", d.ApprovalID, rec.ApprovalExpiresAt.Format(time.RFC3339))}
	}
	if d.All != "" {
		return nil
	}
	pending := map[string]bool{}
	for _, c := range rec.Pending {
		pending[c.ID] = true
	}
	var unknown, missing []string
	for id := range d.Decisions {
		if !pending[id] {
			unknown = append(unknown, id)
		}
	}
	for _, c := range rec.Pending {
		if _, ok := d.Decisions[c.ID]; !ok {
			missing = append(missing, c.ID)
		}
	}
	sort.Strings(unknown)
	var fields []schemas.FieldError
	for _, id := range unknown {
		fields = append(fields, schemas.FieldError{Field: "decisions/" + id, Reason: "not a pending tool call of this approval"})
	}
	for _, id := range missing {
		fields = append(fields, schemas.FieldError{Field: "decisions/" + id, Reason: "pending tool call has no decision; decide every pending call, or use \"all\""})
	}
	if len(fields) > 0 {
		msgs := make([]string, len(fields))
		for i, f := range fields {
			msgs[i] = f.String()
		}
		return &schemas.Error{Code: "invalid_decision", Message: strings.Join(msgs, "; "), Fields: fields}
	}
	return nil
}

func stateWord(s string) string {
	switch s {
	case queue.RunDone:
		return "finished"
	case queue.RunRunning, queue.RunStarting:
		return "running"
	}
	return s
}

// expandDecision turns a decision into one agent-server decision per pending call.
func expandDecision(d schemas.Decision, pending []schemas.ToolCall) map[string]schemas.ToolDecision {
	if d.All == "" {
		return d.Decisions
	}
	out := make(map[string]schemas.ToolDecision, len(pending))
	for _, c := range pending {
		if d.All == schemas.DecideAllow {
			out[c.ID] = schemas.ToolDecision{Action: schemas.ActionAccept}
		} else {
			reason := "Denied by a human reviewer"
			if d.DecidedBy != "" {
				reason = "Denied by " + d.DecidedBy
			}
			out[c.ID] = schemas.ToolDecision{Action: schemas.ActionReject, Content: reason}
		}
	}
	return out
}

func decisionSummary(d schemas.Decision) string {
	by := ""
	if d.DecidedBy != "" {
		by = " by " + d.DecidedBy
	}
	if d.All != "" {
		return d.All + " all" + by
	}
	return fmt.Sprintf("%d per-call decisions%s", len(d.Decisions), by)
}

// handleControl applies an expiry timer or a cancel request to a paused job.
func (w *Worker) handleControl(ctx context.Context, msg jetstream.Msg, kind string, attempt int, start time.Time) {
	approvalID := msg.Headers().Get(approvalIDHdr)
	jobID := bodyJobID(msg.Data())
	log := w.log.With("job_id", jobID, "approval_id", approvalID, "control", kind)
	rec, rev, err := w.runs.Get(ctx, jobID)
	if errors.Is(err, queue.ErrRunNotFound) {
		w.term(msg, "unknown job", log)
		return
	}
	if err != nil {
		w.nakLater(msg, attempt, fmt.Errorf("read run record: %w", err), log)
		return
	}
	p := &phase{msg: msg, job: rec.Job, attempt: attempt, start: start, rec: rec, rev: rev, log: log}
	mine := messageKey(kind+":"+approvalID, msg)
	if rec.DecidedApproval == mine {
		p.cancel = kind == controlCancel || w.opts.OnApprovalExpiry == ExpireCancel
		if !p.cancel {
			p.decisions = expandDecision(schemas.Decision{All: schemas.DecideDeny, DecidedBy: "approval expiry"}, rec.DecidedPending)
		}
		w.carryOn(ctx, p)
		return
	}
	if kind == controlCancel && rec.State == queue.RunRunning {
		// A decision resumed the run before the cancel got here: the
		// cancel still stands, so hand it to the run's holder.
		w.forwardCancel(ctx, p, rev)
		return
	}
	if rec.State != queue.RunPaused || rec.ApprovalID != approvalID {
		// Decided, cancelled or finished before the control message got here.
		w.term(msg, "approval settled", log)
		return
	}
	if kind == controlExpiry {
		if wait := time.Until(rec.ApprovalExpiresAt); wait > 0 {
			// Not due yet: JetStream hands it back when it is.
			if err := msg.NakWithDelay(wait); err != nil {
				log.Warn("re-arm approval expiry", "err", err)
			}
			return
		}
	}
	if !w.take(ctx, p, rev, mine) {
		return
	}
	switch {
	case kind == controlCancel:
		p.cancel = true
		p.announce = &schemas.Event{Type: schemas.EventStatus, Status: "cancelling", ApprovalID: approvalID}
		log.Info("cancelling paused job")
	case w.opts.OnApprovalExpiry == ExpireCancel:
		p.cancel = true
		p.announce = &schemas.Event{Type: schemas.EventApprovalExpired, ApprovalID: approvalID, Text: "approval expired: cancelling the run"}
		log.Info("approval expired; cancelling run")
	default:
		p.decisions = expandDecision(schemas.Decision{All: schemas.DecideDeny, DecidedBy: "approval expiry"}, rec.Pending)
		p.announce = &schemas.Event{Type: schemas.EventApprovalExpired, ApprovalID: approvalID, Text: "approval expired: pending calls rejected"}
		log.Info("approval expired; rejecting pending calls")
	}
	w.follow(ctx, p)
}

// forwardCancel passes a cancel that found the job running to the worker
// holding it, through the cancel subject every worker listens on; if none
// answers, the record asks whichever worker re-attaches to cancel.
func (w *Worker) forwardCancel(ctx context.Context, p *phase, rev uint64) {
	if a := w.activeJob(p.rec.JobID); a != nil {
		a.requestCancel()
		w.term(p.msg, "cancel forwarded", p.log)
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	body, _ := json.Marshal(map[string]string{"job_id": p.rec.JobID})
	if reply, err := w.js.Conn().RequestWithContext(rctx, w.qcfg.CancelSubject(p.rec.JobID), body); err == nil {
		var r CancelReply
		if json.Unmarshal(reply.Data, &r) == nil && r.Error == nil {
			w.term(p.msg, "cancel forwarded", p.log)
			return
		}
	}
	p.rec.CancelRequested = true
	if _, err := w.runs.Update(ctx, p.rec, rev); err != nil {
		w.nakLater(p.msg, p.attempt, fmt.Errorf("record cancel request: %w", err), p.log)
		return
	}
	w.term(p.msg, "cancel recorded", p.log)
}

// decisionError answers a decision that changes nothing: an error event on
// the job's events subject and a log line; the message is not redelivered.
func (w *Worker) decisionError(ctx context.Context, msg jetstream.Msg, jobID, approvalID string, e *schemas.Error) {
	w.log.Warn("decision refused", "job_id", jobID, "approval_id", approvalID, "code", e.Code, "reason", e.Message)
	if jobID != "" && queue.ValidateJobID(jobID) == nil {
		ev := schemas.Event{Schema: schemas.EventSchemaID, JobID: jobID, Type: schemas.EventDecisionError, At: time.Now().UTC(), ApprovalID: approvalID, Error: e}
		if _, err := queue.PublishEvent(ctx, w.js, w.qcfg, ev); err != nil {
			w.log.Warn("publish decision error event", "job_id", jobID, "err", err)
		}
	}
	w.term(msg, e.Code, w.log)
}

// nakLater hands a decisions-stream message back after a transient failure.
func (w *Worker) nakLater(msg jetstream.Msg, attempt int, cause error, log interface{ Warn(string, ...any) }) {
	delay := w.backoff(attempt)
	log.Warn("transient failure; retrying", "err", cause, "retry_in", delay)
	if err := msg.NakWithDelay(delay); err != nil {
		log.Warn("nak", "err", err)
	}
}

// bodyJobID reads job_id from a decisions-stream message that may be
// invalid otherwise, so its error event can still reach the job's subject.
func bodyJobID(data []byte) string {
	var v struct {
		JobID string `json:"job_id"`
	}
	if json.Unmarshal(data, &v) != nil || queue.ValidateJobID(v.JobID) != nil {
		return ""
	}
	return v.JobID
}
