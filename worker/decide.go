package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

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

func resumeHint(approvalID, jobID string) string {
	return fmt.Sprintf("jetpilot approve %s --job %s --allow", approvalID, jobID)
}

// fetchDecision decodes a decision and checks it against the job's run
// record. It returns the phase, and the outcome unless the decision resumes
// the run (then the phase is executed).
func (w *Worker) fetchDecision(ctx context.Context, msg jetstream.Msg) (*phase, *outcome) {
	start := time.Now()
	attempt, _ := deliveryOf(msg)
	if o := w.policyHold(msg); o != nil {
		return &phase{msg: msg, attempt: attempt, start: start, log: w.log}, o
	}
	d, err := schemas.DecodeDecision(msg.Data())
	p := &phase{msg: msg, attempt: attempt, start: start, approvalID: d.ApprovalID}
	subjectJob, _ := w.qcfg.JobIDOfSubject("decisions", msg.Subject())
	if err != nil {
		var e *schemas.Error
		var ve *schemas.ValidationError
		if errors.As(err, &ve) {
			e = ve.ToError()
			if onlySignature(ve.Problems) {
				e.Code = CodeSignatureMalformed
			}
		} else {
			e = &schemas.Error{Code: CodeInvalidDecision, Message: err.Error()}
		}
		p.job.ID, p.log = subjectJob, w.log
		o := refuse(e)
		return p, &o
	}
	if d.JobID != subjectJob {
		// Bound to its subject: a decision published for one job never
		// decides another, so permissions per subject protect something.
		p.job.ID, p.log = subjectJob, w.log.With("job_id", subjectJob)
		o := refuse(&schemas.Error{Code: CodeSubjectMismatch, Message: fmt.Sprintf(
			"the decision names job %q but was published on the subject of job %q; publish it on %s",
			queue.CapID(d.JobID), queue.CapID(subjectJob), w.qcfg.DecisionSubject(d.JobID))})
		return p, &o
	}
	p.job.ID = d.JobID
	p.log = w.log.With("job_id", d.JobID, "approval_id", queue.CapID(d.ApprovalID), "attempt", attempt)
	run, err := w.runs.GetRun(ctx, d.JobID)
	if errors.Is(err, queue.ErrRunNotFound) {
		o := refuse(&schemas.Error{Code: CodeUnknownJob, Message: fmt.Sprintf("no run is recorded for job %q", d.JobID)})
		return p, &o
	}
	if err != nil {
		o := retry(outRetry, fmt.Errorf("read run record: %w", err))
		return p, &o
	}
	p.run, p.job = run, run.Record.Job
	decided := messageKey(d.ApprovalID, msg)
	if run.Record.DecidedApproval == decided {
		// Our own decision, redelivered after a crash or a transient
		// failure: the compare-and-set already happened, carry on.
		p.decisions = w.recheck(expandDecision(d, run.Record.DecidedPending), run.Record.DecidedPending, p.log)
		return p, carryOn(p)
	}
	rec := &run.Record
	if slices.ContainsFunc(rec.Votes, func(v queue.Vote) bool { return v.Msg == decided }) {
		// Our own vote, redelivered: it is recorded already.
		return p, &outcome{kind: outSettled}
	}
	if e := checkDecision(*rec, d, start); e != nil {
		o := refuse(e)
		return p, &o
	}
	v, e := w.authorize(rec, d, msg.Data())
	p.voter = v
	if e != nil {
		o := refuse(e)
		return p, &o
	}
	approvers := []schemas.ApproverRef{{Name: d.DecidedBy}} // unsigned: what it says
	if v != nil {
		d.DecidedBy = v.approver // signed: who verifiably decided
		if v.allow {
			// Only votes that still count: keys not revoked, approvers
			// the rules (as now) still allow.
			rec.Votes = validVotes(w.Policy(), rec, v.need)
			if len(rec.Votes)+1 < v.need.Quorum {
				return p, w.recordVote(ctx, p, d, v, decided)
			}
		}
		approvers = voters(rec, v)
	}
	word := decisionWord(d)
	if o := w.auditReady(ctx, p); o != nil {
		return p, o
	}
	applied := schemas.AuditRecord{JobID: rec.JobID, Kind: schemas.AuditDecisionApplied, ApprovalID: rec.ApprovalID,
		Approver: auditApprover(approvers[len(approvers)-1]), Rule: needRules(rec.Need), PolicyVersion: w.Policy().Version,
		PendingDigest: rec.PendingDigest, Decision: word, Reason: decisionSummary(d)}
	p.decisions = w.recheck(expandDecision(d, rec.Pending), rec.Pending, p.log)
	p.settledAs = settledApproval(rec, word, approvers)
	approvalID := rec.ApprovalID
	if o := w.take(ctx, p, decided); o != nil {
		return p, o
	}
	// Only the decision that won the compare-and-set is audited as
	// applied; a loser is refused (approval_settled) and audited so.
	w.auditOrLog(ctx, applied, p.log)
	w.m.Decisions.WithLabelValues(word, "").Inc()
	w.flushRefusals(ctx, rec.JobID, approvalID, p.log)
	p.announce = &schemas.Event{Type: schemas.EventApprovalDecided, ApprovalID: d.ApprovalID, Text: decisionSummary(d)}
	p.log.Info("approval decided; resuming run", "decided_by", d.DecidedBy)
	return p, nil
}

func auditApprover(a schemas.ApproverRef) schemas.AuditApprover {
	return schemas.AuditApprover{Name: a.Name, Key: a.Key}
}

// recordVote records one approver's allow while the quorum is not met: the
// run stays paused (TransVote, compare-and-set), the vote is audited, and
// the live events say who is still needed.
func (w *Worker) recordVote(ctx context.Context, p *phase, d schemas.Decision, v *vote, decided string) *outcome {
	rec := &p.run.Record
	need := v.need
	if o := w.auditReady(ctx, p); o != nil {
		return o
	}
	voted := schemas.AuditRecord{JobID: rec.JobID, Kind: schemas.AuditDecisionApplied, ApprovalID: rec.ApprovalID,
		Approver: schemas.AuditApprover{Name: v.approver, Key: v.key}, Rule: needRules(rec.Need), PolicyVersion: w.Policy().Version,
		PendingDigest: rec.PendingDigest, Decision: fmt.Sprintf("allow (vote %d of %d)", len(rec.Votes)+1, need.Quorum)}
	rec.Votes = append(rec.Votes, queue.Vote{Approver: v.approver, Key: v.key, At: time.Now().UTC(), Msg: decided})
	if err := w.runs.Transition(ctx, p.run, queue.TransVote); err != nil {
		// Another vote or decision changed the record first: redelivered,
		// this one is checked again against what it did.
		o := retry(outRetry, fmt.Errorf("record the vote of %s: %w", v.approver, err))
		return &o
	}
	w.auditOrLog(ctx, voted, p.log)
	w.m.Decisions.WithLabelValues("vote", "").Inc()
	var still []string
	for _, n := range need.AllowBy {
		if !slices.ContainsFunc(rec.Votes, func(x queue.Vote) bool { return x.Approver == n }) {
			still = append(still, n)
		}
	}
	text := fmt.Sprintf("%s approved (%d of %d); still needed: %d more of %s", v.approver, len(rec.Votes), need.Quorum,
		need.Quorum-len(rec.Votes), strings.Join(still, ", "))
	p.log.Info("approval vote recorded", "approver", v.approver, "votes", len(rec.Votes), "quorum", need.Quorum)
	return &outcome{kind: outVoted, event: &schemas.Event{Schema: schemas.EventSchemaID, JobID: rec.JobID, At: time.Now().UTC(),
		Type: schemas.EventApprovalVote, ApprovalID: rec.ApprovalID, Text: text}}
}

// take resumes a paused run for this worker (TransResume, compare-and-set),
// so of two decisions or control messages racing for one approval exactly
// one wins, whichever workers receive them. It returns the outcome when the
// phase must not be executed.
func (w *Worker) take(ctx context.Context, p *phase, decided string) *outcome {
	rec := &p.run.Record
	approvalID := rec.ApprovalID
	rec.DecidedPending = rec.Pending
	rec.DecidedApproval = decided
	if p.settledAs.ApprovalID != "" {
		rec.Approvals = append(rec.Approvals, p.settledAs)
		if n := len(rec.Approvals); n > queue.MaxApprovals {
			rec.Approvals = rec.Approvals[n-queue.MaxApprovals:]
		}
	}
	rec.Votes, rec.Need, rec.PendingDigest = nil, nil, ""
	rec.Owner = w.opts.Name
	rec.Phase++
	rec.ApprovalID = ""
	if err := w.runs.Transition(ctx, p.run, queue.TransResume); err != nil {
		if errors.Is(err, queue.ErrRevisionMismatch) {
			o := refuse(&schemas.Error{Code: CodeApprovalSettled, Message: fmt.Sprintf("approval %s was settled by another decision first", approvalID)})
			return &o
		}
		o := retry(outRetry, fmt.Errorf("record decision: %w", err))
		return &o
	}
	w.approvalSettled(ctx, p)
	return nil
}

// messageKey names a message that resumed a run: the approval and the
// message's place in its stream, so a redelivery of the winner is told apart
// from a rival (or a duplicate timer) for the same approval.
func messageKey(approvalID string, msg jetstream.Msg) string {
	if meta, err := msg.Metadata(); err == nil {
		return fmt.Sprintf("%s@%s:%d", approvalID, meta.Stream, meta.Sequence.Stream)
	}
	return approvalID
}

// carryOn resumes the work of a message that already won its
// compare-and-set, after a crash or a failure: follow the run if it is still
// this phase's (nil: execute), make sure a pause it reached was published,
// or just ack if the phase was settled.
func carryOn(p *phase) *outcome {
	switch p.run.Stored {
	case queue.RunPaused:
		return &outcome{kind: outRepublish}
	case queue.RunDone:
		return &outcome{kind: outSettled}
	}
	return nil
}

// checkDecision says what is wrong with applying d to rec, or nil.
func checkDecision(rec queue.RunRecord, d schemas.Decision, now time.Time) *schemas.Error {
	if rec.State != queue.RunPaused || rec.ApprovalID == "" {
		return &schemas.Error{Code: CodeApprovalSettled, Message: fmt.Sprintf("approval %s is not pending: job %s is %s", d.ApprovalID, d.JobID, stateWord(rec.State))}
	}
	if rec.ApprovalID != d.ApprovalID {
		return &schemas.Error{Code: CodeApprovalMismatch, Message: fmt.Sprintf("approval %s is not the pending one for job %s (%s is)", d.ApprovalID, d.JobID, rec.ApprovalID)}
	}
	if !rec.ApprovalExpiresAt.IsZero() && now.After(rec.ApprovalExpiresAt) {
		return &schemas.Error{Code: CodeApprovalExpired, Message: fmt.Sprintf("approval %s expired at %s", d.ApprovalID, rec.ApprovalExpiresAt.Format(time.RFC3339))}
	}
	if e := truncatedAccepted(rec.Pending, d); e != nil {
		return e
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
		return &schemas.Error{Code: CodeInvalidDecision, Message: strings.Join(msgs, "; "), Fields: fields}
	}
	return nil
}

// truncatedAccepted refuses a decision that would run a call whose
// arguments were shortened to fit a message: nobody saw what it would do,
// so it can only be denied.
func truncatedAccepted(pending []schemas.ToolCall, d schemas.Decision) *schemas.Error {
	var fields []schemas.FieldError
	for _, c := range pending {
		if !c.ArgumentsTruncated {
			continue
		}
		accept := d.All == schemas.DecideAllow
		if td, ok := d.Decisions[c.ID]; ok && td.Action != schemas.ActionReject {
			accept = true
		}
		if accept {
			fields = append(fields, schemas.FieldError{Field: "decisions/" + c.ID,
				Reason: "its arguments were shortened to fit a message; it can only be denied"})
		}
	}
	if len(fields) == 0 {
		return nil
	}
	return &schemas.Error{Code: CodeInvalidDecision, Message: fmt.Sprintf("%d pending calls have shortened arguments and can only be denied", len(fields)), Fields: fields}
}

func stateWord(s queue.RunState) string {
	switch s {
	case queue.RunDone:
		return "finished"
	case queue.RunRunning, queue.RunStarting:
		return "running"
	}
	return string(s)
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

// onlySignature reports whether every problem of an invalid decision is in
// its signature field: a malformed signature has a code of its own.
func onlySignature(problems []schemas.FieldError) bool {
	for _, p := range problems {
		if p.Field != "signature" && !strings.HasPrefix(p.Field, "signature/") {
			return false
		}
	}
	return len(problems) > 0
}
