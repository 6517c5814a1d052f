package worker

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// TestPublishControlDuplicate: a control message JetStream drops as a
// duplicate is a success only when the message stored under its id is the
// same message and still queued, or the run record shows it applied. No
// worker runs here, so nothing takes the messages off CONTROL.
func TestPublishControlDuplicate(t *testing.T) {
	w, js := newTestWorker(t, "ctl")
	ctx := t.Context()
	st, err := js.Stream(ctx, w.qcfg.ControlStream())
	require.NoError(t, err)
	publishRaw := func(jobID, msgID, body string) uint64 {
		m := nats.NewMsg(w.qcfg.ControlSubject(jobID))
		m.Header.Set(nats.MsgIdHdr, msgID)
		m.Data = []byte(body)
		ack, err := js.PublishMsg(ctx, m)
		require.NoError(t, err)
		require.False(t, ack.Duplicate)
		return ack.Sequence
	}
	lastSeq := func() uint64 {
		info, err := st.Info(ctx)
		require.NoError(t, err)
		return info.State.LastSeq
	}

	t.Run("the same message, still queued", func(t *testing.T) {
		require.NoError(t, w.publishControl(ctx, "dup-1", "apr_a", schemas.ControlCancel))
		require.NoError(t, w.publishControl(ctx, "dup-1", "apr_a", schemas.ControlCancel), "it will act: a repeat is fine")
		require.NoError(t, w.armExpiry(ctx, &queue.RunRecord{JobID: "dup-1", ApprovalID: "apr_a"}))
		require.NoError(t, w.armExpiry(ctx, &queue.RunRecord{JobID: "dup-1", ApprovalID: "apr_a"}), "a re-armed timer is the same timer")
	})
	t.Run("another message took the id", func(t *testing.T) {
		publishRaw("dup-2", "cancel:apr_b",
			`{"schema":"jetpilot.control.v1","kind":"expiry","job_id":"dup-2","approval_id":"apr_b"}`)
		err := w.publishControl(ctx, "dup-2", "apr_b", schemas.ControlCancel)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "not this cancel message")
		publishRaw("dup-2", "cancel:apr_c", `not json`)
		require.ErrorContains(t, w.publishControl(ctx, "dup-2", "apr_c", schemas.ControlCancel), "not this cancel message")
	})
	t.Run("consumed without applying", func(t *testing.T) {
		run := queue.NewRun(queue.RunRecord{JobID: "dup-3", Owner: "ctl", SessionID: "s"})
		require.NoError(t, w.runs.Transition(ctx, run, queue.TransStarted))
		// A refused message under the id, terminated (gone from the work queue).
		seq := publishRaw("dup-3", "cancel:apr_d", `{"schema":"jetpilot.control.v1","kind":"cancel"}`)
		require.NoError(t, st.DeleteMsg(ctx, seq))
		before := lastSeq()
		err := w.publishControl(ctx, "dup-3", "apr_d", schemas.ControlCancel)
		require.Error(t, err, "a cancel swallowed as a duplicate is not a success")
		assert.Contains(t, err.Error(), "did not apply to job dup-3")
		assert.Equal(t, before, lastSeq(), "and nothing was stored")
	})
	t.Run("consumed and applied", func(t *testing.T) {
		require.NoError(t, w.publishControl(ctx, "dup-4", "apr_e", schemas.ControlCancel))
		seq := lastSeq()
		run := queue.NewRun(queue.RunRecord{JobID: "dup-4", Owner: "ctl", SessionID: "s",
			DecidedApproval: fmt.Sprintf("cancel:apr_e@%s:%d", w.qcfg.ControlStream(), seq)})
		require.NoError(t, w.runs.Transition(ctx, run, queue.TransStarted))
		require.NoError(t, st.DeleteMsg(ctx, seq)) // acked by the worker that applied it
		require.NoError(t, w.publishControl(ctx, "dup-4", "apr_e", schemas.ControlCancel))
	})
}
