package console_test

import (
	"context"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/console"
	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// TestIndexListsByState: run records in every state, a queued job and a
// job taken but still in JOBS, listed and filtered; workers and paused
// jobs from the same records.
func TestIndexListsByState(t *testing.T) {
	_, _, js := testnats.Start(t)
	qcfg := queue.Config{}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, queue.Setup(ctx, js, qcfg))
	rs, err := queue.NewRunStore(ctx, js, qcfg)
	require.NoError(t, err)
	client := queue.NewClient(js, qcfg)

	record := func(id, profile, owner string, steps ...queue.Transition) {
		run := queue.NewRun(queue.RunRecord{JobID: id, Owner: owner, Attempt: 1,
			Job: schemas.Job{ID: id, Profile: profile, Metadata: map[string]string{"team": "team-" + id}}})
		for _, s := range steps {
			if s == queue.TransPause {
				run.Record.ApprovalID = "apr-" + id
			}
			require.NoError(t, rs.Transition(ctx, run, s), "%s %s", id, s)
		}
	}
	for _, id := range []string{"run-1", "queued-1"} {
		_, err := client.Submit(ctx, schemas.Job{ID: id, Prompt: "prompt of " + id, Profile: "ops"})
		require.NoError(t, err)
	}
	record("run-1", "ops", "w1", queue.TransStarted)
	record("pause-1", "default", "w1", queue.TransStarted, queue.TransPause)
	record("done-1", "default", "w2", queue.TransStarted, queue.TransFinish)

	x := console.NewIndex(js, qcfg, console.IndexOptions{})
	ictx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = x.Run(ictx) }()
	t.Cleanup(func() { stop(); <-done })

	ids := func(f console.Filter) []string {
		t.Helper()
		p, err := x.List(ctx, f)
		require.NoError(t, err)
		var out []string
		for _, j := range p.Jobs {
			out = append(out, string(j.State)+":"+j.ID)
		}
		slices.Sort(out)
		return out
	}
	assert.Equal(t, []string{"done:done-1", "paused:pause-1", "queued:queued-1", "running:run-1"}, ids(console.Filter{}),
		"run-1 is still in JOBS (taken, not acked) and listed once, as running")
	assert.Equal(t, []string{"queued:queued-1"}, ids(console.Filter{State: console.StateQueued}))
	assert.Equal(t, []string{"queued:queued-1", "running:run-1"}, ids(console.Filter{Profile: "ops"}))
	assert.Equal(t, []string{"paused:pause-1"}, ids(console.Filter{Text: "TEAM-PAUSE"}), "text matches metadata, case-insensitively")
	assert.Equal(t, []string{"queued:queued-1"}, ids(console.Filter{Text: "prompt of"}), "and a queued job's prompt")
	p, err := x.List(ctx, console.Filter{})
	require.NoError(t, err)
	assert.Equal(t, map[string]uint64{"ops": 2}, p.Depth)
	p, err = x.List(ctx, console.Filter{Limit: 2})
	require.NoError(t, err)
	assert.Len(t, p.Jobs, 2)
	assert.Equal(t, 4, p.Matched)

	paused, err := x.Paused(ctx)
	require.NoError(t, err)
	require.Len(t, paused, 1)
	assert.Equal(t, "apr-pause-1", paused[0].ApprovalID)
	ws, err := x.Workers(ctx)
	require.NoError(t, err)
	require.Len(t, ws, 2)
	assert.Equal(t, "w1", ws[0].Name)
	assert.Equal(t, []string{"run-1"}, ws[0].Held, "a paused job is held by nobody")
	assert.Empty(t, ws[1].Held)

	s, ok, err := x.Job(ctx, "queued-1")
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, console.StateQueued, s.State)
	_, ok, err = x.Job(ctx, "nope")
	require.NoError(t, err)
	assert.False(t, ok)

	// A change reaches subscribers and the next list.
	changes, unsubscribe := x.Subscribe()
	defer unsubscribe()
	run, err := rs.GetRun(ctx, "run-1")
	require.NoError(t, err)
	require.NoError(t, rs.Transition(ctx, run, queue.TransFinish))
	for {
		select {
		case <-changes:
		case <-ctx.Done():
			t.Fatal("no change notification for run-1's finish")
		}
		if s, _, err := x.Job(ctx, "run-1"); err == nil && s.State == console.StateDone {
			break
		}
	}
}
