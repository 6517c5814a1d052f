package faults

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim/agentsimtest"
)

// TestWorkerCrash: 3 worker processes share the load; one is SIGKILLed
// twice mid-load (and replaced each time). Every job ends in exactly one
// final result, and the simulator saw exactly one run per job.
func TestWorkerCrash(t *testing.T) {
	n := load(60, 200)
	maxSleep := load(600, 2000)
	started := time.Now()
	ns := newNatsServer(t, natsConfig{})
	sim, simURL := agentsimtest.New(t, agentsim.Options{})
	_, js := connect(t, ns.URL())
	ctx := testsupport.Context(t, 10*time.Minute)
	require.NoError(t, queue.Setup(ctx, js, queue.Config{AckWait: 2 * time.Second}))

	w := func(name string) *testsupport.Proc {
		return startWorker(t, workerOpts{name: name, natsURL: ns.URL(), agentURL: simURL, extra: []string{"--concurrency", "8"}})
	}
	workers := []*testsupport.Proc{w("w1"), w("w2"), w("w3")}
	jobs := makeJobs("crash", n, time.Duration(maxSleep)*time.Millisecond)
	submitAll(ctx, t, queue.NewClient(js, queue.Config{}), jobs)

	// Kill worker 1 once a fifth of the jobs are done and again at half,
	// each time while it has runs going, and replace it.
	for k, at := range []int{n / 5, n / 2} {
		waitResults(ctx, t, js, at, 3*time.Minute)
		require.Eventually(t, func() bool { return sim.ActiveRuns() > 0 }, waitFor, 5*time.Millisecond, "runs in flight")
		workers[0].Kill(t)
		workers[0] = w(fmt.Sprintf("w1-restart%d", k+1))
	}

	f := settleAndCount(ctx, t, js, sim, jobs, 5*time.Minute)
	f.Scenario, f.Elapsed = "1. worker crash", time.Since(started)
	f.Load = fmt.Sprintf("%d jobs (0-%dms, tools), 3 worker processes x 8", n, maxSleep)
	f.Faults = "SIGKILL a worker twice mid-load (AckWait 2s)"
	f.Command = "go test -race -run TestWorkerCrash -v ./faults/"
	report(t, f)
	require.Positive(t, f.Reattached, "the kills hit jobs in flight, which another worker finished")
}
