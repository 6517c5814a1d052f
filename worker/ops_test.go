package worker_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/worker"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	code, body, err := tryGet(url)
	require.NoError(t, err)
	return code, body
}

// tryGet is get for a wait condition: it fails no test.
func tryGet(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func TestMetricsAndReadiness(t *testing.T) {
	h := newHarness(t, queue.Config{})
	m := worker.NewMetrics()
	reg := prometheus.NewRegistry()
	require.NoError(t, m.Register(reg))
	agentUp := true
	srv := httptest.NewServer(worker.OpsHandler(reg,
		worker.ReadyCheck{Name: "nats", Check: func(context.Context) error { return nil }},
		worker.ReadyCheck{Name: "agent_server", Check: func(context.Context) error {
			if !agentUp {
				return errors.New("connection refused")
			}
			return nil
		}},
	))
	defer srv.Close()

	h.startWorker(worker.Options{Metrics: m})
	h.submit(job("metrics-1", "#sim text ok"))
	h.submit(job("metrics-2", "#sim error nope"))
	require.Equal(t, schemas.StatusCompleted, h.final("metrics-1").Status)
	require.Equal(t, schemas.StatusFailed, h.final("metrics-2").Status)

	// Metrics are counted once a job is settled, just after its result lands.
	eventuallyWithT(t, func(c *assert.CollectT) {
		_, body, err := tryGet(srv.URL + "/metrics")
		assert.NoError(c, err)
		assert.Contains(c, body, "jetpilot_jobs_in_flight 0")
		assert.Contains(c, body, `jetpilot_jobs_total{status="failed"} 1`)
	}, "in-flight gauge back to 0 and both jobs counted once they are settled")
	code, body := get(t, srv.URL+"/metrics")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, `jetpilot_jobs_total{status="completed"} 1`)
	assert.Contains(t, body, `jetpilot_jobs_total{status="failed"} 1`)
	assert.Contains(t, body, `jetpilot_dead_letters_total 1`)
	assert.Contains(t, body, `jetpilot_session_duration_seconds_count{status="completed"} 1`)

	code, _ = get(t, srv.URL+"/healthz")
	assert.Equal(t, http.StatusOK, code)
	code, body = get(t, srv.URL+"/readyz")
	assert.Equal(t, http.StatusOK, code, body)
	agentUp = false
	code, body = get(t, srv.URL+"/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, "agent_server")
	assert.Contains(t, body, "connection refused")
}
