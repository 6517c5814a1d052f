package schemas

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// decision is a decision for approval a1 of job j1 with extra members.
func decision(extra string) string {
	return `{"approval_id":"a1","job_id":"j1",` + extra + `}`
}

func TestDecodeDecisionValid(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		doc  string
		want Decision
	}{
		{"allow all", decision(`"all":"allow"`), Decision{ApprovalID: "a1", JobID: "j1", All: DecideAllow}},
		{"deny all", decision(`"all":"deny","decided_by":"ops-bot"`), Decision{ApprovalID: "a1", JobID: "j1", All: DecideDeny, DecidedBy: "ops-bot"}},
		{"per call", decision(`"schema":"jetpilot.decision.v1","decisions":{"c1":{"action":"accept"},"c2":{"action":"reject","content":"no"},"c3":{"action":"custom_result","content":"42"}}`),
			Decision{Schema: DecisionSchemaID, ApprovalID: "a1", JobID: "j1", Decisions: map[string]ToolDecision{
				"c1": {Action: ActionAccept}, "c2": {Action: ActionReject, Content: "no"}, "c3": {Action: ActionCustomResult, Content: "42"},
			}}},
	}
	key, sig, digest := "U"+strings.Repeat("B", 55), strings.Repeat("x", 84)+"-_", strings.Repeat("0a", 32)
	cases = append(cases, struct {
		name string
		doc  string
		want Decision
	}{"signed", decision(`"all":"deny","decided_by":"Zoë","pending_digest":"` + digest + `","decided_at":"2025-04-05T14:02:11.25Z","signature":{"sig":"` + sig + `","key":"` + key + `"}`),
		Decision{ApprovalID: "a1", JobID: "j1", All: DecideDeny, DecidedBy: "Zoë", PendingDigest: digest,
			DecidedAt: time.Date(2025, 4, 5, 14, 2, 11, 250_000_000, time.UTC), Signature: &Signature{Key: key, Sig: sig}}})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := DecodeDecision([]byte(tc.doc))
			require.NoError(t, err)
			require.Equal(t, tc.want, d)
			data, err := json.Marshal(d)
			require.NoError(t, err)
			again, err := DecodeDecision(data)
			require.NoError(t, err)
			require.Equal(t, d, again)
		})
	}
}

func TestDecodeDecisionInvalid(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, doc, field, reason string
		n                        int // problems in all; 0 means 1
	}{
		{"not JSON", `{"approval_id":`, "", "invalid JSON: unexpected end of input", 0},
		{"array", `[]`, "", "must be a JSON object (got an array)", 0},
		{"missing approval_id", `{"job_id":"j1","all":"allow"}`, "approval_id", "is required", 0},
		{"missing job_id", `{"approval_id":"a1","all":"allow"}`, "job_id", "is required", 0},
		{"empty approval_id", `{"approval_id":"","job_id":"j1","all":"allow"}`, "approval_id", "must not be empty", 0},
		{"bad job_id", `{"approval_id":"a1","job_id":"j 1","all":"allow"}`, "job_id", `(got "j 1": a space is not allowed)`, 0},
		{"neither all nor decisions", decision(`"decided_by":"me"`), "", `must have one of "all" or "decisions"`, 0},
		{"both all and decisions", decision(`"all":"allow","decisions":{"c1":{"action":"accept"}}`), "",
			`must have exactly one of "all" or "decisions", not both`, 0},
		{"all word", decision(`"all":"yes"`), "all", `must be one of "allow", "deny" (got "yes")`, 0},
		{"all boolean", decision(`"all":true`), "all", `must be one of "allow", "deny" (got true)`, 0},
		{"decisions empty", decision(`"decisions":{}`), "decisions", "must not be empty", 0},
		{"decisions array", decision(`"decisions":[]`), "decisions", "must be an object (got an array)", 0},
		{"empty tool call id", decision(`"decisions":{"":{"action":"accept"}}`), "decisions", `key "" is not allowed: keys must be 1-256 characters (got an empty string)`, 0},
		{"bad action", decision(`"decisions":{"c1":{"action":"approve"}}`), "decisions/c1/action",
			`must be one of "accept", "reject", "custom_result" (got "approve")`, 0},
		{"missing action", decision(`"decisions":{"c1":{"content":"x"}}`), "decisions/c1/action", "is required", 0},
		{"custom result without content", decision(`"decisions":{"c1":{"action":"custom_result"}}`), "decisions/c1/content",
			`is required when action is "custom_result"`, 0},
		{"custom result with empty content", decision(`"decisions":{"c1":{"action":"custom_result","content":""}}`), "decisions/c1/content",
			"must not be empty", 0},
		{"content number", decision(`"decisions":{"c1":{"action":"reject","content":1}}`), "decisions/c1/content", "must be a string (got a number)", 0},
		{"decision string", decision(`"decisions":{"c1":"accept"}`), "decisions/c1", "must be an object (got a string)", 0},
		{"unknown field", decision(`"all":"allow","approve":true`), "", `unknown field "approve"`, 0},
		{"unknown field in a decision", decision(`"decisions":{"c1":{"action":"accept","reason":"ok"}}`), "decisions/c1", `unknown field "reason"`, 0},
		{"decided_by number", decision(`"all":"allow","decided_by":7`), "decided_by", "must be a string (got a number)", 0},
		{"schema id wrong", decision(`"all":"allow","schema":"jetpilot.job.v1"`), "schema", `must be "jetpilot.decision.v1" (got "jetpilot.job.v1")`, 0},
		{"duplicate all", decision(`"all":"deny","all":"allow"`), "", `duplicate key "all"`, 0},
		{"duplicate tool call id", decision(`"decisions":{"c1":{"action":"reject"},"c1":{"action":"accept"}}`), "decisions", `duplicate key "c1"`, 0},
		{"duplicate action", decision(`"decisions":{"c1":{"action":"reject","action":"accept"}}`), "decisions/c1", `duplicate key "action"`, 0},
		{"tool call id with slash", decision(`"decisions":{"a/b":{"action":"nope"}}`), "decisions/a~1b/action", `(got "nope")`, 0},
		{"pending_digest in capitals", decision(`"all":"allow","pending_digest":"` + strings.Repeat("0A", 32) + `"`), "pending_digest", "64 lowercase hex characters", 0},
		{"pending_digest short", decision(`"all":"allow","pending_digest":"abc"`), "pending_digest", "64 lowercase hex characters", 0},
		{"decided_at not UTC", decision(`"all":"allow","decided_at":"2025-04-05T16:02:11+02:00"`), "decided_at", "in UTC", 0},
		{"decided_at no time", decision(`"all":"allow","decided_at":"2025-04-05"`), "decided_at", "RFC 3339", 0},
		{"decided_at leap second", decision(`"all":"allow","decided_at":"2016-12-31T23:59:60Z"`), "decided_at", "RFC 3339", 0},
		{"decided_at number", decision(`"all":"allow","decided_at":1712345678`), "decided_at", "in UTC such as \"2025-01-02T15:04:05Z\" (got a number)", 0},
		{"signature without sig", decision(`"all":"allow","signature":{"key":"U` + strings.Repeat("A", 55) + `"}`), "signature/sig", "is required", 0},
		{"signature key lowercase", decision(`"all":"allow","signature":{"key":"u` + strings.Repeat("a", 55) + `","sig":"` + strings.Repeat("a", 86) + `"}`),
			"signature/key", "an nkey user public key", 0},
		{"signature padded", decision(`"all":"allow","signature":{"key":"U` + strings.Repeat("A", 55) + `","sig":"` + strings.Repeat("a", 86) + `=="}`),
			"signature/sig", "base64url without padding", 0},
		{"signature extra member", decision(`"all":"allow","signature":{"key":"U` + strings.Repeat("A", 55) + `","sig":"` + strings.Repeat("a", 86) + `","alg":"x"}`),
			"signature", `unknown field "alg"`, 0},
		{"signature string", decision(`"all":"allow","signature":"x"`), "signature", "must be an object", 0},
		{"duplicate signature", decision(`"all":"allow","signature":{"key":"U` + strings.Repeat("A", 55) + `","sig":"` + strings.Repeat("a", 86) + `"},"signature":{}`), "", `duplicate key "signature"`, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeDecision([]byte(tc.doc))
			var verr *ValidationError
			require.ErrorAs(t, err, &verr)
			require.Len(t, verr.Problems, max(tc.n, 1), "problems: %v", verr.Problems)
			found := false
			for _, p := range verr.Problems {
				if p.Field == tc.field && strings.Contains(p.Reason, tc.reason) {
					found = true
				}
			}
			require.True(t, found, "want a problem on %q containing %q, got %v", tc.field, tc.reason, verr.Problems)
			e := verr.ToError()
			assert.Equal(t, "invalid_decision", e.Code)
			assert.True(t, strings.HasPrefix(e.Message, "invalid decision: "), e.Message)
		})
	}
}

func TestDecodeDecisionPartial(t *testing.T) {
	t.Parallel()
	d, err := DecodeDecision([]byte(`{"approval_id":"a1","job_id":"j1","all":"maybe"}`))
	require.Error(t, err)
	assert.Equal(t, Decision{ApprovalID: "a1", JobID: "j1"}, d, "ids survive so the error event can name the approval")

	d, err = DecodeDecision([]byte(`not json`))
	require.Error(t, err)
	assert.Equal(t, Decision{}, d)
}
