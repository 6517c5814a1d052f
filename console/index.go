package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
)

// Defaults of IndexOptions.
const (
	// DefaultMaxIndexed bounds the run records the index keeps: beyond it
	// the oldest settled ones are forgotten (they stay in the bucket until
	// they expire). ~1 KiB each.
	DefaultMaxIndexed = 100_000
	// DefaultQueuedScan bounds the JOBS messages one list looks at for
	// queued jobs (one message get each, oldest first).
	DefaultQueuedScan = 200
	// coalesce is the shortest time between two change notifications.
	coalesce = 250 * time.Millisecond
)

// IndexOptions configure NewIndex. Zero fields take the defaults above.
type IndexOptions struct {
	MaxIndexed int
	QueuedScan int
	Logger     *slog.Logger
}

// Index is the default Jobs: a summary of every run record, kept by one
// watch of the runs bucket (an ordered consumer delivering the last value
// of each key, then every change), and the queued jobs read from the JOBS
// stream when a list asks for them. Start it with Run.
type Index struct {
	js   jetstream.JetStream
	cfg  queue.Config
	opts IndexOptions

	mu    sync.RWMutex
	jobs  map[string]*JobSummary
	ready chan struct{}
	subs  map[chan struct{}]struct{}
	// watchErr is why the last watch ended, for pages waiting on ready.
	watchErr error
}

var _ Jobs = (*Index)(nil)

// NewIndex returns an index over the runs bucket and JOBS named by cfg.
func NewIndex(js jetstream.JetStream, cfg queue.Config, opts IndexOptions) *Index {
	if opts.MaxIndexed <= 0 {
		opts.MaxIndexed = DefaultMaxIndexed
	}
	if opts.QueuedScan <= 0 {
		opts.QueuedScan = DefaultQueuedScan
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Index{js: js, cfg: cfg.WithDefaults(), opts: opts, jobs: map[string]*JobSummary{},
		ready: make(chan struct{}), subs: map[chan struct{}]struct{}{}}
}

// Run keeps the index until ctx is done; a lost watch is started again
// after a second. It returns ctx's error.
func (x *Index) Run(ctx context.Context) error {
	// New jobs do not touch the bucket: a core subscription on the jobs
	// subjects (not a consumer: JOBS is a work queue) says when one lands.
	sub, err := x.js.Conn().Subscribe(x.cfg.JobsWildcard(), func(*nats.Msg) { x.notify() })
	if err != nil {
		return fmt.Errorf("console index: subscribe to %s: %w", x.cfg.JobsWildcard(), err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for {
		err := x.watch(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		x.opts.Logger.Warn("console: runs bucket watch ended; starting it again", "err", err)
		x.mu.Lock()
		x.watchErr = err
		x.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// watch reads the bucket into a fresh map, swaps it in once caught up, and
// applies changes until the watch ends.
func (x *Index) watch(ctx context.Context) error {
	kv, err := x.js.KeyValue(ctx, x.cfg.RunsBucket())
	if err != nil {
		return fmt.Errorf("open KV bucket %s: %w", x.cfg.RunsBucket(), err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch KV bucket %s: %w", x.cfg.RunsBucket(), err)
	}
	defer func() { _ = w.Stop() }()
	initial := map[string]*JobSummary{}
	caughtUp := false
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok = <-w.Updates():
		}
		if !ok {
			return errors.New("watch closed")
		}
		if e == nil { // caught up with what was stored
			x.mu.Lock()
			x.jobs = initial
			x.evictLocked()
			x.mu.Unlock()
			caughtUp = true
			select {
			case <-x.ready:
			default:
				close(x.ready)
			}
			x.notify()
			continue
		}
		id, err := queue.JobIDFromRunKey(e.Key())
		if err != nil {
			continue // not a run record's key
		}
		var sum *JobSummary
		// A delete, a purge or an expiry marker (a put with no value).
		if e.Operation() == jetstream.KeyValuePut && len(e.Value()) > 0 {
			var rec queue.RunRecord
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				x.opts.Logger.Warn("console: undecodable run record", "job_id", id, "err", err)
				continue
			}
			s := summarize(&rec)
			sum = &s
		}
		if !caughtUp {
			if sum == nil {
				delete(initial, id)
			} else {
				initial[id] = sum
			}
			continue
		}
		x.mu.Lock()
		if sum == nil {
			delete(x.jobs, id)
		} else {
			x.jobs[id] = sum
			if len(x.jobs) > x.opts.MaxIndexed {
				x.evictLocked()
			}
		}
		x.mu.Unlock()
		x.notify()
	}
}

// evictLocked forgets the oldest settled records beyond MaxIndexed, and a
// tenth more, so eviction runs rarely.
func (x *Index) evictLocked() {
	over := len(x.jobs) - x.opts.MaxIndexed
	if over <= 0 {
		return
	}
	over += x.opts.MaxIndexed / 10
	var done []*JobSummary
	for _, s := range x.jobs {
		if s.State == StateDone {
			done = append(done, s)
		}
	}
	slices.SortFunc(done, func(a, b *JobSummary) int { return a.UpdatedAt.Compare(b.UpdatedAt) })
	for _, s := range done[:min(over, len(done))] {
		delete(x.jobs, s.ID)
	}
}

// notify wakes every subscriber without blocking (each has room for one).
func (x *Index) notify() {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for c := range x.subs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// Subscribe implements Jobs.
func (x *Index) Subscribe() (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	x.mu.Lock()
	x.subs[c] = struct{}{}
	x.mu.Unlock()
	return c, func() {
		x.mu.Lock()
		delete(x.subs, c)
		x.mu.Unlock()
	}
}

// readyWait bounds how long a page waits for the first read of the
// bucket, so a missing bucket is an error page, not a hung one.
const readyWait = 10 * time.Second

// waitReady waits until the first read of the bucket is done.
func (x *Index) waitReady(ctx context.Context) error {
	t := time.NewTimer(readyWait)
	defer t.Stop()
	select {
	case <-x.ready:
		return nil
	case <-t.C:
		x.mu.RLock()
		err := x.watchErr
		x.mu.RUnlock()
		return fmt.Errorf("console index: the runs bucket %s is not read yet (has `jetpilot setup` run?): %v", x.cfg.RunsBucket(), err)
	case <-ctx.Done():
		return fmt.Errorf("console index: still reading the runs bucket: %w", ctx.Err())
	}
}

// List implements Jobs.
func (x *Index) List(ctx context.Context, f Filter) (Page, error) {
	if err := x.waitReady(ctx); err != nil {
		return Page{}, err
	}
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	var page Page
	if f.State == "" || f.State == StateQueued {
		queued, depth, truncated, err := x.queued(ctx, f, limit)
		if err != nil {
			return Page{}, err
		}
		page.Depth, page.Truncated = depth, truncated
		page.Jobs = append(page.Jobs, queued...)
	}
	if f.State != StateQueued {
		x.mu.RLock()
		for _, s := range x.jobs {
			if f.matches(s) {
				page.Jobs = append(page.Jobs, *s)
			}
		}
		x.mu.RUnlock()
	}
	slices.SortFunc(page.Jobs, func(a, b JobSummary) int {
		if c := b.UpdatedAt.Compare(a.UpdatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	page.Matched = len(page.Jobs)
	if len(page.Jobs) > limit {
		page.Jobs = page.Jobs[:limit]
	}
	return page, nil
}

// queuedJob is the part of a job message a list needs.
type queuedJob struct {
	ID       string            `json:"id"`
	Prompt   string            `json:"prompt"`
	Metadata map[string]string `json:"metadata"`
}

// queued lists jobs in JOBS that no worker has taken (no live run record),
// oldest first: the per-profile counts come from the stream's subject
// counts, the jobs from message gets by subject, at most QueuedScan.
func (x *Index) queued(ctx context.Context, f Filter, limit int) ([]JobSummary, map[string]uint64, bool, error) {
	st, err := x.js.Stream(ctx, x.cfg.JobsStream())
	if err != nil {
		return nil, nil, false, fmt.Errorf("list queued jobs: stream %s: %w", x.cfg.JobsStream(), err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(x.cfg.JobsWildcard()))
	if err != nil {
		return nil, nil, false, fmt.Errorf("list queued jobs: stream %s info: %w", x.cfg.JobsStream(), err)
	}
	depth := map[string]uint64{}
	for subj, n := range info.State.Subjects {
		depth[strings.TrimPrefix(subj, x.cfg.JobSubject(""))] = n
	}
	if info.State.Msgs == 0 {
		return nil, depth, false, nil
	}
	subject := x.cfg.JobsWildcard()
	if f.Profile != "" {
		if err := queue.ValidateProfile(f.Profile); err != nil {
			return nil, depth, false, fmt.Errorf("list queued jobs: %w", err)
		}
		subject = x.cfg.JobSubject(f.Profile)
	}
	var out []JobSummary
	seq := info.State.FirstSeq
	truncated := false
	for scanned := 0; seq <= info.State.LastSeq && len(out) < limit; scanned++ {
		if scanned == x.opts.QueuedScan {
			truncated = true
			break
		}
		msg, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, depth, false, fmt.Errorf("list queued jobs: get message at or after %d: %w", seq, err)
		}
		seq = msg.Sequence + 1
		var j queuedJob
		if json.Unmarshal(msg.Data, &j) != nil || queue.ValidateJobID(j.ID) != nil {
			j = queuedJob{ID: msg.Header.Get(jetstream.MsgIDHeader)}
			if j.ID == "" {
				j.ID = fmt.Sprintf("(unreadable job at %d)", msg.Sequence)
			}
		}
		x.mu.RLock()
		rec, taken := x.jobs[j.ID]
		if taken && rec.State == StateDone && rec.UpdatedAt.Before(msg.Time) {
			taken = false // an earlier job with the same id
		}
		x.mu.RUnlock()
		if taken {
			continue
		}
		s := JobSummary{ID: j.ID, State: StateQueued, Profile: strings.TrimPrefix(msg.Subject, x.cfg.JobSubject("")),
			Prompt: j.Prompt, Metadata: j.Metadata, UpdatedAt: msg.Time}
		if f.matches(&s) {
			out = append(out, s)
		}
	}
	return out, depth, truncated, nil
}

// Job implements Jobs. A job with no record is looked for among the queued
// ones (at most QueuedScan messages).
func (x *Index) Job(ctx context.Context, id string) (JobSummary, bool, error) {
	if err := x.waitReady(ctx); err != nil {
		return JobSummary{}, false, err
	}
	x.mu.RLock()
	s, ok := x.jobs[id]
	x.mu.RUnlock()
	if ok {
		return *s, true, nil
	}
	queued, _, _, err := x.queued(ctx, Filter{State: StateQueued, Text: id}, x.opts.QueuedScan)
	if err != nil {
		return JobSummary{}, false, err
	}
	for _, q := range queued {
		if q.ID == id {
			return q, true, nil
		}
	}
	return JobSummary{}, false, nil
}

// Paused implements Jobs.
func (x *Index) Paused(ctx context.Context) ([]JobSummary, error) {
	if err := x.waitReady(ctx); err != nil {
		return nil, err
	}
	var out []JobSummary
	x.mu.RLock()
	for _, s := range x.jobs {
		if s.State == StatePaused {
			out = append(out, *s)
		}
	}
	x.mu.RUnlock()
	slices.SortFunc(out, func(a, b JobSummary) int {
		if c := a.PausedAt.Compare(b.PausedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Workers implements Jobs.
func (x *Index) Workers(ctx context.Context) ([]WorkerSummary, error) {
	if err := x.waitReady(ctx); err != nil {
		return nil, err
	}
	by := map[string]*WorkerSummary{}
	x.mu.RLock()
	for _, s := range x.jobs {
		if s.Owner == "" {
			continue
		}
		w := by[s.Owner]
		if w == nil {
			w = &WorkerSummary{Name: s.Owner}
			by[s.Owner] = w
		}
		if s.State == StateRunning || s.State == StateStarting {
			w.Held = append(w.Held, s.ID)
		}
		if s.UpdatedAt.After(w.LastSeen) {
			w.LastSeen = s.UpdatedAt
		}
	}
	x.mu.RUnlock()
	out := make([]WorkerSummary, 0, len(by))
	for _, w := range by {
		slices.Sort(w.Held)
		out = append(out, *w)
	}
	slices.SortFunc(out, func(a, b WorkerSummary) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
