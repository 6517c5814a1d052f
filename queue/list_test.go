package queue_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// pageAll reads every page of state and returns the job ids in order,
// checking each page holds at most limit jobs.
func pageAll(t *testing.T, ctx context.Context, l queue.Lister, state queue.JobState, limit int, opts ...queue.ListOpt) []string {
	t.Helper()
	var ids []string
	var after uint64
	for range 1000 {
		page, err := l.List(ctx, state, append([]queue.ListOpt{queue.WithLimit(limit), queue.WithAfter(after)}, opts...)...)
		require.NoError(t, err)
		require.LessOrEqual(t, len(page.Jobs), limit)
		for _, j := range page.Jobs {
			assert.Equal(t, state == queue.JobSettled || j.State == state, true, "job %s listed as %s", j.JobID, j.State)
			ids = append(ids, j.JobID)
		}
		if page.Next == 0 {
			return ids
		}
		require.Greater(t, page.Next, after, "the cursor moves on")
		after = page.Next
	}
	t.Fatal("paging did not end")
	return nil
}

func TestListerQueued(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	st, err := e.js.Stream(e.ctx, e.cfg.JobsStream())
	require.NoError(t, err)
	assert.True(t, st.CachedInfo().Config.AllowDirect, "setup enables direct gets on JOBS")

	c := queue.NewClient(e.js, e.cfg)
	for i, p := range []string{"a", "b", "a", "a", "b"} {
		_, err := c.Submit(e.ctx, schemas.Job{ID: fmt.Sprintf("q-%d", i), Prompt: "x", Profile: p})
		require.NoError(t, err)
	}
	// A job that does not decode is still listed, with its problem.
	_, err = c.SubmitRaw(e.ctx, "b", "q-bad", []byte("not json"))
	require.NoError(t, err)

	l := queue.NewLister(e.js, e.cfg)
	depth, err := l.Depth(e.ctx)
	require.NoError(t, err)
	assert.Equal(t, map[string]uint64{"a": 3, "b": 3}, depth)

	assert.Equal(t, []string{"q-0", "q-1", "q-2", "q-3", "q-4", "q-bad"}, pageAll(t, e.ctx, l, queue.JobQueued, 2))
	assert.Equal(t, []string{"q-0", "q-2", "q-3"}, pageAll(t, e.ctx, l, queue.JobQueued, 1, queue.WithProfile("a")))

	page, err := l.List(e.ctx, queue.JobQueued, queue.WithProfile("b"))
	require.NoError(t, err)
	require.Len(t, page.Jobs, 3)
	assert.Zero(t, page.Next, "one page holds them all")
	assert.EqualValues(t, 3, page.Total, "the profile's count")
	assert.Equal(t, "b", page.Jobs[0].Profile)
	require.NotNil(t, page.Jobs[0].Job)
	assert.Equal(t, "q-1", page.Jobs[0].Job.ID)
	assert.Contains(t, page.Jobs[2].Problem, "does not decode")
	assert.False(t, page.Jobs[0].Delivered)

	// A job a worker's consumer has handed out reads as delivered.
	cons, err := e.cfg.EnsureWorkerConsumer(e.ctx, e.js, nil)
	require.NoError(t, err)
	batch, err := cons[0].Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	for range batch.Messages() {
	}
	require.NoError(t, batch.Error())
	page, err = l.List(e.ctx, queue.JobQueued, queue.WithLimit(2))
	require.NoError(t, err)
	require.Len(t, page.Jobs, 2)
	assert.True(t, page.Jobs[0].Delivered, "q-0 was fetched")
	assert.False(t, page.Jobs[1].Delivered, "q-1 was not")
}

func TestListerRunsPagedByState(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	rs, err := queue.NewRunStore(e.ctx, e.js, e.cfg)
	require.NoError(t, err)
	var running, paused, pausedA []string
	for i := range 12 {
		id := fmt.Sprintf("run-%02d", i)
		profile := []string{"a", ""}[i%2]
		run := queue.NewRun(queue.RunRecord{JobID: id, Owner: "w1", Attempt: 1, Job: schemas.Job{ID: id, Profile: profile}})
		require.NoError(t, rs.Transition(e.ctx, run, queue.TransStarted))
		if i%3 == 0 {
			require.NoError(t, rs.Transition(e.ctx, run, queue.TransPause))
			paused = append(paused, id)
			if profile == "a" {
				pausedA = append(pausedA, id)
			}
			continue
		}
		running = append(running, id)
	}
	// A settled record is listed in neither state.
	done := queue.NewRun(queue.RunRecord{JobID: "run-done", Job: schemas.Job{ID: "run-done"}})
	require.NoError(t, rs.Transition(e.ctx, done, queue.TransStarted))
	require.NoError(t, rs.Transition(e.ctx, done, queue.TransFinish))

	l := queue.NewLister(e.js, e.cfg)
	assert.ElementsMatch(t, running, pageAll(t, e.ctx, l, queue.JobRunning, 3))
	assert.ElementsMatch(t, paused, pageAll(t, e.ctx, l, queue.JobPaused, 1))
	assert.ElementsMatch(t, pausedA, pageAll(t, e.ctx, l, queue.JobPaused, 10, queue.WithProfile("a")))
	assert.Equal(t, []string{"run-03", "run-09"}, pageAll(t, e.ctx, l, queue.JobPaused, 2, queue.WithProfile("default")))

	// A page reads at most MaxScan records, and says where it stopped.
	page, err := l.List(e.ctx, queue.JobPaused, queue.WithLimit(1), queue.WithMaxScan(1))
	require.NoError(t, err)
	assert.Equal(t, 1, page.Scanned)
	assert.NotZero(t, page.Next)
	page, err = l.List(e.ctx, queue.JobPaused, queue.WithLimit(50), queue.WithMaxScan(2), queue.WithAfter(page.Next))
	require.NoError(t, err)
	assert.Equal(t, 2, page.Scanned, "the page stops at its scan bound, not at its limit")
	assert.NotZero(t, page.Next)
	require.NotEmpty(t, pageAll(t, e.ctx, l, queue.JobRunning, 50))
	p, err := l.List(e.ctx, queue.JobRunning, queue.WithLimit(1))
	require.NoError(t, err)
	require.NotNil(t, p.Jobs[0].Run)
	assert.Equal(t, "w1", p.Jobs[0].Run.Owner)
}

func TestListerSettledAndDead(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	for i, s := range []schemas.Status{schemas.StatusCompleted, schemas.StatusPaused, schemas.StatusFailed, schemas.StatusCompleted, schemas.StatusRejected} {
		res := schemas.Result{JobID: fmt.Sprintf("s-%d", i), Attempt: 1}
		res.SetStatus(s)
		_, err := queue.PublishResult(e.ctx, e.js, e.cfg, res, 0)
		require.NoError(t, err)
	}
	for i, job := range []string{`{"id":"d-0","prompt":"x","profile":"a"}`, `{"id":"d-1","prompt":"x"}`} {
		dl := schemas.DeadLetter{JobID: fmt.Sprintf("d-%d", i), Reason: "retries_exhausted", DeadAt: time.Now().UTC()}
		dl.SetJob([]byte(job))
		_, err := queue.PublishDead(e.ctx, e.js, e.cfg, dl)
		require.NoError(t, err)
	}
	l := queue.NewLister(e.js, e.cfg)
	assert.Equal(t, []string{"s-0", "s-3"}, pageAll(t, e.ctx, l, queue.JobCompleted, 1))
	assert.Equal(t, []string{"s-0", "s-2", "s-3", "s-4"}, pageAll(t, e.ctx, l, queue.JobSettled, 3), "paused results are not settled")
	assert.Equal(t, []string{"s-4"}, pageAll(t, e.ctx, l, queue.JobRejected, 5))
	assert.Equal(t, []string{"d-0", "d-1"}, pageAll(t, e.ctx, l, queue.JobDead, 1))
	assert.Equal(t, []string{"d-1"}, pageAll(t, e.ctx, l, queue.JobDead, 5, queue.WithProfile("default")))

	_, err := l.List(e.ctx, queue.JobCompleted, queue.WithProfile("a"))
	require.ErrorIs(t, err, queue.ErrBadListOption)
	_, err = l.List(e.ctx, "done")
	require.ErrorIs(t, err, queue.ErrUnknownJobState)
	_, err = l.List(e.ctx, queue.JobDead, queue.WithLimit(queue.MaxListLimit+1))
	require.ErrorIs(t, err, queue.ErrBadListOption)
}

func TestListerFind(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)
	for _, id := range []string{"f-queued-0", "f-queued-1"} {
		_, err := c.Submit(e.ctx, schemas.Job{ID: id, Prompt: "x", Profile: "p"})
		require.NoError(t, err)
	}
	rs, err := queue.NewRunStore(e.ctx, e.js, e.cfg)
	require.NoError(t, err)
	run := queue.NewRun(queue.RunRecord{JobID: "f-paused", Attempt: 2, Job: schemas.Job{ID: "f-paused"}})
	require.NoError(t, rs.Transition(e.ctx, run, queue.TransStarted))
	require.NoError(t, rs.Transition(e.ctx, run, queue.TransPause))
	res := schemas.Result{JobID: "f-paused", Attempt: 2}
	res.SetStatus(schemas.StatusPaused)
	_, err = queue.PublishResult(e.ctx, e.js, e.cfg, res, 0)
	require.NoError(t, err)
	_, err = queue.PublishApproval(e.ctx, e.js, e.cfg, schemas.ApprovalRequest{ApprovalID: "apr_1", JobID: "f-paused"})
	require.NoError(t, err)
	dl := schemas.DeadLetter{JobID: "f-dead", Reason: "invalid_job", Attempt: 3, DeadAt: time.Now().UTC()}
	dl.SetJob([]byte(`{"id":"f-dead"}`))
	_, err = queue.PublishDead(e.ctx, e.js, e.cfg, dl)
	require.NoError(t, err)

	l := queue.NewLister(e.js, e.cfg)
	d, err := l.Find(e.ctx, "f-queued-1")
	require.NoError(t, err)
	assert.Equal(t, queue.JobQueued, d.State)
	require.NotNil(t, d.Queued)
	assert.Equal(t, "p", d.Queued.Profile)
	assert.Equal(t, 2, d.QueueScanned)

	d, err = l.Find(e.ctx, "f-paused")
	require.NoError(t, err)
	assert.Equal(t, queue.JobPaused, d.State)
	require.NotNil(t, d.Run)
	assert.Len(t, d.Results, 1)
	assert.Len(t, d.Approvals, 1)
	assert.Equal(t, 2, d.Attempts)
	assert.Nil(t, d.Queued, "a job a worker took is not looked for in the queue")

	d, err = l.Find(e.ctx, "f-dead")
	require.NoError(t, err)
	assert.Equal(t, queue.JobDead, d.State)
	assert.Equal(t, 3, d.Attempts)

	_, err = l.Find(e.ctx, "f-nobody")
	require.ErrorIs(t, err, queue.ErrJobNotFound)
	assert.ErrorContains(t, err, "not among the 2 oldest queued jobs")
	_, err = l.Find(e.ctx, "bad id!")
	require.Error(t, err)
	assert.NotErrorIs(t, err, queue.ErrJobNotFound)
}

// Setup turns direct gets on for a JOBS stream made before they were used.
func TestSetupEnablesDirectGetsOnExistingJobs(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	st, err := e.js.Stream(e.ctx, e.cfg.JobsStream())
	require.NoError(t, err)
	sc := st.CachedInfo().Config
	sc.AllowDirect = false
	_, err = e.js.UpdateStream(e.ctx, sc)
	require.NoError(t, err)
	require.NoError(t, queue.Setup(e.ctx, e.js, e.cfg))
	info, err := st.Info(e.ctx)
	require.NoError(t, err)
	assert.True(t, info.Config.AllowDirect)
	require.NoError(t, queue.Setup(e.ctx, e.js, e.cfg), "and again: idempotent")
}

// A page costs what its limit and scan bound say, however many jobs are
// stored: here 5,000 queued jobs and 5,000 run records, of which the last
// five are paused.
func TestListerPageCostIsBounded(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	const n = 5000
	for i := range n {
		msg := nats.NewMsg(e.cfg.JobSubject(schemas.DefaultProfile))
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("bulk-%05d", i))
		msg.Data = []byte(fmt.Sprintf(`{"id":"bulk-%05d","prompt":"x"}`, i))
		_, err := e.js.PublishMsgAsync(msg)
		require.NoError(t, err)

		state := queue.RunRunning
		if i >= n-5 {
			state = queue.RunPaused
		}
		id := fmt.Sprintf("run-%05d", i)
		key, err := queue.RunKey(id)
		require.NoError(t, err)
		rec, err := json.Marshal(queue.RunRecord{JobID: id, State: state, Job: schemas.Job{ID: id}})
		require.NoError(t, err)
		_, err = e.js.PublishAsync("$KV."+e.cfg.RunsBucket()+"."+key, rec)
		require.NoError(t, err)
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-e.ctx.Done():
		t.Fatal("publishing did not complete")
	}

	l := queue.NewLister(e.js, e.cfg)
	depth, err := l.Depth(e.ctx)
	require.NoError(t, err)
	assert.Equal(t, map[string]uint64{schemas.DefaultProfile: n}, depth, "from the subject counts")

	// A page from the middle of the queue: 50 direct gets.
	page, err := l.List(e.ctx, queue.JobQueued, queue.WithLimit(50), queue.WithAfter(2500))
	require.NoError(t, err)
	require.Len(t, page.Jobs, 50)
	assert.Equal(t, 50, page.Scanned)
	assert.Equal(t, "bulk-02500", page.Jobs[0].JobID)
	assert.EqualValues(t, n, page.Total)

	// Paused runs behind 4,995 running ones: each page reads at most 1,000
	// records and hands on its cursor.
	var paused []string
	var after uint64
	pages := 0
	for {
		page, err := l.List(e.ctx, queue.JobPaused, queue.WithMaxScan(1000), queue.WithAfter(after))
		require.NoError(t, err)
		pages++
		assert.LessOrEqual(t, page.Scanned, 1000)
		for _, j := range page.Jobs {
			paused = append(paused, j.JobID)
		}
		if page.Next == 0 {
			break
		}
		after = page.Next
		require.Less(t, pages, 20, "paging ends")
	}
	assert.Equal(t, []string{"run-04995", "run-04996", "run-04997", "run-04998", "run-04999"}, paused)
	assert.Equal(t, 5, pages, "5,000 records at 1,000 a page")
}
