package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/signing"
)

// newApprovalID names the approval of one pause: random, so nobody can
// name (or pre-claim) an approval before it exists. It is recorded before
// the request is published, so a redelivery republishes the same one.
func newApprovalID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return "apr_" + hex.EncodeToString(b[:])
}

// pause records a paused phase and publishes it: the paused result, then the
// approval request, then the approval's expiry timer. The record goes first
// so that a decision racing the request always finds the approval it
// answers, and a redelivery after a crash finds the record and republishes.
func (w *Worker) pause(ctx context.Context, p *phase, res *schemas.Result) error {
	rec := &p.run.Record
	now := time.Now().UTC()
	id := rec.ApprovalID
	if id == "" {
		id = newApprovalID()
	}
	res.ResumeHint = resumeHint(id, rec.JobID)
	var pending []schemas.ToolCall
	if res.PauseReason != nil {
		for i := range res.PauseReason.PendingToolCalls {
			queue.CapArguments(&res.PauseReason.PendingToolCalls[i], queue.MaxArgumentBytes)
		}
		pending = res.PauseReason.PendingToolCalls
	}
	rec.PausedAt = now
	rec.ApprovalID = id
	// A decision after the job's deadline would let a tool run only to have
	// the run cancelled: the approval expires with the job at the latest.
	rec.ApprovalExpiresAt = now.Add(w.opts.ApprovalTimeout)
	if !rec.Deadline.IsZero() && rec.Deadline.Before(rec.ApprovalExpiresAt) {
		rec.ApprovalExpiresAt = rec.Deadline
	}
	rec.PendingDigest = w.pendingDigest(pending)
	rec.Need = approvalNeed(w.Policy(), pending)
	rec.Votes = nil
	rec.Pending = pending
	rec.Stdout = res.Stdout
	rec.AutoResolved = len(rec.Held)
	rec.ToolCalls, rec.ToolRules = res.ToolCalls, res.ToolRules
	if err := w.record(ctx, p, queue.TransPause); err != nil {
		return fmt.Errorf("record pause: %w", err)
	}
	res.JobDigest = p.jobDigest()
	if err := w.publishPause(ctx, rec, *res, p.log); err != nil {
		return err
	}
	// Audited once, here: a republish of the recorded pause is not a new
	// request.
	need := rec.Need
	w.auditOrLog(ctx, schemas.AuditRecord{JobID: rec.JobID, Kind: schemas.AuditApprovalRequested, ApprovalID: rec.ApprovalID,
		Rule: needRules(need), PolicyVersion: need.PolicyVersion, PendingDigest: rec.PendingDigest,
		Reason: fmt.Sprintf("%d calls wait for a human; quorum %d of %v", len(rec.Pending), need.Quorum, need.AllowBy)}, p.log)
	if rec.CancelRequested {
		// A cancel came while the run was pausing: it is paused now, so
		// cancel it the way a paused job is cancelled.
		return w.publishControl(ctx, rec.JobID, rec.ApprovalID, schemas.ControlCancel)
	}
	return nil
}

// publishPause publishes the paused result and the approval request of the
// pause rec records. Safe to repeat: both carry fixed message ids.
func (w *Worker) publishPause(ctx context.Context, rec *queue.RunRecord, res schemas.Result, log *slog.Logger) error {
	if _, err := queue.PublishResult(ctx, w.js, w.qcfg, res, rec.Phase); err != nil {
		return fmt.Errorf("publish paused result: %w", err)
	}
	req := schemas.ApprovalRequest{
		Schema:           schemas.ApprovalSchemaID,
		ApprovalID:       rec.ApprovalID,
		JobID:            rec.JobID,
		SessionID:        rec.SessionID,
		RunID:            rec.RunID,
		PendingToolCalls: rec.Pending,
		AutoResolved:     rec.AutoResolved,
		RequestedAt:      rec.PausedAt,
		ExpiresAt:        rec.ApprovalExpiresAt,
		Metadata:         rec.Job.Metadata,
		ResumeHint:       res.ResumeHint,
		PolicyVersion:    res.PolicyVersion,
		PendingDigest:    rec.PendingDigest,
	}
	req.Needs = rec.Need
	if _, err := queue.PublishApproval(ctx, w.js, w.qcfg, req); err != nil {
		return fmt.Errorf("publish approval request: %w", err)
	}
	if err := w.armExpiry(ctx, rec); err != nil {
		return err
	}
	log.Info("run paused for approval", "approval_id", rec.ApprovalID, "pending", len(rec.Pending), "expires_at", rec.ApprovalExpiresAt)
	return nil
}

// pendingDigest is the pending_digest of the calls as published. Calls
// whose arguments cannot be put in canonical form (a repeated key, a lone
// surrogate) are shown as their raw text and marked truncated: they can
// only be denied, which needs no digest anyone else computes differently.
func (w *Worker) pendingDigest(pending []schemas.ToolCall) string {
	if d, err := signing.PendingDigest(pending); err == nil {
		return d
	}
	for i := range pending {
		if _, err := signing.PendingDigest(pending[i : i+1]); err != nil {
			raw, _ := json.Marshal(string(pending[i].Arguments))
			pending[i].Arguments, pending[i].ArgumentsTruncated = raw, true
		}
	}
	d, _ := signing.PendingDigest(pending)
	return d
}
