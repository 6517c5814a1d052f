package queue_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

func validJob(id string) schemas.Job {
	return schemas.Job{ID: id, Prompt: "say hi", Metadata: map[string]string{"channel": "C1"}}
}

func result(jobID string, s schemas.Status, stdout string) schemas.Result {
	r := schemas.Result{JobID: jobID, Stdout: stdout, Attempt: 1}
	r.SetStatus(s)
	return r
}

func TestSubmitDuplicateIsDropped(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)

	ack, err := c.Submit(e.ctx, validJob("build:42"))
	require.NoError(t, err)
	assert.Equal(t, "JETPILOT_JOBS", ack.Stream)
	assert.False(t, ack.Duplicate)

	again, err := c.Submit(e.ctx, validJob("build:42"))
	require.NoError(t, err)
	assert.True(t, again.Duplicate)
	assert.Equal(t, ack.Seq, again.Seq)

	s, err := e.js.Stream(e.ctx, "JETPILOT_JOBS")
	require.NoError(t, err)
	info, err := s.Info(e.ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 1, info.State.Msgs)

	msg, err := s.GetMsg(e.ctx, ack.Seq)
	require.NoError(t, err)
	assert.Equal(t, "jetpilot.jobs.default", msg.Subject)
	assert.Equal(t, "build:42", msg.Header.Get("Nats-Msg-Id"))
	got, err := schemas.DecodeJob(msg.Data)
	require.NoError(t, err)
	assert.Equal(t, "build:42", got.ID)
}

func TestSubmitInvalidJob(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)

	_, err := c.Submit(e.ctx, schemas.Job{ID: "bad id", Prompt: ""})
	require.Error(t, err)
	var ve *schemas.ValidationError
	require.ErrorAs(t, err, &ve)
	assert.NotEmpty(t, ve.Problems)

	// SubmitRaw hands over anything (the worker rejects it), but checks names.
	ack, err := c.SubmitRaw(e.ctx, "", "", []byte("not json"))
	require.NoError(t, err)
	assert.Equal(t, "JETPILOT_JOBS", ack.Stream)
	_, err = c.SubmitRaw(e.ctx, "a.b", "x", []byte("{}"))
	require.ErrorContains(t, err, `profile "a.b"`)
}

func TestSubmitWithoutStreams(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, queue.Config{Prefix: "other"})
	_, err := c.Submit(e.ctx, validJob("j"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "OTHER_JOBS")
}

func TestDuplicateResultDropped(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	r := result("j1", schemas.StatusCompleted, "hi")
	ack, err := queue.PublishResult(e.ctx, e.js, e.cfg, r, 0)
	require.NoError(t, err)
	assert.False(t, ack.Duplicate)
	ack2, err := queue.PublishResult(e.ctx, e.js, e.cfg, r, 0)
	require.NoError(t, err)
	assert.True(t, ack2.Duplicate)

	ack3, err := queue.PublishResult(e.ctx, e.js, e.cfg, r, 1)
	require.NoError(t, err)
	assert.False(t, ack3.Duplicate, "another phase is another result")

	s, err := e.js.Stream(e.ctx, "JETPILOT_RESULTS")
	require.NoError(t, err)
	msg, err := s.GetMsg(e.ctx, ack.Sequence)
	require.NoError(t, err)
	assert.Equal(t, "j1:0", msg.Header.Get("Nats-Msg-Id"))
	assert.Equal(t, "jetpilot.results.j1", msg.Subject)

	_, err = queue.PublishResult(e.ctx, e.js, e.cfg, schemas.Result{JobID: "j1"}, 0)
	require.ErrorContains(t, err, "status is empty")
	_, err = queue.PublishResult(e.ctx, e.js, e.cfg, result("", schemas.StatusFailed, ""), 0)
	require.ErrorContains(t, err, "must not be empty")
}

func TestWaitResultBeforeAndAfter(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)

	// Published before anyone waits.
	_, err := queue.PublishResult(e.ctx, e.js, e.cfg, result("early", schemas.StatusCompleted, "done early"), 0)
	require.NoError(t, err)
	got, err := c.WaitResult(e.ctx, "early")
	require.NoError(t, err)
	assert.Equal(t, "done early", got.Stdout)

	// Published while waiting, after a paused one that must be skipped.
	// Another job's result on the stream must not be picked up.
	type out struct {
		r   schemas.Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		r, err := c.WaitResult(e.ctx, "late.job:1")
		done <- out{r, err}
	}()
	_, err = queue.PublishResult(e.ctx, e.js, e.cfg, result("late.job:1", schemas.StatusPaused, "waiting"), 0)
	require.NoError(t, err)
	_, err = queue.PublishResult(e.ctx, e.js, e.cfg, result("other", schemas.StatusFailed, "other"), 0)
	require.NoError(t, err)
	select {
	case o := <-done:
		t.Fatalf("WaitResult returned before the final result: %+v", o)
	case <-time.After(200 * time.Millisecond):
		// Bounded negative check: nothing final yet, so nothing returned.
	}
	_, err = queue.PublishResult(e.ctx, e.js, e.cfg, result("late.job:1", schemas.StatusCompleted, "finished"), 1)
	require.NoError(t, err)
	select {
	case o := <-done:
		require.NoError(t, o.err)
		assert.Equal(t, schemas.StatusCompleted, o.r.Status)
		assert.Equal(t, "finished", o.r.Stdout)
	case <-e.ctx.Done():
		t.Fatal("WaitResult did not return")
	}
}

func TestWaitResultHonoursContext(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)
	ctx, cancel := context.WithTimeout(e.ctx, 300*time.Millisecond)
	defer cancel()
	_, err := c.WaitResult(ctx, "never")
	require.ErrorIs(t, err, context.DeadlineExceeded)

	_, err = c.WaitResult(e.ctx, "bad id")
	require.ErrorContains(t, err, "whitespace")
}

func TestWaitNextWalksPhases(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)
	_, err := queue.PublishResult(e.ctx, e.js, e.cfg, result("p", schemas.StatusPaused, "phase0"), 0)
	require.NoError(t, err)
	_, err = queue.PublishResult(e.ctx, e.js, e.cfg, result("q", schemas.StatusCompleted, "q"), 0)
	require.NoError(t, err)

	r, seq, err := c.WaitNext(e.ctx, "p", 0)
	require.NoError(t, err)
	assert.Equal(t, schemas.StatusPaused, r.Status)

	go func() {
		// The error surfaces through WaitNext timing out below.
		_, _ = queue.PublishResult(e.ctx, e.js, e.cfg, result("p", schemas.StatusCompleted, "phase1"), 1)
	}()
	r2, seq2, err := c.WaitNext(e.ctx, "p", seq)
	require.NoError(t, err)
	assert.Greater(t, seq2, seq)
	assert.Equal(t, "phase1", r2.Stdout)
}

func TestResultsWithoutFollowTerminates(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)

	// Empty stream.
	var n int
	require.NoError(t, c.Results(e.ctx, queue.ResultsOptions{}, func(schemas.Result) error { n++; return nil }))
	assert.Zero(t, n)

	for i := range 5 {
		id := fmt.Sprintf("job-%d", i%2)
		_, err := queue.PublishResult(e.ctx, e.js, e.cfg, result(id, schemas.StatusCompleted, id), i)
		require.NoError(t, err)
	}
	var all []string
	require.NoError(t, c.Results(e.ctx, queue.ResultsOptions{}, func(r schemas.Result) error {
		all = append(all, r.JobID)
		return nil
	}))
	assert.Equal(t, []string{"job-0", "job-1", "job-0", "job-1", "job-0"}, all)

	var one []string
	require.NoError(t, c.Results(e.ctx, queue.ResultsOptions{JobID: "job-1"}, func(r schemas.Result) error {
		one = append(one, r.JobID)
		return nil
	}))
	assert.Equal(t, []string{"job-1", "job-1"}, one)

	// No results for this job at all.
	require.NoError(t, c.Results(e.ctx, queue.ResultsOptions{JobID: "none"}, func(schemas.Result) error {
		return errors.New("unexpected")
	}))

	// An error from fn stops the read and comes back as is.
	stop := errors.New("stop")
	err := c.Results(e.ctx, queue.ResultsOptions{}, func(schemas.Result) error { return stop })
	require.ErrorIs(t, err, stop)
}

func TestResultsFollow(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)
	_, err := queue.PublishResult(e.ctx, e.js, e.cfg, result("a", schemas.StatusCompleted, ""), 0)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	var seen atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- c.Results(ctx, queue.ResultsOptions{Follow: true}, func(schemas.Result) error {
			seen.Add(1)
			return nil
		})
	}()
	require.Eventually(t, func() bool { return seen.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	_, err = queue.PublishResult(e.ctx, e.js, e.cfg, result("b", schemas.StatusCompleted, ""), 0)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return seen.Load() == 2 }, 5*time.Second, 10*time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-e.ctx.Done():
		t.Fatal("follow did not stop on cancel")
	}
}

func TestApprovalsEventsDeadAndDecisions(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)

	req := schemas.ApprovalRequest{ApprovalID: "ap-1", JobID: "j:1", SessionID: "s", RunID: "r",
		PendingToolCalls: []schemas.ToolCall{{ID: "tc1", Name: "run_command"}}}
	ack, err := queue.PublishApproval(e.ctx, e.js, e.cfg, req)
	require.NoError(t, err)
	assert.False(t, ack.Duplicate)
	ack, err = queue.PublishApproval(e.ctx, e.js, e.cfg, req)
	require.NoError(t, err)
	assert.True(t, ack.Duplicate, "approval id is the msg id")
	var aps []schemas.ApprovalRequest
	require.NoError(t, c.Approvals(e.ctx, false, func(a schemas.ApprovalRequest) error { aps = append(aps, a); return nil }))
	require.Len(t, aps, 1)
	assert.Equal(t, "run_command", aps[0].PendingToolCalls[0].Name)

	for i := 1; i <= 3; i++ {
		_, err := queue.PublishEvent(e.ctx, e.js, e.cfg, schemas.Event{JobID: "j:1", Seq: uint64(i), Type: schemas.EventText, Text: "t"})
		require.NoError(t, err)
	}
	_, err = queue.PublishEvent(e.ctx, e.js, e.cfg, schemas.Event{JobID: "j:2", Seq: 1, Type: schemas.EventStatus})
	require.NoError(t, err)
	var seqs []uint64
	require.NoError(t, c.Events(e.ctx, "j:1", false, func(ev schemas.Event) error { seqs = append(seqs, ev.Seq); return nil }))
	assert.Equal(t, []uint64{1, 2, 3}, seqs)

	dl := schemas.DeadLetter{JobID: "j:1", Reason: "retries_exhausted", Error: "boom", Attempt: 5}
	ack, err = queue.PublishDead(e.ctx, e.js, e.cfg, dl)
	require.NoError(t, err)
	ack, err = queue.PublishDead(e.ctx, e.js, e.cfg, dl)
	require.NoError(t, err)
	assert.True(t, ack.Duplicate)
	noID := schemas.DeadLetter{Reason: "invalid_job", Error: "not JSON"}
	noID.SetJob([]byte("garbage"))
	ack, err = queue.PublishDead(e.ctx, e.js, e.cfg, noID)
	require.NoError(t, err)
	ack, err = queue.PublishDead(e.ctx, e.js, e.cfg, noID)
	require.NoError(t, err)
	assert.True(t, ack.Duplicate, "same raw bytes, same msg id")
	assert.Regexp(t, `^raw:[0-9a-f]{64}$`, queue.DeadMsgID(noID))
	var dead []schemas.DeadLetter
	require.NoError(t, c.DeadLetters(e.ctx, false, func(d schemas.DeadLetter) error { dead = append(dead, d); return nil }))
	require.Len(t, dead, 2)
	assert.Equal(t, "garbage", dead[1].Raw)
	s, err := e.js.Stream(e.ctx, "JETPILOT_DEAD")
	require.NoError(t, err)
	m, err := s.GetLastMsgForSubject(e.ctx, "jetpilot.dead."+queue.UnknownJobID)
	require.NoError(t, err)
	assert.Equal(t, queue.DeadMsgID(noID), m.Header.Get("Nats-Msg-Id"))

	// Decisions: validated, then land on the work queue for the deciders.
	dc, err := e.cfg.EnsureDecisionConsumer(e.ctx, e.js)
	require.NoError(t, err)
	require.NoError(t, c.Decide(e.ctx, schemas.Decision{ApprovalID: "ap-1", JobID: "j:1", All: schemas.DecideAllow}))
	msg, err := dc.Next()
	require.NoError(t, err)
	assert.Equal(t, "jetpilot.decisions.j:1", msg.Subject())
	err = c.Decide(e.ctx, schemas.Decision{ApprovalID: "ap-1", JobID: "j:1", All: "maybe"})
	require.Error(t, err)
}

func TestCancel(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)
	_, err := c.Cancel(e.ctx, "j1")
	require.ErrorIs(t, err, queue.ErrNoWorkerHoldsJob)

	sub, err := e.nc.Subscribe(e.cfg.CancelWildcard(), func(m *nats.Msg) {
		_ = m.Respond([]byte("cancelling " + m.Subject))
	})
	require.NoError(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	require.NoError(t, e.nc.Flush())
	reply, err := c.Cancel(e.ctx, "j1")
	require.NoError(t, err)
	assert.Equal(t, "cancelling jetpilot.cancel.j1", string(reply))
}

func TestResultsWithoutFollowStopsOnBusyStream(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, e.cfg)
	for i := range 3 {
		_, err := queue.PublishResult(e.ctx, e.js, e.cfg, result("busy", schemas.StatusCompleted, ""), i)
		require.NoError(t, err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 3; i < 100000 && ctx.Err() == nil; i++ {
			if _, err := queue.PublishResult(ctx, e.js, e.cfg, result("busy", schemas.StatusCompleted, ""), i); err != nil {
				return
			}
		}
	}()
	var n int
	require.NoError(t, c.Results(e.ctx, queue.ResultsOptions{JobID: "busy"}, func(schemas.Result) error { n++; return nil }))
	assert.GreaterOrEqual(t, n, 3)
	cancel()
	<-pubDone
}

func TestClientWithBadConfig(t *testing.T) {
	t.Parallel()
	e := setupEnv(t, queue.Config{})
	c := queue.NewClient(e.js, queue.Config{Prefix: "bad prefix"})
	_, err := c.Submit(e.ctx, validJob("x"))
	require.ErrorContains(t, err, `prefix "bad prefix": contains whitespace`)
	err = c.Results(e.ctx, queue.ResultsOptions{}, func(schemas.Result) error { return nil })
	require.ErrorContains(t, err, `prefix "bad prefix"`)
}
