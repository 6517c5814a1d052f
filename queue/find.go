package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// JobDetail is everything stored about one job.
type JobDetail struct {
	JobID string `json:"job_id"`
	// State is where the job is, as far as the records tell: running or
	// paused from its run record, else the status of its last final
	// result, else dead, else queued.
	State JobState `json:"state"`
	// Queued is the job's message in JOBS, when it is among the oldest
	// QueueScanned queued jobs (Find reads no further).
	Queued       *JobInfo `json:"queued,omitempty"`
	QueueScanned int      `json:"queue_scanned"`
	// Run is the job's run record (nil when none is stored: not started
	// yet, never started, or expired after settling).
	Run *RunRecord `json:"run,omitempty"`
	// Results, Approvals and Dead are the job's messages in RESULTS,
	// APPROVALS and DEAD, oldest first.
	Results   []schemas.Result          `json:"results"`
	Approvals []schemas.ApprovalRequest `json:"approvals"`
	Dead      []schemas.DeadLetter      `json:"dead"`
	// Attempts is the most deliveries any record counts.
	Attempts int `json:"attempts"`
}

// Find gathers what is stored about jobID: one Get of its run record, its
// subjects of RESULTS, APPROVALS and DEAD (each read with a consumer
// filtered to the job's subject), and, unless its run record shows a worker
// took it, a look for it among the oldest DefaultFindMaxScan queued jobs
// (one direct get each: JOBS has no index by job id). One Get of one record
// is what a person asking about one job costs; listings never Get.
func (l *lister) Find(ctx context.Context, jobID string) (*JobDetail, error) {
	if l.cfgErr != nil {
		return nil, fmt.Errorf("find job: %w", l.cfgErr)
	}
	if err := ValidateJobID(jobID); err != nil {
		return nil, fmt.Errorf("find job: %w", err)
	}
	d := &JobDetail{JobID: jobID, Results: []schemas.Result{}, Approvals: []schemas.ApprovalRequest{}, Dead: []schemas.DeadLetter{}}
	runs, err := NewRunStore(ctx, l.js, l.cfg)
	if err != nil {
		return nil, fmt.Errorf("find job %s: %w", jobID, err)
	}
	rec, _, err := runs.Get(ctx, jobID)
	switch {
	case err == nil:
		d.Run = &rec
		d.Attempts = rec.Attempt
	case !errors.Is(err, ErrRunNotFound):
		return nil, fmt.Errorf("find job %s: %w", jobID, err)
	}
	reads := []struct {
		stream, subject string
		fn              func([]byte) error
	}{
		{l.cfg.ResultsStream(), l.cfg.ResultSubject(jobID), func(b []byte) error {
			var r schemas.Result
			if err := json.Unmarshal(b, &r); err != nil {
				return err
			}
			d.Results = append(d.Results, r)
			d.Attempts = max(d.Attempts, r.Attempt)
			return nil
		}},
		{l.cfg.ApprovalsStream(), l.cfg.ApprovalSubject(jobID), func(b []byte) error {
			var a schemas.ApprovalRequest
			if err := json.Unmarshal(b, &a); err != nil {
				return err
			}
			d.Approvals = append(d.Approvals, a)
			return nil
		}},
		{l.cfg.DeadStream(), l.cfg.DeadSubject(jobID), func(b []byte) error {
			var dl schemas.DeadLetter
			if err := json.Unmarshal(b, &dl); err != nil {
				return err
			}
			d.Dead = append(d.Dead, dl)
			d.Attempts = max(d.Attempts, dl.Attempt)
			return nil
		}},
	}
	for _, r := range reads {
		err := readRaw(ctx, l.js, readSpec{stream: r.stream, subject: r.subject}, func(msg jetstream.Msg, seq uint64) error {
			if err := r.fn(msg.Data()); err != nil {
				return fmt.Errorf("decode message %d of %s: %w", seq, r.stream, err)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("find job %s: %w", jobID, err)
		}
	}
	if d.Run == nil || d.Run.State == RunDone {
		if err := l.findQueued(ctx, d); err != nil {
			return nil, fmt.Errorf("find job %s: %w", jobID, err)
		}
	}
	d.State = d.state()
	if d.State == "" {
		return nil, fmt.Errorf("%w: %s: no run record, result, approval request or dead letter, and not among the %d oldest queued jobs",
			ErrJobNotFound, jobID, d.QueueScanned)
	}
	return d, nil
}

// findQueued looks for d's job among the oldest DefaultFindMaxScan jobs of
// JOBS by their Nats-Msg-Id.
func (l *lister) findQueued(ctx context.Context, d *JobDetail) error {
	st, err := l.js.Stream(ctx, l.cfg.JobsStream())
	if err != nil {
		return fmt.Errorf("stream %s: %w", l.cfg.JobsStream(), err)
	}
	last := st.CachedInfo().State.LastSeq
	for seq := uint64(1); seq <= last && d.QueueScanned < DefaultFindMaxScan; {
		msg, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(l.cfg.JobsWildcard()))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get the job at or after sequence %d of %s: %w", seq, l.cfg.JobsStream(), err)
		}
		if msg.Sequence > last {
			return nil
		}
		d.QueueScanned++
		if msg.Header.Get(jetstream.MsgIDHeader) == d.JobID {
			ji := l.queuedInfo(msg, l.deliveredUpTo(ctx, st))
			d.Queued = &ji
			return nil
		}
		seq = msg.Sequence + 1
	}
	return nil
}

func (d *JobDetail) state() JobState {
	if d.Run != nil {
		switch d.Run.State {
		case RunStarting, RunRunning:
			return JobRunning
		case RunPaused:
			return JobPaused
		}
	}
	if d.Queued != nil {
		return JobQueued
	}
	for i := len(d.Results) - 1; i >= 0; i-- {
		if d.Results[i].Status.Final() {
			return JobState(d.Results[i].Status)
		}
	}
	if len(d.Dead) > 0 {
		return JobDead
	}
	if len(d.Results) > 0 || len(d.Approvals) > 0 || d.Run != nil {
		// Only a paused result (or an approval) is left of a job whose run
		// record expired: it was paused last.
		return JobPaused
	}
	return ""
}
