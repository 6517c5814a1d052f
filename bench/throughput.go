package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetpilot-dev/jetpilot/queue"
	"github.com/jetpilot-dev/jetpilot/schemas"
	"github.com/jetpilot-dev/jetpilot/spawn"
	"github.com/jetpilot-dev/jetpilot/spawn/agentsim"
	"github.com/jetpilot-dev/jetpilot/worker"
)

// discard is the logger of every worker, runner and simulator in the
// bench: a log line per job would measure the terminal, not the worker.
var discard = slog.New(slog.DiscardHandler)

// tpSample is one run of one throughput scenario.
type tpSample struct {
	jobsPerSec    float64
	allocs, bytes float64
	// cpu is the bench process's CPU time per job in µs (all of it: NATS
	// server, simulator and load generator included).
	cpu           float64
	jobs, results int
	// writes is the JetStream messages stored per job in every stream and
	// bucket of the run (the job itself included); 0 when not counted.
	writes float64
}

func (t *Throughput) add(s tpSample) {
	t.JobsPerSec.add(s.jobsPerSec)
	t.AllocsPerJob.add(s.allocs)
	t.BytesPerJob.add(s.bytes)
	if s.cpu > 0 {
		t.CPUPerJob.add(s.cpu)
	}
	t.Jobs = append(t.Jobs, s.jobs)
	t.Results = append(t.Results, s.results)
	if s.writes > 0 {
		t.WritesPerJob.add(s.writes)
	}
}

func (t *Throughput) addRatio(r float64) {
	if t.RatioToBaseline == nil {
		t.RatioToBaseline = &Stat{}
	}
	t.RatioToBaseline.add(r)
}

func (t *Throughput) addLimitRatio(r float64) {
	if t.RatioToLimit == nil {
		t.RatioToLimit = &Stat{}
	}
	t.RatioToLimit.add(r)
}

// consumerSide starts whatever takes the jobs (the baseline loop, or
// workers) on cfg and returns how to stop it, and how many pull requests
// mean it is ready.
type consumerSide func(ctx context.Context, cfg queue.Config) (stop func() error, pullers int, err error)

// throughputRun measures one run: it starts the consumer side, waits until
// it is pulling, then publishes n jobs and waits until all n have a result.
// The clock runs from the first publish to the last result.
func (e *env) throughputRun(ctx context.Context, name string, n int, prompt string, side consumerSide, profile string) (tpSample, error) {
	cfg, cleanup, err := e.newQueue(ctx, name, 0)
	if err != nil {
		return tpSample{}, err
	}
	defer cleanup()
	rw, err := watchResults(e.nc, cfg, n)
	if err != nil {
		return tpSample{}, err
	}
	defer rw.stop()
	stop, pullers, err := side(ctx, cfg)
	if err != nil {
		return tpSample{}, err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = stop()
		}
	}()
	if err := waitConsumerReady(ctx, e.js, cfg.JobsStream(), cfg.WorkersDurable(), pullers); err != nil {
		return tpSample{}, err
	}
	endProfile, err := startProfile(profile)
	if err != nil {
		return tpSample{}, err
	}
	allocs := startAllocs()
	t0 := time.Now()
	if err := publishJobs(ctx, e.js, cfg, name, n, prompt); err != nil {
		endProfile()
		return tpSample{}, err
	}
	t1, err := rw.wait(ctx)
	endProfile()
	if err != nil {
		return tpSample{}, err
	}
	a, b := allocs.perJob(n)
	cpu := allocs.cpuPerJob(n)
	stopped = true
	if err := stop(); err != nil {
		return tpSample{}, fmt.Errorf("stop %s: %w", name, err)
	}
	writes, stored, err := e.countWrites(ctx, cfg)
	if err != nil {
		return tpSample{}, err
	}
	if stored != n {
		return tpSample{}, fmt.Errorf("%s: the results stream holds %d results for %d jobs, want exactly one per job", name, stored, n)
	}
	return tpSample{
		jobsPerSec: float64(n) / t1.Sub(t0).Seconds(),
		allocs:     a, bytes: b, cpu: cpu,
		jobs: n, results: rw.count(),
		writes: float64(writes) / float64(n),
	}, nil
}

// countWrites is how many messages the run stored in all of cfg's streams
// and buckets (each one's last sequence: the prefix is fresh per run), and
// how many results the results stream holds. Live events are published
// without waiting for the server to store them, so with fsync always the
// events stream may still be catching up when the last result is in: the
// count is read until it holds still (bounded).
func (e *env) countWrites(ctx context.Context, cfg queue.Config) (writes uint64, results int, err error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		w, r, err := e.countWritesOnce(ctx, cfg)
		if err != nil || w == writes || time.Now().After(deadline) {
			return w, r, err
		}
		writes = w
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return 0, 0, fmt.Errorf("count writes: %w", ctx.Err())
		}
	}
}

func (e *env) countWritesOnce(ctx context.Context, cfg queue.Config) (writes uint64, results int, err error) {
	names := []string{"KV_" + cfg.RunsBucket()}
	for _, sc := range cfg.StreamConfigs() {
		names = append(names, sc.Name)
	}
	for _, name := range names {
		s, err := e.js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return 0, 0, fmt.Errorf("count writes: stream %s: %w", name, err)
		}
		st := s.CachedInfo().State
		writes += st.LastSeq
		if name == cfg.ResultsStream() {
			results = int(st.Msgs)
		}
	}
	return writes, results, nil
}

// startProfile starts a CPU profile into dir/cpu-<name>.pprof and writes
// the allocation profile before and after; "" profiles nothing.
func startProfile(spec string) (end func(), err error) {
	if spec == "" {
		return func() {}, nil
	}
	dir, name := filepath.Split(spec)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("profile dir: %w", err)
	}
	writeAllocs := func(suffix string) {
		f, err := os.Create(filepath.Join(dir, "allocs-"+name+"-"+suffix+".pprof"))
		if err != nil {
			return
		}
		defer f.Close()
		_ = pprof.Lookup("allocs").WriteTo(f, 0)
	}
	writeAllocs("before")
	f, err := os.Create(filepath.Join(dir, "cpu-"+name+".pprof"))
	if err != nil {
		return nil, fmt.Errorf("create CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("start CPU profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		writeAllocs("after")
	}, nil
}

// baselineSide is the raw JetStream worker loop with nats.go alone, on the
// same consumer configuration as the workers': pull, publish a result with
// a dedup id and wait for its ack, ack the job. It holds as many jobs at
// once as a worker has slots. With withEvent it also publishes one live
// status event per job on the job's events subject, fire and forget, as
// the worker does: the one write per job DESIGN.md asks of the queue path
// beyond the result.
func (e *env) baselineSide(concurrency int, withEvent bool) consumerSide {
	return func(ctx context.Context, cfg queue.Config) (func() error, int, error) {
		nc, js, err := e.connect("baseline")
		if err != nil {
			return nil, 0, err
		}
		cons, err := js.CreateOrUpdateConsumer(ctx, cfg.JobsStream(), cfg.WorkerConsumerConfig(""))
		if err != nil {
			nc.Close()
			return nil, 0, fmt.Errorf("baseline consumer: %w", err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(concurrency))
		if err != nil {
			nc.Close()
			return nil, 0, fmt.Errorf("baseline messages: %w", err)
		}
		// Handlers finish what they hold when stopped (a result may be
		// seen by the bench before its publisher has the ack), bounded by
		// a timeout per message.
		hctx := context.WithoutCancel(ctx)
		quit := make(chan struct{})
		msgs := make(chan jetstream.Msg)
		var wg sync.WaitGroup
		var failures atomic.Int64
		var firstErr atomic.Value
		wg.Go(func() {
			defer close(msgs)
			for {
				m, err := it.Next()
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					return // stopped
				}
				if err != nil {
					// Missed heartbeats and the like: the iterator
					// recovers by itself, as a real worker loop must.
					continue
				}
				select {
				case msgs <- m:
				case <-quit:
					return
				}
			}
		})
		for range concurrency {
			wg.Go(func() {
				for m := range msgs {
					mctx, cancel := context.WithTimeout(hctx, 10*time.Second)
					if err := rawHandle(mctx, js, cfg, m, withEvent); err != nil {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, err)
					}
					cancel()
				}
			})
		}
		return func() error {
			close(quit)
			it.Stop()
			wg.Wait()
			nc.Close()
			if n := failures.Load(); n > 0 {
				return fmt.Errorf("baseline: %d jobs failed, the first with: %v", n, firstErr.Load())
			}
			return nil
		}, 1, nil
	}
}

// rawResult is the baseline's result: the fields a consumer needs.
type rawResult struct {
	JobID  string `json:"job_id"`
	Status string `json:"status"`
}

// rawEvent is the baseline's live event: the fields of a status event.
type rawEvent struct {
	Schema string    `json:"schema"`
	JobID  string    `json:"job_id"`
	Seq    uint64    `json:"seq"`
	Type   string    `json:"type"`
	Status string    `json:"status"`
	At     time.Time `json:"at"`
}

func rawHandle(ctx context.Context, js jetstream.JetStream, cfg queue.Config, m jetstream.Msg, withEvent bool) error {
	var job struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(m.Data(), &job); err != nil || job.ID == "" {
		_ = m.Term()
		return fmt.Errorf("decode job: %w", err)
	}
	if withEvent {
		ev, err := json.Marshal(rawEvent{Schema: schemas.EventSchemaID, JobID: job.ID, Seq: 1, Type: "status", Status: "completed", At: time.Now().UTC()})
		if err != nil {
			return fmt.Errorf("encode event: %w", err)
		}
		// A plain publish the events stream stores, with no ack asked for:
		// the cheapest way to write it, as the worker does.
		if err := js.Conn().PublishMsg(&nats.Msg{Subject: cfg.EventSubject(job.ID), Data: ev}); err != nil {
			return fmt.Errorf("publish event: %w", err)
		}
	}
	data, err := json.Marshal(rawResult{JobID: job.ID, Status: "completed"})
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	_, err = js.PublishMsg(ctx, &nats.Msg{Subject: cfg.ResultSubject(job.ID), Data: data},
		jetstream.WithMsgID(queue.ResultMsgID(job.ID, 0)), jetstream.WithExpectStream(cfg.ResultsStream()))
	if err != nil {
		_ = m.Nak()
		return fmt.Errorf("publish result: %w", err)
	}
	if err := m.Ack(); err != nil {
		return fmt.Errorf("ack job: %w", err)
	}
	return nil
}

// instantRunner is a session runner that returns a completed result at
// once: with it a worker is the queue path alone.
type instantRunner struct{}

func (instantRunner) Run(_ context.Context, spec *spawn.Spec) (*spawn.Outcome, error) {
	now := time.Now().UTC()
	res := schemas.Result{Schema: schemas.ResultSchemaID, JobID: spec.Job.ID, Attempt: spec.Attempt, StartedAt: now, FinishedAt: now}
	res.SetStatus(schemas.StatusCompleted)
	return &spawn.Outcome{Result: res}, nil
}

func (instantRunner) CancelRun(context.Context, spawn.Cursor) error { return nil }

// workersSide runs k workers, each on its own NATS connection, with the
// runner newRunner makes.
func (e *env) workersSide(k, concurrency int, newRunner func() (worker.Runner, error)) consumerSide {
	return func(ctx context.Context, cfg queue.Config) (func() error, int, error) {
		type running struct {
			nc     *nats.Conn
			cancel context.CancelFunc
			done   chan error
		}
		var ws []running
		var once sync.Once
		var stopErr error
		// Idempotent: the caller may stop early and again in a defer.
		stopAll := func() error {
			once.Do(func() {
				var errs []error
				for _, w := range ws {
					w.cancel()
				}
				for _, w := range ws {
					select {
					case err := <-w.done:
						errs = append(errs, err)
					case <-time.After(30 * time.Second):
						errs = append(errs, errors.New("worker did not stop within 30s"))
					}
					w.nc.Close()
				}
				stopErr = errors.Join(errs...)
			})
			return stopErr
		}
		for i := range k {
			nc, js, err := e.connect(fmt.Sprintf("worker-%d", i))
			if err != nil {
				_ = stopAll()
				return nil, 0, err
			}
			r, err := newRunner()
			if err != nil {
				nc.Close()
				_ = stopAll()
				return nil, 0, err
			}
			w, err := worker.New(ctx, js, cfg, r, worker.Options{
				Name:          fmt.Sprintf("bench-w%d", i),
				Concurrency:   concurrency,
				Logger:        discard,
				ShutdownGrace: 10 * time.Second,
				FetchWait:     time.Second,
			})
			if err != nil {
				nc.Close()
				_ = stopAll()
				return nil, 0, fmt.Errorf("new worker: %w", err)
			}
			wctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- w.Run(wctx) }()
			ws = append(ws, running{nc: nc, cancel: cancel, done: done})
		}
		return stopAll, k, nil
	}
}

// sim is an agent simulator served on 127.0.0.1.
type sim struct {
	*agentsim.Server
	url  string
	stop func()
}

func startSim(ctx context.Context) (*sim, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("agentsim: listen on 127.0.0.1: %w", err)
	}
	s := agentsim.New(agentsim.Options{Logger: discard})
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(sctx, ln)
	}()
	return &sim{Server: s, url: "http://" + ln.Addr().String(), stop: func() {
		cancel()
		<-done
	}}, nil
}

// spawnRunner makes the real session runner against url, one HTTP client
// per worker as in a deployment.
func spawnRunner(url string) func() (worker.Runner, error) {
	return func() (worker.Runner, error) {
		c, err := spawn.NewClient(spawn.ClientOptions{BaseURL: url, DirectEventStreams: true})
		if err != nil {
			return nil, fmt.Errorf("agent client: %w", err)
		}
		return spawn.NewRunner(c, spawn.RunnerOptions{Logger: discard}), nil
	}
}
