package worker

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testnats"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
)

// Tests of the crash-critical paths (record writes under conflict, cancel
// forwarding, the message actions) against a real JetStream server, below
// the level a whole job reaches them.

type nopRunner struct{}

func (nopRunner) Run(context.Context, *spawn.Spec) (*spawn.Outcome, error) {
	return nil, errors.New("not used")
}
func (nopRunner) CancelRun(context.Context, spawn.Cursor) error { return nil }

func newTestWorker(t *testing.T, name string) (*Worker, jetstream.JetStream) {
	t.Helper()
	_, _, js := testnats.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qcfg := queue.Config{AckWait: 2 * time.Second}
	require.NoError(t, queue.Setup(ctx, js, qcfg))
	w, err := New(ctx, js, qcfg, nopRunner{}, Options{Name: name, Logger: slog.New(slog.DiscardHandler), RetryInitial: 50 * time.Millisecond})
	require.NoError(t, err)
	return w, js
}

func testPhase(w *Worker, run *queue.Run) *phase {
	return &phase{job: schemas.Job{ID: run.Record.JobID}, attempt: 1, start: time.Now(), run: run, log: w.log}
}

func TestRecordMergesACancelRequest(t *testing.T) {
	w, _ := newTestWorker(t, "holder")
	ctx := t.Context()
	p := testPhase(w, queue.NewRun(queue.RunRecord{JobID: "merge-1", Owner: "holder", SessionID: "s"}))
	p.active = w.track("merge-1", nil)
	require.NoError(t, w.record(ctx, p, queue.TransStarted))

	// Another worker answers a cancel request through the record.
	other, err := w.runs.GetRun(ctx, "merge-1")
	require.NoError(t, err)
	other.Record.CancelRequested = true
	require.NoError(t, w.runs.Transition(ctx, other, queue.TransRequestCancel))

	p.run.Record.LastEventID = 9
	require.NoError(t, w.record(ctx, p, queue.TransProgress), "the holder's write wins after merging")
	assert.True(t, p.run.Record.CancelRequested)
	assert.True(t, p.active.ctl.Requested(), "and the holder acts on it")
	got, err := w.runs.GetRun(ctx, "merge-1")
	require.NoError(t, err)
	assert.EqualValues(t, 9, got.Record.LastEventID)
	assert.True(t, got.Record.CancelRequested)
}

func TestRecordLosesToATakeOver(t *testing.T) {
	w, _ := newTestWorker(t, "old")
	ctx := t.Context()
	p := testPhase(w, queue.NewRun(queue.RunRecord{JobID: "lost-1", Owner: "old", SessionID: "s"}))
	require.NoError(t, w.record(ctx, p, queue.TransStarted))
	newer, err := w.runs.GetRun(ctx, "lost-1")
	require.NoError(t, err)
	newer.Record.Owner = "new"
	require.NoError(t, w.runs.Transition(ctx, newer, queue.TransProgress))

	err = w.record(ctx, p, queue.TransProgress)
	require.ErrorIs(t, err, errLostJob)
	assert.ErrorContains(t, err, "by new")
}

func TestRecordReplacesAnEarlierJobsRecord(t *testing.T) {
	w, _ := newTestWorker(t, "w")
	ctx := t.Context()
	earlier := queue.NewRun(queue.RunRecord{JobID: "again-1", Owner: "w", SessionID: "s-old"})
	require.NoError(t, w.runs.Transition(ctx, earlier, queue.TransStarted))
	require.NoError(t, w.runs.Transition(ctx, earlier, queue.TransFinish))

	// A job with the same id, submitted after the duplicate window, that
	// did not read the record first (a first delivery).
	p := testPhase(w, queue.NewRun(queue.RunRecord{JobID: "again-1", Owner: "w", SessionID: "s-new"}))
	require.NoError(t, w.record(ctx, p, queue.TransStarted))
	got, err := w.runs.GetRun(ctx, "again-1")
	require.NoError(t, err)
	assert.Equal(t, "s-new", got.Record.SessionID)
	assert.Equal(t, queue.RunRunning, got.Stored)
}

func TestCancelForwardedToTheHolder(t *testing.T) {
	w, js := newTestWorker(t, "answerer")
	ctx := t.Context()
	run := queue.NewRun(queue.RunRecord{JobID: "fwd-1", Owner: "holder.example.com-42", SessionID: "s"})
	require.NoError(t, w.runs.Transition(ctx, run, queue.TransStarted))

	// The holder's inbox answers.
	sub, err := js.Conn().Subscribe(w.qcfg.HolderSubject("holder.example.com-42"), func(m *nats.Msg) {
		var req schemas.CancelRequest
		_ = json.Unmarshal(m.Data, &req)
		b, _ := json.Marshal(CancelReply{JobID: req.JobID, Outcome: schemas.CancelCancelling, Worker: "holder.example.com-42"})
		_ = m.Respond(b)
	})
	require.NoError(t, err)
	r := w.cancelRecorded(ctx, "fwd-1", nil)
	require.Nil(t, r.Error)
	assert.Equal(t, schemas.CancelCancelling, r.Outcome)
	assert.Equal(t, "holder.example.com-42", r.Worker)
	got, err := w.runs.GetRun(ctx, "fwd-1")
	require.NoError(t, err)
	assert.False(t, got.Record.CancelRequested, "the holder took it; nothing recorded")
	require.NoError(t, sub.Unsubscribe())

	// The holder is gone: the cancel is recorded for whoever re-attaches.
	r = w.cancelRecorded(ctx, "fwd-1", nil)
	require.Nil(t, r.Error)
	assert.Equal(t, schemas.CancelRequested, r.Outcome)
	got, err = w.runs.GetRun(ctx, "fwd-1")
	require.NoError(t, err)
	assert.True(t, got.Record.CancelRequested)

	// A cancel control message that finds the job running goes the same way.
	p := testPhase(w, got)
	o := w.forwardCancel(ctx, p)
	assert.Equal(t, outDrop, o.kind)

	// Finished and unknown jobs are told apart.
	require.NoError(t, w.runs.Transition(ctx, got, queue.TransFinish))
	r = w.cancelRecorded(ctx, "fwd-1", nil)
	require.NotNil(t, r.Error)
	assert.Equal(t, "job_finished", r.Error.Code)
	r = w.cancelRecorded(ctx, "nobody", nil)
	require.NotNil(t, r.Error)
	assert.Equal(t, "unknown_job", r.Error.Code)
}

// fetchOne publishes a job and pulls it back as a message to settle.
func fetchOne(t *testing.T, w *Worker, js jetstream.JetStream, id string) jetstream.Msg {
	t.Helper()
	ctx := t.Context()
	_, err := js.Publish(ctx, w.qcfg.JobSubject("default"), []byte(`{"id":"`+id+`","prompt":"x"}`))
	require.NoError(t, err)
	cons, err := w.qcfg.EnsureWorkerConsumer(ctx, js, nil)
	require.NoError(t, err)
	batch, err := cons[0].Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	for m := range batch.Messages() {
		return m
	}
	require.FailNow(t, "no message", "%v", batch.Error())
	return nil
}

// The message actions: each outcome kind leaves the message where the
// contract says.
func TestSettleMessageActions(t *testing.T) {
	w, js := newTestWorker(t, "w")
	ctx := t.Context()
	cons, err := w.qcfg.EnsureWorkerConsumer(ctx, js, nil)
	require.NoError(t, err)
	info := func() *jetstream.ConsumerInfo {
		i, err := cons[0].Info(ctx)
		require.NoError(t, err)
		return i
	}

	// Retry and wait hand the message back for a later delivery.
	msg := fetchOne(t, w, js, "nak-1")
	p := testPhase(w, queue.NewRun(queue.RunRecord{JobID: "nak-1"}))
	p.msg = msg
	w.settle(ctx, p, retry(outRetry, errors.New("flaky")))
	batch, err := cons[0].Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	var again jetstream.Msg
	for m := range batch.Messages() {
		again = m
	}
	require.NotNil(t, again, "redelivered after the backoff")
	meta, err := again.Metadata()
	require.NoError(t, err)
	assert.EqualValues(t, 2, meta.NumDelivered)

	// Settled: acked, nothing pending.
	p.msg = again
	w.settle(ctx, p, outcome{kind: outSettled})
	require.Eventually(t, func() bool { i := info(); return i.NumAckPending == 0 && i.NumPending == 0 }, 5*time.Second, 10*time.Millisecond)

	// Lost: the message is left alone (still pending an ack).
	msg = fetchOne(t, w, js, "lost-2")
	p = testPhase(w, queue.NewRun(queue.RunRecord{JobID: "lost-2"}))
	p.msg = msg
	w.settle(ctx, p, outcome{kind: outLost, err: errLostJob})
	assert.EqualValues(t, 1, info().NumAckPending)

	// Drop: terminated, not redelivered.
	w.settle(ctx, p, drop("nothing left to do"))
	require.Eventually(t, func() bool { return info().NumAckPending == 0 }, 5*time.Second, 10*time.Millisecond)
}
