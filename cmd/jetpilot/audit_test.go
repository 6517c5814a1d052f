package main_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

const approverKey = "UCZT6PMFVFM4KMZW4RR2ZMPLDTA2R5OQ7TPI4K4AOHTS5LSAQDE7QBJF"

func TestAuditCommand(t *testing.T) {
	t.Parallel()
	s, _, js := testnats.Start(t)
	url := testnats.URL(s)
	ctx := testsupport.Context(t, waitFor)
	out, code := run(t, "", "setup", "--nats", url)
	require.Equal(t, 0, code, out)
	l, err := queue.NewAuditLog(ctx, js, queue.Config{})
	require.NoError(t, err)
	at := time.Date(2025, 4, 5, 14, 2, 11, 204_000_000, time.UTC)
	for _, r := range []schemas.AuditRecord{
		{JobID: "deploy-1", Kind: schemas.AuditApprovalRequested, At: at, ApprovalID: "deploy-1:1", Rule: "prod-change", PolicyVersion: 4,
			PendingDigest: strings.Repeat("ab", 32), Worker: "w1"},
		// Words from outside: an escape sequence, a bidi override, a newline.
		{JobID: "deploy-1", Kind: schemas.AuditDecisionApplied, At: at.Add(time.Minute), ApprovalID: "deploy-1:1",
			Approver: schemas.AuditApprover{Name: "mallory\x1b[2J", Key: approverKey}, Rule: "prod-change", PolicyVersion: 4,
			Decision: "allow", Reason: "ok\u202eevil\nfake line\u0085", Worker: "w1"},
		{JobID: "deploy-1", Kind: schemas.AuditDecisionRefused, At: at.Add(2 * time.Minute), ApprovalID: "deploy-1:1", Code: "digest_mismatch",
			Approver: schemas.AuditApprover{Key: approverKey}},
		{JobID: "deploy-1", Kind: schemas.AuditRefusalsCounted, At: at.Add(3 * time.Minute), Count: 7},
	} {
		_, err := l.Append(ctx, r)
		require.NoError(t, err)
	}
	_, err = l.Append(ctx, schemas.AuditRecord{Kind: schemas.AuditPolicySet, At: at, PolicyVersion: 5, Reason: "freeze", Worker: "ops"})
	require.NoError(t, err)

	t.Run("intact chain", func(t *testing.T) {
		out, code := run(t, "", "audit", "deploy-1", "--nats", url)
		require.Equal(t, 0, code, out)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		require.Len(t, lines, 6, out)
		assert.Equal(t, "audit chain of job deploy-1 (stream JETPILOT_AUDIT, subject jetpilot.audit.deploy-1): 4 records", lines[0])
		assert.Equal(t, "   1  2025-04-05T14:02:11.204Z  approval_requested  approval=deploy-1:1  rule=prod-change  policy=v4  pending=abababababab…  worker=\"w1\"", lines[1])
		assert.Equal(t, `   2  2025-04-05T14:03:11.204Z  decision_applied  approval=deploy-1:1  approver="mallory\x1b[2J"  key=`+approverKey+
			`  rule=prod-change  policy=v4  decision="allow"  reason="ok\u202eevil\x0afake line\u0085"  worker="w1"`, lines[2])
		assert.Contains(t, lines[3], "decision_refused  approval=deploy-1:1  key="+approverKey+"  code=digest_mismatch")
		assert.Contains(t, lines[4], "refusals_counted  count=7")
		assert.Regexp(t, `^chain intact: records 1 to 4, each prev the SHA-256 of the record before; head sha256 [0-9a-f]{64}$`, lines[5])
		assert.NotContains(t, out, "\x1b")
		assert.NotContains(t, out, "\u202e")
		assert.NotContains(t, out, "\u0085")
	})
	t.Run("json", func(t *testing.T) {
		out, code := run(t, "", "audit", "deploy-1", "--json", "--nats", url)
		require.Equal(t, 0, code, out)
		assert.NotContains(t, out, "\u202e", "bidi escaped in JSON too")
		assert.NotContains(t, out, "\u0085")
		var doc struct {
			JobID   string `json:"job_id"`
			Records []struct {
				StreamSeq uint64              `json:"stream_seq"`
				SHA256    string              `json:"sha256"`
				Record    schemas.AuditRecord `json:"record"`
			} `json:"records"`
			Verify queue.VerifyReport `json:"verify"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
		assert.Equal(t, "deploy-1", doc.JobID)
		require.Len(t, doc.Records, 4)
		assert.Equal(t, "ok\u202eevil\nfake line\u0085", doc.Records[1].Record.Reason, "the escapes decode to the words as stored")
		assert.Equal(t, doc.Records[0].SHA256, doc.Records[1].Record.Prev)
		assert.True(t, doc.Verify.Intact)
		assert.Equal(t, doc.Records[3].SHA256, doc.Verify.Head)
	})
	t.Run("policy chain", func(t *testing.T) {
		out, code := run(t, "", "audit", "--policy", "--nats", url)
		require.Equal(t, 0, code, out)
		assert.Contains(t, out, "policy changes (stream JETPILOT_AUDIT, subject jetpilot.policy_audit): 1 record\n")
		assert.Contains(t, out, "   1  2025-04-05T14:02:11.204Z  policy_set  policy=v5  reason=\"freeze\"  worker=\"ops\"\n")
		assert.Contains(t, out, "chain intact: records 1 to 1")
	})
	t.Run("unknown job", func(t *testing.T) {
		stdout, stderr, code, err := tryRun(nil, "", "audit", "nobody", "--nats", url)
		require.NoError(t, err)
		assert.Equal(t, 1, code, stdout)
		assert.Contains(t, stderr, "job nobody has no audit records in stream JETPILOT_AUDIT")
	})
	t.Run("usage errors", func(t *testing.T) {
		for _, args := range [][]string{
			{"audit"},
			{"audit", "a", "b"},
			{"audit", "deploy-1", "--policy"},
			{"audit", "bad id!"},
			{"audit", "deploy-1", "--bogus"},
		} {
			_, stderr, code, err := tryRun(nil, "", append(args, "--nats", url)...)
			require.NoError(t, err)
			assert.Equal(t, 2, code, "%v: %s", args, stderr)
		}
	})
}

// TestAuditCommandTampered: on an AUDIT stream created without the deny
// flags (the real one cannot lose them), a removed record and a rewritten
// one make `jetpilot audit` exit 1 and name the record.
func TestAuditCommandTampered(t *testing.T) {
	t.Parallel()
	s, _, js := testnats.Start(t)
	url := testnats.URL(s)
	ctx := testsupport.Context(t, waitFor)
	cfg := queue.Config{Prefix: "tamper"}.WithDefaults()
	for _, sc := range cfg.StreamConfigs() {
		if sc.Name == cfg.AuditStream() {
			sc.DenyDelete, sc.DenyPurge = false, false
			_, err := js.CreateStream(ctx, sc)
			require.NoError(t, err)
		}
	}
	l, err := queue.NewAuditLog(ctx, js, cfg)
	require.NoError(t, err)
	for _, job := range []string{"gap", "edit"} {
		for i := range 4 {
			_, err := l.Append(ctx, schemas.AuditRecord{JobID: job, Kind: schemas.AuditDecisionRefused, Code: "unknown_key", Count: int64(i + 1)})
			require.NoError(t, err)
		}
	}
	st, err := js.Stream(ctx, cfg.AuditStream())
	require.NoError(t, err)

	gap, err := l.Entries(ctx, "gap")
	require.NoError(t, err)
	require.NoError(t, st.DeleteMsg(ctx, gap[1].StreamSeq))
	stdout, stderr, code, err := tryRun(nil, "", "audit", "gap", "--prefix", "tamper", "--nats", url)
	require.NoError(t, err)
	assert.Equal(t, 1, code, stdout)
	assert.Contains(t, stdout, "chain BROKEN at record 2 (missing): record 2 is missing: record 3 follows record 1")
	assert.Contains(t, stderr, "audit chain broken: the audit chain of job gap: record 2 is missing")

	// Record 2 rewritten: removed with all after it, put back changed,
	// and the later ones put back exactly as they were.
	edit, err := l.Entries(ctx, "edit")
	require.NoError(t, err)
	for _, e := range edit[1:] {
		require.NoError(t, st.DeleteMsg(ctx, e.StreamSeq))
	}
	forged := strings.Replace(string(edit[1].Raw), `"count":2`, `"count":1`, 1)
	require.NotEqual(t, string(edit[1].Raw), forged)
	for _, data := range [][]byte{[]byte(forged), edit[2].Raw, edit[3].Raw} {
		_, err := js.Publish(ctx, cfg.AuditSubject("edit"), data)
		require.NoError(t, err)
	}
	stdout, stderr, code, err = tryRun(nil, "", "audit", "edit", "--prefix", "tamper", "--nats", url)
	require.NoError(t, err)
	assert.Equal(t, 1, code, stdout)
	assert.Contains(t, stdout, "chain BROKEN at record 2 (altered)")
	assert.Contains(t, stderr, "record 2 was altered")

	stdout, _, code, err = tryRun(nil, "", "audit", "edit", "--json", "--prefix", "tamper", "--nats", url)
	require.NoError(t, err)
	assert.Equal(t, 1, code)
	var doc struct {
		Verify queue.VerifyReport `json:"verify"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &doc), stdout)
	assert.False(t, doc.Verify.Intact)
	assert.EqualValues(t, 2, doc.Verify.BadSeq)
	assert.Equal(t, queue.AuditAltered, doc.Verify.Problem)
}
