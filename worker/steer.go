package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/signing"
	"github.com/jetpilot-dev/jetpilot/spawn"
)

// Steering requests (core NATS, schema steer.v1, on <prefix>.steer.<job_id>)
// are answered like cancels, by one worker of a queue group: the worker
// following the job's run sends the guidance into it (a steering message)
// and answers "steered"; a worker that does not follow it forwards the
// request to the one the run record names (<prefix>.holder.<worker>.steer).
// A job that is queued, paused, finished or unknown gets an error that
// says so: steering a run that waits for a human would make the agent
// server skip the calls the human is deciding.
//
// A steer is authorised like a decision: where the policy requires signed
// decisions, it must carry an approver's signature and a sent_at within
// steerMaxAge (a captured request cannot be replayed later). Each steer
// that reaches a run is audited and shows in the job's live events.

// maxSteersInFlight bounds the steering requests one worker answers at
// once (each may wait steerTimeout for its run); more are refused.
const maxSteersInFlight = 64

// steerMaxAge is how old a signed steering request may be.
const steerMaxAge = 5 * time.Minute

// steerTimeout bounds how long a steering message waits for its run to
// reach a point where it can be given safely (spawn.Control.Steer) and be
// sent; a forwarded request is given a few seconds more, and `jetpilot
// steer` waits 30 s in all.
const steerTimeout = 20 * time.Second

// Codes of steer replies (besides the decisions' signature codes).
const (
	// CodeNotRunning: the job has no run that can take guidance now.
	CodeNotRunning = "not_running"
	// CodeStaleRequest: a signed steering request without a recent sent_at.
	CodeStaleRequest = "stale_request"
)

func (w *Worker) steerQueueGroup() string { return w.qcfg.WorkersDurable() + "-steer" }

// serveSteers answers steering requests until stop is called; stop waits
// for the answers being worked on.
func (w *Worker) serveSteers(ctx context.Context, nc *nats.Conn) (stop func(), err error) {
	hs := newHandlers(maxSteersInFlight)
	async := func(m *nats.Msg, forward bool) {
		if !hs.Go(func() { w.reply(m, w.steer(ctx, m, forward)) }) {
			w.reply(m, CancelReply{Error: &schemas.Error{Code: "unavailable", Message: fmt.Sprintf("worker %s is stopping, or answering %d steering requests already; try again", w.opts.Name, maxSteersInFlight)}})
		}
	}
	requests, err := nc.QueueSubscribe(w.qcfg.SteerWildcard(), w.steerQueueGroup(), func(m *nats.Msg) {
		async(m, true)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to steering requests: %w", err)
	}
	forwarded, err := nc.Subscribe(w.qcfg.HolderSteerSubject(w.opts.Name), func(m *nats.Msg) {
		async(m, false)
	})
	if err != nil {
		_ = requests.Unsubscribe()
		return nil, fmt.Errorf("subscribe to forwarded steering requests: %w", err)
	}
	return func() {
		_ = requests.Unsubscribe()
		_ = forwarded.Unsubscribe()
		hs.Close()
	}, nil
}

// steer answers one steering request. forward: it came from a producer
// (not from another worker), so a job held elsewhere is passed on.
func (w *Worker) steer(ctx context.Context, m *nats.Msg, forward bool) CancelReply {
	ctx, cancel := context.WithTimeout(ctx, steerTimeout+2*forwardTimeout)
	defer cancel()
	jobID, req, steeredBy, serr := w.readSteer(m, forward)
	fail := func(e *schemas.Error) CancelReply { return CancelReply{JobID: jobID, Error: e} }
	if serr != nil {
		return fail(serr)
	}
	if a := w.activeJob(jobID); a != nil {
		return w.steerHere(ctx, a, jobID, req, steeredBy)
	}
	run, err := w.runs.GetRun(ctx, jobID)
	switch {
	case errors.Is(err, queue.ErrRunNotFound):
		return fail(&schemas.Error{Code: "unknown_job", Message: fmt.Sprintf("no run is recorded for job %s: it is unknown, still queued (waiting for a worker or its key's turn), or finished longer ago than the runs bucket keeps", jobID)})
	case err != nil:
		return fail(&schemas.Error{Code: "unavailable", Message: fmt.Sprintf("read job %s: %v", jobID, err)})
	}
	switch run.Stored {
	case queue.RunDone:
		return fail(&schemas.Error{Code: "job_finished", Message: fmt.Sprintf("job %s has already finished", jobID)})
	case queue.RunPaused:
		return fail(&schemas.Error{Code: CodeNotRunning, Message: fmt.Sprintf("job %s is paused for approval %s: answer the approval first (steering now would skip the calls waiting for it)", jobID, run.Record.ApprovalID)})
	}
	if a := w.activeJob(jobID); a != nil { // it started here meanwhile
		return w.steerHere(ctx, a, jobID, req, steeredBy)
	}
	owner := run.Record.Owner
	if !forward || owner == "" || owner == w.opts.Name {
		return fail(&schemas.Error{Code: CodeNotRunning, Message: fmt.Sprintf("job %s is not followed by any worker right now (it is being taken over or settled); try again", jobID)})
	}
	fctx, fcancel := context.WithTimeout(ctx, steerTimeout+forwardTimeout)
	defer fcancel()
	msg, err := w.js.Conn().RequestWithContext(fctx, w.qcfg.HolderSteerSubject(owner), m.Data)
	if err != nil {
		return fail(&schemas.Error{Code: CodeNotRunning, Message: fmt.Sprintf("worker %s, which holds job %s, did not answer (%v); try again", owner, jobID, err)})
	}
	var r CancelReply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return fail(&schemas.Error{Code: "unavailable", Message: fmt.Sprintf("worker %s answered with something unreadable: %v", owner, err)})
	}
	return r
}

// steerHere sends the guidance into the run this worker follows.
func (w *Worker) steerHere(ctx context.Context, a *activeJob, jobID string, req schemas.SteerRequest, steeredBy schemas.AuditApprover) CancelReply {
	sctx, cancel := context.WithTimeout(ctx, steerTimeout)
	defer cancel()
	if err := a.ctl.Steer(sctx, req.Text); err != nil {
		code := "unavailable"
		if errors.Is(err, spawn.ErrNotSteerable) {
			code = CodeNotRunning
		}
		return CancelReply{JobID: jobID, Error: &schemas.Error{Code: code, Message: fmt.Sprintf("steer job %s: %v", jobID, err)}}
	}
	who := steeredBy.Name
	if who == "" {
		who = req.SteeredBy
	}
	a.events.emit(schemas.Event{Type: schemas.EventSteered, Text: req.Text, Status: who})
	first, _, _ := strings.Cut(req.Text, "\n")
	w.auditOrLog(ctx, schemas.AuditRecord{JobID: jobID, Kind: schemas.AuditSteer, Approver: steeredBy,
		Decision: "steered", Reason: queue.CapID(first)}, w.log.With("job_id", jobID))
	return CancelReply{JobID: jobID, Outcome: schemas.Steered, Worker: w.opts.Name}
}

// readSteer reads and authorises a steering request: the subject names
// the job (fromSubject; a forwarded request came on the holder's inbox, and
// the worker that forwarded it checked its subject), the body must name
// the same, and where the policy requires signed decisions it must be
// signed, recently, by an approver.
func (w *Worker) readSteer(m *nats.Msg, fromSubject bool) (string, schemas.SteerRequest, schemas.AuditApprover, *schemas.Error) {
	var who schemas.AuditApprover
	req, err := schemas.DecodeSteer(m.Data)
	jobID := req.JobID
	if fromSubject {
		jobID, _ = w.qcfg.JobIDOfSubject("steer", m.Subject)
	}
	if err := queue.ValidateJobID(jobID); err != nil {
		return jobID, schemas.SteerRequest{}, who, &schemas.Error{Code: "invalid_job_id", Message: err.Error()}
	}
	if err != nil {
		return jobID, req, who, &schemas.Error{Code: "invalid_request", Message: err.Error()}
	}
	if req.JobID != jobID {
		return jobID, req, who, &schemas.Error{Code: CodeSubjectMismatch, Message: fmt.Sprintf("the request names job %q but was sent on the subject of job %q", req.JobID, jobID)}
	}
	pol := w.Policy()
	if !pol.Signed() {
		return jobID, req, who, nil
	}
	key, err := signing.Verify(m.Data)
	switch {
	case errors.Is(err, signing.ErrNoSignature):
		return jobID, req, who, &schemas.Error{Code: CodeSignatureMissing, Message: "the policy requires signed decisions, and steering is authorised like one: sign it with jetpilot steer --key"}
	case errors.Is(err, signing.ErrMalformedSignature):
		return jobID, req, who, &schemas.Error{Code: CodeSignatureMalformed, Message: err.Error()}
	case err != nil:
		return jobID, req, who, &schemas.Error{Code: CodeSignatureInvalid, Message: err.Error()}
	}
	if req.Schema != schemas.SteerSchemaID {
		// The signed bytes must say what they are, so a signature over
		// one kind of message cannot be passed off as another's.
		return jobID, req, who, &schemas.Error{Code: "invalid_request", Message: fmt.Sprintf("a signed steering request names its schema: \"schema\": %q", schemas.SteerSchemaID)}
	}
	name, ok := pol.ApproverByKey(key)
	if !ok {
		return jobID, req, who, &schemas.Error{Code: CodeUnknownKey, Message: fmt.Sprintf("key %s is not an approver's in policy version %d", key, pol.Version)}
	}
	now := time.Now()
	if req.SentAt == nil || now.Sub(*req.SentAt) > steerMaxAge || req.SentAt.Sub(now) > time.Minute {
		return jobID, req, who, &schemas.Error{Code: CodeStaleRequest, Message: fmt.Sprintf("a signed steering request needs a sent_at within the last %s (clocks may differ by a minute)", steerMaxAge)}
	}
	return jobID, req, schemas.AuditApprover{Name: name, Key: key}, nil
}
