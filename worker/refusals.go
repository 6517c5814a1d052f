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

// Refusals of signed decisions (decisions: signed in the policy).
const (
	// CodeDigestMismatch: pending_digest is missing or not the pending
	// calls' digest: the decision was made for other calls.
	CodeDigestMismatch = "digest_mismatch"
	// CodeSignatureMissing: the policy needs a signature and there is none.
	CodeSignatureMissing = "signature_missing"
	// CodeSignatureMalformed: the signature field is not a key and a
	// base64url ed25519 signature.
	CodeSignatureMalformed = "signature_malformed"
	// CodeSignatureInvalid: the signature does not verify over the body.
	CodeSignatureInvalid = "signature_invalid"
	// CodeUnknownKey: the key is not an approver's in the policy.
	CodeUnknownKey = "unknown_key"
	// CodeApproverNotAllowed: the approver is not one the calls' rules
	// allow.
	CodeApproverNotAllowed = "approver_not_allowed"
	// CodeRequesterMayNotApprove: the approver asked for the job, and a
	// rule says the requester may not approve it.
	CodeRequesterMayNotApprove = "requester_may_not_approve"
	// CodeRequesterUnknown: a rule says the requester may not approve, and
	// the job was not signed by a listed producer.
	CodeRequesterUnknown = "requester_unknown"
	// CodeDuplicateVote: the approver already voted on this approval.
	CodeDuplicateVote = "duplicate_vote"
	// CodeAuditUnavailable: the decision could not be written to the
	// audit stream (full or unreachable): approvals fail closed.
	CodeAuditUnavailable = "audit_unavailable"
)
