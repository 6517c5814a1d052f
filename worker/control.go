package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Control messages (schema control.v1, on <prefix>.control.<job_id>, stream
// CONTROL) are the workers' own protocol about paused jobs:
//
//   - expiry: a pause's approval timer. JetStream is the clock: the worker
//     that receives it before it is due hands it back with the time still
//     to wait, so exactly one worker (whichever holds it when it is due)
//     applies the expiry, and a worker crash only delays it by AckWait;
//   - cancel: cancel a paused job (nobody holds it; the worker that takes
//     it wakes the run and follows it to its end).
//
// Each carries the approval it is about and does nothing once that approval
// is settled. Its Nats-Msg-Id is "<kind>:<approval_id>", so a copy
// published again is dropped. Only workers may publish on CONTROL (see the
// README's permissions).

// armExpiry publishes the approval's timer.
func (w *Worker) armExpiry(ctx context.Context, rec *queue.RunRecord) error {
	return w.publishControl(ctx, rec.JobID, rec.ApprovalID, schemas.ControlExpiry)
}

// publishControl publishes a control message. JetStream drops a copy whose
// Nats-Msg-Id it has seen within the stream's duplicate window: that is
// success only when the message stored under the id is this one and still
// queued (it will act), or the run record shows it applied. Otherwise the id
// was taken by a message that did nothing (refused, or a different message
// under the same id), and reporting success would swallow a cancel or a
// timer: an error.
func (w *Worker) publishControl(ctx context.Context, jobID, approvalID, kind string) error {
	c := schemas.Control{Schema: schemas.ControlSchemaID, Kind: kind, JobID: jobID, ApprovalID: approvalID, RequestedAt: time.Now().UTC()}
	m := nats.NewMsg(w.qcfg.ControlSubject(jobID))
	m.Header.Set(nats.MsgIdHdr, kind+":"+approvalID)
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode %s control message: %w", kind, err)
	}
	m.Data = data
	ack, err := w.js.PublishMsg(ctx, m, jetstream.WithExpectStream(w.qcfg.ControlStream()))
	if err != nil {
		return fmt.Errorf("publish %s control message for approval %s: %w", kind, approvalID, err)
	}
	if ack.Duplicate {
		if err := w.checkDuplicateControl(ctx, c, ack); err != nil {
			return fmt.Errorf("publish %s control message for approval %s: %w", kind, approvalID, err)
		}
	}
	return nil
}

// checkDuplicateControl says whether the control message JetStream already
// holds under c's id (at ack.Sequence: a duplicate's ack names the original)
// stands for c: still queued and the same message, or applied to the run.
func (w *Worker) checkDuplicateControl(ctx context.Context, c schemas.Control, ack *jetstream.PubAck) error {
	id := c.Kind + ":" + c.ApprovalID
	st, err := w.js.Stream(ctx, ack.Stream)
	if err != nil {
		return fmt.Errorf("dropped as a duplicate of message %d; look it up: %w", ack.Sequence, err)
	}
	orig, err := st.GetMsg(ctx, ack.Sequence)
	switch {
	case err == nil:
		queued, derr := schemas.DecodeControl(orig.Data)
		if derr == nil && orig.Header.Get(nats.MsgIdHdr) == id && orig.Subject == w.qcfg.ControlSubject(c.JobID) &&
			queued.Kind == c.Kind && queued.JobID == c.JobID && queued.ApprovalID == c.ApprovalID {
			return nil // the same message, still to be acted on
		}
		return fmt.Errorf("dropped as a duplicate of message %d, which is not this %s message (another message took its id %q)", ack.Sequence, c.Kind, id)
	case !errors.Is(err, jetstream.ErrMsgNotFound):
		return fmt.Errorf("dropped as a duplicate of message %d; look it up: %w", ack.Sequence, err)
	}
	run, err := w.runs.GetRun(ctx, c.JobID)
	if err != nil {
		return fmt.Errorf("dropped as a duplicate of message %d, no longer queued; read the run record: %w", ack.Sequence, err)
	}
	if run.Record.DecidedApproval == fmt.Sprintf("%s@%s:%d", id, ack.Stream, ack.Sequence) { // as messageKey names it
		return nil // it applied
	}
	return fmt.Errorf("dropped as a duplicate of message %d, which is no longer queued and did not apply to job %s "+
		"(its id %q was taken by a message that was refused); nothing was done", ack.Sequence, c.JobID, id)
}

// fetchControl reads a control message and the job's run record, and
// returns the phase, and the outcome unless the message resumes the run.
func (w *Worker) fetchControl(ctx context.Context, msg jetstream.Msg) (*phase, *outcome) {
	start := time.Now()
	attempt, _ := deliveryOf(msg)
	p := &phase{msg: msg, attempt: attempt, start: start, log: w.log}
	c, err := schemas.DecodeControl(msg.Data())
	if err == nil && c.Kind != schemas.ControlExpiry && c.Kind != schemas.ControlCancel {
		// The schema lists the kinds; a kind this worker does not know
		// must never act as one it does (an expiry rejects calls).
		err = fmt.Errorf("unknown control kind %q", c.Kind)
	}
	if err == nil && msg.Subject() != w.qcfg.ControlSubject(c.JobID) {
		err = fmt.Errorf("the message names job %q but was published on %s", c.JobID, msg.Subject())
	}
	if err != nil {
		// Refused and terminated: it is never redelivered, and changes nothing.
		w.log.Warn("refused control message", "subject", msg.Subject(), "attempt", attempt, "err", err)
		o := drop(fmt.Sprintf("invalid control message: %v", err))
		return p, &o
	}
	p.job.ID, p.approvalID = c.JobID, c.ApprovalID
	p.log = w.log.With("job_id", c.JobID, "approval_id", c.ApprovalID, "control", c.Kind)
	run, err := w.runs.GetRun(ctx, c.JobID)
	if errors.Is(err, queue.ErrRunNotFound) {
		o := drop("unknown job")
		return p, &o
	}
	if err != nil {
		o := retry(outRetry, fmt.Errorf("read run record: %w", err))
		return p, &o
	}
	p.run, p.job = run, run.Record.Job
	rec := &run.Record
	mine := messageKey(c.Kind+":"+c.ApprovalID, msg)
	if rec.DecidedApproval == mine {
		// This message resumed the run before a crash: carry on.
		p.cancel = c.Kind == schemas.ControlCancel || w.opts.OnApprovalExpiry == ExpireCancel
		if !p.cancel {
			p.decisions = expandDecision(schemas.Decision{All: schemas.DecideDeny, DecidedBy: "approval expiry"}, rec.DecidedPending)
		}
		return p, carryOn(p)
	}
	if c.Kind == schemas.ControlCancel && run.Stored == queue.RunRunning {
		// A decision resumed the run before the cancel got here: the
		// cancel still stands, so hand it to the run's holder.
		o := w.forwardCancel(ctx, p)
		return p, &o
	}
	if run.Stored != queue.RunPaused || rec.ApprovalID != c.ApprovalID {
		// Decided, cancelled or finished before the control message got here.
		o := drop("approval settled")
		return p, &o
	}
	if c.Kind == schemas.ControlExpiry {
		if wait := time.Until(rec.ApprovalExpiresAt); wait > 0 {
			// Not due yet: JetStream hands it back when it is.
			return p, &outcome{kind: outWait, delay: wait}
		}
	}
	approvalID := rec.ApprovalID
	kind, word := schemas.AuditApprovalExpired, "expired"
	if c.Kind == schemas.ControlCancel {
		kind, word = schemas.AuditCancel, "cancelled"
	}
	p.settledAs = settledApproval(rec, word, nil)
	if o := w.take(ctx, p, mine); o != nil {
		if o.kind == outRefuse {
			// A decision won the race: nothing left for this message.
			d := drop("approval settled")
			return p, &d
		}
		return p, o
	}
	w.auditOrLog(ctx, schemas.AuditRecord{JobID: rec.JobID, Kind: kind, ApprovalID: approvalID, Decision: word,
		Reason: fmt.Sprintf("the approval was %s by %s", word, w.opts.Name)}, p.log)
	w.flushRefusals(ctx, rec.JobID, approvalID, p.log)
	switch {
	case c.Kind == schemas.ControlCancel:
		p.cancel = true
		p.announce = &schemas.Event{Type: schemas.EventStatus, Status: "cancelling", ApprovalID: approvalID}
		p.log.Info("cancelling paused job")
	case w.opts.OnApprovalExpiry == ExpireCancel:
		p.cancel = true
		p.announce = &schemas.Event{Type: schemas.EventApprovalExpired, ApprovalID: approvalID, Text: "approval expired: cancelling the run"}
		p.log.Info("approval expired; cancelling run")
	default:
		p.decisions = expandDecision(schemas.Decision{All: schemas.DecideDeny, DecidedBy: "approval expiry"}, rec.Pending)
		p.announce = &schemas.Event{Type: schemas.EventApprovalExpired, ApprovalID: approvalID, Text: "approval expired: pending calls rejected"}
		p.log.Info("approval expired; rejecting pending calls")
	}
	return p, nil
}
