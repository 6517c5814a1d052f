package worker_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// twoToolPrompt proposes two calls in one turn: view (which a job may allow)
// and run_command (which then waits for a human).
const twoToolPrompt = "check then fix\n#sim text Checking.\n" +
	"#sim tool stakpak__view {\"path\":\"/var/log\"}\n" +
	"#sim tool stakpak__run_command {\"command\":\"systemctl restart app\"}\n" +
	"#sim text Fixed."

func pausingJob(id string) schemas.Job {
	j := job(id, twoToolPrompt)
	j.PauseOnApproval = true
	j.AllowedTools = []string{"view"}
	j.Metadata = map[string]string{"thread": "T-1"}
	return j
}

// approval waits for the job's approval request.
func (h *harness) approval(jobID string) schemas.ApprovalRequest {
	h.t.Helper()
	var req schemas.ApprovalRequest
	eventuallyWithT(h.t, func(c *assert.CollectT) {
		reqs, err := tryDecodeAll[schemas.ApprovalRequest](h, h.qcfg.ApprovalsStream(), h.qcfg.ApprovalSubject(jobID))
		if assert.NoError(c, err) && assert.NotEmpty(c, reqs) {
			req = reqs[len(reqs)-1]
		}
	}, "approval request for %s", jobID)
	return req
}

func (h *harness) decide(d schemas.Decision) {
	h.t.Helper()
	require.NoError(h.t, h.tryDecide(d))
}

// tryDecide is decide for another goroutine: it fails no test.
func (h *harness) tryDecide(d schemas.Decision) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	return h.client.Decide(ctx, d)
}

// decisionErrors waits for n decision_error events on the job.
func (h *harness) decisionErrors(jobID string, n int) []schemas.Event {
	h.t.Helper()
	var errs []schemas.Event
	eventuallyWithT(h.t, func(c *assert.CollectT) {
		errs = errs[:0]
		evs, err := h.tryEvents(jobID)
		assert.NoError(c, err)
		for _, e := range evs {
			if e.Type == schemas.EventDecisionError {
				errs = append(errs, e)
			}
		}
		assert.GreaterOrEqual(c, len(errs), n)
	}, "%d decision errors on %s", n, jobID)
	return errs
}

func TestApprovalCycleResumesOnAnotherWorker(t *testing.T) {
	h := newHarness(t, queue.Config{})
	pauser := h.startWorker(worker.Options{Name: "pauser"})
	h.submit(pausingJob("hitl-1"))
	paused := h.result("hitl-1")
	require.Equal(t, schemas.StatusPaused, paused.Status)
	assert.Equal(t, "pauser", paused.Worker)
	assert.Equal(t, "Checking.", paused.Stdout)
	assert.Zero(t, paused.ToolCalls.Accepted, "view is in the job's list, but its acceptance is held for the human's answer")
	req := h.approval("hitl-1")
	require.Len(t, req.PendingToolCalls, 1)
	assert.Equal(t, "stakpak__run_command", req.PendingToolCalls[0].Name)
	assert.Equal(t, 1, req.AutoResolved)
	assert.Equal(t, "T-1", req.Metadata["thread"])
	assert.True(t, req.ExpiresAt.After(req.RequestedAt))
	assert.Contains(t, req.ResumeHint, req.ApprovalID)
	require.NoError(t, schemas.Validate("approval", req))

	pauser.Stop(t)
	h.startWorker(worker.Options{Name: "resumer"})
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "hitl-1", All: schemas.DecideAllow, DecidedBy: "alice"})
	res := h.final("hitl-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, "resumer", res.Worker)
	assert.Equal(t, "Checking.Fixed.", res.Stdout)
	assert.Equal(t, 2, res.ToolCalls.Accepted)
	assert.Equal(t, 1, h.sim.RunsStarted())
	// The simulator saw the policy's decision and the human's, on one run.
	decisions := h.sim.Decisions(res.SessionID)
	require.Len(t, decisions, 1)
	require.Len(t, decisions[0], 2)
	for _, d := range decisions[0] {
		assert.Equal(t, "accept", d.Action)
	}
	assert.Equal(t, 1, countRequests(h, "/tools/decisions"), "the policy's verdict and the human's went in one request")
	// Each phase's result has its own message id: the paused one and the final one.
	assert.Len(t, h.results("hitl-1"), 2)
}

func TestApprovalDenyAndPerCall(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})

	h.submit(pausingJob("deny-1"))
	req := h.approval("deny-1")
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "deny-1", All: schemas.DecideDeny, DecidedBy: "bob"})
	res := h.final("deny-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, 1, res.ToolCalls.Rejected)

	j := job("percall-1", "#sim tool stakpak__run_command {\"command\":\"a\"}\n#sim tool stakpak__delete {\"path\":\"b\"}\n#sim text ok")
	j.PauseOnApproval = true
	h.submit(j)
	req = h.approval("percall-1")
	require.Len(t, req.PendingToolCalls, 2)
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "percall-1", Decisions: map[string]schemas.ToolDecision{
		req.PendingToolCalls[0].ID: {Action: schemas.ActionAccept},
		req.PendingToolCalls[1].ID: {Action: schemas.ActionCustomResult, Content: "pretend it was deleted"},
	}})
	res = h.final("percall-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	decisions := h.sim.Decisions(res.SessionID)
	require.NotEmpty(t, decisions)
	last := decisions[len(decisions)-1]
	assert.Equal(t, "accept", last[req.PendingToolCalls[0].ID].Action)
	assert.Equal(t, "custom_result", last[req.PendingToolCalls[1].ID].Action)
	assert.Equal(t, "pretend it was deleted", last[req.PendingToolCalls[1].ID].Content)
}

func TestApprovalExpiry(t *testing.T) {
	for _, tc := range []struct {
		action worker.ExpiryAction
		want   schemas.Status
	}{{worker.ExpireReject, schemas.StatusCompleted}, {worker.ExpireCancel, schemas.StatusCancelled}} {
		t.Run(string(tc.action), func(t *testing.T) {
			h := newHarness(t, queue.Config{})
			h.startWorker(worker.Options{ApprovalTimeout: 500 * time.Millisecond, OnApprovalExpiry: tc.action})
			h.startWorker(worker.Options{ApprovalTimeout: 500 * time.Millisecond, OnApprovalExpiry: tc.action})
			h.submit(pausingJob("exp-1"))
			req := h.approval("exp-1")
			res := h.final("exp-1")
			assert.Equal(t, tc.want, res.Status)
			var expired int
			for _, e := range h.events("exp-1") {
				if e.Type == schemas.EventApprovalExpired {
					expired++
					assert.Equal(t, req.ApprovalID, e.ApprovalID)
				}
			}
			assert.Equal(t, 1, expired, "exactly one worker applied the expiry")
			// A decision after expiry changes nothing and is answered.
			h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "exp-1", All: schemas.DecideAllow})
			errs := h.decisionErrors("exp-1", 1)
			assert.Equal(t, "approval_settled", errs[0].Error.Code)
			assert.Len(t, h.results("exp-1"), 2)
		})
	}
}

func TestRacingDecisionsExactlyOneWins(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{Name: "a"})
	h.startWorker(worker.Options{Name: "b"})
	h.submit(pausingJob("race-1"))
	req := h.approval("race-1")
	var wg sync.WaitGroup
	for _, all := range []string{schemas.DecideAllow, schemas.DecideDeny} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.NoError(t, h.tryDecide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "race-1", All: all, DecidedBy: all}))
		}()
	}
	wg.Wait()
	res := h.final("race-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	errs := h.decisionErrors("race-1", 1)
	assert.Len(t, errs, 1)
	assert.Equal(t, "approval_settled", errs[0].Error.Code)
	// The winner's decision is the one the run got: all accepted or all rejected.
	decisions := h.sim.Decisions(res.SessionID)
	require.Len(t, decisions, 1)
	human := decisions[0][req.PendingToolCalls[0].ID].Action
	if errs[0].ApprovalID == req.ApprovalID && res.ToolCalls.Rejected == 1 {
		assert.Equal(t, "custom_result", human, "a deny reaches the model with its reason")
	} else {
		assert.Equal(t, "accept", human)
	}
}

func TestInvalidDecisionsChangeNothing(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	h.submit(pausingJob("inv-1"))
	req := h.approval("inv-1")
	h.decide(schemas.Decision{ApprovalID: "apr_nope", JobID: "inv-1", All: schemas.DecideAllow})
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "inv-1", Decisions: map[string]schemas.ToolDecision{"call_999": {Action: schemas.ActionAccept}}})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := h.js.Publish(ctx, h.qcfg.DecisionSubject("inv-1"), []byte(`{"job_id":"inv-1","approval_id":"x","all":"maybe"}`))
	require.NoError(t, err)
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "no-such-job", All: schemas.DecideAllow})

	errs := h.decisionErrors("inv-1", 3)
	codes := map[string]bool{}
	for _, e := range errs {
		codes[e.Error.Code] = true
	}
	assert.True(t, codes["approval_mismatch"], "%v", codes)
	assert.True(t, codes["invalid_decision"], "%v", codes)
	// Still paused: nothing was sent to the agent server for the human phase.
	assert.Len(t, h.results("inv-1"), 1)
	// And the right decision still works.
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "inv-1", All: schemas.DecideAllow})
	assert.Equal(t, schemas.StatusCompleted, h.final("inv-1").Status)
}

// cancelJob sends a cancel request the way `jetpilot cancel` does.
func (h *harness) cancelJob(nc *nats.Conn, jobID string) worker.CancelReply {
	h.t.Helper()
	msg, err := nc.Request(h.qcfg.CancelSubject(jobID), []byte(`{"job_id":"`+jobID+`"}`), 10*time.Second)
	require.NoError(h.t, err)
	var r worker.CancelReply
	require.NoError(h.t, json.Unmarshal(msg.Data, &r))
	return r
}

func TestCancelRunningAndPausedJobs(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	nc := h.js.Conn()

	h.submit(job("cancel-run", "#sim text going\n#sim hang"))
	eventuallyWithT(t, func(c *assert.CollectT) {
		evs, err := h.tryEvents("cancel-run")
		assert.NoError(c, err)
		assert.True(c, slices.ContainsFunc(evs, func(e schemas.Event) bool { return e.Type == schemas.EventText }))
	}, "run going, its text streamed")
	r := h.cancelJob(nc, "cancel-run")
	require.Nil(t, r.Error)
	assert.Equal(t, "cancelling", r.Outcome)
	res := h.final("cancel-run")
	assert.Equal(t, schemas.StatusCancelled, res.Status)
	assert.Equal(t, "going", res.Stdout)

	h.submit(pausingJob("cancel-paused"))
	h.approval("cancel-paused")
	r = h.cancelJob(nc, "cancel-paused")
	require.Nil(t, r.Error)
	res = h.final("cancel-paused")
	assert.Equal(t, schemas.StatusCancelled, res.Status)

	// Finished and unknown jobs get a clear answer, not a timeout.
	r = h.cancelJob(nc, "cancel-run")
	require.NotNil(t, r.Error)
	assert.Equal(t, "job_finished", r.Error.Code)
	r = h.cancelJob(nc, "never-heard-of-it")
	require.NotNil(t, r.Error)
	assert.Equal(t, "unknown_job", r.Error.Code)
}

func TestLiveEventsInOrder(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	h.submit(job("live-1", "#sim text Looking around.\n#sim tool stakpak__view {\"path\":\"/\"}\n#sim text All good."))
	require.Equal(t, schemas.StatusCompleted, h.final("live-1").Status)
	var evs []schemas.Event
	eventuallyWithT(t, func(c *assert.CollectT) {
		var err error
		evs, err = h.tryEvents("live-1")
		if assert.NoError(c, err) && assert.NotEmpty(c, evs) {
			last := evs[len(evs)-1]
			assert.True(c, last.Type == schemas.EventStatus && last.Status == "completed", "last event %+v", last)
		}
	}, "final status event")
	var types []string
	var text strings.Builder
	for i, e := range evs {
		assert.EqualValues(t, i+1, e.Seq, "seq counts from 1 without gaps")
		require.NoError(t, schemas.Validate("event", e))
		types = append(types, string(e.Type))
		text.WriteString(e.Text)
	}
	joined := strings.Join(types, ",")
	assert.True(t, strings.HasPrefix(joined, "status,turn_started"), joined)
	assert.Contains(t, joined, "tool_started,tool_completed")
	assert.Contains(t, text.String(), "Looking around.")
	assert.Contains(t, text.String(), "All good.")
	iTool := strings.Index(joined, "tool_started")
	iText := strings.LastIndex(joined, "text")
	assert.Less(t, iTool, iText, "text after the tool comes after it")
}

// TestRawApprovalCycle drives a whole cycle the way an outside bot would:
// raw JSON on subjects with plain nats.go, no jetpilot client.
func TestRawApprovalCycle(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	nc := h.js.Conn()
	approvals := make(chan *nats.Msg, 4)
	results := make(chan *nats.Msg, 4)
	sub1, err := nc.ChanSubscribe("jetpilot.approvals.bot-1", approvals)
	require.NoError(t, err)
	defer sub1.Unsubscribe()
	sub2, err := nc.ChanSubscribe("jetpilot.results.bot-1", results)
	require.NoError(t, err)
	defer sub2.Unsubscribe()
	require.NoError(t, nc.Flush())

	publishRaw(t, h, "default", []byte(`{"id":"bot-1","prompt":"#sim tool stakpak__run_command {\"command\":\"deploy\"}\n#sim text deployed","pause_on_approval":true,"metadata":{"channel":"C9"}}`))
	var approval map[string]any
	select {
	case m := <-approvals:
		require.NoError(t, json.Unmarshal(m.Data, &approval))
	case <-time.After(waitFor):
		t.Fatal("no approval request")
	}
	assert.Equal(t, "C9", approval["metadata"].(map[string]any)["channel"])
	decision := `{"approval_id":"` + approval["approval_id"].(string) + `","job_id":"bot-1","all":"allow","decided_by":"slack:U1"}`
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err = h.js.Publish(ctx, "jetpilot.decisions.bot-1", []byte(decision))
	require.NoError(t, err)
	var statuses []string
	for len(statuses) < 2 {
		select {
		case m := <-results:
			var r map[string]any
			require.NoError(t, json.Unmarshal(m.Data, &r))
			statuses = append(statuses, r["status"].(string))
		case <-time.After(waitFor):
			t.Fatalf("results so far: %v", statuses)
		}
	}
	assert.Equal(t, []string{"paused", "completed"}, statuses)
}

// TestPauseAfterDecisionSurvivesAFailedPublish: the second pause of a run,
// reached after a decision, cannot be published (its stream is gone); the
// decision is redelivered and the pause published then, not lost.
func TestPauseAfterDecisionSurvivesAFailedPublish(t *testing.T) {
	h := newHarness(t, queue.Config{AckWait: time.Second})
	h.startWorker(worker.Options{})
	j := job("twice-1", "#sim tool stakpak__first {}\n#sim text middle,\n#sim tool stakpak__second {}\n#sim text end.")
	j.PauseOnApproval = true
	h.submit(j)
	first := h.approval("twice-1")

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, h.js.DeleteStream(ctx, h.qcfg.ApprovalsStream()))
	h.decide(schemas.Decision{ApprovalID: first.ApprovalID, JobID: "twice-1", All: schemas.DecideAllow})
	// The worker resumes, reaches the second pause and fails to publish its
	// approval request, so the decision is not acked and comes back.
	deciders, err := h.js.Consumer(ctx, h.qcfg.DecisionsStream(), h.qcfg.DecidersDurable())
	require.NoError(t, err)
	eventually(t, func() bool {
		info, err := deciders.Info(ctx)
		return err == nil && info.NumRedelivered >= 1
	}, "the decision redelivered after the failed publish")
	require.NoError(t, queue.Setup(ctx, h.js, h.qcfg))

	second := h.approval("twice-1")
	require.NotEqual(t, first.ApprovalID, second.ApprovalID)
	assert.Equal(t, "stakpak__second", second.PendingToolCalls[0].Name)
	h.decide(schemas.Decision{ApprovalID: second.ApprovalID, JobID: "twice-1", All: schemas.DecideAllow})
	res := h.final("twice-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, "middle,end.", res.Stdout)
}
