package worker

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/jetpilot-dev/jetpilot/schemas"

	"github.com/jetpilot-dev/jetpilot/spawn"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the worker's Prometheus collectors. One set can be shared by
// several workers in a process; register it once with Register.
type Metrics struct {
	Jobs            *prometheus.CounterVec
	InFlight        prometheus.Gauge
	Retries         prometheus.Counter
	DeadLetters     prometheus.Counter
	SessionDuration *prometheus.HistogramVec
	AgentErrors     *prometheus.CounterVec
	Tokens          *prometheus.CounterVec
	PolicyVersion   prometheus.Gauge
	PolicyHolds     prometheus.Counter
	// KeyWaiting counts jobs waiting for their turn on a key (keys.go).
	KeyWaiting *prometheus.GaugeVec
	// ApprovalWait is how long paused runs waited, from the approval
	// request to the decision, expiry or cancel that settled it.
	ApprovalWait *prometheus.HistogramVec
	// Decisions counts human decisions by what came of them.
	Decisions *prometheus.CounterVec
	// AgentUp is 1 while the agent server takes work (the readiness gate
	// is open), else 0.
	AgentUp prometheus.Gauge

	// QueueStatsEvery is how long the fleet-wide queue figures (depth,
	// oldest job, paused runs) are kept before a scrape asks JetStream
	// again. Default DefaultQueueStatsEvery. Set it before Register.
	QueueStatsEvery time.Duration
	queue           *queueCollector
}

// DefaultQueueStatsEvery bounds the JetStream requests the queue figures
// cost: at most one refresh (two stream infos, one consumer info per
// consumer and a few message gets) per worker per interval, however often
// it is scraped.
const DefaultQueueStatsEvery = 15 * time.Second

// durationBuckets reach 24 h: a run may last hours (the policy's
// max_timeout), and an approval may wait as long.
var durationBuckets = []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 43200, 86400}

// NewMetrics makes a set of collectors registered nowhere.
func NewMetrics() *Metrics {
	return &Metrics{
		Jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jetpilot_jobs_total",
			Help: "Jobs that reached a result, by result status (paused counts each pause).",
		}, []string{"status"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jetpilot_jobs_in_flight",
			Help: "Jobs this worker is running now.",
		}),
		Retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jetpilot_job_retries_total",
			Help: "Jobs handed back with NakWithDelay after a transient failure.",
		}),
		DeadLetters: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jetpilot_dead_letters_total",
			Help: "Jobs published on the dead subject.",
		}),
		SessionDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "jetpilot_session_duration_seconds",
			Help:    "Time from the start of a job phase to its result, by status.",
			Buckets: durationBuckets,
		}, []string{"status"}),
		AgentErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jetpilot_agent_errors_total",
			Help: "Agent-server errors, by kind: the server's error code, or transport.",
		}, []string{"kind"}),
		Tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jetpilot_tokens_total",
			Help: "Tokens the agent used, by profile, model (as the policy lists them; \"other\" for any other, \"default\" for the server's) and kind (prompt, completion).",
		}, []string{"profile", "model", "kind"}),
		PolicyHolds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "jetpilot_policy_holds_total",
			Help: "Jobs and decisions handed back because the stored policy could not be read.",
		}),
		KeyWaiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "jetpilot_key_waiting",
			Help: "Jobs waiting for their turn on a key, by kind (session_key, concurrency_key, error) and key: the concurrency keys the policy lists by name, every other key as \"other\".",
		}, []string{"kind", "key"}),
		PolicyVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jetpilot_policy_version",
			Help: "The policy version this worker applies (the KV revision; 0 for its flags or the built-in policy).",
		}),
		ApprovalWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "jetpilot_approval_wait_seconds",
			Help:    "Time a paused run waited, from its approval request to what settled it, by outcome (allow, deny, mixed, expired, cancelled).",
			Buckets: durationBuckets,
		}, []string{"outcome"}),
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "jetpilot_decisions_total",
			Help: "Human decisions, by outcome (allow, deny, mixed: applied; vote: recorded short of the quorum; refused) and, for refused ones, the decision_error code.",
		}, []string{"outcome", "code"}),
		AgentUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "jetpilot_agent_up",
			Help: "1 while the agent server answers and accepts the token (the worker takes jobs), else 0.",
		}),
		queue: newQueueCollector(),
	}
}

// Register registers every collector with reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	m.queue.every = m.QueueStatsEvery
	for _, c := range []prometheus.Collector{m.Jobs, m.InFlight, m.Retries, m.DeadLetters, m.SessionDuration, m.AgentErrors, m.Tokens, m.PolicyVersion, m.PolicyHolds,
		m.KeyWaiting, m.ApprovalWait, m.Decisions, m.AgentUp, m.queue} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *Metrics) agentError(err error) {
	kind := "transport"
	var apiErr *spawn.APIError
	if errors.As(err, &apiErr) && apiErr.Code != "" {
		kind = apiErr.Code
	}
	m.AgentErrors.WithLabelValues(kind).Inc()
}

// tokenCounter counts a job's token usage by profile and model. The model
// label is the job's model when the policy lists it, "default" for none
// (the server's), "other" for any other: a job names its model, and a
// hostile one must not grow the label set. Profiles are subject tokens a
// publisher picks too: one the worker was not started for counts as
// "other".
func (w *Worker) tokenCounter(job schemas.Job) func(prompt, completion int) {
	model := job.Model
	if job.Overrides != nil && job.Overrides.Model != "" {
		model = job.Overrides.Model
	}
	switch {
	case model == "":
		model = "default"
	case !slices.Contains(w.Policy().Document().Jobs.Models, model):
		model = "other"
	}
	profile := w.profileLabel(job.ProfileOrDefault())
	prompt, completion := w.m.Tokens.WithLabelValues(profile, model, "prompt"), w.m.Tokens.WithLabelValues(profile, model, "completion")
	return func(p, c int) {
		if p > 0 {
			prompt.Add(float64(p))
		}
		if c > 0 {
			completion.Add(float64(c))
		}
	}
}

// profileLabel is profile as a metric label: the profiles the worker was
// started for (or "default" for a worker of every profile) are their own
// labels, any other is "other". Profiles are subject tokens publishers
// pick, so they must not grow the label set.
func (w *Worker) profileLabel(profile string) string {
	if len(w.opts.Profiles) > 0 && !slices.Contains(w.opts.Profiles, profile) || len(w.opts.Profiles) == 0 && profile != schemas.DefaultProfile {
		return otherLabel
	}
	return profile
}

const otherLabel = "other"

// approvalSettled observes how long the run of p waited for a human (the
// histogram and a span), once, when the message that settles its approval
// has won the compare-and-set.
func (w *Worker) approvalSettled(ctx context.Context, p *phase) {
	if at := p.run.Record.PausedAt; !at.IsZero() {
		w.m.ApprovalWait.WithLabelValues(p.settledAs.Decision).Observe(time.Since(at).Seconds())
		w.approvalWaitSpan(ctx, p)
	}
}

// setAgentUp mirrors the agent gate in jetpilot_agent_up.
func (m *Metrics) setAgentUp(err error) {
	if err == nil {
		m.AgentUp.Set(1)
	} else {
		m.AgentUp.Set(0)
	}
}
