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
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/worker"
)

func TestEveryResultStatus(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{Concurrency: 4})

	t.Run("completed", func(t *testing.T) {
		j := job("st-completed", "say hi\n#sim text Hello there, operator.\n#sim usage 100 20")
		j.Metadata = map[string]string{"channel": "C1"}
		h.submit(j)
		res := h.final(j.ID)
		assert.Equal(t, schemas.StatusCompleted, res.Status)
		require.NotNil(t, res.ExitCode)
		assert.Equal(t, 0, *res.ExitCode)
		assert.Equal(t, "Hello there, operator.", res.Stdout)
		require.NotNil(t, res.Usage)
		assert.EqualValues(t, 120, res.Usage.TotalTokens)
		assert.Equal(t, "completed", res.StopReason)
		assert.NotEmpty(t, res.SessionID)
		assert.NotEmpty(t, res.RunID)
		assert.Equal(t, 1, res.Attempt)
		assert.Equal(t, map[string]string{"channel": "C1"}, res.Metadata)
		assert.False(t, res.DeadLettered)
		assert.NoError(t, schemas.Validate("result", res))
	})
	t.Run("failed", func(t *testing.T) {
		h.submit(job("st-failed", "#sim text partial\n#sim error model exploded"))
		res := h.final("st-failed")
		assert.Equal(t, schemas.StatusFailed, res.Status)
		assert.Contains(t, res.Stderr, "model exploded")
		require.NotNil(t, res.Error)
		assert.True(t, res.DeadLettered)
		dead := h.dead("st-failed")
		require.Len(t, dead, 1)
		assert.Contains(t, dead[0].Error, "model exploded")
		assert.NotEmpty(t, dead[0].Job, "the dead letter keeps the job as received")
	})
	t.Run("timed_out", func(t *testing.T) {
		before := h.sim.Cancels()
		j := job("st-timeout", "#sim text working on it\n#sim hang")
		j.Timeout = "700ms"
		h.submit(j)
		res := h.final(j.ID)
		assert.Equal(t, schemas.StatusTimedOut, res.Status)
		assert.Nil(t, res.ExitCode)
		assert.True(t, res.TimedOut)
		assert.NotEmpty(t, res.SessionID, "a timed-out result still names the session")
		assert.NotEmpty(t, res.RunID)
		assert.Equal(t, "working on it", res.Stdout)
		assert.Greater(t, h.sim.Cancels(), before, "the simulator saw the run cancelled")
	})
	t.Run("paused", func(t *testing.T) {
		j := job("st-paused", "#sim tool stakpak__run_command {\"command\":\"rm -rf /tmp/x\"}")
		j.PauseOnApproval = true
		h.submit(j)
		res := h.result(j.ID)
		assert.Equal(t, schemas.StatusPaused, res.Status)
		require.NotNil(t, res.ExitCode)
		assert.Equal(t, 10, *res.ExitCode)
		require.NotNil(t, res.PauseReason)
		require.Len(t, res.PauseReason.PendingToolCalls, 1)
		assert.Equal(t, "stakpak__run_command", res.PauseReason.PendingToolCalls[0].Name)
		assert.NotEmpty(t, res.ResumeHint)
		// The approval request follows the paused result.
		req := h.approval(j.ID)
		assert.Equal(t, res.PauseReason.PendingToolCalls, req.PendingToolCalls)
	})
	t.Run("cancelled", func(t *testing.T) {
		h.submit(job("st-cancelled", "#sim text stopping\n#sim stop cancelled"))
		res := h.final("st-cancelled")
		assert.Equal(t, schemas.StatusCancelled, res.Status)
		require.NotNil(t, res.ExitCode)
		assert.Equal(t, 1, *res.ExitCode)
	})
	t.Run("rejected", func(t *testing.T) {
		publishRaw(t, h, "default", []byte(`{"id":"st-rejected","prompt":"","promt":"typo"}`))
		res := h.final("st-rejected")
		assert.Equal(t, schemas.StatusRejected, res.Status)
		require.NotNil(t, res.Error)
		fields := map[string]bool{}
		for _, f := range res.Error.Fields {
			fields[f.Field] = true
		}
		assert.True(t, fields["prompt"], "names the empty prompt: %+v", res.Error.Fields)
		assert.Contains(t, res.Error.Message, `unknown field "promt"`)
	})
}

// publishRaw publishes bytes on a jobs subject with plain nats.go, as an
// outside producer would.
func publishRaw(t *testing.T, h *harness, profile string, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := h.js.Publish(ctx, "jetpilot.jobs."+profile, data)
	require.NoError(t, err)
}

func TestRawJSONJobFromPlainNATS(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	publishRaw(t, h, "default", []byte(`{"id":"raw-1","prompt":"hello\n#sim text raw works","metadata":{"thread":"t-9"}}`))
	res := h.final("raw-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, "raw works", res.Stdout)
	assert.Equal(t, "t-9", res.Metadata["thread"])
}

func TestInvalidJobGetsExactlyOneRejectedResult(t *testing.T) {
	h := newHarness(t, queue.Config{AckWait: time.Second})
	h.startWorker(worker.Options{})
	publishRaw(t, h, "default", []byte(`{"id":"bad-1","prompt":"x","timeout":"5 minutes","overrides":{"max_turns":0}}`))
	publishRaw(t, h, "default", []byte(`this is not json`))
	res := h.final("bad-1")
	assert.Equal(t, schemas.StatusRejected, res.Status)
	require.NotNil(t, res.ExitCode)
	assert.Equal(t, 1, *res.ExitCode)
	assert.True(t, res.DeadLettered)
	require.Len(t, h.dead("bad-1"), 1)

	// The garbage has no id: it gets a result under a made-up one, and a dead letter.
	eventuallyWithT(t, func(c *assert.CollectT) {
		msgs, err := h.tryAll(h.qcfg.DeadStream(), "")
		assert.NoError(c, err)
		assert.Len(c, msgs, 2)
	}, "two dead letters")
	// Nothing is redelivered: wait past AckWait, then count again.
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cons, err := h.js.Consumer(ctx, h.qcfg.JobsStream(), h.qcfg.WorkersDurable())
	require.NoError(t, err)
	eventually(t, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	}, "both jobs settled")
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	assert.Zero(t, info.NumRedelivered)
	assert.Len(t, h.results("bad-1"), 1)
	assert.Zero(t, h.sim.SessionCount(), "an invalid job never reaches the agent server")
}

func TestThreeWorkersThreeHundredJobs(t *testing.T) {
	h := newHarness(t, queue.Config{})
	for range 3 {
		h.startWorker(worker.Options{Concurrency: 8})
	}
	const n = 300
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for i := range n {
		_, err := h.client.Submit(ctx, job(fmt.Sprintf("fleet-%03d", i), fmt.Sprintf("#sim sleep 20ms\n#sim text job %d done", i)))
		require.NoError(t, err)
	}
	byWorker := map[string]int{}
	for i := range n {
		id := fmt.Sprintf("fleet-%03d", i)
		res := h.final(id)
		require.Equal(t, schemas.StatusCompleted, res.Status, id)
		require.Equal(t, fmt.Sprintf("job %d done", i), res.Stdout)
		byWorker[res.Worker]++
	}
	// Exactly one result per job, and one run per job.
	s, err := h.js.Stream(ctx, h.qcfg.ResultsStream())
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, n, info.State.Msgs)
	assert.Equal(t, n, h.sim.RunsStarted())
	assert.Len(t, byWorker, 3, "every worker took jobs: %v", byWorker)
}

func TestLongRunIsNotRedeliveredUnderShortAckWait(t *testing.T) {
	h := newHarness(t, queue.Config{AckWait: time.Second})
	h.startWorker(worker.Options{})
	h.submit(job("long-1", "#sim text start\n#sim sleep 3500ms\n#sim text end"))
	res := h.final("long-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, 1, res.Attempt)
	assert.Equal(t, 1, h.sim.RunsStarted())
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cons, err := h.js.Consumer(ctx, h.qcfg.JobsStream(), h.qcfg.WorkersDurable())
	require.NoError(t, err)
	info, err := cons.Info(ctx)
	require.NoError(t, err)
	assert.Zero(t, info.NumRedelivered, "heartbeats kept the job from being redelivered")
}

func TestTransientFailuresAreRetriedThenComplete(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.sim.InjectFault(agentsim.Fault{Route: "create_session", Kind: "503", Count: 2})
	h.startWorker(worker.Options{})
	h.submit(job("flaky-1", "#sim text made it"))
	res := h.final("flaky-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, 3, res.Attempt, "two failed deliveries, then success")
	assert.Equal(t, 1, h.sim.RunsStarted())
	assert.Empty(t, h.dead("flaky-1"))
}

// A job whose run cannot start is retried for the start budget, counted
// from its first failed start, then failed and dead-lettered.
func TestStartBudgetSpentDeadLetters(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.sim.InjectFault(agentsim.Fault{Route: "create_session", Kind: "503", Count: 1000})
	h.startWorker(worker.Options{StartBudget: time.Second, MaxDeliver: 2})
	h.submit(job("doomed-1", "#sim text never"))
	res := h.final("doomed-1")
	assert.Equal(t, schemas.StatusFailed, res.Status)
	assert.Greater(t, res.Attempt, 2, "an outage does not count against --max-deliver")
	require.NotNil(t, res.Error)
	assert.Equal(t, "agent_unavailable", res.Error.Code)
	assert.True(t, res.DeadLettered)
	dead := h.dead("doomed-1")
	require.Len(t, dead, 1)
	assert.Equal(t, "agent_unavailable", dead[0].Reason)
	assert.Zero(t, h.sim.RunsStarted())
}

func TestPermanentAgentErrorFailsWithoutRetry(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	// The simulator answers 400 invalid_request to a directive it does not know.
	j := job("bad-request-1", "#sim no-such-directive")
	h.submit(j)
	res := h.final(j.ID)
	assert.Equal(t, schemas.StatusFailed, res.Status)
	assert.Equal(t, 1, res.Attempt)
	require.NotNil(t, res.Error)
	assert.Equal(t, "invalid_request", res.Error.Code)
}

func TestToolPolicyIsCappedByWorker(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{AllowedTools: []string{"view"}})
	// The job asks for more than the worker allows: only the intersection runs.
	j := job("policy-1", "#sim tool stakpak__view {\"path\":\"/etc\"}\n#sim tool stakpak__run_command {\"command\":\"ls\"}\n#sim text done")
	j.AllowedTools = []string{"view", "run_command"}
	h.submit(j)
	res := h.final(j.ID)
	require.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, 1, res.ToolCalls.Accepted)
	assert.Equal(t, 1, res.ToolCalls.Rejected)
	var sawBlock bool
	for _, r := range h.sim.Requests() {
		if strings.HasSuffix(r.Path, "/tools/decisions") && strings.Contains(string(r.Body), "Blocked by profile allowed_tools (tool: run_command)") {
			sawBlock = true
		}
	}
	assert.True(t, sawBlock, "the rejection names the bare tool")
}

func TestGracefulShutdownFinishesRunningJobs(t *testing.T) {
	h := newHarness(t, queue.Config{})
	w := h.startWorker(worker.Options{Concurrency: 4, ShutdownGrace: waitFor})
	for i := range 3 {
		h.submit(job(fmt.Sprintf("grace-%d", i), "#sim text a\n#sim sleep 1500ms\n#sim text b"))
	}
	eventually(t, func() bool { return h.sim.ActiveRuns() == 3 }, "three runs going")
	w.Stop(t)
	for i := range 3 {
		res := h.final(fmt.Sprintf("grace-%d", i))
		assert.Equal(t, schemas.StatusCompleted, res.Status)
		assert.Equal(t, "ab", res.Stdout)
	}
	assert.Equal(t, 3, h.sim.RunsStarted())
}

func TestShutdownHandsRunsToAnotherWorker(t *testing.T) {
	h := newHarness(t, queue.Config{})
	w := h.startWorker(worker.Options{Name: "leaving", Concurrency: 4, ShutdownGrace: 100 * time.Millisecond})
	for i := range 2 {
		h.submit(job(fmt.Sprintf("handoff-%d", i), "#sim text first,\n#sim sleep 2s\n#sim text second."))
	}
	eventually(t, func() bool { return h.sim.ActiveRuns() == 2 }, "two runs going")
	w.Stop(t)
	assert.Equal(t, 2, h.sim.ActiveRuns(), "handoff leaves the runs going")
	h.startWorker(worker.Options{Name: "staying"})
	for i := range 2 {
		res := h.final(fmt.Sprintf("handoff-%d", i))
		assert.Equal(t, schemas.StatusCompleted, res.Status)
		assert.Equal(t, "staying", res.Worker)
		assert.Equal(t, "first,second.", res.Stdout, "the re-attached run keeps its whole text")
	}
	assert.Equal(t, 2, h.sim.RunsStarted(), "no run started twice")
}

func TestShutdownCancelModeCancelsRuns(t *testing.T) {
	h := newHarness(t, queue.Config{})
	w := h.startWorker(worker.Options{Concurrency: 2, ShutdownGrace: 100 * time.Millisecond, ShutdownMode: worker.ShutdownCancel})
	h.submit(job("shutcancel-1", "#sim text x\n#sim hang"))
	eventually(t, func() bool { return h.sim.ActiveRuns() == 1 }, "run going")
	w.Stop(t)
	eventually(t, func() bool { return h.sim.ActiveRuns() == 0 }, "run cancelled on the agent server")
	h.startWorker(worker.Options{})
	res := h.final("shutcancel-1")
	assert.Equal(t, schemas.StatusCancelled, res.Status)
	assert.Equal(t, 1, h.sim.RunsStarted())
}

func TestProfilesLimitWhatAWorkerTakes(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{Name: "gpu", Profiles: []string{"gpu"}})
	h.startWorker(worker.Options{Name: "cheap", Profiles: []string{"cheap"}})
	var wg sync.WaitGroup
	for _, p := range []string{"gpu", "cheap"} {
		j := job("prof-"+p, "#sim text hi")
		j.Profile = p
		h.submit(j)
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := h.tryFinal("prof-" + p)
			assert.NoError(t, err, "wait for final result of prof-%s", p)
			assert.Equal(t, p, res.Worker)
		}()
	}
	wg.Wait()
}

func TestHugeOutputIsTruncatedNotRedeliveredForever(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{MaxOutputBytes: 64 << 10})
	h.submit(job("huge-1", "#sim bigtext 3000000\n#sim text THE END"))
	res := h.final("huge-1")
	require.Equal(t, schemas.StatusCompleted, res.Status)
	assert.LessOrEqual(t, len(res.Stdout), 64<<10)
	assert.True(t, strings.HasSuffix(res.Stdout, "THE END"), "the end of the text is kept")
	require.NotEmpty(t, res.Warnings)
	assert.Contains(t, res.Warnings[len(res.Warnings)-1], "stdout truncated")
	assert.Len(t, h.results("huge-1"), 1)
}

func TestHugeUnparseableJobStillGetsItsAnswer(t *testing.T) {
	h := newHarness(t, queue.Config{AckWait: time.Second})
	h.startWorker(worker.Options{})
	// 300 KB of control bytes: escaped in a dead letter they would be ~1.8 MB.
	raw := []byte(strings.Repeat("\x01", 300_000))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ack, err := h.js.Publish(ctx, "jetpilot.jobs.default", raw)
	require.NoError(t, err)
	id := fmt.Sprintf("invalid-%d", ack.Sequence)
	res := h.final(id)
	assert.Equal(t, schemas.StatusRejected, res.Status)
	dead := h.dead(id)
	require.Len(t, dead, 1)
	assert.Equal(t, raw, dead[0].Received(), "exactly as received: base64 is smaller than its JSON escaping")
	assert.False(t, dead[0].JobTruncated)
	assert.Len(t, h.results(id), 1)
}

// TestRecreatedConsumerReattaches: a job handed back at shutdown comes back
// as a first delivery when its consumer was deleted and created again; it
// must re-attach to its run, not start another.
func TestRecreatedConsumerReattaches(t *testing.T) {
	h := newHarness(t, queue.Config{})
	w := h.startWorker(worker.Options{ShutdownGrace: 50 * time.Millisecond})
	h.submit(job("recreate-1", "#sim text one,\n#sim sleep 1500ms\n#sim text two."))
	eventually(t, func() bool { return h.sim.ActiveRuns() == 1 }, "run going")
	w.Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, h.js.DeleteConsumer(ctx, h.qcfg.JobsStream(), h.qcfg.WorkersDurable()))
	h.startWorker(worker.Options{})
	res := h.final("recreate-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, 1, res.Attempt, "a first delivery on the new consumer")
	assert.Equal(t, "one,two.", res.Stdout)
	assert.Equal(t, 1, h.sim.RunsStarted())
}

func TestApprovalExpiresWithTheJob(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{ApprovalTimeout: time.Hour})
	j := pausingJob("deadline-1")
	j.Timeout = "1500ms"
	h.submit(j)
	req := h.approval("deadline-1")
	assert.LessOrEqual(t, req.ExpiresAt.Sub(req.RequestedAt), 1500*time.Millisecond, "expires no later than the job's deadline")
	res := h.final("deadline-1")
	// The expiry rejects the call at the deadline; the run's last moments
	// race the timeout, so it ends either way, never with the call run.
	assert.Contains(t, []schemas.Status{schemas.StatusTimedOut, schemas.StatusCompleted}, res.Status, "error %+v, stderr %q", res.Error, res.Stderr)
	// At the deadline the run is cancelled (and woken) rather than decided,
	// or the expiry's reject lands first: either way the call never runs.
	decisions := h.sim.Decisions(res.SessionID)
	for _, d := range decisions {
		assert.NotEqual(t, "accept", d[req.PendingToolCalls[0].ID].Action, "the pending call never ran")
	}
}
