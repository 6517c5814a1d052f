package worker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
)

// queueStatsTimeout bounds one refresh, inside a scrape (Prometheus gives
// up on a scrape after 10 s by default).
const queueStatsTimeout = 5 * time.Second

// maxOldestGets bounds the message gets of one refresh: one per profile
// subject that holds jobs, the profiles a worker serves first.
const maxOldestGets = 32

// queueCollector reports the fleet's queue as of its last refresh: jobs in
// JOBS per profile, the age of the oldest one no worker has been handed
// yet, and the paused runs. JOBS is a work queue the workers' consumers
// already cover, so nothing here consumes it: the figures come from stream
// and consumer info and direct gets. A refresh happens inside a scrape
// when the last one is older than every; scrapes in between (or at once)
// get the cached figures, so a scrape storm costs JetStream nothing.
type queueCollector struct {
	depth, oldest, paused *prometheus.Desc
	every                 time.Duration

	mu    sync.Mutex
	src   *queueSource
	at    time.Time
	stats *queueStats // nil: the last refresh failed, report nothing
}

type queueStats struct {
	depth, oldest map[string]float64
	paused        float64
}

// queueSource is what a running worker lends the collector: its streams,
// its consumers and its profile labels.
type queueSource struct {
	js        jetstream.JetStream
	qcfg      queue.Config
	runs      *queue.RunStore
	consumers []jetstream.Consumer
	label     func(profile string) string
	named     []string // labels always reported, "other" last
	catchAll  bool     // the worker serves every profile: "other" has an oldest job too
}

func newQueueCollector() *queueCollector {
	return &queueCollector{
		depth: prometheus.NewDesc("jetpilot_queue_depth",
			"Jobs in the JOBS stream per profile, waiting for a worker or held by one and not finished (the work queue drops a job when its worker acks it).",
			[]string{"profile"}, nil),
		oldest: prometheus.NewDesc("jetpilot_queue_oldest_age_seconds",
			"Age of the oldest job of the profile that no worker has been handed yet (0: none waits); for the profiles this worker serves.",
			[]string{"profile"}, nil),
		paused: prometheus.NewDesc("jetpilot_paused_runs",
			"Runs waiting for a human, fleet-wide (the jobs with an approval timer on CONTROL whose run record is paused).",
			nil, nil),
	}
}

// attach makes src the collector's source until the returned func is
// called; several workers sharing one Metrics report one fleet, so the
// last attached is as good as any.
func (q *queueCollector) attach(src *queueSource) (detach func()) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.src, q.at, q.stats = src, time.Time{}, nil
	return func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		if q.src == src {
			q.src, q.stats = nil, nil
		}
	}
}

func (q *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- q.depth
	ch <- q.oldest
	ch <- q.paused
}

func (q *queueCollector) Collect(ch chan<- prometheus.Metric) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.src == nil {
		return
	}
	every := q.every
	if every <= 0 {
		every = DefaultQueueStatsEvery
	}
	if time.Since(q.at) >= every {
		ctx, cancel := context.WithTimeout(context.Background(), queueStatsTimeout)
		st, err := q.src.refresh(ctx)
		cancel()
		q.at, q.stats = time.Now(), st
		if err != nil {
			// A gap on the dashboard rather than stale figures.
			q.stats = nil
		}
	}
	if q.stats == nil {
		return
	}
	for _, l := range q.src.named {
		ch <- prometheus.MustNewConstMetric(q.depth, prometheus.GaugeValue, q.stats.depth[l], l)
	}
	for l, v := range q.stats.oldest {
		ch <- prometheus.MustNewConstMetric(q.oldest, prometheus.GaugeValue, v, l)
	}
	ch <- prometheus.MustNewConstMetric(q.paused, prometheus.GaugeValue, q.stats.paused)
}

// refresh asks JetStream: one JOBS info with per-subject counts, one info
// per worker consumer (what it has handed out), a get of the first
// message after that on each subject that holds jobs (at most
// maxOldestGets), and what pausedRuns reads.
func (s *queueSource) refresh(ctx context.Context) (*queueStats, error) {
	st := &queueStats{depth: map[string]float64{}, oldest: map[string]float64{}}
	jobs, err := s.js.Stream(ctx, s.qcfg.JobsStream())
	if err != nil {
		return nil, err
	}
	info, err := jobs.Info(ctx, jetstream.WithSubjectFilter(s.qcfg.JobsWildcard()))
	if err != nil {
		return nil, err
	}
	prefix := strings.TrimSuffix(s.qcfg.JobsWildcard(), ">")
	var subjects []string
	for subj, n := range info.State.Subjects {
		st.depth[s.label(strings.TrimPrefix(subj, prefix))] += float64(n)
		if n > 0 {
			subjects = append(subjects, subj)
		}
	}
	// Served profiles first, so the cap never hides one of them.
	slices.SortFunc(subjects, func(a, b string) int {
		la, lb := s.label(strings.TrimPrefix(a, prefix)) == otherLabel, s.label(strings.TrimPrefix(b, prefix)) == otherLabel
		switch {
		case la == lb:
			return strings.Compare(a, b)
		case lb:
			return -1
		}
		return 1
	})
	gets := 0
	now := time.Now()
	for _, c := range s.consumers {
		ci, err := c.Info(ctx)
		if err != nil {
			return nil, err
		}
		filter := ci.Config.FilterSubject
		for _, subj := range subjects {
			if filter != s.qcfg.JobsWildcard() && subj != filter {
				continue
			}
			l := s.label(strings.TrimPrefix(subj, prefix))
			if _, ok := st.oldest[l]; !ok {
				st.oldest[l] = 0
			}
			if gets >= maxOldestGets {
				continue
			}
			gets++
			// The consumer hands jobs out in stream order: the first one
			// after the last it delivered has not been handed out. (A job
			// handed back for a retry is not counted until it is redelivered.)
			m, err := jobs.GetMsg(ctx, ci.Delivered.Stream+1, jetstream.WithGetMsgSubject(subj))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				return nil, err
			}
			st.oldest[l] = max(st.oldest[l], now.Sub(m.Time).Seconds())
		}
	}
	for _, l := range s.named {
		if _, ok := st.oldest[l]; !ok && (l != otherLabel || s.catchAll) {
			st.oldest[l] = 0
		}
	}
	paused, err := s.pausedRuns(ctx)
	if err != nil {
		return nil, err
	}
	st.paused = paused
	return st, nil
}

// maxPausedChecks bounds the run records one refresh reads.
const maxPausedChecks = 512

// pausedRuns counts the runs waiting for a human. Every paused run keeps
// an expiry timer on its job's CONTROL subject, but so does a run whose
// approval was decided, until the timer comes due: so the jobs with a
// timer are the candidates, and their run records say which are paused.
// Past maxPausedChecks candidates the rest count as paused (an upper bound).
func (s *queueSource) pausedRuns(ctx context.Context) (float64, error) {
	control, err := s.js.Stream(ctx, s.qcfg.ControlStream())
	if err != nil {
		return 0, err
	}
	info, err := control.Info(ctx, jetstream.WithSubjectFilter(s.qcfg.ControlWildcard()))
	if err != nil {
		return 0, err
	}
	n, checked := 0.0, 0
	for subj := range info.State.Subjects {
		jobID, ok := s.qcfg.JobIDOfSubject("control", subj)
		if !ok {
			continue
		}
		if checked >= maxPausedChecks {
			n++
			continue
		}
		checked++
		run, err := s.runs.GetRun(ctx, jobID)
		if errors.Is(err, queue.ErrRunNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if run.Stored == queue.RunPaused {
			n++
		}
	}
	return n, nil
}

// queueSource is the worker's source for the queue figures.
func (w *Worker) queueSource(consumers []jetstream.Consumer) *queueSource {
	named := slices.Clone(w.opts.Profiles)
	if len(named) == 0 {
		named = []string{schemas.DefaultProfile}
	}
	named = append(slices.Compact(slices.Sorted(slices.Values(named))), otherLabel)
	return &queueSource{js: w.js, qcfg: w.qcfg.WithDefaults(), runs: w.runs, consumers: consumers, label: w.profileLabel, named: named,
		catchAll: len(w.opts.Profiles) == 0}
}
