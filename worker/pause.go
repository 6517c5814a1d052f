package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// approvalID names the approval of one pause of one job. It is derived, not
// random, so a redelivered job republishes the same approval under the same
// message id and JetStream drops the copy.
func approvalID(rec *queue.RunRecord) string {
	h := sha256.Sum256([]byte(rec.JobID + "\x00" + strconv.Itoa(rec.Phase) + "\x00" + rec.StartedAt.UTC().Format(time.RFC3339Nano)))
	return "apr_" + hex.EncodeToString(h[:10])
}

// pause records a paused phase and publishes it: the paused result, then the
// approval request. The record goes first so that a decision racing the
// request always finds the approval it answers, and a redelivery after a crash
// finds the record and republishes (see handle).
func (w *Worker) pause(ctx context.Context, job schemas.Job, rec *queue.RunRecord, res *schemas.Result, log *slog.Logger) error {
	now := time.Now().UTC()
	id := approvalID(rec)
	res.ResumeHint = resumeHint(id, rec.JobID)
	var pending []schemas.ToolCall
	if res.PauseReason != nil {
		pending = res.PauseReason.PendingToolCalls
	}
	rec.State = queue.RunPaused
	rec.ApprovalID = id
	rec.ApprovalExpiresAt = now.Add(w.opts.ApprovalTimeout)
	rec.Pending = pending
	rec.Stdout = res.Stdout
	rec.AutoResolved = res.ToolCalls.Accepted + res.ToolCalls.Rejected - rec.ToolCalls.Accepted - rec.ToolCalls.Rejected
	rec.ToolCalls = res.ToolCalls
	if _, err := w.runs.Put(ctx, *rec); err != nil {
		return fmt.Errorf("record pause: %w", err)
	}
	return w.publishPause(ctx, rec, *res, log)
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
		RequestedAt:      rec.ApprovalExpiresAt.Add(-w.opts.ApprovalTimeout),
		ExpiresAt:        rec.ApprovalExpiresAt,
		Metadata:         rec.Job.Metadata,
		ResumeHint:       res.ResumeHint,
	}
	if _, err := queue.PublishApproval(ctx, w.js, w.qcfg, req); err != nil {
		return fmt.Errorf("publish approval request: %w", err)
	}
	if err := w.armExpiry(ctx, rec); err != nil {
		return err
	}
	log.Info("run paused for approval", "approval_id", rec.ApprovalID, "pending", len(rec.Pending), "expires_at", rec.ApprovalExpiresAt)
	return nil
}
