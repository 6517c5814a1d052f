package worker

// Codes of the decision_error events that answer a decision which changed
// nothing. Each refusal has its own, so a bot can tell its user what to fix.
const (
	// CodeInvalidDecision: the decision is not a valid jetpilot.decision.v1.
	CodeInvalidDecision = "invalid_decision"
	// CodeSubjectMismatch: the body names another job than its subject.
	CodeSubjectMismatch = "subject_mismatch"
	// CodeUnknownJob: no run is recorded for the job.
	CodeUnknownJob = "unknown_job"
	// CodeApprovalSettled: the approval is no longer pending.
	CodeApprovalSettled = "approval_settled"
	// CodeApprovalMismatch: the approval is not the job's pending one.
	CodeApprovalMismatch = "approval_mismatch"
	// CodeApprovalExpired: the approval expired before the decision came.
	CodeApprovalExpired = "approval_expired"
)
