package schemas

import "time"

// ApprovalOutcome is one decided approval of a job, as its final result
// lists it: who decided (verified approvers under signed decisions, the
// decided_by text under unsigned ones), under which rules, and when.
type ApprovalOutcome struct {
	ApprovalID string `json:"approval_id"`
	// Decision is "allow", "deny", "mixed" (per-call decisions), "expired"
	// or "cancelled".
	Decision  string        `json:"decision"`
	Approvers []ApproverRef `json:"approvers,omitempty"`
	Rules     []string      `json:"rules,omitempty"`
	DecidedAt time.Time     `json:"decided_at"`
}

// ApproverRef names an approver: their name in the policy and their public
// key; Key is empty for an unsigned decision, whose Name is its decided_by.
type ApproverRef struct {
	Name string `json:"name"`
	Key  string `json:"key,omitempty"`
}

// ApprovalNeeds says who may decide an approval request: an allow needs
// Quorum distinct approvers from AllowBy, one deny from DenyBy denies, and
// the job's requester may be excluded. Rules are the policy rules that
// asked. Empty lists: any approver (or, under unsigned decisions, anyone).
type ApprovalNeeds struct {
	Rules               []string `json:"rules,omitempty"`
	AllowBy             []string `json:"allow_by,omitempty"`
	DenyBy              []string `json:"deny_by,omitempty"`
	Quorum              int      `json:"quorum"`
	RequesterMayApprove bool     `json:"requester_may_approve"`
	Signed              bool     `json:"signed"`
	// PolicyVersion is the policy version that fixed who may decide.
	PolicyVersion uint64 `json:"policy_version,omitempty"`
}
