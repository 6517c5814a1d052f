package worker_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// scrape gathers reg into "name{label=value,...}" -> value (counters and
// gauges; histograms as name_count and, per bucket, name_bucket{...,le=...}).
// It fails no test, so a wait condition may call it.
func scrape(reg *prometheus.Registry) (map[string]float64, error) {
	families, err := reg.Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := func(name string, extra ...string) string {
				return name + "{" + strings.Join(append(append([]string(nil), labels...), extra...), ",") + "}"
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[key(f.GetName())] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[key(f.GetName())] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key(f.GetName()+"_count")] = float64(m.GetHistogram().GetSampleCount())
				for _, b := range m.GetHistogram().GetBucket() {
					out[key(f.GetName()+"_bucket", fmt.Sprintf("le=%g", b.GetUpperBound()))] = float64(b.GetCumulativeCount())
				}
			}
		}
	}
	return out, nil
}

// TestOperatorMetrics drives a worker for profile "a" through a running
// job, queued ones, jobs of profiles nobody serves, a pause, a refused and
// an applied decision, and checks each operator metric as scraped from
// the registry.
func TestOperatorMetrics(t *testing.T) {
	h := newHarness(t, queue.Config{})
	m := worker.NewMetrics()
	m.QueueStatsEvery = time.Nanosecond // every scrape asks JetStream
	reg := prometheus.NewRegistry()
	require.NoError(t, m.Register(reg))
	h.startWorker(worker.Options{Metrics: m, Profiles: []string{"a"}, Concurrency: 2})

	profiled := func(j schemas.Job, profile string) schemas.Job { j.Profile = profile; return j }
	// One pause and one run that only a cancel ends take both slots.
	h.submit(profiled(pausingJob("m-pause"), "a"))
	req := h.approval("m-pause")
	h.submit(profiled(job("m-hang", "#sim usage 10 5\n#sim text working\n#sim hang"), "a"))
	eventually(t, func() bool { return h.sim.ActiveRuns() == 2 }, "two runs going")
	// The paused run's message is acked, so one slot is free again: the
	// hanging run and ...
	h.submit(profiled(job("m-hang2", "#sim hang"), "a"))
	eventually(t, func() bool { return h.sim.ActiveRuns() == 3 }, "three runs going")
	// ... these wait: the worker's two slots are taken.
	h.submit(profiled(job("m-wait1", "#sim text later"), "a"))
	h.submit(profiled(job("m-wait2", "#sim text later"), "a"))
	h.submit(profiled(job("m-b", "#sim text nobody"), "b"))
	h.submit(profiled(job("m-c", "#sim text nobody"), "c"))

	eventuallyWithT(t, func(c *assert.CollectT) {
		got, err := scrape(reg)
		if !assert.NoError(c, err) {
			return
		}
		assert.Equal(c, 4.0, got["jetpilot_queue_depth{profile=a}"], "two running, two waiting")
		assert.Equal(c, 2.0, got["jetpilot_queue_depth{profile=other}"], "b and c, which this worker does not serve, aggregated")
		assert.Greater(c, got["jetpilot_queue_oldest_age_seconds{profile=a}"], 0.0)
		assert.Less(c, got["jetpilot_queue_oldest_age_seconds{profile=a}"], waitFor.Seconds())
		assert.NotContains(c, got, "jetpilot_queue_oldest_age_seconds{profile=b}", "labels are bounded")
		assert.Equal(c, 1.0, got["jetpilot_paused_runs{}"])
		assert.Equal(c, 1.0, got["jetpilot_agent_up{}"])
		// The hanging run's 10 and whatever the simulator's other runs report.
		assert.GreaterOrEqual(c, got["jetpilot_tokens_total{kind=prompt,model=default,profile=a}"], 10.0)
	}, "queue figures")

	// A decision for another approval is refused; the right one applies.
	h.decide(schemas.Decision{ApprovalID: "apr_wrong", JobID: "m-pause", All: schemas.DecideAllow, DecidedBy: "alice"})
	h.decisionErrors("m-pause", 1)
	h.decide(schemas.Decision{ApprovalID: req.ApprovalID, JobID: "m-pause", All: schemas.DecideAllow, DecidedBy: "alice"})
	require.Equal(t, schemas.StatusCompleted, h.final("m-pause").Status)

	eventuallyWithT(t, func(c *assert.CollectT) {
		got, err := scrape(reg)
		if !assert.NoError(c, err) {
			return
		}
		assert.Equal(c, 1.0, got["jetpilot_decisions_total{code=approval_mismatch,outcome=refused}"])
		assert.Equal(c, 1.0, got["jetpilot_decisions_total{code=,outcome=allow}"])
		assert.Equal(c, 1.0, got["jetpilot_approval_wait_seconds_count{outcome=allow}"])
		assert.Equal(c, 1.0, got["jetpilot_approval_wait_seconds_bucket{outcome=allow,le=86400}"])
		assert.Equal(c, 0.0, got["jetpilot_paused_runs{}"])
		// The pause and the final result of m-pause; the run buckets reach 24 h.
		assert.Equal(c, 1.0, got["jetpilot_session_duration_seconds_count{status=completed}"])
		assert.Equal(c, 1.0, got["jetpilot_session_duration_seconds_bucket{status=completed,le=86400}"])
	}, "decision figures")
}

// TestAgentUpFollowsTheGate checks jetpilot_agent_up against the
// readiness gate: 0 while the agent server is down, 1 when it is back.
func TestAgentUpFollowsTheGate(t *testing.T) {
	h := newHarness(t, queue.Config{})
	m := worker.NewMetrics()
	reg := prometheus.NewRegistry()
	require.NoError(t, m.Register(reg))
	h.startWorker(worker.Options{Metrics: m})
	agentUp := func(want float64) func() bool {
		return func() bool {
			got, err := scrape(reg)
			return err == nil && got["jetpilot_agent_up{}"] == want
		}
	}
	eventually(t, agentUp(1), "agent up")
	h.sim.SetDown(true)
	eventually(t, agentUp(0), "agent down")
	h.sim.SetDown(false)
	eventually(t, agentUp(1), "agent up again")
}
