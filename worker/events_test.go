package worker_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// TestEventsCarryMetadataOncePerPhase: every live event names its job; the
// job's metadata rides on the first event of each phase only (the run's
// first event, and the approval_decided event that opens the phase after a
// decision), not on every event.
func TestEventsCarryMetadataOncePerPhase(t *testing.T) {
	h := newHarness(t, queue.Config{})
	h.startWorker(worker.Options{})
	j := pausingJob("md-1")
	j.Metadata = map[string]string{"thread": "T-7", "channel": "C1"}
	h.submit(j)
	req := h.approval("md-1")
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "md-1", All: schemas.DecideAllow, DecidedBy: "test"})
	require.Equal(t, schemas.StatusCompleted, h.final("md-1").Status)

	var evs []schemas.Event
	eventuallyWithT(t, func(c *assert.CollectT) {
		var err error
		evs, err = h.tryEvents("md-1")
		if assert.NoError(c, err) && assert.NotEmpty(c, evs) {
			last := evs[len(evs)-1]
			assert.True(c, last.Type == schemas.EventStatus && last.Status == "completed", "last event %+v", last)
		}
	}, "final status event")

	var withMD []int
	decided := -1
	for i, e := range evs {
		assert.Equal(t, "md-1", e.JobID, "event %d names its job", i)
		require.NoError(t, schemas.Validate("event", e))
		if e.Type == schemas.EventApprovalDecided {
			decided = i
		}
		if e.Metadata != nil {
			assert.Equal(t, j.Metadata, e.Metadata, "event %d", i)
			withMD = append(withMD, i)
		}
	}
	require.Positive(t, decided, "the second phase opens with approval_decided: %+v", evs)
	assert.Equal(t, []int{0, decided}, withMD, "metadata on the first event of each phase only")
}
