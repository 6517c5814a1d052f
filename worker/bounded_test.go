package worker_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/policy"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// Poison jobs: valid jobs whose outcome, encoded, would not fit a NATS
// message get exactly one answer, on the first delivery.
func TestPoisonJobsSettleOnce(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})

	// Metadata full of characters JSON could escape: refused, field by field.
	md := job("poison-md", "#sim text hi")
	md.Metadata = map[string]string{"blob": strings.Repeat("<", 200<<10)}
	data, err := queue.Encode(md) // as a careful producer encodes it: ~200 KB
	require.NoError(t, err)
	_, err = h.js.Publish(t.Context(), h.qcfg.JobSubject("default"), data)
	require.NoError(t, err)
	res := h.final("poison-md")
	assert.Equal(t, schemas.StatusRejected, res.Status)
	require.NotNil(t, res.Error)
	require.NotEmpty(t, res.Error.Fields)
	assert.True(t, strings.HasPrefix(res.Error.Fields[0].Field, "metadata"), res.Error.Fields[0].Field)
	assert.Equal(t, 1, res.Attempt)

	// 256 KiB of agent text full of '<', and metadata near the cap.
	text := job("poison-text", "#sim bigtext 300000\n#sim text <<<<the end>>>>")
	text.Metadata = map[string]string{"thread": strings.Repeat("<", 4<<10)}
	h.submit(text)
	res = h.final("poison-text")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.True(t, strings.HasSuffix(res.Stdout, "<<<<the end>>>>"))
	assert.Equal(t, 1, res.Attempt)

	// A hundred pending calls with big arguments: one pause, one approval.
	var b strings.Builder
	for i := range 100 {
		fmt.Fprintf(&b, "#sim tool run_command {\"command\":\"%s\"}\n", strings.Repeat("<", 10_000)+fmt.Sprint(i))
	}
	calls := job("poison-calls", b.String())
	calls.PauseOnApproval = true
	data, err = queue.Encode(calls)
	require.NoError(t, err)
	_, err = h.js.Publish(t.Context(), h.qcfg.JobSubject("default"), data)
	require.NoError(t, err)
	paused := h.result("poison-calls")
	assert.Equal(t, schemas.StatusPaused, paused.Status)
	req := h.approval("poison-calls")
	require.Len(t, req.PendingToolCalls, 100)
	truncated := 0
	for _, c := range req.PendingToolCalls {
		if c.ArgumentsTruncated {
			truncated++
		}
	}
	// Unescaped, a megabyte of '<' is a megabyte: it fits whole (escaped,
	// it was six and was redelivered forever).
	assert.Zero(t, truncated)
	assert.Contains(t, string(req.PendingToolCalls[0].Arguments), strings.Repeat("<", 10_000))
	assert.Equal(t, 1, paused.Attempt)
	assert.Equal(t, 2, h.sim.RunsStarted(), "one run each for the jobs that ran")
}

// At the fleet-wide cap on paused runs, a new pause rejects its calls (the
// agent learns why) instead of holding another session.
func TestMaxPausedRejectsAtTheCap(t *testing.T) {
	h := newHarness(t, queue.Config{})
	capped, err := policy.Parse([]byte(`{"version":1,"decisions":"unsigned","tools":{"default":"allow"},"jobs":{"max_paused":1}}`))
	require.NoError(t, err)
	h.startWorker(worker.Options{Fallback: capped})
	first := job("cap-1", "#sim tool run_command {}\n#sim text never")
	first.PauseOnApproval = true
	h.submit(first)
	assert.Equal(t, schemas.StatusPaused, h.result("cap-1").Status)
	h.approval("cap-1")

	second := job("cap-2", "#sim text asking\n#sim tool run_command {}\n#sim text went on")
	second.PauseOnApproval = true
	h.submit(second)
	res := h.final("cap-2")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, 1, res.ToolCalls.Rejected)
	assert.Contains(t, strings.Join(res.Warnings, "\n"), "paused_cap")
	assert.Contains(t, res.Stdout, "asking")
	assert.Contains(t, res.Stdout, "went on")
	assert.Len(t, h.results("cap-2"), 1, "never paused")
}

// Every result of a job, pauses and later phases included, carries the
// digest of the job message as received.
func TestResultsCarryTheJobDigest(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	j := pausingJob("digest-1")
	data, err := queue.Encode(j)
	require.NoError(t, err)
	_, err = h.js.Publish(t.Context(), h.qcfg.JobSubject("default"), data)
	require.NoError(t, err)
	want := schemas.JobDigest(data)
	paused := h.result("digest-1")
	assert.Equal(t, want, paused.JobDigest)
	req := h.approval("digest-1")
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "digest-1", All: schemas.DecideAllow})
	final := h.final("digest-1")
	assert.Equal(t, schemas.StatusCompleted, final.Status)
	assert.Equal(t, want, final.JobDigest)
}

// An unreadable message is named after its stream sequence; a real job
// that happens to have that name still gets its own result and dead letter.
func TestUnreadableJobNameIsNotADuplicate(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	ack, err := h.js.Publish(t.Context(), h.qcfg.JobSubject("default"), []byte("garbage"))
	require.NoError(t, err)
	name := fmt.Sprintf("invalid-%d", ack.Sequence)
	rejected := h.final(name)
	assert.Equal(t, schemas.StatusRejected, rejected.Status)

	h.submit(job(name, "#sim text a real job"))
	require.Eventually(t, func() bool { return len(h.results(name)) == 2 }, waitFor, 20*time.Millisecond, "both results kept")
	var statuses []schemas.Status
	for _, r := range h.results(name) {
		statuses = append(statuses, r.Status)
	}
	assert.ElementsMatch(t, []schemas.Status{schemas.StatusRejected, schemas.StatusCompleted}, statuses)
}

// A call whose arguments were shortened to fit a message can only be denied.
func TestTruncatedArgumentsCanOnlyBeDenied(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	j := job("trunc-1", "#sim tool run_command {\"command\":\""+strings.Repeat("a", 20<<10)+"\"}\n#sim text done")
	j.PauseOnApproval = true
	h.submit(j)
	req := h.approval("trunc-1")
	require.Len(t, req.PendingToolCalls, 1)
	require.True(t, req.PendingToolCalls[0].ArgumentsTruncated)
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "trunc-1", All: schemas.DecideAllow})
	errs := h.decisionErrors("trunc-1", 1)
	assert.Equal(t, "invalid_decision", errs[0].Error.Code)
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "trunc-1", All: schemas.DecideDeny})
	res := h.final("trunc-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, 1, res.ToolCalls.Rejected)
}
