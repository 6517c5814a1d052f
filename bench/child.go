package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// ChildEnv is the environment variable that carries a ChildConfig (JSON)
// to the worker process of the concurrency scenario.
const ChildEnv = "JETPILOT_BENCH_CHILD"

// HeapProfileEnv, when set in a child worker's environment, names a file the
// child overwrites with a heap profile (and <file>.goroutine with a goroutine
// dump) every time its stats are read, after a forced GC (so its figures are
// not the scenario's): the last one is taken with all the
// concurrency scenario's runs open. For `go tool pprof -sample_index=inuse_space`.
const HeapProfileEnv = "JETPILOT_BENCH_HEAPPROFILE"

// childReadyPrefix starts the one line a child writes on stdout: the URL of
// its stats endpoint.
const childReadyPrefix = "jetpilot-bench-child stats="

// ChildConfig is what the concurrency scenario's worker process runs.
type ChildConfig struct {
	NatsURL       string `json:"nats_url"`
	AgentURL      string `json:"agent_url"`
	Prefix        string `json:"prefix"`
	Concurrency   int    `json:"concurrency"`
	MaxAckPending int    `json:"max_ack_pending"`
}

// procStats is what a worker process reports about itself.
type procStats struct {
	Goroutines int     `json:"goroutines"`
	RSSKiB     int64   `json:"rss_kib"`
	CPUNanos   int64   `json:"cpu_nanos"` // user + system, getrusage(RUSAGE_SELF)
	HeapInuse  uint64  `json:"heap_inuse"`
	StackInuse uint64  `json:"stack_inuse"`
	NumGC      uint32  `json:"num_gc"`    // GC cycles completed
	InFlight   float64 `json:"in_flight"` // the worker's jetpilot_jobs_in_flight
}

func readStats(m *worker.Metrics) (procStats, error) {
	var s procStats
	s.Goroutines = runtime.NumGoroutine()
	rss, err := procStatusKiB("/proc/self/status", "VmRSS")
	if err != nil {
		return s, err
	}
	s.RSSKiB = rss
	cpu, err := readProcessCPU()
	if err != nil {
		return s, err
	}
	s.CPUNanos = cpu.Nanoseconds()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.HeapInuse, s.StackInuse, s.NumGC = ms.HeapInuse, ms.StackInuse, ms.NumGC
	var g dto.Metric
	if err := m.InFlight.Write(&g); err != nil {
		return s, fmt.Errorf("read in-flight gauge: %w", err)
	}
	s.InFlight = g.GetGauge().GetValue()
	return s, nil
}

// ChildMain runs the concurrency scenario's worker: a real worker with the
// real session runner, configured by config (a ChildConfig as JSON). It
// serves its own stats (goroutines, VmRSS, getrusage CPU, Go memory, jobs in
// flight) on a 127.0.0.1 port, writes that URL as one line on stdout, and
// runs until ctx is done or stdin reaches EOF (the parent closed it, or
// died). `jetpilot-bench child-worker` calls it with the ChildEnv value.
func ChildMain(ctx context.Context, config string, stdin io.Reader, stdout io.Writer) error {
	var cfg ChildConfig
	if err := json.Unmarshal([]byte(config), &cfg); err != nil {
		return fmt.Errorf("bench child: decode %s: %w", ChildEnv, err)
	}
	if cfg.NatsURL == "" || cfg.AgentURL == "" || cfg.Prefix == "" || cfg.Concurrency < 1 {
		return fmt.Errorf("bench child: %s needs nats_url, agent_url, prefix and a positive concurrency", ChildEnv)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// EOF on stdin: the parent is done with us (or gone).
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()

	nc, err := nats.Connect(cfg.NatsURL, nats.Name("jetpilot-bench child worker"))
	if err != nil {
		return fmt.Errorf("bench child: connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("bench child: open JetStream: %w", err)
	}
	runner, err := spawnRunner(cfg.AgentURL)()
	if err != nil {
		return fmt.Errorf("bench child: %w", err)
	}
	metrics := worker.NewMetrics()
	qcfg := queue.Config{Prefix: cfg.Prefix, MaxAckPending: cfg.MaxAckPending}
	w, err := worker.New(ctx, js, qcfg, runner, worker.Options{
		Name:        "bench-child",
		Concurrency: cfg.Concurrency,
		Logger:      discard,
		Metrics:     metrics,
		// The runs are held open by the simulator: hand them back at once.
		ShutdownGrace: 100 * time.Millisecond,
		FetchWait:     time.Second,
	})
	if err != nil {
		return fmt.Errorf("bench child: new worker: %w", err)
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("bench child: listen for stats: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(rw http.ResponseWriter, _ *http.Request) {
		s, err := readStats(metrics)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		if path := os.Getenv(HeapProfileEnv); path != "" {
			if err := writeProfiles(path); err != nil {
				http.Error(rw, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(s)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		_ = srv.Serve(ln)
	}()
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
		<-srvDone
	}()
	if _, err := fmt.Fprintf(stdout, "%shttp://%s/stats\n", childReadyPrefix, ln.Addr()); err != nil {
		return fmt.Errorf("bench child: announce stats URL: %w", err)
	}
	if err := w.Run(ctx); err != nil {
		return fmt.Errorf("bench child: worker: %w", err)
	}
	return nil
}

// writeProfiles writes the heap profile to path and a goroutine dump to
// path+".goroutine".
func writeProfiles(path string) error {
	runtime.GC() // the heap profile is as of the last GC: make it now
	for _, p := range []struct{ name, file string }{{"heap", path}, {"goroutine", path + ".goroutine"}} {
		f, err := os.Create(p.file)
		if err != nil {
			return fmt.Errorf("%s profile: %w", p.name, err)
		}
		err = pprof.Lookup(p.name).WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s profile: %w", p.name, err)
		}
	}
	return nil
}

// readChildURL reads the child's announcement line from r.
func readChildURL(ctx context.Context, r io.Reader) (string, error) {
	type res struct {
		url string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			if len(line) > len(childReadyPrefix) && line[:len(childReadyPrefix)] == childReadyPrefix {
				ch <- res{url: line[len(childReadyPrefix):]}
				// Keep draining so the child never blocks on a full pipe.
				for sc.Scan() {
				}
				return
			}
		}
		err := sc.Err()
		if err == nil {
			err = errors.New("child exited without announcing its stats URL")
		}
		ch <- res{err: err}
	}()
	timer := time.NewTimer(60 * time.Second)
	defer timer.Stop()
	select {
	case r := <-ch:
		return r.url, r.err
	case <-timer.C:
		return "", errors.New("child did not announce its stats URL within 60s")
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// fetchStats asks a worker process for its stats.
func fetchStats(ctx context.Context, url string) (procStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return procStats{}, fmt.Errorf("worker stats: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return procStats{}, fmt.Errorf("worker stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return procStats{}, fmt.Errorf("worker stats: %s: %s", resp.Status, b)
	}
	var s procStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return procStats{}, fmt.Errorf("worker stats: decode: %w", err)
	}
	return s, nil
}
