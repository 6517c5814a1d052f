package schemas

import "fmt"

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
