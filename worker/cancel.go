package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
)

// CancelReply answers a request on jetpilot.cancel.<job_id>.
type CancelReply struct {
	JobID string `json:"job_id"`
	// Status is "cancelling" (the run is being cancelled; the job's result
	// will say cancelled) or "cancel_requested" (recorded for the worker
	// that holds the job). Empty when Error is set.
	Status string         `json:"status,omitempty"`
	Worker string         `json:"worker,omitempty"`
	Error  *schemas.Error `json:"error,omitempty"`
}

// activeJob is a job phase this worker is following, found by cancel requests.
type activeJob struct {
	jobID string
	// ctl cancels the run the phase follows: the runner sends the cancel,
	// wakes the run and follows it to its end within a bounded grace.
	ctl *spawn.Control
	// settling: the run is no longer followed; its phase is being settled.
	settling atomic.Bool
}

func (w *Worker) track(jobID string) *activeJob {
	a := &activeJob{jobID: jobID, ctl: spawn.NewControl()}
	w.activeMu.Lock()
	w.active[jobID] = a
	w.activeMu.Unlock()
	return a
}

func (w *Worker) untrack(jobID string, a *activeJob) {
	w.activeMu.Lock()
	if w.active[jobID] == a {
		delete(w.active, jobID)
	}
	w.activeMu.Unlock()
}

// activeJob is the phase of jobID this worker is following now, or nil. A
// phase whose run is no longer followed (it paused or ended and is being
// settled) does not count: cancelling its run would leave nobody to report
// the cancel.
func (w *Worker) activeJob(jobID string) *activeJob {
	w.activeMu.Lock()
	defer w.activeMu.Unlock()
	a := w.active[jobID]
	if a == nil || a.settling.Load() {
		return nil
	}
	return a
}

// requestCancel asks for the phase's run to be cancelled.
func (a *activeJob) requestCancel() { a.ctl.Cancel() }

// serveCancels answers cancel requests until stop is called. Every worker
// listens; the one holding the job answers at once, and any worker answers
// for a paused, finished or unknown job, so a request never goes unanswered
// while a worker is up. stop waits for the answers being worked on.
func (w *Worker) serveCancels(ctx context.Context, nc *nats.Conn) (stop func(), err error) {
	var (
		mu     sync.Mutex
		closed bool
		wg     sync.WaitGroup
	)
	// goTracked runs f unless stop was called: the WaitGroup is never added
	// to while stop waits on it.
	goTracked := func(f func()) {
		mu.Lock()
		defer mu.Unlock()
		if closed {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}
	prefix := strings.TrimSuffix(w.qcfg.CancelWildcard(), ">")
	sub, err := nc.Subscribe(w.qcfg.CancelWildcard(), func(m *nats.Msg) {
		jobID, err := cancelJobID(prefix, m)
		if err != nil {
			w.reply(m, CancelReply{JobID: jobID, Error: &schemas.Error{Code: "invalid_request", Message: err.Error()}})
			return
		}
		if a := w.activeJob(jobID); a != nil {
			goTracked(a.requestCancel)
			w.reply(m, CancelReply{JobID: jobID, Status: "cancelling", Worker: w.opts.Name})
			return
		}
		goTracked(func() { w.cancelRecorded(ctx, m, jobID) })
	})
	if err != nil {
		return nil, err
	}
	return func() {
		_ = sub.Unsubscribe()
		mu.Lock()
		closed = true
		mu.Unlock()
		wg.Wait()
	}, nil
}

// cancelRecorded answers a cancel for a job this worker does not hold.
func (w *Worker) cancelRecorded(ctx context.Context, m *nats.Msg, jobID string) {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	fail := func(code, format string, args ...any) {
		w.reply(m, CancelReply{JobID: jobID, Error: &schemas.Error{Code: code, Message: fmt.Sprintf(format, args...)}})
	}
	if err := queue.ValidateJobID(jobID); err != nil {
		fail("invalid_job_id", "%v", err)
		return
	}
	for range 3 { // a few compare-and-set rounds against the holder's writes
		rec, rev, err := w.runs.Get(ctx, jobID)
		switch {
		case errors.Is(err, queue.ErrRunNotFound):
			fail("unknown_job", "no run is recorded for job %s: it is unknown, finished more than the runs bucket keeps, or still queued (a queued job cannot be cancelled)", jobID)
			return
		case err != nil:
			fail("unavailable", "read job %s: %v", jobID, err)
			return
		}
		switch rec.State {
		case queue.RunDone:
			fail("job_finished", "job %s has already finished", jobID)
			return
		case queue.RunPaused:
			if err := w.publishControl(ctx, jobID, rec.ApprovalID, controlCancel); err != nil {
				fail("unavailable", "%v", err)
				return
			}
			w.reply(m, CancelReply{JobID: jobID, Status: "cancelling", Worker: w.opts.Name})
			return
		}
		if a := w.activeJob(jobID); a != nil { // it started here meanwhile
			a.requestCancel()
			w.reply(m, CancelReply{JobID: jobID, Status: "cancelling", Worker: w.opts.Name})
			return
		}
		// Running on another worker, which answers too; if that worker is
		// gone, the flag makes the worker that re-attaches cancel the run.
		rec.CancelRequested = true
		if _, err := w.runs.Update(ctx, rec, rev); errors.Is(err, queue.ErrRevisionMismatch) {
			continue
		} else if err != nil {
			fail("unavailable", "record cancel for job %s: %v", jobID, err)
			return
		}
		w.reply(m, CancelReply{JobID: jobID, Status: "cancel_requested", Worker: rec.Owner})
		return
	}
	fail("unavailable", "job %s is changing too fast to record the cancel; try again", jobID)
}

func (w *Worker) reply(m *nats.Msg, r CancelReply) {
	if m.Reply == "" {
		return
	}
	data, _ := json.Marshal(r)
	if err := m.Respond(data); err != nil {
		w.log.Warn("reply to cancel request", "job_id", r.JobID, "err", err)
	}
}

// cancelJobID reads the job id from the subject (a body naming another job
// is refused: subject permissions must mean what they say).
func cancelJobID(prefix string, m *nats.Msg) (string, error) {
	parts := strings.Split(strings.TrimPrefix(m.Subject, prefix), ".")
	for i, p := range parts {
		if p == "~" { // queue's encoding of an empty part of a job id
			parts[i] = ""
		}
	}
	jobID := strings.Join(parts, ".")
	var body struct {
		JobID string `json:"job_id"`
	}
	if len(m.Data) > 0 && json.Unmarshal(m.Data, &body) == nil && body.JobID != "" && body.JobID != jobID {
		return jobID, fmt.Errorf("the request names job %q but was sent on the subject of job %q", body.JobID, jobID)
	}
	return jobID, nil
}
