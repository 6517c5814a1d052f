package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// Jobs that share a key wait for their turn before they start:
//
//   - session_key: one run of the conversation at a time, in JOBS stream
//     order. A keyed job starts when no job of the same key with a lower
//     stream sequence is unsettled, and it holds the conversation's
//     SessionLease (queue/keys.go) until its final result.
//   - concurrency_key: at most the policy's limit of runs at once, in JOBS
//     stream order: a job takes a slot when no lower-sequence job of the
//     key waits for one and fewer than the limit hold one.
//
// "Unsettled and lower" is read from JOBS itself: JOBS is a work queue, so
// a job message is there until it is acked, and the consumer's ack floor
// says where unacked messages begin. Every message between the floor and
// the job's own sequence was delivered (the consumer delivers in order),
// so the scan reads at most MaxAckPending messages, and the keys of each
// (immutable) are cached by sequence.
//
// A waiting job does not hold a slot and does not use up deliveries: its
// slot is given back, its message kept with in-progress heartbeats, and it
// wakes when a lease of its key is written (one watch of the keys bucket
// per worker), or every keyRecheck at the latest: lower jobs that end
// without a lease (rejected ones) write nothing. Waiting messages count
// against the consumer's MaxAckPending, which bounds them.

// keyRecheck is how often a waiting job looks again without being woken.
const keyRecheck = 2 * time.Second

// maxSeenKeys bounds the cache of JOBS messages' keys.
const maxSeenKeys = 1 << 14

// jobKeys are the keys a job message names; zero for unreadable ones.
type jobKeys struct {
	seq         uint64 // its JOBS sequence: how leases name holders, ids of firings being in headers
	id          string // the body's id, for messages ("" for a schedule's firing)
	session     string
	concurrency string
}

// name is how a wait reason names the job.
func (k jobKeys) name() string {
	if k.id != "" {
		return k.id
	}
	return fmt.Sprintf("at JOBS sequence %d", k.seq)
}

// keyGate is one worker's side of the key coordination.
type keyGate struct {
	store *queue.KeyStore
	mu    sync.Mutex
	seen  map[uint64]jobKeys     // JOBS sequence -> the message's keys
	wake  map[string][]chan bool // lease KV key -> waiting jobs
}

func newKeyGate(store *queue.KeyStore) *keyGate {
	return &keyGate{store: store, seen: map[uint64]jobKeys{}, wake: map[string][]chan bool{}}
}

// changed wakes the jobs waiting on kvKey.
func (g *keyGate) changed(kvKey string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, ch := range g.wake[kvKey] {
		select {
		case ch <- true:
		default:
		}
	}
}

// listen registers ch for changes of the leases of job's keys.
func (g *keyGate) listen(job schemas.Job, ch chan bool) (stop func()) {
	var keys []string
	if job.SessionKey != "" {
		keys = append(keys, queue.SessionLeaseKey(job.SessionKey))
	}
	if job.ConcurrencyKey != "" {
		keys = append(keys, queue.ConcurrencyLeaseKey(job.ConcurrencyKey))
	}
	g.mu.Lock()
	for _, k := range keys {
		g.wake[k] = append(g.wake[k], ch)
	}
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, k := range keys {
			list := g.wake[k]
			for i, c := range list {
				if c == ch {
					list = append(list[:i], list[i+1:]...)
					break
				}
			}
			if len(list) == 0 {
				delete(g.wake, k)
			} else {
				g.wake[k] = list
			}
		}
	}
}

// keysOf reads (or recalls) the keys of a JOBS message.
func (g *keyGate) keysOf(m *jetstream.RawStreamMsg) jobKeys {
	g.mu.Lock()
	k, ok := g.seen[m.Sequence]
	g.mu.Unlock()
	if ok {
		return k
	}
	var doc struct {
		ID             string `json:"id"`
		SessionKey     string `json:"session_key"`
		ConcurrencyKey string `json:"concurrency_key"`
	}
	k = jobKeys{seq: m.Sequence}
	if json.Unmarshal(m.Data, &doc) == nil {
		k.id, k.session, k.concurrency = doc.ID, doc.SessionKey, doc.ConcurrencyKey
	}
	g.mu.Lock()
	if len(g.seen) >= maxSeenKeys {
		clear(g.seen)
	}
	g.seen[m.Sequence] = k
	g.mu.Unlock()
	return k
}

// waitReason says why a keyed job cannot start yet.
type waitReason struct {
	key  string // the session_key or concurrency_key waited for
	kind string // "session_key" or "concurrency_key"
	why  string
}

// awaitKeys holds a keyed job until its keys let it start: nil when it may
// run now (its leases taken), else the outcome (a rejection, or a hand-back
// at shutdown). s is the job's slot, given back while it waits.
func (w *Worker) awaitKeys(ctx context.Context, p *phase, s *slot) *outcome {
	job := p.job
	if job.SessionKey == "" && job.ConcurrencyKey == "" {
		return nil
	}
	if p.run.Rev != 0 && p.run.Record.SessionID != "" {
		return nil // a recorded run holds its leases already
	}
	meta, err := p.msg.Metadata()
	if err != nil {
		o := retry(outRetry, fmt.Errorf("read the job message's sequence: %w", err))
		return &o
	}
	wake := make(chan bool, 1)
	defer w.keys.listen(job, wake)()
	timer := time.NewTimer(keyRecheck)
	defer timer.Stop()
	var waiting *waitReason
	var gauge prometheus.Gauge // the waiting gauge counted in, labelled once
	defer func() {
		if gauge != nil {
			gauge.Dec()
		}
	}()
	for conflicts := 0; ; {
		if waiting != nil && !s.acquire(ctx) {
			// The local slot first: a job must not hold a fleet-wide
			// lease while it waits for this worker's slot.
			return &outcome{kind: outHandBack}
		}
		reason, err := w.takeKeys(ctx, p, meta)
		var rej *schemas.ValidationError
		switch {
		case errors.As(err, &rej):
			return &outcome{kind: outReject, err: err}
		case errors.Is(err, queue.ErrLeaseConflict) && conflicts < 16:
			conflicts++
			continue // someone else wrote the lease: read it again now
		case err != nil:
			p.log.Warn("check the job's keys; trying again", "err", err)
			reason = &waitReason{kind: "error", why: err.Error()}
		case reason == nil:
			if waiting != nil {
				w.restartClock(p)
				p.log.Info("job's turn came; starting")
			}
			return nil
		}
		conflicts = 0
		s.release()
		if waiting == nil {
			waiting = reason
			gauge = w.m.KeyWaiting.WithLabelValues(reason.kind, w.keyLabel(reason))
			gauge.Inc()
			p.log.Info("job waits for its turn", "why", reason.why)
		}
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
			return &outcome{kind: outHandBack}
		case <-w.stopping:
			// The worker stops: a job that has not started is handed
			// back at once, not after the shutdown grace.
			return &outcome{kind: outHandBack}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(keyRecheck)
	}
}

// keyLabel is the metric label of a waited-for key: the key when the
// policy lists it, else "other", so publishers cannot grow the label set.
func (w *Worker) keyLabel(r *waitReason) string {
	if r.kind == "concurrency_key" {
		if c := w.Policy().Document().Concurrency; c != nil {
			if _, ok := c.Keys[r.key]; ok {
				return r.key
			}
		}
	}
	return "other"
}

// restartClock starts the job's timeout when its turn comes: the time it
// waited for its key does not count against the run.
func (w *Worker) restartClock(p *phase) {
	p.start = time.Now()
	rec := &p.run.Record
	rec.StartedAt = p.start
	rec.Deadline = p.start.Add(w.Policy().Timeout(p.job))
}

// takeKeys takes the job's leases if its turn has come; otherwise it says
// why not. A *schemas.ValidationError rejects the job.
func (w *Worker) takeKeys(ctx context.Context, p *phase, meta *jetstream.MsgMetadata) (*waitReason, error) {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	job := p.job
	earlier, err := w.earlierJobs(ctx, meta)
	if err != nil {
		return nil, err
	}
	if k := job.SessionKey; k != "" {
		for _, e := range earlier {
			if e.session == k {
				return &waitReason{key: k, kind: "session_key", why: fmt.Sprintf("job %s, earlier in the same conversation (session_key %s), has not finished", e.name(), k)}, nil
			}
		}
		r, err := w.takeSession(ctx, p, meta.Sequence.Stream)
		if r != nil || err != nil {
			return r, err
		}
	}
	if k := job.ConcurrencyKey; k != "" {
		return w.takeSlot(ctx, p, meta.Sequence.Stream, earlier)
	}
	return nil, nil
}

// takeSession takes the conversation's session lease.
func (w *Worker) takeSession(ctx context.Context, p *phase, seq uint64) (*waitReason, error) {
	key, profile := p.job.SessionKey, p.job.ProfileOrDefault()
	lease, rev, err := w.keys.store.Session(ctx, key)
	if err != nil {
		return nil, err
	}
	if rev != 0 && lease.Profile != profile {
		return nil, &schemas.ValidationError{Problems: []schemas.FieldError{{Field: "session_key", Reason: fmt.Sprintf(
			"session_key %s is a conversation of profile %q; a job of profile %q cannot continue it (its tools and policy differ): use another key", key, lease.Profile, profile)}}}
	}
	requester := p.run.Record.RequesterKey
	if rev != 0 && lease.RequesterKey != requester {
		// A conversation begun by a signed job is that producer's: a key
		// is easy to guess (a chat thread's timestamp), and its session
		// holds what the agent was told and found.
		return nil, &schemas.ValidationError{Problems: []schemas.FieldError{{Field: "session_key", Reason: fmt.Sprintf(
			"session_key %s is a conversation of another requester (%s); only jobs signed by the same producer key continue it", key, describeRequester(lease.RequesterKey))}}}
	}
	if h := lease.Holder; h.Job != "" && h.Job != p.job.ID {
		live, sessionID := w.holderLive(ctx, h)
		if live {
			return &waitReason{key: key, kind: "session_key", why: fmt.Sprintf("job %s holds the conversation's session (session_key %s)", h.Job, key)}, nil
		}
		if sessionID != "" {
			// A holder that died before letting go: the session its run
			// record names is the conversation's newest (it may have
			// replaced a lost one).
			lease.SessionID = sessionID
		}
	}
	if lease.Holder.Job != p.job.ID {
		lease.Profile, lease.RequesterKey = profile, requester
		lease.Holder = queue.KeyHolder{Job: p.job.ID, Seq: seq, Since: time.Now().UTC()}
		if _, err := w.keys.store.PutSession(ctx, key, lease, rev); err != nil {
			return nil, err
		}
	}
	p.continueSession = lease.SessionID
	return nil, nil
}

// takeSlot takes a slot of the job's concurrency key.
func (w *Worker) takeSlot(ctx context.Context, p *phase, seq uint64, earlier []jobKeys) (*waitReason, error) {
	key := p.job.ConcurrencyKey
	lease, rev, err := w.keys.store.Concurrency(ctx, key)
	if err != nil {
		return nil, err
	}
	if lease.Holds(p.job.ID) {
		return nil, nil
	}
	for _, e := range earlier {
		if e.concurrency == key && !lease.HoldsSeq(e.seq) {
			return &waitReason{key: key, kind: "concurrency_key", why: fmt.Sprintf("job %s, earlier with concurrency_key %s, waits for a slot first", e.name(), key)}, nil
		}
	}
	limit := min(w.Policy().ConcurrencyLimit(key), queue.MaxConcurrencyHolders)
	live := lease.Holders[:0:0]
	for _, h := range lease.Holders {
		if ok, _ := w.holderLive(ctx, h); ok {
			live = append(live, h)
		}
	}
	if len(live) >= limit {
		return &waitReason{key: key, kind: "concurrency_key", why: fmt.Sprintf("concurrency_key %s: all %d slots are held", key, limit)}, nil
	}
	lease.Holders = append(live, queue.KeyHolder{Job: p.job.ID, Seq: seq, Since: time.Now().UTC()})
	_, err = w.keys.store.PutConcurrency(ctx, key, lease, rev)
	return nil, err
}

// holderLive reports whether a lease's holder still holds it: its run is
// recorded and not done, or, with no record yet, its job message is still
// in JOBS (it is about to start, or will be redelivered). Unsure is live.
// It also returns the holder's session, for a lease whose holder died
// before writing it.
func (w *Worker) holderLive(ctx context.Context, h queue.KeyHolder) (bool, string) {
	run, err := w.runs.GetRun(ctx, h.Job)
	switch {
	case err == nil && run.Stored == queue.RunDone:
		return false, run.Record.SessionID
	case err == nil:
		return true, run.Record.SessionID
	case !errors.Is(err, queue.ErrRunNotFound):
		return true, ""
	}
	if _, err := queue.GetMsgFromLeader(ctx, w.js, w.qcfg.JobsStream(), h.Seq, ""); errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, ""
	}
	return true, ""
}

// earlierJobs lists the keyed jobs still in JOBS before the message of
// meta: from the consumer's ack floor to the message, on the consumer's
// subjects.
func (w *Worker) earlierJobs(ctx context.Context, meta *jetstream.MsgMetadata) ([]jobKeys, error) {
	c, err := w.js.Consumer(ctx, w.qcfg.JobsStream(), meta.Consumer)
	if err != nil {
		return nil, fmt.Errorf("read consumer %s: %w", meta.Consumer, err)
	}
	info := c.CachedInfo()
	filter := info.Config.FilterSubject
	if filter == "" {
		filter = w.qcfg.JobsWildcard()
	}
	var out []jobKeys
	seq := info.AckFloor.Stream + 1
	bound := max(info.Config.MaxAckPending, w.qcfg.WithDefaults().MaxAckPending)
	for range 2*bound + 1 {
		if seq >= meta.Sequence.Stream {
			return out, nil
		}
		m, err := queue.GetMsgFromLeader(ctx, w.js, w.qcfg.JobsStream(), seq, filter)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read JOBS from sequence %d: %w", seq, err)
		}
		if m.Sequence >= meta.Sequence.Stream {
			return out, nil
		}
		if k := w.keys.keysOf(m); k.session != "" || k.concurrency != "" {
			out = append(out, k)
		}
		seq = m.Sequence + 1
	}
	return nil, fmt.Errorf("more than %d unacked jobs before sequence %d", 2*bound, meta.Sequence.Stream)
}

// releaseKeys lets go of the job's leases once its final result is out:
// the conversation keeps its session for the next job. A failure is only
// logged: the next job finds this one's run done and takes over.
func (w *Worker) releaseKeys(ctx context.Context, p *phase) {
	job := p.job
	if job.SessionKey == "" && job.ConcurrencyKey == "" {
		return
	}
	for range 8 {
		err := w.releaseOnce(ctx, p)
		if err == nil {
			return
		}
		if !errors.Is(err, queue.ErrLeaseConflict) {
			p.log.Warn("let go of the job's keys; the next job will take over", "err", err)
			return
		}
	}
}

func (w *Worker) releaseOnce(ctx context.Context, p *phase) error {
	job := p.job
	if k := job.SessionKey; k != "" {
		lease, rev, err := w.keys.store.Session(ctx, k)
		if err != nil {
			return err
		}
		if rev != 0 && lease.Holder.Job == job.ID {
			lease.Holder = queue.KeyHolder{}
			lease.LastJob = job.ID
			if sid := p.run.Record.SessionID; sid != "" {
				lease.SessionID = sid
			}
			if _, err := w.keys.store.PutSession(ctx, k, lease, rev); err != nil {
				return err
			}
		}
	}
	if k := job.ConcurrencyKey; k != "" {
		lease, rev, err := w.keys.store.Concurrency(ctx, k)
		if err != nil {
			return err
		}
		if rev != 0 && lease.Holds(job.ID) {
			lease.Holders = lease.Without(job.ID)
			if _, err := w.keys.store.PutConcurrency(ctx, k, lease, rev); err != nil {
				return err
			}
		}
	}
	return nil
}

func describeRequester(key string) string {
	if key == "" {
		return "unsigned jobs"
	}
	return "jobs signed by " + key
}
