package schemas

import (
	"fmt"
	"time"
)

// DecodeDecision parses and validates a decision message. An invalid one
// yields a *ValidationError (code "invalid_decision") listing every
// problem, and a Decision carrying the approval and job ids when readable,
// so the decision_error event can say which approval it was about.
func DecodeDecision(data []byte) (Decision, error) {
	s, err := schemaFor(SchemaDecision)
	if err != nil {
		return Decision{}, fmt.Errorf("decode decision: %w", err)
	}
	v, problems := s.check(data)
	m, _ := v.(map[string]any)
	if len(problems) > 0 {
		var d Decision
		d.ApprovalID, _ = m["approval_id"].(string)
		if id, ok := m["job_id"].(string); ok && ValidJobID(id) {
			d.JobID = id
		}
		return d, newValidationError(SchemaDecision, problems)
	}
	return decisionFromDoc(m), nil
}

// decisionFromDoc builds a Decision from a document the schema accepted.
func decisionFromDoc(m map[string]any) Decision {
	var d Decision
	d.Schema, _ = m["schema"].(string)
	d.ApprovalID, _ = m["approval_id"].(string)
	d.JobID, _ = m["job_id"].(string)
	d.All, _ = m["all"].(string)
	d.DecidedBy, _ = m["decided_by"].(string)
	d.PendingDigest, _ = m["pending_digest"].(string)
	if at, ok := m["decided_at"].(string); ok {
		// decisionGoChecks has made sure it parses.
		d.DecidedAt, _ = time.Parse(time.RFC3339Nano, at)
	}
	d.Signature = signatureFromDoc(m["signature"])
	if decisions, ok := m["decisions"].(map[string]any); ok && len(decisions) > 0 {
		d.Decisions = make(map[string]ToolDecision, len(decisions))
		for id, v := range decisions {
			td, _ := v.(map[string]any)
			var t ToolDecision
			t.Action, _ = td["action"].(string)
			t.Content, _ = td["content"].(string)
			d.Decisions[id] = t
		}
	}
	return d
}

// decisionGoChecks are the decision rules JSON Schema cannot state: a
// decided_at the schema's pattern accepts that is no time (a leap second, a
// 31st of February) would otherwise decode as the zero time.
func decisionGoChecks(v any, schemaProblems []FieldError) []FieldError {
	m, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	at, ok := m["decided_at"].(string)
	if !ok {
		return nil
	}
	for _, p := range schemaProblems {
		if p.Field == "decided_at" {
			return nil
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, at); err != nil {
		return []FieldError{{Field: "decided_at", Reason: fmt.Sprintf(`must be an RFC 3339 date-time in UTC such as "2025-01-02T15:04:05Z" (got %s)`, quote(at))}}
	}
	return nil
}

// signatureFromDoc reads a signature member the schema accepted; nil when
// absent.
func signatureFromDoc(v any) *Signature {
	m, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	var s Signature
	s.Key, _ = m["key"].(string)
	s.Sig, _ = m["sig"].(string)
	return &s
}
