package worker

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ReadyCheck is one dependency readiness depends on, such as NATS or the agent server.
type ReadyCheck struct {
	Name  string
	Check func(ctx context.Context) error
}

// OpsHandler serves /metrics from reg, /healthz (the process is up) and
// /readyz (every check passes; 503 with the failing ones named otherwise),
// for a load balancer or Kubernetes probes.
func OpsHandler(reg *prometheus.Registry, checks ...ReadyCheck) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		failing := map[string]string{}
		for _, c := range checks {
			if err := c.Check(ctx); err != nil {
				failing[c.Name] = err.Error()
			}
		}
		w.Header().Set("Content-Type", "application/json")
		body := map[string]any{"status": "ready"}
		if len(failing) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			body = map[string]any{"status": "not ready", "failing": failing}
		}
		_ = json.NewEncoder(w).Encode(body)
	})
	return mux
}
