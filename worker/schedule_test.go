package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// A schedule firing every second, two workers: every firing JOBS takes in
// is one job, named <schedule>:<second>, run once, with one result that
// carries the schedule's name.
func TestScheduleFiresOneJobPerFiringWithTwoWorkers(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{Concurrency: 2})
	h.startWorker(worker.Options{Concurrency: 2})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	store := queue.NewSchedules(h.js, h.qcfg)
	const prompt = "scheduled check\n#sim text all good"
	require.NoError(t, store.Add(ctx, queue.Schedule{Name: "every-second", Cron: "@every 1s",
		Job: schemas.Job{Prompt: prompt, Metadata: map[string]string{"team": "sre"}}}))

	jobs, err := h.js.Stream(ctx, h.qcfg.JobsStream())
	require.NoError(t, err)
	fired := func() uint64 {
		info, err := jobs.Info(ctx)
		if err != nil {
			return 0
		}
		return info.State.LastSeq // only firings enter JOBS here
	}
	eventually(t, func() bool { return fired() >= 3 }, "three firings reach JOBS")
	require.NoError(t, store.Remove(ctx, "every-second"))

	// Wait until every firing taken in so far has its result; a firing
	// still on its way when the schedule was removed may add one more.
	var results []schemas.Result
	eventually(t, func() bool {
		n := fired()
		var err error
		results, err = tryDecodeAll[schemas.Result](h, h.qcfg.ResultsStream(), h.qcfg.ResultsWildcard())
		return err == nil && uint64(len(results)) == n && h.sim.RunsForPrompt("scheduled check") == int(n)
	}, "one result and one run per firing")

	seen := map[string]bool{}
	for _, res := range results {
		assert.False(t, seen[res.JobID], "one result for %s", res.JobID)
		seen[res.JobID] = true
		name, stamp, ok := strings.Cut(res.JobID, ":")
		assert.True(t, ok && name == "every-second", res.JobID)
		ts, err := time.Parse(time.RFC3339, stamp)
		require.NoError(t, err, res.JobID)
		assert.Equal(t, time.UTC, ts.Location(), res.JobID)
		assert.WithinDuration(t, time.Now(), ts, waitFor, res.JobID)
		assert.Equal(t, schemas.StatusCompleted, res.Status, res.JobID)
		assert.Equal(t, "all good", res.Stdout)
		assert.Equal(t, map[string]string{"team": "sre", queue.ScheduleMetadataKey: "every-second"}, res.Metadata)
	}
}

// A firing whose stored job is no longer a valid job (written by hand into
// SCHEDULES) gets one rejected result under its firing's id, naming the
// schedule: never a silent drop or a loop.
func TestInvalidScheduledJobIsRejectedUnderItsFiringID(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	msg := nats.NewMsg(h.qcfg.ScheduleSubject("broken"))
	msg.Header.Set(queue.HeaderSchedule, "@every 1s")
	msg.Header.Set(queue.HeaderScheduleTarget, h.qcfg.ScheduleFireSubject("broken", "default"))
	msg.Data = []byte(`{"prompt":"x","timeout":"soon"}`)
	_, err := h.js.PublishMsg(ctx, msg)
	require.NoError(t, err)
	var results []schemas.Result
	eventually(t, func() bool {
		var err error
		results, err = tryDecodeAll[schemas.Result](h, h.qcfg.ResultsStream(), h.qcfg.ResultsWildcard())
		return err == nil && len(results) > 0
	}, "a result")
	require.NoError(t, queue.NewSchedules(h.js, h.qcfg).Remove(ctx, "broken"))
	res := results[0]
	assert.True(t, strings.HasPrefix(res.JobID, "broken:"), res.JobID)
	assert.Equal(t, schemas.StatusRejected, res.Status)
	require.NotNil(t, res.Error)
	assert.Contains(t, res.Error.Message, "timeout")
	assert.Equal(t, "broken", res.Metadata[queue.ScheduleMetadataKey])
}
