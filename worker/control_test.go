package worker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	slogmulti "github.com/samber/slog-multi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/internal/testsupport"
	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// publishControl publishes body on subject of CONTROL the way a worker
// would (or someone who should not), with Nats-Msg-Id msgID, and returns its
// stream sequence.
func (h *harness) publishControl(subject, msgID, body string) uint64 {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	m := nats.NewMsg(subject)
	if msgID != "" {
		m.Header.Set(nats.MsgIdHdr, msgID)
	}
	m.Data = []byte(body)
	ack, err := h.js.PublishMsg(ctx, m)
	require.NoError(h.t, err)
	require.False(h.t, ack.Duplicate)
	return ack.Sequence
}

// gone reports whether the CONTROL message at seq has left the stream (a
// work queue: acked or terminated).
func (h *harness) gone(seq uint64) bool {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := h.js.Stream(ctx, h.qcfg.ControlStream())
	if err != nil {
		return false
	}
	_, err = st.GetMsg(ctx, seq)
	return errors.Is(err, jetstream.ErrMsgNotFound)
}

// TestControlMessagesAreValidatedOnReceipt: control messages that are not
// jetpilot.control.v1 (an unknown kind, an unknown field, another schema,
// not JSON), or that name another job than their subject's, are refused
// with a log line, terminated (never redelivered), and change nothing: the
// job stays paused, no expiry is applied, and the human's decision still
// resumes it.
func TestControlMessagesAreValidatedOnReceipt(t *testing.T) {
	h := newHarness(t, queue.Config{})
	var logs testsupport.SyncBuffer
	log := slog.New(slogmulti.Fanout(slog.NewTextHandler(&logs, nil), testLogger(t).Handler()))
	h.startWorker(worker.Options{Logger: log}) // the approval timeout (1h) is not due in this test
	h.submit(pausingJob("ctl-1"))
	req := h.approval("ctl-1")

	subject := h.qcfg.ControlSubject("ctl-1")
	valid := func(kind, jobID string) string {
		return `{"schema":"jetpilot.control.v1","kind":"` + kind + `","job_id":"` + jobID + `","approval_id":"` + req.ApprovalID + `"}`
	}
	hostile := []struct{ subject, body string }{
		{subject, valid("teleport", "ctl-1")},
		{subject, valid("", "ctl-1")},
		{subject, `{"schema":"jetpilot.control.v1","kind":"expiry","job_id":"ctl-1","approval_id":"` + req.ApprovalID + `","now":true}`},
		{subject, strings.Replace(valid("expiry", "ctl-1"), "control.v1", "control.v2", 1)},
		{subject, `expire it`},
		// Would cancel ctl-1 if the subject were not checked.
		{h.qcfg.ControlSubject("ctl-other"), valid("cancel", "ctl-1")},
	}
	var seqs []uint64
	for i, m := range hostile {
		seqs = append(seqs, h.publishControl(m.subject, "hostile-"+string(rune('a'+i)), m.body))
	}
	eventually(t, func() bool {
		for _, seq := range seqs {
			if !h.gone(seq) {
				return false
			}
		}
		return true
	}, "every refused control message is terminated")
	eventually(t, func() bool { return strings.Count(logs.String(), "refused control message") == len(hostile) },
		"one log line each: %s", logs.String())
	out := logs.String()
	assert.Contains(t, out, `kind: must be one of`)
	assert.Contains(t, out, `but was published on jetpilot.control.ctl-other`)

	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "ctl-1", All: schemas.DecideAllow, DecidedBy: "alice"})
	res := h.final("ctl-1")
	assert.Equal(t, schemas.StatusCompleted, res.Status)
	assert.Equal(t, schemas.ToolCallCounts{Accepted: 2}, res.ToolCalls, "no expiry rejected the pending call")
	for _, e := range h.events("ctl-1") {
		assert.NotEqual(t, schemas.EventApprovalExpired, e.Type)
		assert.NotEqual(t, "cancelling", e.Status)
	}
	assert.Equal(t, len(hostile), strings.Count(logs.String(), "refused control message"), "none was redelivered")
}

// TestCancelIsNotSwallowedByATakenControlID: a cancel of a paused job goes
// out as a control message with Nats-Msg-Id cancel:<approval_id>. When that
// id was already taken, by a message that was refused or by another message
// still queued, JetStream drops the cancel as a duplicate: the cancel
// request is answered with an error (so `jetpilot cancel` fails), not
// "cancelling", and the job stays paused.
func TestCancelIsNotSwallowedByATakenControlID(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	nc := h.js.Conn()

	h.submit(pausingJob("ctl-dup-1"))
	req := h.approval("ctl-dup-1")
	seq := h.publishControl(h.qcfg.ControlSubject("ctl-dup-1"), "cancel:"+req.ApprovalID,
		`{"schema":"jetpilot.control.v1","kind":"cancel","job_id":"ctl-dup-1"}`)
	eventually(t, func() bool { return h.gone(seq) }, "the refused message is terminated")
	r := h.cancelJob(nc, "ctl-dup-1")
	require.NotNil(t, r.Error, "%+v", r)
	assert.Empty(t, r.Outcome)
	assert.Contains(t, r.Error.Message, "duplicate")
	assert.Contains(t, r.Error.Message, "did not apply to job ctl-dup-1")

	h.submit(pausingJob("ctl-dup-2"))
	req2 := h.approval("ctl-dup-2")
	// An expiry under the cancel's id: not due, so it stays queued.
	h.publishControl(h.qcfg.ControlSubject("ctl-dup-2"), "cancel:"+req2.ApprovalID,
		`{"schema":"jetpilot.control.v1","kind":"expiry","job_id":"ctl-dup-2","approval_id":"`+req2.ApprovalID+`"}`)
	r = h.cancelJob(nc, "ctl-dup-2")
	require.NotNil(t, r.Error, "%+v", r)
	assert.Contains(t, r.Error.Message, "not this cancel message")

	// Neither was cancelled: both still wait for their human.
	for _, d := range []schemas.Decision{
		{ApprovalID: req.ApprovalID, JobID: "ctl-dup-1", All: schemas.DecideAllow},
		{ApprovalID: req2.ApprovalID, JobID: "ctl-dup-2", All: schemas.DecideAllow},
	} {
		h.decide(d)
		assert.Equal(t, schemas.StatusCompleted, h.final(d.JobID).Status, d.JobID)
	}
}
