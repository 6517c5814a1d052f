package worker

import (
	"errors"

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
	}
}

// Register registers every collector with reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.Jobs, m.InFlight, m.Retries, m.DeadLetters, m.SessionDuration, m.AgentErrors} {
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
