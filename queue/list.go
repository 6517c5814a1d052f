package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/schemas"
)

// JobState is a state a job can be listed in. Each state is read from the
// one place that knows it, so listing never needs a second consumer on the
// JOBS work queue and never does random Gets over the runs bucket:
//
//	queued     JOBS: the jobs no worker has settled or paused yet, read
//	           with direct gets (one per job listed)
//	running    the runs bucket, read in stream order (starting or running)
//	paused     the runs bucket, read in stream order
//	completed, failed, timed_out, cancelled, rejected, settled (any of them)
//	           RESULTS, read in stream order (final results only)
//	dead       DEAD, read in stream order
type JobState string

const (
	JobQueued    JobState = "queued"
	JobRunning   JobState = "running"
	JobPaused    JobState = "paused"
	JobCompleted JobState = JobState(schemas.StatusCompleted)
	JobFailed    JobState = JobState(schemas.StatusFailed)
	JobTimedOut  JobState = JobState(schemas.StatusTimedOut)
	JobCancelled JobState = JobState(schemas.StatusCancelled)
	JobRejected  JobState = JobState(schemas.StatusRejected)
	// JobSettled is every job with a final result, whatever its status.
	JobSettled JobState = "settled"
	JobDead    JobState = "dead"
)

// JobStates lists every JobState, in the order a job moves through them.
var JobStates = []JobState{JobQueued, JobRunning, JobPaused, JobCompleted, JobFailed, JobTimedOut,
	JobCancelled, JobRejected, JobSettled, JobDead}

// ParseJobState checks s names a JobState.
func ParseJobState(s string) (JobState, error) {
	for _, st := range JobStates {
		if string(st) == s {
			return st, nil
		}
	}
	names := make([]string, len(JobStates))
	for i, st := range JobStates {
		names[i] = string(st)
	}
	return "", fmt.Errorf("%w %q: want one of %s", ErrUnknownJobState, s, strings.Join(names, ", "))
}

// Defaults and bounds of the list options.
const (
	// DefaultListLimit is how many jobs a page holds unless WithLimit says.
	DefaultListLimit = 50
	// MaxListLimit is the most jobs one page may hold.
	MaxListLimit = 1000
	// DefaultListMaxScan is how many stored messages a page of the runs
	// bucket, RESULTS or DEAD reads at most unless WithMaxScan says: a page
	// that filters (paused among many running, one profile among many)
	// stops there and returns its cursor, so no page costs more than this.
	DefaultListMaxScan = 10_000
	// DefaultFindMaxScan is how many queued jobs Find reads at most, with
	// one direct get each, looking for a job that is only queued.
	DefaultFindMaxScan = 10_000
)

var (
	// ErrUnknownJobState: the state is not one of JobStates.
	ErrUnknownJobState = errors.New("unknown job state")
	// ErrBadListOption: a list option has a value out of range.
	ErrBadListOption = errors.New("invalid list option")
	// ErrJobNotFound: nothing stored knows the job (see Lister.Find).
	ErrJobNotFound = errors.New("job not found")
)

// ListOpt is an option of Lister.List.
type ListOpt func(*listOpts) error

type listOpts struct {
	profile string
	limit   int
	after   uint64
	maxScan int
}

// WithProfile lists only the jobs of one profile. Results do not name
// their job's profile, so it cannot be combined with the settled states.
func WithProfile(profile string) ListOpt {
	return func(o *listOpts) error {
		if err := ValidateProfile(profile); err != nil {
			return fmt.Errorf("%w: %w", ErrBadListOption, err)
		}
		o.profile = profile
		return nil
	}
}

// WithLimit sets how many jobs a page holds (1 to MaxListLimit; default
// DefaultListLimit).
func WithLimit(n int) ListOpt {
	return func(o *listOpts) error {
		if n < 1 || n > MaxListLimit {
			return fmt.Errorf("%w: limit must be 1-%d, got %d", ErrBadListOption, MaxListLimit, n)
		}
		o.limit = n
		return nil
	}
}

// WithAfter starts the page after cursor: a JobPage's Next (0, the
// default, starts at the beginning). A cursor is a stream sequence of the
// state's source, so it is only meaningful for the same state.
func WithAfter(cursor uint64) ListOpt {
	return func(o *listOpts) error {
		o.after = cursor
		return nil
	}
}

// WithMaxScan bounds how many stored messages one page reads (default
// DefaultListMaxScan). A page of queued jobs reads exactly the jobs it
// lists, so for it this is a second limit.
func WithMaxScan(n int) ListOpt {
	return func(o *listOpts) error {
		if n < 1 {
			return fmt.Errorf("%w: max scan must be positive, got %d", ErrBadListOption, n)
		}
		o.maxScan = n
		return nil
	}
}

// JobPage is one page of a listing.
type JobPage struct {
	State JobState  `json:"state"`
	Jobs  []JobInfo `json:"jobs"`
	// Next is the cursor of the next page (pass it to WithAfter); 0 when
	// this page read to the end of what was stored when it started. (A
	// page that filled up just before filtered-out messages at the end
	// still has one: the next page is then empty.)
	Next uint64 `json:"next,omitempty"`
	// Scanned is how many stored messages the page read.
	Scanned int `json:"scanned"`
	// Total is how many jobs are in the state, where that is cheap to
	// know: for queued jobs, from the subject counts. 0 otherwise.
	Total uint64 `json:"total,omitempty"`
}

// JobInfo is one job as a listing found it. Which of Job, Run, Result and
// Dead is set depends on the state it was listed in.
type JobInfo struct {
	JobID   string   `json:"job_id"`
	State   JobState `json:"state"`
	Profile string   `json:"profile,omitempty"`
	// Seq is the job's stream sequence in its state's source: a page's
	// cursor is the Seq of its last job.
	Seq uint64 `json:"seq"`
	// Time is when the message was stored (queued: submitted).
	Time time.Time `json:"time"`
	// Delivered (queued) says a worker's consumer has handed the job out
	// at least once: it is being run, or waits for a retry. False also when
	// the consumer could not be read.
	Delivered bool `json:"delivered,omitempty"`
	// Job is the queued job as published, and Problem why it did not
	// decode (a worker will reject it).
	Job     *schemas.Job        `json:"job,omitempty"`
	Problem string              `json:"problem,omitempty"`
	Run     *RunRecord          `json:"run,omitempty"`
	Result  *schemas.Result     `json:"result,omitempty"`
	Dead    *schemas.DeadLetter `json:"dead,omitempty"`
}

// Lister lists jobs by state, a page at a time, and finds one job. It is
// what `jetpilot jobs`, `jetpilot job` and the console read. Safe for
// concurrent use.
//
// How it scales: nothing is ever read in full. Queue depth per profile is
// one stream info request (subject counts). A page of queued jobs costs that
// request (for its Total) and one direct get per job (JOBS needs
// AllowDirect, which Setup sets, else each get is a JetStream API request). A page of any other state is one
// ordered consumer reading its source in stream order from the cursor,
// until the page is full or MaxScan messages were read: sequential reads
// of recent blocks, never random Gets over the runs bucket, so 100k
// records cost a page's worth each time, however many there are.
type Lister interface {
	// List returns one page of the jobs in state.
	List(ctx context.Context, state JobState, opts ...ListOpt) (*JobPage, error)
	// Depth is the number of queued jobs per profile, from JOBS's subject
	// counts (jobs a worker holds are counted until it settles them).
	Depth(ctx context.Context) (map[string]uint64, error)
	// Find gathers everything stored about one job; ErrJobNotFound when
	// nothing is.
	Find(ctx context.Context, jobID string) (*JobDetail, error)
}

// NewLister returns a Lister over the streams and buckets cfg names.
func NewLister(js jetstream.JetStream, cfg Config) Lister {
	return &lister{js: js, cfg: cfg.WithDefaults(), cfgErr: cfg.Validate()}
}

type lister struct {
	js     jetstream.JetStream
	cfg    Config
	cfgErr error
}

func (l *lister) List(ctx context.Context, state JobState, opts ...ListOpt) (*JobPage, error) {
	if l.cfgErr != nil {
		return nil, fmt.Errorf("list %s jobs: %w", state, l.cfgErr)
	}
	if _, err := ParseJobState(string(state)); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	o := listOpts{limit: DefaultListLimit, maxScan: DefaultListMaxScan}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, fmt.Errorf("list %s jobs: %w", state, err)
		}
	}
	var (
		page *JobPage
		err  error
	)
	switch state {
	case JobQueued:
		page, err = l.listQueued(ctx, o)
	case JobRunning, JobPaused:
		page, err = l.listRuns(ctx, state, o)
	case JobDead:
		page, err = l.listDead(ctx, o)
	default:
		if o.profile != "" {
			return nil, fmt.Errorf("list %s jobs: %w: results do not name their job's profile, so settled jobs cannot be listed by profile", state, ErrBadListOption)
		}
		page, err = l.listSettled(ctx, state, o)
	}
	if err != nil {
		return nil, fmt.Errorf("list %s jobs: %w", state, err)
	}
	page.State = state
	if page.Jobs == nil {
		page.Jobs = []JobInfo{}
	}
	return page, nil
}

func (l *lister) Depth(ctx context.Context) (map[string]uint64, error) {
	if l.cfgErr != nil {
		return nil, fmt.Errorf("queue depth: %w", l.cfgErr)
	}
	st, err := l.js.Stream(ctx, l.cfg.JobsStream())
	if err != nil {
		return nil, fmt.Errorf("queue depth: stream %s: %w", l.cfg.JobsStream(), err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(l.cfg.JobsWildcard()))
	if err != nil {
		return nil, fmt.Errorf("queue depth: subject counts of %s: %w", l.cfg.JobsStream(), err)
	}
	out := make(map[string]uint64, len(info.State.Subjects))
	prefix := l.cfg.JobSubject("")
	for subj, n := range info.State.Subjects {
		if p, ok := strings.CutPrefix(subj, prefix); ok {
			out[p] += n
		}
	}
	return out, nil
}

// listQueued reads JOBS with direct gets: each asks for the first message
// at or after a sequence on the filter subject, so one get is one job.
func (l *lister) listQueued(ctx context.Context, o listOpts) (*JobPage, error) {
	st, err := l.js.Stream(ctx, l.cfg.JobsStream())
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", l.cfg.JobsStream(), err)
	}
	filter := l.cfg.JobsWildcard()
	if o.profile != "" {
		filter = l.cfg.JobSubject(o.profile)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, fmt.Errorf("subject counts of %s: %w", l.cfg.JobsStream(), err)
	}
	last := info.State.LastSeq
	page := &JobPage{}
	for _, n := range info.State.Subjects {
		page.Total += n
	}
	delivered := l.deliveredUpTo(ctx, st)
	seq := o.after + 1
	for len(page.Jobs) < o.limit && page.Scanned < o.maxScan {
		if seq > last {
			return page, nil
		}
		msg, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return page, nil
		}
		if err != nil {
			return nil, fmt.Errorf("get the job at or after sequence %d of %s: %w", seq, l.cfg.JobsStream(), err)
		}
		if msg.Sequence > last {
			return page, nil
		}
		page.Scanned++
		page.Jobs = append(page.Jobs, l.queuedInfo(msg, delivered))
		seq = msg.Sequence + 1
	}
	if seq <= last {
		page.Next = seq - 1
	}
	return page, nil
}

// queuedInfo describes a message of JOBS.
func (l *lister) queuedInfo(msg *jetstream.RawStreamMsg, delivered func(subject string, seq uint64) bool) JobInfo {
	profile, _ := strings.CutPrefix(msg.Subject, l.cfg.JobSubject(""))
	ji := JobInfo{State: JobQueued, Profile: profile, Seq: msg.Sequence, Time: msg.Time,
		JobID: msg.Header.Get(jetstream.MsgIDHeader), Delivered: delivered(msg.Subject, msg.Sequence)}
	var job schemas.Job
	if err := json.Unmarshal(msg.Data, &job); err != nil {
		ji.Problem = fmt.Sprintf("the job does not decode: %v", err)
	} else {
		ji.Job = &job
		if ji.JobID == "" {
			ji.JobID = CapID(job.ID)
		}
	}
	if ji.JobID == "" && ji.Problem == "" {
		// A scheduled job (Nats-Scheduler) gets its id from the worker.
		ji.Problem = "no job id yet (no Nats-Msg-Id and no id in the body)"
	}
	return ji
}

// deliveredUpTo reads the worker consumers of JOBS once and says whether
// the one covering subject has delivered seq. Best effort: without the
// consumers' info every job reads as not delivered.
func (l *lister) deliveredUpTo(ctx context.Context, st jetstream.Stream) func(subject string, seq uint64) bool {
	upTo := map[string]uint64{} // filter subject -> last delivered stream sequence
	lister := st.ListConsumers(ctx)
	for ci := range lister.Info() {
		for _, f := range append([]string{ci.Config.FilterSubject}, ci.Config.FilterSubjects...) {
			if f != "" {
				upTo[f] = max(upTo[f], ci.Delivered.Stream)
			}
		}
	}
	all := l.cfg.JobsWildcard()
	return func(subject string, seq uint64) bool {
		return seq <= upTo[all] || seq <= upTo[subject]
	}
}

// listRuns reads the runs bucket's stream in order. The bucket keeps one
// value per key (history 1), so reading the stream is reading each key's
// latest record once; delete markers and TTL markers are skipped. A record
// written again while pages are read moves to the end of the stream and can
// show up on a later page again; none stored when a page starts is missed.
func (l *lister) listRuns(ctx context.Context, state JobState, o listOpts) (*JobPage, error) {
	stream := "KV_" + l.cfg.RunsBucket()
	page := &JobPage{}
	err := readRaw(ctx, l.js, readSpec{stream: stream, subject: "$KV." + l.cfg.RunsBucket() + ".>", startSeq: o.after + 1},
		func(msg jetstream.Msg, seq uint64) error {
			page.Scanned++
			if ji, ok := l.runInfo(msg, seq, state, o.profile); ok {
				page.Jobs = append(page.Jobs, ji)
			}
			return stopWhenFull(page, o, msg, seq)
		})
	if err != nil {
		return nil, err
	}
	return page, nil
}

// stopWhenFull ends a page's read once it holds limit jobs or has read
// maxScan messages, with the cursor at msg's seq, unless msg was the last
// one (then there is no next page).
func stopWhenFull(page *JobPage, o listOpts, msg jetstream.Msg, seq uint64) error {
	if len(page.Jobs) >= o.limit || page.Scanned >= o.maxScan {
		if meta, err := msg.Metadata(); err != nil || meta.NumPending > 0 {
			page.Next = seq
		}
		return errStopRead
	}
	return nil
}

func (l *lister) runInfo(msg jetstream.Msg, seq uint64, state JobState, profile string) (JobInfo, bool) {
	h := msg.Headers()
	if op := h.Get("KV-Operation"); op == "DEL" || op == "PURGE" || h.Get("Nats-Marker-Reason") != "" || len(msg.Data()) == 0 {
		return JobInfo{}, false
	}
	var rec RunRecord
	if json.Unmarshal(msg.Data(), &rec) != nil {
		return JobInfo{}, false // not a run record: nothing to list
	}
	var st JobState
	switch rec.State {
	case RunStarting, RunRunning:
		st = JobRunning
	case RunPaused:
		st = JobPaused
	default:
		return JobInfo{}, false
	}
	if st != state || profile != "" && rec.Job.ProfileOrDefault() != profile {
		return JobInfo{}, false
	}
	return JobInfo{JobID: rec.JobID, State: st, Profile: rec.Job.ProfileOrDefault(), Seq: seq, Time: rec.UpdatedAt, Run: &rec}, true
}

// listSettled reads RESULTS in order and keeps the final results whose
// status is state (any final one for JobSettled).
func (l *lister) listSettled(ctx context.Context, state JobState, o listOpts) (*JobPage, error) {
	page := &JobPage{}
	err := readRaw(ctx, l.js, readSpec{stream: l.cfg.ResultsStream(), subject: l.cfg.ResultsWildcard(), startSeq: o.after + 1},
		func(msg jetstream.Msg, seq uint64) error {
			page.Scanned++
			var res schemas.Result
			if json.Unmarshal(msg.Data(), &res) == nil && res.Status.Final() && (state == JobSettled || JobState(res.Status) == state) {
				page.Jobs = append(page.Jobs, JobInfo{JobID: res.JobID, State: JobState(res.Status), Seq: seq, Time: msgTime(msg), Result: &res})
			}
			return stopWhenFull(page, o, msg, seq)
		})
	if err != nil {
		return nil, err
	}
	return page, nil
}

// listDead reads DEAD in order.
func (l *lister) listDead(ctx context.Context, o listOpts) (*JobPage, error) {
	page := &JobPage{}
	err := readRaw(ctx, l.js, readSpec{stream: l.cfg.DeadStream(), subject: l.cfg.DeadWildcard(), startSeq: o.after + 1},
		func(msg jetstream.Msg, seq uint64) error {
			page.Scanned++
			var dl schemas.DeadLetter
			if json.Unmarshal(msg.Data(), &dl) == nil {
				profile := deadProfile(dl)
				if o.profile == "" || profile == o.profile {
					page.Jobs = append(page.Jobs, JobInfo{JobID: dl.JobID, State: JobDead, Profile: profile, Seq: seq, Time: dl.DeadAt, Dead: &dl})
				}
			}
			return stopWhenFull(page, o, msg, seq)
		})
	if err != nil {
		return nil, err
	}
	return page, nil
}

// deadProfile is the profile of the job a dead letter holds ("" when it
// holds no readable job).
func deadProfile(dl schemas.DeadLetter) string {
	var head struct {
		Profile string `json:"profile"`
	}
	if len(dl.Job) == 0 || json.Unmarshal(dl.Job, &head) != nil {
		return ""
	}
	if head.Profile == "" {
		return schemas.DefaultProfile
	}
	return head.Profile
}

func msgTime(msg jetstream.Msg) time.Time {
	if meta, err := msg.Metadata(); err == nil {
		return meta.Timestamp
	}
	return time.Time{}
}
