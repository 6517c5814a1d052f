package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
)

// CancelReply answers a request on jetpilot.cancel.<job_id> (schema
// cancel_reply.v1).
type CancelReply = schemas.CancelReply

// Cancel requests (core NATS, schema cancel.v1, on <prefix>.cancel.<job_id>)
// are answered by one worker of a queue group, never by every worker:
//
//   - it holds the job: it cancels the run (wakes it, follows it to its end)
//     and answers "cancelling";
//   - the job is paused (nobody holds it): it publishes a cancel control
//     message, which the worker that takes it acts on; "cancelling";
//   - another worker holds it: it forwards the request to that worker's
//     inbox (<prefix>.holder.<worker>), which cancels and answers; if that
//     worker does not answer (it died), the cancel is recorded in the run
//     record, for the worker that re-attaches: "cancel_requested";
//   - done or unknown: an error that says so.

// cancelQueueGroup is the queue group of the workers' cancel subscriptions.
func (w *Worker) cancelQueueGroup() string { return w.qcfg.WorkersDurable() + "-cancel" }

// forwardTimeout bounds the wait for the holder's answer to a forwarded
// cancel.
const forwardTimeout = 3 * time.Second

// activeJob is a job phase this worker is following, found by cancel requests.
type activeJob struct {
	jobID string
	// ctl cancels the run the phase follows: the runner sends the cancel,
	// wakes the run and follows it to its end within a bounded grace.
	ctl *spawn.Control
	// settling: the run is no longer followed; its phase is being settled.
	settling atomic.Bool
	// events publishes the phase's live events: others for the job (a
	// refused decision's) go through it, so seq stays one sequence.
	events *liveEvents
}

func (w *Worker) track(jobID string, events *liveEvents) *activeJob {
	a := &activeJob{jobID: jobID, ctl: spawn.NewControl(), events: events}
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

// serveCancels answers cancel requests (one worker of the queue group each)
// and cancels forwarded to this worker's inbox, until stop is called. stop
// waits for the answers being worked on.
func (w *Worker) serveCancels(ctx context.Context, nc *nats.Conn) (stop func(), err error) {
	hs := newHandlers(0)
	goTracked := func(f func()) { hs.Go(f) }
	requests, err := nc.QueueSubscribe(w.qcfg.CancelWildcard(), w.cancelQueueGroup(), func(m *nats.Msg) {
		jobID, err := cancelJobID(w.qcfg, m)
		if err != nil {
			w.reply(m, CancelReply{JobID: jobID, Error: &schemas.Error{Code: "invalid_request", Message: err.Error()}})
			return
		}
		if a := w.activeJob(jobID); a != nil {
			a.requestCancel()
			w.reply(m, CancelReply{JobID: jobID, Outcome: schemas.CancelCancelling, Worker: w.opts.Name})
			goTracked(func() { w.auditCancel(ctx, jobID) })
			return
		}
		goTracked(func() { w.reply(m, w.cancelRecorded(ctx, jobID, m.Data)) })
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to cancel requests: %w", err)
	}
	held, err := nc.Subscribe(w.qcfg.HolderSubject(w.opts.Name), func(m *nats.Msg) {
		var req schemas.CancelRequest
		if json.Unmarshal(m.Data, &req) != nil || req.JobID == "" {
			w.reply(m, CancelReply{Error: &schemas.Error{Code: "invalid_request", Message: "a forwarded cancel names its job"}})
			return
		}
		if a := w.activeJob(req.JobID); a != nil {
			a.requestCancel()
			w.reply(m, CancelReply{JobID: req.JobID, Outcome: schemas.CancelCancelling, Worker: w.opts.Name})
			goTracked(func() { w.auditCancel(ctx, req.JobID) })
			return
		}
		w.reply(m, CancelReply{JobID: req.JobID, Error: &schemas.Error{Code: "not_held", Message: "worker " + w.opts.Name + " does not follow job " + req.JobID}})
	})
	if err != nil {
		_ = requests.Unsubscribe()
		return nil, fmt.Errorf("subscribe to forwarded cancels: %w", err)
	}
	return func() {
		_ = requests.Unsubscribe()
		_ = held.Unsubscribe()
		hs.Close()
	}, nil
}

// cancelRecorded answers a cancel for a job this worker does not hold.
func (w *Worker) cancelRecorded(ctx context.Context, jobID string, body []byte) CancelReply {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	fail := func(code, format string, args ...any) CancelReply {
		return CancelReply{JobID: jobID, Error: &schemas.Error{Code: code, Message: fmt.Sprintf(format, args...)}}
	}
	if err := queue.ValidateJobID(jobID); err != nil {
		return fail("invalid_job_id", "%v", err)
	}
	run, err := w.runs.GetRun(ctx, jobID)
	switch {
	case errors.Is(err, queue.ErrRunNotFound):
		return fail("unknown_job", "no run is recorded for job %s: it is unknown, finished more than the runs bucket keeps, or still queued (a queued job cannot be cancelled)", jobID)
	case err != nil:
		return fail("unavailable", "read job %s: %v", jobID, err)
	}
	switch run.Stored {
	case queue.RunDone:
		return fail("job_finished", "job %s has already finished", jobID)
	case queue.RunPaused:
		if err := w.publishControl(ctx, jobID, run.Record.ApprovalID, schemas.ControlCancel); err != nil {
			return fail("unavailable", "%v", err)
		}
		return CancelReply{JobID: jobID, Outcome: schemas.CancelCancelling, Worker: w.opts.Name}
	}
	if a := w.activeJob(jobID); a != nil { // it started here meanwhile
		a.requestCancel()
		return CancelReply{JobID: jobID, Outcome: schemas.CancelCancelling, Worker: w.opts.Name}
	}
	reply, err := w.forwardToHolder(ctx, run, body)
	if err != nil {
		return fail("unavailable", "%v", err)
	}
	return reply
}

// forwardToHolder passes a cancel for a running job to the worker that
// holds it; if it does not answer, the cancel is recorded for whichever
// worker re-attaches.
func (w *Worker) forwardToHolder(ctx context.Context, run *queue.Run, body []byte) (CancelReply, error) {
	jobID := run.Record.JobID
	if owner := run.Record.Owner; owner != "" && owner != w.opts.Name {
		fctx, cancel := context.WithTimeout(ctx, forwardTimeout)
		req, _ := json.Marshal(schemas.CancelRequest{Schema: schemas.CancelSchemaID, JobID: jobID})
		msg, err := w.js.Conn().RequestWithContext(fctx, w.qcfg.HolderSubject(owner), req)
		cancel()
		if err == nil {
			var r CancelReply
			if json.Unmarshal(msg.Data, &r) == nil && r.Error == nil {
				return r, nil
			}
		}
	}
	for range 3 { // a few compare-and-set rounds against the holder's writes
		run.Record.CancelRequested = true
		err := w.runs.Transition(ctx, run, queue.TransRequestCancel)
		switch {
		case err == nil:
			return CancelReply{JobID: jobID, Outcome: schemas.CancelRequested, Worker: run.Record.Owner}, nil
		case errors.Is(err, queue.ErrRevisionMismatch), errors.Is(err, queue.ErrIllegalTransition):
			fresh, gerr := w.runs.GetRun(ctx, jobID)
			if gerr != nil {
				return CancelReply{}, fmt.Errorf("record cancel for job %s: %w", jobID, gerr)
			}
			if fresh.Stored == queue.RunDone || fresh.Stored == queue.RunPaused {
				// It finished or paused meanwhile: answer for what it is now.
				return w.cancelRecorded(ctx, jobID, body), nil
			}
			*run = *fresh
		default:
			return CancelReply{}, fmt.Errorf("record cancel for job %s: %w", jobID, err)
		}
	}
	return CancelReply{}, fmt.Errorf("job %s is changing too fast to record the cancel; try again", jobID)
}

// forwardCancel passes a cancel control message that found the job running
// (a decision resumed it first) to the worker holding it.
func (w *Worker) forwardCancel(ctx context.Context, p *phase) outcome {
	if a := w.activeJob(p.job.ID); a != nil {
		a.requestCancel()
		return drop("cancel forwarded")
	}
	if _, err := w.forwardToHolder(ctx, p.run, nil); err != nil {
		return retry(outRetry, err)
	}
	return drop("cancel forwarded")
}

func (w *Worker) reply(m *nats.Msg, r CancelReply) {
	if m.Reply == "" {
		return
	}
	r.Schema = schemas.CancelReplySchemaID
	data, _ := json.Marshal(r)
	if err := m.Respond(data); err != nil {
		w.log.Warn("reply to cancel request", "job_id", r.JobID, "err", err)
	}
}

// cancelJobID reads the job id from the subject (a body naming another job
// is refused: subject permissions must mean what they say).
func cancelJobID(cfg queue.Config, m *nats.Msg) (string, error) {
	jobID, _ := cfg.JobIDOfSubject("cancel", m.Subject)
	if len(m.Data) == 0 {
		return jobID, nil
	}
	var body schemas.CancelRequest
	dec := json.NewDecoder(strings.NewReader(string(m.Data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return jobID, fmt.Errorf("the request is not a jetpilot.cancel.v1 body: %v", err)
	}
	if body.JobID != "" && body.JobID != jobID {
		return jobID, fmt.Errorf("the request names job %q but was sent on the subject of job %q", body.JobID, jobID)
	}
	return jobID, nil
}
