package worker

import (
	"errors"
	"slices"

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
	KeyWaiting      *prometheus.GaugeVec
}

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
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10), // 10ms .. ~45min
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
	}
}

// Register registers every collector with reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.Jobs, m.InFlight, m.Retries, m.DeadLetters, m.SessionDuration, m.AgentErrors, m.Tokens, m.PolicyVersion, m.PolicyHolds, m.KeyWaiting} {
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
	profile := job.ProfileOrDefault()
	if len(w.opts.Profiles) > 0 && !slices.Contains(w.opts.Profiles, profile) || len(w.opts.Profiles) == 0 && profile != schemas.DefaultProfile {
		profile = "other"
	}
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
