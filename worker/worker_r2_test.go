package worker_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// Worker tests against the real agent server's behaviour (AGENT_SERVER_API.md
// revision 2, reproduced by agentsim).

func fastRunner() spawn.RunnerOptions {
	return spawn.RunnerOptions{
		CancelGrace:      2 * time.Second,
		LivenessInterval: 200 * time.Millisecond,
		SettleWait:       3 * time.Second,
		EndedReplayWait:  200 * time.Millisecond,
	}
}

// A human approves while the auto-accepted call of the same proposal would
// still be running: the worker sends both decisions in one request, so the
// run goes on instead of waiting forever for a decision the server parked.
func TestFastApprovalWhileAcceptedToolRuns(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.runner = fastRunner()
	h.startWorker(worker.Options{})
	j := job("fast-1", "#sim tool-time 500ms\n#sim tool view {}\n#sim tool run_command {\"command\":\"make deploy\"}\n#sim text deployed")
	j.PauseOnApproval = true
	j.AllowedTools = []string{"view"}
	h.submit(j)
	req := h.approval("fast-1")
	assert.Equal(t, 1, req.AutoResolved)
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "fast-1", All: schemas.DecideAllow, DecidedBy: "alice"})
	res := h.final("fast-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status, "%v", res.Warnings)
	assert.Equal(t, 2, res.ToolCalls.Accepted)
	assert.Equal(t, 1, countRequests(h, "/tools/decisions"))
}

// A run that dies without an event ends the job failed/run_lost within the
// liveness bound; it is never reported completed and never run again.
func TestSilentRunDeathEndsTheJob(t *testing.T) {
	h := newHarnessWith(t, queue.Config{}, agentsim.Options{KeepAlive: 50 * time.Millisecond})
	h.runner = fastRunner()
	h.startWorker(worker.Options{})
	h.submit(job("silent-1", "#sim text started\n#sim die"))
	res := h.final("silent-1")
	assert.Equal(t, schemas.StatusFailed, res.Status)
	require.NotNil(t, res.Error)
	assert.Equal(t, spawn.CodeRunLost, res.Error.Code)
	assert.True(t, res.DeadLettered)
	assert.Equal(t, 1, h.sim.RunsStarted())
}

// After an agent-server restart the token is new: nothing is failed for the
// 401s, the worker stops taking jobs (and says why) until the token file
// has the new token, then the queued jobs run. The run the restart killed
// ends run_lost.
func TestAgentRestartWithNewToken(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("token-1"), 0o600))
	h := newHarnessWith(t, queue.Config{}, agentsim.Options{Token: "token-1"})
	h.tokenFile = tokenFile
	h.runner = fastRunner()
	rw := h.startWorker(worker.Options{})
	h.submit(job("before-1", "#sim text working\n#sim sleep 1m"))
	eventually(t, func() bool { return h.sim.ActiveRuns() == 1 }, "run going")

	h.sim.Restart("token-2")
	eventually(t, func() bool { return rw.w.AgentReady() != nil }, "worker sees the agent server refuse its token")
	assert.Contains(t, rw.w.AgentReady().Error(), "token")
	for _, id := range []string{"after-1", "after-2"} {
		h.submit(job(id, "#sim text fine"))
	}
	// Whoever restarts the server writes its new token to the file.
	require.NoError(t, os.WriteFile(tokenFile, []byte("token-2\n"), 0o600))
	lost := h.final("before-1")
	assert.Equal(t, schemas.StatusFailed, lost.Status)
	require.NotNil(t, lost.Error)
	assert.Equal(t, spawn.CodeRunLost, lost.Error.Code)
	for _, id := range []string{"after-1", "after-2"} {
		res := h.final(id)
		assert.Equal(t, schemas.StatusCompleted, res.Status, id)
		assert.Empty(t, h.dead(id), id)
	}
	assert.NoError(t, rw.w.AgentReady())
	assert.Equal(t, 3, h.sim.RunsStarted(), "one run per job")
}

// An agent outage shorter than the start budget dead-letters nothing: the
// worker stops pulling while the server is down and the jobs run after.
func TestAgentOutageDeadLettersNothing(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.runner = fastRunner()
	rw := h.startWorker(worker.Options{MaxDeliver: 2})
	eventually(t, func() bool { return rw.w.AgentReady() == nil }, "worker ready")
	h.sim.SetDown(true)
	// Submitted while the worker still believes the server is up: the
	// first starts fail, and would once have used up --max-deliver.
	ids := []string{"out-1", "out-2", "out-3"}
	for _, id := range ids {
		h.submit(job(id, "#sim text after the outage"))
	}
	eventually(t, func() bool { return rw.w.AgentReady() != nil }, "worker sees the outage")
	h.sim.SetDown(false)
	for _, id := range ids {
		res := h.final(id)
		assert.Equal(t, schemas.StatusCompleted, res.Status, id)
		assert.Empty(t, h.dead(id), id)
	}
}
