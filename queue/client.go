package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Client is the producer side of jetpilot: it submits jobs and reads
// results, approvals, events and dead letters, and sends decisions and
// cancel requests. The CLI uses it, and so can any Go program. It holds no
// state beyond its JetStream handle and is safe for concurrent use.
type Client struct {
	js  jetstream.JetStream
	cfg Config
	// cfgErr is cfg.Validate(), returned by every method, so NewClient
	// stays a plain constructor and a bad prefix still fails clearly.
	cfgErr error
}

// NewClient returns a Client using js and the names in cfg (zero fields
// take their defaults). Streams must exist: see Setup. An invalid cfg is
// reported by every method.
func NewClient(js jetstream.JetStream, cfg Config) *Client {
	return &Client{js: js, cfg: cfg.WithDefaults(), cfgErr: cfg.Validate()}
}

// SubmitAck says where a job landed.
type SubmitAck struct {
	Stream string
	Seq    uint64
	// Duplicate is true when JetStream already had a job with this id within
	// the duplicate window and dropped this one: the job runs once.
	Duplicate bool
	// Digest is schemas.JobDigest of the bytes published. A worker's result
	// for this job carries the same job_digest; a result with another one
	// is of another job that had the same id.
	Digest string
}

// Submit validates job against the job schema (every problem is reported,
// as a *schemas.ValidationError) and publishes it on
// JobSubject(job.ProfileOrDefault()) with Nats-Msg-Id = job.ID.
func (c *Client) Submit(ctx context.Context, job schemas.Job) (SubmitAck, error) {
	data, err := json.Marshal(job)
	if err != nil {
		return SubmitAck{}, fmt.Errorf("submit job %q: marshal: %w", job.ID, err)
	}
	if err := schemas.Validate(schemas.SchemaJob, data); err != nil {
		return SubmitAck{}, fmt.Errorf("submit job %q: %w", job.ID, err)
	}
	return c.SubmitRaw(ctx, job.ProfileOrDefault(), job.ID, data)
}

// SubmitRaw publishes data as a job as is, without validation: workers
// validate every job and answer bad ones with a rejected result, so this
// is how a producer hands over a job it did not build (stdin, tests). id
// becomes the Nats-Msg-Id; "" publishes without one (no duplicate check).
// profile "" means schemas.DefaultProfile.
func (c *Client) SubmitRaw(ctx context.Context, profile, id string, data []byte) (SubmitAck, error) {
	if c.cfgErr != nil {
		return SubmitAck{}, fmt.Errorf("submit job %q: %w", id, c.cfgErr)
	}
	if profile == "" {
		profile = schemas.DefaultProfile
	}
	if err := ValidateProfile(profile); err != nil {
		return SubmitAck{}, fmt.Errorf("submit job %q: %w", id, err)
	}
	if id != "" {
		if err := ValidateJobID(id); err != nil {
			return SubmitAck{}, fmt.Errorf("submit job: %w", err)
		}
	}
	ack, err := publishData(ctx, c.js, c.cfg.JobsStream(), c.cfg.JobSubject(profile), id, data)
	if err != nil {
		return SubmitAck{}, fmt.Errorf("submit job %q: %w", id, err)
	}
	return SubmitAck{Stream: ack.Stream, Seq: ack.Sequence, Duplicate: ack.Duplicate, Digest: schemas.JobDigest(data)}, nil
}

// WaitResult waits for the job's final result: it reads the job's results
// from the start of the stream, so a result published before the call is
// found too, skips paused ones, and returns the first whose status is
// final. It waits until ctx is done.
func (c *Client) WaitResult(ctx context.Context, jobID string) (schemas.Result, error) {
	if c.cfgErr != nil {
		return schemas.Result{}, fmt.Errorf("wait for result: %w", c.cfgErr)
	}
	if err := ValidateJobID(jobID); err != nil {
		return schemas.Result{}, fmt.Errorf("wait for result: %w", err)
	}
	var out schemas.Result
	found := false
	err := readStream(ctx, c.js, readSpec{
		stream:  c.cfg.ResultsStream(),
		subject: c.cfg.ResultSubject(jobID),
		follow:  true,
	}, func(r schemas.Result, _ uint64) error {
		if !r.Status.Final() {
			return nil
		}
		out, found = r, true
		return errStopRead
	})
	if err != nil {
		return schemas.Result{}, fmt.Errorf("wait for result of job %s: %w", jobID, err)
	}
	if !found {
		return schemas.Result{}, fmt.Errorf("wait for result of job %s: reader ended without a result", jobID)
	}
	return out, nil
}

// WaitNext waits for the job's next result (paused ones included) stored
// after stream sequence after (0: the first one) and returns it with its
// sequence, so a caller can walk a job's phases:
// r1, s1 := WaitNext(ctx, id, 0); r2, s2 := WaitNext(ctx, id, s1) ...
func (c *Client) WaitNext(ctx context.Context, jobID string, after uint64) (schemas.Result, uint64, error) {
	if c.cfgErr != nil {
		return schemas.Result{}, 0, fmt.Errorf("wait for next result: %w", c.cfgErr)
	}
	if err := ValidateJobID(jobID); err != nil {
		return schemas.Result{}, 0, fmt.Errorf("wait for next result: %w", err)
	}
	var (
		out   schemas.Result
		seq   uint64
		found bool
	)
	err := readStream(ctx, c.js, readSpec{
		stream:   c.cfg.ResultsStream(),
		subject:  c.cfg.ResultSubject(jobID),
		startSeq: after + 1,
		follow:   true,
	}, func(r schemas.Result, s uint64) error {
		out, seq, found = r, s, true
		return errStopRead
	})
	if err != nil {
		return schemas.Result{}, 0, fmt.Errorf("wait for next result of job %s after %d: %w", jobID, after, err)
	}
	if !found {
		return schemas.Result{}, 0, fmt.Errorf("wait for next result of job %s: reader ended without a result", jobID)
	}
	return out, seq, nil
}

// ResultsOptions select what Results reads.
type ResultsOptions struct {
	// JobID limits the read to one job; "" reads every job's results.
	JobID string
	// Follow keeps reading new results until ctx is done; otherwise Results
	// returns once it has read everything stored when it started.
	Follow bool
}

// Results hands stored results to fn, oldest first. An error from fn ends
// the read and is returned as is.
func (c *Client) Results(ctx context.Context, opts ResultsOptions, fn func(schemas.Result) error) error {
	if c.cfgErr != nil {
		return fmt.Errorf("read results: %w", c.cfgErr)
	}
	subject := c.cfg.ResultsWildcard()
	if opts.JobID != "" {
		if err := ValidateJobID(opts.JobID); err != nil {
			return fmt.Errorf("read results: %w", err)
		}
		subject = c.cfg.ResultSubject(opts.JobID)
	}
	return readStream(ctx, c.js, readSpec{stream: c.cfg.ResultsStream(), subject: subject, follow: opts.Follow},
		func(r schemas.Result, _ uint64) error { return fn(r) })
}

// Approvals hands stored approval requests to fn, oldest first; with
// follow it keeps reading new ones until ctx is done. An error from fn ends
// the read and is returned as is.
func (c *Client) Approvals(ctx context.Context, follow bool, fn func(schemas.ApprovalRequest) error) error {
	if c.cfgErr != nil {
		return fmt.Errorf("read approvals: %w", c.cfgErr)
	}
	return readStream(ctx, c.js, readSpec{stream: c.cfg.ApprovalsStream(), subject: c.cfg.ApprovalsWildcard(), follow: follow},
		func(a schemas.ApprovalRequest, _ uint64) error { return fn(a) })
}

// ErrApprovalNotFound: no stored approval request has the id.
var ErrApprovalNotFound = errors.New("approval request not found")

// FindApproval looks an approval request up by its id in the approvals
// stream, newest first is not guaranteed: the stream is read in order. It is
// for humans at a terminal; programs keep the job id from the request.
func (c *Client) FindApproval(ctx context.Context, approvalID string) (schemas.ApprovalRequest, error) {
	var found schemas.ApprovalRequest
	errFound := errors.New("found")
	err := c.Approvals(ctx, false, func(a schemas.ApprovalRequest) error {
		if a.ApprovalID == approvalID {
			found = a
			return errFound
		}
		return nil
	})
	switch {
	case errors.Is(err, errFound):
		return found, nil
	case err != nil:
		return schemas.ApprovalRequest{}, err
	}
	return schemas.ApprovalRequest{}, fmt.Errorf("%w: %s", ErrApprovalNotFound, approvalID)
}

// Events hands stored events of one job (jobID "" for every job) to fn,
// oldest first; with follow it keeps reading new ones until ctx is done.
// An error from fn ends the read and is returned as is.
func (c *Client) Events(ctx context.Context, jobID string, follow bool, fn func(schemas.Event) error) error {
	if c.cfgErr != nil {
		return fmt.Errorf("read events: %w", c.cfgErr)
	}
	subject := c.cfg.EventsWildcard()
	if jobID != "" {
		if err := ValidateJobID(jobID); err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		subject = c.cfg.EventSubject(jobID)
	}
	return readStream(ctx, c.js, readSpec{stream: c.cfg.EventsStream(), subject: subject, follow: follow},
		func(e schemas.Event, _ uint64) error { return fn(e) })
}

// DeadLetters hands stored dead letters to fn, oldest first; with follow it
// keeps reading new ones until ctx is done.
func (c *Client) DeadLetters(ctx context.Context, follow bool, fn func(schemas.DeadLetter) error) error {
	if c.cfgErr != nil {
		return fmt.Errorf("read dead letters: %w", c.cfgErr)
	}
	return readStream(ctx, c.js, readSpec{stream: c.cfg.DeadStream(), subject: c.cfg.DeadWildcard(), follow: follow},
		func(d schemas.DeadLetter, _ uint64) error { return fn(d) })
}

// Decide publishes a decision on an approval request, after validating it
// against the decision schema.
func (c *Client) Decide(ctx context.Context, d schemas.Decision) error {
	if c.cfgErr != nil {
		return fmt.Errorf("decide: %w", c.cfgErr)
	}
	if err := schemas.Validate(schemas.SchemaDecision, d); err != nil {
		return fmt.Errorf("decide approval %q: %w", d.ApprovalID, err)
	}
	if _, err := PublishDecision(ctx, c.js, c.cfg, d); err != nil {
		return fmt.Errorf("decide: %w", err)
	}
	return nil
}

// ErrNoWorkerHoldsJob: nobody answered a cancel request; no worker is
// running the job right now (it may be queued, finished or unknown).
var ErrNoWorkerHoldsJob = errors.New("no worker holds the job")

// Cancel sends a core NATS request on CancelSubject(jobID) and returns the
// reply of the worker holding the job (its format is the worker's), or
// ErrNoWorkerHoldsJob. ctx bounds the wait: give it a deadline.
func (c *Client) Cancel(ctx context.Context, jobID string) ([]byte, error) {
	if c.cfgErr != nil {
		return nil, fmt.Errorf("cancel: %w", c.cfgErr)
	}
	if err := ValidateJobID(jobID); err != nil {
		return nil, fmt.Errorf("cancel: %w", err)
	}
	msg, err := c.js.Conn().RequestWithContext(ctx, c.cfg.CancelSubject(jobID), nil)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("cancel job %s: %w", jobID, ErrNoWorkerHoldsJob)
		}
		return nil, fmt.Errorf("cancel job %s: %w", jobID, err)
	}
	return msg.Data, nil
}

// DecisionOutcome is what a worker did with a decision, as the job's
// events tell.
type DecisionOutcome struct {
	// Applied: the decision settled the approval and the run resumed
	// (approval_decided).
	Applied bool
	// Voted: an allow was recorded and the quorum is not met yet
	// (approval_vote); Event.Text says who is still needed.
	Voted bool
	// Refused is the worker's refusal (decision_error): nothing changed.
	Refused *schemas.Error
	// Event is the event that told.
	Event schemas.Event
}

// DecideAndWait publishes d (as Decide) and waits for the worker's answer
// to it on the job's events: applied, a vote recorded, or refused with the
// reason. Only events stored after the decision is published count. ctx
// bounds the wait: give it a deadline. The decision stays in DECISIONS
// when the wait ends first, and a worker applies it when it takes it.
func (c *Client) DecideAndWait(ctx context.Context, d schemas.Decision) (DecisionOutcome, error) {
	if c.cfgErr != nil {
		return DecisionOutcome{}, fmt.Errorf("decide: %w", c.cfgErr)
	}
	if err := ValidateJobID(d.JobID); err != nil {
		return DecisionOutcome{}, fmt.Errorf("decide: %w", err)
	}
	st, err := c.js.Stream(ctx, c.cfg.EventsStream())
	if err != nil {
		return DecisionOutcome{}, fmt.Errorf("decide: stream %s: %w", c.cfg.EventsStream(), err)
	}
	after := st.CachedInfo().State.LastSeq
	if err := c.Decide(ctx, d); err != nil {
		return DecisionOutcome{}, err
	}
	// A refusal quotes the approval id as the decision gave it, capped.
	approvalID := CapID(d.ApprovalID)
	var out DecisionOutcome
	found := false
	err = readStream(ctx, c.js, readSpec{stream: c.cfg.EventsStream(), subject: c.cfg.EventSubject(d.JobID), startSeq: after + 1, follow: true},
		func(e schemas.Event, _ uint64) error {
			if e.ApprovalID != approvalID && e.ApprovalID != d.ApprovalID {
				return nil
			}
			switch e.Type {
			case schemas.EventApprovalDecided:
				out.Applied = true
			case schemas.EventApprovalVote:
				out.Voted = true
			case schemas.EventDecisionError:
				out.Refused = e.Error
				if out.Refused == nil {
					out.Refused = &schemas.Error{Code: "refused", Message: "the worker refused the decision without a reason"}
				}
			default:
				return nil
			}
			out.Event, found = e, true
			return errStopRead
		})
	if err != nil {
		return DecisionOutcome{}, fmt.Errorf("wait for the outcome of the decision on approval %s of job %s: %w", CapID(d.ApprovalID), d.JobID, err)
	}
	if !found {
		return DecisionOutcome{}, fmt.Errorf("wait for the outcome of the decision on approval %s: reader ended without one", CapID(d.ApprovalID))
	}
	return out, nil
}
