package console

import (
	"context"
	"strings"
	"time"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// State is a job's state as the console shows it: queued (in JOBS, not yet
// taken), or the run record's state.
type State string

// The states a job can be listed in.
const (
	StateQueued   State = "queued"
	StateStarting State = State(queue.RunStarting)
	StateRunning  State = State(queue.RunRunning)
	StatePaused   State = State(queue.RunPaused)
	StateDone     State = State(queue.RunDone)
)

// States are the states in the order the jobs page shows them.
var States = []State{StateQueued, StateStarting, StateRunning, StatePaused, StateDone}

// JobSummary is what a list row, the inbox and the workers page need of a
// job. It is small on purpose: the index keeps one per run record.
type JobSummary struct {
	ID       string
	State    State
	Profile  string
	Owner    string
	Attempt  int
	Phase    int
	Metadata map[string]string
	// Requester is the producer who signed the job, if any.
	Requester string
	// Prompt is known for queued jobs only (run records do not keep it).
	Prompt    string
	SessionID string
	RunID     string
	StartedAt time.Time
	UpdatedAt time.Time

	// The pending approval, for paused jobs only.
	ApprovalID        string
	ApprovalExpiresAt time.Time
	PausedAt          time.Time
	Pending           []schemas.ToolCall
	PendingDigest     string
	Need              *schemas.ApprovalNeeds
	Votes             []queue.Vote
}

// Filter selects jobs for a list. Zero fields select everything.
type Filter struct {
	State   State
	Profile string
	// Text matches, case-insensitively, a substring of the job id, profile,
	// owner, requester, a metadata value, or (queued jobs) the prompt.
	Text string
	// Limit caps the jobs returned; 0 takes DefaultListLimit.
	Limit int
}

// DefaultListLimit is how many jobs a list page shows at most.
const DefaultListLimit = 200

// Page is one list of jobs, newest change first.
type Page struct {
	Jobs []JobSummary
	// Matched counts every job that matched, Jobs holds the first Limit.
	Matched int
	// Depth is the number of messages in JOBS per profile (taken and not
	// yet acknowledged ones included), from the stream's subject counts.
	Depth map[string]uint64
	// Truncated: the queued jobs were not all looked at (QueuedScan).
	Truncated bool
}

// WorkerSummary is one worker as the run records show it.
type WorkerSummary struct {
	Name string
	// Held are the jobs it holds now (starting or running).
	Held []string
	// LastSeen is its latest write of a run record (a start, progress, a
	// pause or a finish). Workers beat JetStream, not the bucket, so an idle
	// worker is as old as its last job.
	LastSeen time.Time
}

// Jobs is what the console needs to know about jobs. NewIndex implements it
// over the runs bucket and the JOBS stream; another implementation (a
// shared paged lister) can take its place.
type Jobs interface {
	// List returns the jobs that match f, newest change first.
	List(ctx context.Context, f Filter) (Page, error)
	// Job returns one job's summary; ok is false when nothing is known.
	Job(ctx context.Context, id string) (s JobSummary, ok bool, err error)
	// Paused returns every paused job with its pending approval, oldest
	// pause first.
	Paused(ctx context.Context) ([]JobSummary, error)
	// Workers returns the workers that own run records, by name.
	Workers(ctx context.Context) ([]WorkerSummary, error)
	// Subscribe returns a channel that receives (coalesced) when anything
	// listed may have changed, and a function that ends the subscription.
	Subscribe() (<-chan struct{}, func())
}

// matches reports whether s passes f (Limit aside).
func (f Filter) matches(s *JobSummary) bool {
	if f.State != "" && s.State != f.State {
		return false
	}
	if f.Profile != "" && s.Profile != f.Profile {
		return false
	}
	if f.Text == "" {
		return true
	}
	t := strings.ToLower(f.Text)
	has := func(v string) bool { return strings.Contains(strings.ToLower(v), t) }
	if has(s.ID) || has(s.Profile) || has(s.Owner) || has(s.Requester) || has(s.Prompt) {
		return true
	}
	for _, v := range s.Metadata {
		if has(v) {
			return true
		}
	}
	return false
}

// summarize turns a run record into its summary.
func summarize(rec *queue.RunRecord) JobSummary {
	s := JobSummary{
		ID: rec.JobID, State: State(rec.State), Profile: rec.Job.ProfileOrDefault(), Owner: rec.Owner,
		Attempt: rec.Attempt, Phase: rec.Phase, Metadata: rec.Job.Metadata, Requester: rec.Requester,
		SessionID: rec.SessionID, RunID: rec.RunID, StartedAt: rec.StartedAt, UpdatedAt: rec.UpdatedAt,
	}
	if rec.State == queue.RunPaused {
		s.ApprovalID, s.ApprovalExpiresAt, s.PausedAt = rec.ApprovalID, rec.ApprovalExpiresAt, rec.PausedAt
		s.Pending, s.PendingDigest, s.Need, s.Votes = rec.Pending, rec.PendingDigest, rec.Need, rec.Votes
	}
	return s
}
