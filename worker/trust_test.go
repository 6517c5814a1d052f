package worker_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// A decision applies only to the job of the subject it was published on:
// one that names another job is refused on the subject's job, and neither
// job changes.
func TestDecisionIsBoundToItsSubject(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	h.submit(pausingJob("bind-a"))
	h.submit(pausingJob("bind-b"))
	reqA, reqB := h.approval("bind-a"), h.approval("bind-b")
	assert.NotEqual(t, reqA.ApprovalID, reqB.ApprovalID)

	// Published where permissions let a publisher reach job a, naming b.
	data, err := queue.Encode(schemas.Decision{ApprovalID: reqB.ApprovalID, JobID: "bind-b", All: schemas.DecideAllow})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err = h.js.Publish(ctx, h.qcfg.DecisionSubject("bind-a"), data)
	require.NoError(t, err)

	errs := h.decisionErrors("bind-a", 1)
	require.NotNil(t, errs[0].Error)
	assert.Equal(t, worker.CodeSubjectMismatch, errs[0].Error.Code)
	assert.Contains(t, errs[0].Error.Message, `names job "bind-b" but was published on the subject of job "bind-a"`)
	assert.Len(t, h.results("bind-a"), 1, "a is still paused")
	assert.Len(t, h.results("bind-b"), 1, "b is still paused")

	// The right subject still works, for each.
	h.decide(schemas.Decision{ApprovalID: reqB.ApprovalID, JobID: "bind-b", All: schemas.DecideAllow})
	assert.Equal(t, schemas.StatusCompleted, h.final("bind-b").Status)
	h.decide(schemas.Decision{ApprovalID: reqA.ApprovalID, JobID: "bind-a", All: schemas.DecideDeny})
	assert.Equal(t, schemas.StatusCompleted, h.final("bind-a").Status)
}

// seq on a job's live events starts at 1 and goes up by one across the
// pause, a refused decision while paused and the resumed phase.
func TestEventSeqIsOneSequence(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	h.submit(pausingJob("seq-1"))
	req := h.approval("seq-1")
	h.decide(schemas.Decision{ApprovalID: "apr_not_this_one", JobID: "seq-1", All: schemas.DecideAllow})
	refused := h.decisionErrors("seq-1", 1)
	assert.NotZero(t, refused[0].Seq, "a refusal has its place in the sequence")
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "seq-1", All: schemas.DecideAllow})
	require.Equal(t, schemas.StatusCompleted, h.final("seq-1").Status)
	eventuallyWithT(t, func(c *assert.CollectT) {
		evs, err := h.tryEvents("seq-1")
		if !assert.NoError(c, err) {
			return
		}
		var sawFixed bool
		for i, ev := range evs {
			assert.Equal(c, uint64(i+1), ev.Seq, "event %d (%s)", i, ev.Type)
			sawFixed = sawFixed || strings.Contains(ev.Text, "Fixed.")
		}
		assert.True(c, sawFixed, "the resumed phase's text arrived")
	}, "events 1..n without gaps or repeats")
}

// Approvals fail closed: with no room left in the audit stream, a decision
// is refused (audit_unavailable) and the run stays paused.
func TestDecisionFailsClosedWhenTheAuditIsFull(t *testing.T) {
	h := newHarness(t, queue.Config{AuditMaxBytes: 16 << 10})
	h.startWorker(worker.Options{})
	h.submit(pausingJob("full-1"))
	req := h.approval("full-1")
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "full-1", All: schemas.DecideAllow})
	errs := h.decisionErrors("full-1", 1)
	assert.Equal(t, worker.CodeAuditUnavailable, errs[0].Error.Code)
	assert.Contains(t, errs[0].Error.Message, "audit stream")
	assert.Len(t, h.results("full-1"), 1, "still paused")
	assert.Zero(t, countRequests(h, "/tools/decisions"), "nothing was sent to the agent server")
}
