package worker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/signing"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// approver is a person with a key.
type approver struct {
	name string
	seed []byte
	key  string
}

func newApprover(t *testing.T, name string) approver {
	t.Helper()
	seed, key, err := signing.NewSeed()
	require.NoError(t, err)
	return approver{name: name, seed: seed, key: key}
}

// signedFixture: a signed policy whose run_command calls need a quorum of
// sre approvers, who may not approve their own jobs; alice also publishes
// jobs (producer alice-ci, her key).
type signedFixture struct {
	h                      *harness
	alice, bob, carl, dave approver
}

func newSignedFixture(t *testing.T, quorum int, workers int) *signedFixture {
	t.Helper()
	f := &signedFixture{h: newHarness(t, queue.Config{}),
		alice: newApprover(t, "alice"), bob: newApprover(t, "bob"), carl: newApprover(t, "carl"), dave: newApprover(t, "dave")}
	doc := fmt.Sprintf(`
version: 1
decisions: signed
tools:
  default: deny
  rules:
    - {name: read-only, match: {tools: [view]}, action: allow}
    - {name: change, match: {tools: [run_command]}, action: approve,
       approvers: {groups: [sre], quorum: %d, requester_may_approve: false}}
approvers:
  alice: {key: %s, groups: [sre]}
  bob: {key: %s, groups: [sre]}
  carl: {key: %s, groups: [sre]}
  dave: {key: %s, groups: [dev]}
producers:
  alice-ci: {key: %s}
`, quorum, f.alice.key, f.bob.key, f.carl.key, f.dave.key, f.alice.key)
	pol := mustPolicy(t, doc)
	for range workers {
		f.h.startWorker(worker.Options{Fallback: pol})
	}
	return f
}

// pause submits a job whose run_command waits for the sre quorum, signed
// by producer alice-ci with producer's key (nil: unsigned), and returns its
// approval request.
func (f *signedFixture) pause(t *testing.T, id string, producer *approver) schemas.ApprovalRequest {
	t.Helper()
	j := job(id, "#sim tool stakpak__view {}\n#sim tool stakpak__run_command {\"command\":\"systemctl restart app\"}\n#sim text done")
	if producer != nil {
		j.RequestedBy = "alice-ci"
		require.NoError(t, signing.SignJob(&j, producer.seed))
	}
	f.h.submit(j)
	req := f.h.approval(id)
	require.NotEmpty(t, req.PendingDigest)
	return req
}

// signed is a's decision on req, signed.
func (f *signedFixture) signed(t *testing.T, a approver, req schemas.ApprovalRequest, all string) schemas.Decision {
	t.Helper()
	d := schemas.Decision{ApprovalID: req.ApprovalID, JobID: req.JobID, All: all, PendingDigest: req.PendingDigest,
		DecidedAt: time.Now().UTC().Truncate(time.Second), DecidedBy: a.name + " (display)"}
	require.NoError(t, signing.SignDecision(&d, a.seed))
	return d
}

// publishRaw publishes a decision's exact bytes on its job's subject.
func (f *signedFixture) publishRaw(t *testing.T, jobID string, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := f.h.js.Publish(ctx, f.h.qcfg.DecisionSubject(jobID), data)
	require.NoError(t, err)
}

func (f *signedFixture) auditKinds(t *testing.T, jobID string) []string {
	t.Helper()
	log, err := queue.NewAuditLog(t.Context(), f.h.js, f.h.qcfg)
	require.NoError(t, err)
	report, err := log.VerifyChain(t.Context(), jobID)
	require.NoError(t, err)
	require.True(t, report.Intact, "audit chain of %s: %+v", jobID, report)
	recs, err := log.Chain(t.Context(), jobID)
	require.NoError(t, err)
	var kinds []string
	for _, r := range recs {
		k := string(r.Kind)
		if r.Approver.Name != "" {
			k += ":" + r.Approver.Name
		}
		if r.Code != "" {
			k += ":" + r.Code
		}
		kinds = append(kinds, k)
	}
	return kinds
}

// One signer applies an approval with quorum 1; the result and the audit
// chain name her.
func TestSignedDecisionOneSigner(t *testing.T) {
	f := newSignedFixture(t, 1, 1)
	req := f.pause(t, "sig-1", &f.alice)
	require.Len(t, req.PendingToolCalls, 1)
	assert.Equal(t, "change", req.PendingToolCalls[0].Rule)
	f.h.decide(f.signed(t, f.bob, req, schemas.DecideAllow))
	res := f.h.final("sig-1")
	require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
	assert.Equal(t, schemas.ToolCallCounts{Accepted: 2}, res.ToolCalls)
	require.Len(t, res.Approvals, 1)
	assert.Equal(t, "allow", res.Approvals[0].Decision)
	assert.Equal(t, []schemas.ApproverRef{{Name: "bob", Key: f.bob.key}}, res.Approvals[0].Approvers)
	assert.Equal(t, []string{"change"}, res.Approvals[0].Rules)
	assert.Equal(t, []string{"approval_requested", "decision_applied:bob"}, f.auditKinds(t, "sig-1"))
}

// Quorum 2: the first allow is recorded and the run stays paused; the
// second applies. In another job one deny wins over an allow.
func TestSignedDecisionQuorum(t *testing.T) {
	f := newSignedFixture(t, 2, 1)
	req := f.pause(t, "quorum-1", &f.alice)
	f.h.decide(f.signed(t, f.bob, req, schemas.DecideAllow))
	eventually(t, func() bool {
		evs, err := f.h.tryEvents("quorum-1")
		return err == nil && containsEvent(evs, schemas.EventApprovalVote, "bob approved (1 of 2)")
	}, "bob's vote is recorded")
	// A second vote by the same approver is refused.
	f.h.decide(f.signed(t, f.bob, req, schemas.DecideAllow))
	errs := f.h.decisionErrors("quorum-1", 1)
	assert.Equal(t, worker.CodeDuplicateVote, errs[0].Error.Code)
	assert.Len(t, f.h.results("quorum-1"), 1, "still paused")
	f.h.decide(f.signed(t, f.carl, req, schemas.DecideAllow))
	res := f.h.final("quorum-1")
	require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
	assert.Equal(t, schemas.ToolCallCounts{Accepted: 2}, res.ToolCalls)
	require.Len(t, res.Approvals, 1)
	assert.Equal(t, []schemas.ApproverRef{{Name: "bob", Key: f.bob.key}, {Name: "carl", Key: f.carl.key}}, res.Approvals[0].Approvers)
	assert.Equal(t, []string{"approval_requested", "decision_applied:bob", "decision_refused:bob:duplicate_vote", "decision_applied:carl"},
		f.auditKinds(t, "quorum-1"))

	req = f.pause(t, "quorum-2", &f.alice)
	f.h.decide(f.signed(t, f.bob, req, schemas.DecideAllow))
	eventually(t, func() bool {
		evs, err := f.h.tryEvents("quorum-2")
		return err == nil && containsEvent(evs, schemas.EventApprovalVote, "bob approved")
	}, "bob's vote is recorded")
	f.h.decide(f.signed(t, f.carl, req, schemas.DecideDeny))
	res = f.h.final("quorum-2")
	require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
	assert.Equal(t, schemas.ToolCallCounts{Accepted: 1, Rejected: 1}, res.ToolCalls, "one deny denies")
	assert.Equal(t, "deny", res.Approvals[0].Decision)
}

// The job's requester may not approve it when the rule says so; someone
// else may. A job nobody signed has no requester to tell apart, so such a
// rule refuses its approvals.
func TestSignedDecisionRequesterRefused(t *testing.T) {
	f := newSignedFixture(t, 1, 1)
	req := f.pause(t, "req-1", &f.alice)
	f.h.decide(f.signed(t, f.alice, req, schemas.DecideAllow))
	errs := f.h.decisionErrors("req-1", 1)
	assert.Equal(t, worker.CodeRequesterMayNotApprove, errs[0].Error.Code)
	f.h.decide(f.signed(t, f.bob, req, schemas.DecideAllow))
	assert.Equal(t, schemas.StatusCompleted, f.h.final("req-1").Status)

	// Unsigned, the requester is unknown: nobody may approve it under a
	// rule that excludes the requester (it can still be denied).
	req = f.pause(t, "req-3", nil)
	f.h.decide(f.signed(t, f.bob, req, schemas.DecideAllow))
	errs = f.h.decisionErrors("req-3", 1)
	assert.Equal(t, worker.CodeRequesterUnknown, errs[0].Error.Code)
	f.h.decide(f.signed(t, f.bob, req, schemas.DecideDeny))
	res3 := f.h.final("req-3")
	assert.Equal(t, schemas.ToolCallCounts{Accepted: 1, Rejected: 1}, res3.ToolCalls)

	// A job signed by a key that is no producer's is rejected.
	j := job("req-2", "#sim text x")
	j.RequestedBy = "alice-ci"
	require.NoError(t, signing.SignJob(&j, f.dave.seed))
	f.h.submit(j)
	res := f.h.final("req-2")
	assert.Equal(t, schemas.StatusRejected, res.Status)
	assert.Contains(t, res.Stderr, "is not a producer's")
}

// Each refusal has its own code and changes nothing; afterwards the right
// decision still applies.
func TestSignedDecisionRefusals(t *testing.T) {
	f := newSignedFixture(t, 1, 1)
	req := f.pause(t, "ref-1", &f.alice)
	good := f.signed(t, f.bob, req, schemas.DecideAllow)
	data, err := queue.Encode(good)
	require.NoError(t, err)

	unsigned := good
	unsigned.Signature = nil
	tampered := strings.Replace(string(data), `"all":"allow"`, `"all":"deny"`, 1)
	badSig := strings.Replace(string(data), good.Signature.Sig[:8], "AAAAAAAA", 1)
	malformed := strings.Replace(string(data), good.Signature.Sig, "not base64!", 1)
	stranger := newApprover(t, "mallory")
	wrongDigest := f.signed(t, f.bob, schemas.ApprovalRequest{ApprovalID: req.ApprovalID, JobID: req.JobID, PendingDigest: strings.Repeat("0", 64)}, schemas.DecideAllow)

	cases := []struct {
		body []byte
		code string
	}{
		{mustEncode(t, unsigned), worker.CodeSignatureMissing},
		{[]byte(tampered), worker.CodeSignatureInvalid},
		{[]byte(badSig), worker.CodeSignatureInvalid},
		{[]byte(malformed), worker.CodeSignatureMalformed},
		{mustEncode(t, f.signed(t, stranger, req, schemas.DecideAllow)), worker.CodeUnknownKey},
		{mustEncode(t, f.signed(t, f.dave, req, schemas.DecideAllow)), worker.CodeApproverNotAllowed},
		{mustEncode(t, wrongDigest), worker.CodeDigestMismatch},
	}
	for _, c := range cases {
		f.publishRaw(t, "ref-1", c.body)
	}
	// Decisions are handled concurrently: compare the codes as a set.
	errs := f.h.decisionErrors("ref-1", len(cases))
	var want, got []string
	for i, c := range cases {
		want = append(want, c.code)
		require.NotNil(t, errs[i].Error)
		got = append(got, errs[i].Error.Code)
	}
	assert.ElementsMatch(t, want, got)
	assert.Len(t, f.h.results("ref-1"), 1, "still paused")
	f.publishRaw(t, "ref-1", data)
	res := f.h.final("ref-1")
	require.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, schemas.ToolCallCounts{Accepted: 2}, res.ToolCalls)
	// The identified approver's refusal is audited on its own, the rest
	// counted: a flood of forgeries adds one record per code.
	kinds := f.auditKinds(t, "ref-1")
	assert.Contains(t, kinds, "decision_refused:dave:approver_not_allowed")
	assert.Contains(t, kinds, "refusals_counted:signature_invalid")
	assert.Contains(t, kinds, "decision_applied:bob")
	assert.LessOrEqual(t, len(kinds), 2+len(cases))
}

// Two approvers of a quorum of 2 decide at once, on two workers: both
// votes count and the approval applies exactly once.
func TestSignedDecisionsRaceAcrossWorkers(t *testing.T) {
	f := newSignedFixture(t, 2, 2)
	req := f.pause(t, "race-1", &f.alice)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, a := range []approver{f.bob, f.carl} {
		d := f.signed(t, a, req, schemas.DecideAllow)
		wg.Go(func() { errs[i] = f.h.tryDecide(d) })
	}
	wg.Wait()
	require.NoError(t, errs[0])
	require.NoError(t, errs[1])
	res := f.h.final("race-1")
	require.Equal(t, schemas.StatusCompleted, res.Status, res.Stderr)
	assert.Equal(t, schemas.ToolCallCounts{Accepted: 2}, res.ToolCalls)
	assert.Len(t, res.Approvals[0].Approvers, 2)
	assert.Len(t, f.h.results("race-1"), 2, "one pause, one final result")
	d := f.h.sim.Decisions(res.SessionID)
	require.Len(t, d, 1)
}

func containsEvent(evs []schemas.Event, typ schemas.EventType, text string) bool {
	for _, e := range evs {
		if e.Type == typ && strings.Contains(e.Text, text) {
			return true
		}
	}
	return false
}

func mustEncode(t *testing.T, v any) []byte {
	t.Helper()
	data, err := queue.Encode(v)
	require.NoError(t, err)
	return data
}

// A decision that runs any call is an allow, whatever else it rejects: it
// needs an approver the rules allow and the quorum, so a mixed per-call
// decision cannot slip through as a "deny".
func TestSignedMixedDecisionIsAnAllow(t *testing.T) {
	f := newSignedFixture(t, 2, 1)
	j := job("mixed-1", "#sim tool stakpak__run_command {\"command\":\"a\"}\n#sim tool stakpak__run_command {\"command\":\"b\"}\n#sim text done")
	j.RequestedBy = "alice-ci"
	require.NoError(t, signing.SignJob(&j, f.alice.seed))
	f.h.submit(j)
	req := f.h.approval("mixed-1")
	require.Len(t, req.PendingToolCalls, 2)
	mixed := func(a approver) schemas.Decision {
		d := schemas.Decision{ApprovalID: req.ApprovalID, JobID: req.JobID, PendingDigest: req.PendingDigest, DecidedAt: time.Now().UTC().Truncate(time.Second),
			Decisions: map[string]schemas.ToolDecision{req.PendingToolCalls[0].ID: {Action: schemas.ActionAccept},
				req.PendingToolCalls[1].ID: {Action: schemas.ActionCustomResult, Content: "ok"}}}
		require.NoError(t, signing.SignDecision(&d, a.seed))
		return d
	}
	f.h.decide(mixed(f.dave))  // in no group the rule allows
	f.h.decide(mixed(f.alice)) // the requester
	f.h.decide(mixed(f.bob))   // allowed, but a quorum decides as a whole
	errs := f.h.decisionErrors("mixed-1", 3)
	var codes []string
	for _, e := range errs {
		codes = append(codes, e.Error.Code)
	}
	assert.ElementsMatch(t, []string{worker.CodeApproverNotAllowed, worker.CodeRequesterMayNotApprove, worker.CodeInvalidDecision}, codes)
	assert.Len(t, f.h.results("mixed-1"), 1, "still paused")
	assert.Zero(t, countRequests(f.h, "/tools/decisions"), "nothing ran")
}

// A replayed decision is refused each time, but audited once: replays
// cannot fill the audit stream.
func TestReplayedRefusalIsAuditedOnce(t *testing.T) {
	f := newSignedFixture(t, 1, 1)
	req := f.pause(t, "replay-1", &f.alice)
	data := mustEncode(t, f.signed(t, f.dave, req, schemas.DecideAllow))
	for range 20 {
		f.publishRaw(t, "replay-1", data)
	}
	errs := f.h.decisionErrors("replay-1", 20)
	for _, e := range errs {
		assert.Equal(t, worker.CodeApproverNotAllowed, e.Error.Code)
	}
	f.h.decide(f.signed(t, f.bob, req, schemas.DecideAllow))
	require.Equal(t, schemas.StatusCompleted, f.h.final("replay-1").Status)
	kinds := f.auditKinds(t, "replay-1")
	assert.Equal(t, []string{"approval_requested", "decision_refused:dave:approver_not_allowed", "decision_applied:bob",
		"refusals_counted:approver_not_allowed"}, kinds)
}
