package schemas

import (
	"encoding/json"
	"fmt"
	"time"
)

// AuditSchemaID is the "schema" field of every AuditRecord.
const AuditSchemaID = "jetpilot.audit.v1"

// AuditKind says what an AuditRecord records.
type AuditKind string

// Audit record kinds (schema audit.v1.json).
const (
	// AuditApprovalRequested: a run paused for a human's decision.
	AuditApprovalRequested AuditKind = "approval_requested"
	// AuditDecisionApplied: a human's decision was applied; Approver is
	// the verified approver.
	AuditDecisionApplied AuditKind = "decision_applied"
	// AuditDecisionRefused: a decision was refused; Code says why.
	AuditDecisionRefused AuditKind = "decision_refused"
	// AuditRefusalsCounted: decisions refused without a record each (from
	// keys nobody knows), counted in one record: Count.
	AuditRefusalsCounted AuditKind = "refusals_counted"
	// AuditApprovalExpired: nobody answered before the approval expired.
	AuditApprovalExpired AuditKind = "approval_expired"
	// AuditCancel: the job was cancelled.
	AuditCancel AuditKind = "cancel"
	// AuditPolicySet: a new policy was stored. Only in the policy chain
	// (JobID "").
	AuditPolicySet AuditKind = "policy_set"
	// AuditSteer: a steering message reached the job's run; Approver is
	// the verified signer when signed, Reason the text's first line.
	AuditSteer AuditKind = "steer"
)

// AuditKinds lists every AuditKind the v1 schema knows, in schema order.
var AuditKinds = []AuditKind{
	AuditApprovalRequested, AuditDecisionApplied, AuditDecisionRefused, AuditRefusalsCounted,
	AuditApprovalExpired, AuditCancel, AuditPolicySet, AuditSteer,
}

// Lengths the audit schema allows; queue.AuditLog shortens Reason and
// Decision to fit rather than lose the record.
const (
	AuditMaxReason   = 2048
	AuditMaxDecision = 2048
)

// AuditRecord is one entry of an audit chain (schema audit.v1.json), in
// the AUDIT stream: a job's on jetpilot.audit.<job_id>, policy changes on
// jetpilot.policy_audit with JobID "". Seq numbers a chain from 1, and Prev
// is the lowercase hex SHA-256 of the previous record's payload exactly as
// published ("" for Seq 1), so a record removed or changed in storage
// breaks the chain. queue.AuditLog sets Schema, Seq and Prev (and At, when
// zero); writers fill in the rest. It is flat and small on purpose: nothing
// per tool call, no arguments or results.
type AuditRecord struct {
	Schema string `json:"schema"`
	// JobID is the job the record is about; "" in the policy chain.
	JobID string    `json:"job_id"`
	Seq   uint64    `json:"seq"`
	Prev  string    `json:"prev"`
	Kind  AuditKind `json:"kind"`
	// At is when the writer recorded it, by its clock, UTC.
	At         time.Time `json:"at"`
	ApprovalID string    `json:"approval_id,omitempty"`
	// Approver is who decided (decision_applied) or whose decision was
	// refused (decision_refused).
	Approver AuditApprover `json:"approver,omitzero"`
	// Rule is the policy rule that asked for the approval.
	Rule string `json:"rule,omitempty"`
	// PolicyVersion is the policy version in force; for policy_set, the
	// version stored.
	PolicyVersion uint64 `json:"policy_version,omitempty"`
	// PendingDigest is the approval's pending_digest (lowercase hex SHA-256
	// of the JCS form of its pending_tool_calls).
	PendingDigest string `json:"pending_digest,omitempty"`
	// Decision is what was decided: "allow", "deny", or a per-call summary
	// such as "call_1=accept call_2=reject".
	Decision string `json:"decision,omitempty"`
	// Reason is a human's or the worker's words.
	Reason string `json:"reason,omitempty"`
	// Code says why a decision was refused (a short code of a-z0-9_).
	Code string `json:"code,omitempty"`
	// Count is, in a refusals_counted record, how many were refused.
	Count int64 `json:"count,omitempty"`
	// Worker is the worker (or tool, for policy_set) that wrote it.
	Worker string `json:"worker,omitempty"`
}

// AuditApprover names an approver: the name in the policy and the key
// (an nkey user public key, U...) that signed.
type AuditApprover struct {
	Name string `json:"name,omitempty"`
	Key  string `json:"key"`
}

// DecodeAudit parses and validates an audit record.
func DecodeAudit(data []byte) (AuditRecord, error) {
	if err := Validate(SchemaAudit, data); err != nil {
		return AuditRecord{}, fmt.Errorf("decode audit record: %w", err)
	}
	var r AuditRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return AuditRecord{}, fmt.Errorf("decode audit record: %w", err)
	}
	return r, nil
}
