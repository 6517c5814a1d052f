package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// RunState is where a job's run is. The states and the transitions between
// them are the whole lifecycle of a job once a worker has taken it:
//
//	(no record) ──started──▶ running ──pause──▶ paused
//	     │                   │  ▲  ╰─progress─╯   │
//	start_failed             │  ╰────resume───────╯
//	     ▼                   │
//	  starting ──started─────┤
//	     │                   finish
//	     ╰──────finish──────▶ done ──(same id, new job)──▶ starting / running
//
// (finish also leaves paused: a pause that could not be published ends the
// job for good.)
//
// request_cancel keeps the state and sets CancelRequested: it is the one
// change a worker makes to a run it does not hold.
type RunState string

const (
	// RunStarting: the job was taken but its run could not be started yet
	// (the agent server was down or refused the token); it is retried within
	// the worker's start budget, counted from StartFailedAt.
	RunStarting RunState = "starting"
	// RunRunning: the job has a session (and usually a run) that the owner
	// follows.
	RunRunning RunState = "running"
	// RunPaused: the run waits for a human's decision; nobody holds it.
	RunPaused RunState = "paused"
	// RunDone: the job's final result is published.
	RunDone RunState = "done"
)

// runNone is the state of a job with no record yet.
const runNone RunState = ""

// Transition is a named change of a run record. Every write of a record is
// one, through RunStore.Transition, which refuses a transition from a state
// it does not leave.
type Transition string

const (
	// TransStartFailed records a first failed start: the start budget counts
	// from it.
	TransStartFailed Transition = "start_failed"
	// TransStarted records the job's session (and then run): from here a
	// redelivery re-attaches instead of starting again.
	TransStarted Transition = "started"
	// TransProgress moves the cursor of a followed run (event id, run id,
	// decided calls).
	TransProgress Transition = "progress"
	// TransPause records that the run waits for a human.
	TransPause Transition = "pause"
	// TransResume takes a paused run for a worker: a decision, the
	// approval's expiry or a cancel. Of two racing resumes exactly one wins.
	TransResume Transition = "resume"
	// TransFinish records that the job's final result is published.
	TransFinish Transition = "finish"
	// TransRequestCancel asks whoever holds (or next takes) the run to
	// cancel it.
	TransRequestCancel Transition = "request_cancel"
	// TransVote records one approver's allow on the pending approval while
	// the quorum is not met: the run stays paused.
	TransVote Transition = "vote"
)

// transitions lists, for each transition, the states it leaves and the
// state it enters ("" target: the state does not change).
var transitions = map[Transition]struct {
	from []RunState
	to   RunState
}{
	TransStartFailed:   {[]RunState{runNone, RunDone}, RunStarting},
	TransStarted:       {[]RunState{runNone, RunStarting, RunDone}, RunRunning},
	TransProgress:      {[]RunState{RunRunning}, RunRunning},
	TransPause:         {[]RunState{RunRunning}, RunPaused},
	TransResume:        {[]RunState{RunPaused}, RunRunning},
	TransFinish:        {[]RunState{RunStarting, RunRunning, RunPaused}, RunDone},
	TransRequestCancel: {[]RunState{RunStarting, RunRunning}, ""},
	TransVote:          {[]RunState{RunPaused}, ""},
}

// ErrIllegalTransition: a transition was asked of a state it does not leave.
var ErrIllegalTransition = errors.New("illegal run transition")

// TransitionError names an illegal transition and both states.
type TransitionError struct {
	JobID      string
	Transition Transition
	From       RunState // "" for a job with no record
	To         RunState
}

func (e *TransitionError) Error() string {
	from := string(e.From)
	if from == "" {
		from = "no record"
	}
	return fmt.Sprintf("run of job %s: transition %s is not allowed from %s (to %s)", e.JobID, e.Transition, from, e.To)
}

func (e *TransitionError) Unwrap() error { return ErrIllegalTransition }

// Target is the state t leads to from from, or a *TransitionError.
func (t Transition) Target(jobID string, from RunState) (RunState, error) {
	tr, ok := transitions[t]
	if !ok {
		return "", fmt.Errorf("run of job %s: unknown transition %q", jobID, t)
	}
	to := tr.to
	if to == "" {
		to = from
	}
	if !slices.Contains(tr.from, from) {
		return "", &TransitionError{JobID: jobID, Transition: t, From: from, To: to}
	}
	return to, nil
}

// Run is a run record as a worker holds it: the record it changes, and the
// revision and state last stored, which RunStore.Transition checks against.
type Run struct {
	Record RunRecord
	// Rev is the record's revision in the bucket; 0 when none is stored.
	Rev uint64
	// Stored is the state at Rev ("" when none is stored).
	Stored RunState
}

// NewRun is a job's run with nothing stored yet.
func NewRun(rec RunRecord) *Run { return &Run{Record: rec} }

// GetRun reads the job's run for a worker to change, or ErrRunNotFound.
func (s *RunStore) GetRun(ctx context.Context, jobID string) (*Run, error) {
	rec, rev, err := s.Get(ctx, jobID)
	if err != nil {
		return nil, err
	}
	return &Run{Record: rec, Rev: rev, Stored: rec.State}, nil
}

// Transition writes run.Record as transition t: the state it leads to from
// run.Stored is set, and the record is written with compare-and-set against
// run.Rev (created when nothing is stored, or replacing a record left done
// by an earlier job with the same id). It is the one function that changes
// a run record. On success run.Rev and run.Stored are the new ones. An
// illegal transition is a *TransitionError and writes nothing; a record that
// changed since run.Rev is ErrRevisionMismatch (read it again and decide),
// and one created meanwhile ErrRunExists.
func (s *RunStore) Transition(ctx context.Context, run *Run, t Transition) error {
	to, err := t.Target(run.Record.JobID, run.Stored)
	if err != nil {
		return err
	}
	rec := run.Record
	rec.State = to
	var rev uint64
	switch {
	case run.Rev == 0:
		rev, err = s.create(ctx, rec)
	case to == RunDone && s.ttl > 0:
		// A settled record expires: nothing needs it once the job's
		// result is out of the results stream.
		rev, err = s.finishWithTTL(ctx, rec, run.Rev)
	default:
		rev, err = s.update(ctx, rec, run.Rev)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", t, err)
	}
	run.Record, run.Rev, run.Stored = rec, rev, to
	return nil
}
