package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/jetpilot-dev/jetpilot/worker"
)

// Run runs the selected scenarios opts.Runs times on one embedded NATS
// server and returns every sample with its median. Within a run the
// scenarios go in a fixed order (baseline first), so each ratio compares
// figures measured minutes apart at most, on the same server.
func Run(ctx context.Context, opts Options) (*Report, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("bench options: %w", err)
	}
	start := time.Now()
	dir := opts.Dir
	if dir == "" {
		dir, err = os.MkdirTemp("", "jetpilot-bench-")
		if err != nil {
			return nil, fmt.Errorf("bench store dir: %w", err)
		}
		defer os.RemoveAll(dir)
	}
	e, err := startEnv(dir, opts.Durable)
	if err != nil {
		return nil, err
	}
	defer e.close()

	r := &Report{
		Machine: machineInfo(), Runs: opts.Runs, Scenarios: opts.Scenarios, Durable: opts.Durable,
		Jobs: opts.Jobs, FullJobs: opts.FullJobs, Concurrency: opts.Concurrency,
	}
	if opts.has(ScenarioBaseline) {
		r.Baseline = &Throughput{}
		r.BaselineEvents = &Throughput{}
	}
	if opts.has(ScenarioQueue) {
		r.Queue = &Throughput{}
	}
	if opts.has(ScenarioFull) {
		r.Full = &Throughput{}
		r.SessionLoop = &Throughput{}
	}
	if opts.has(ScenarioScaleOut) {
		for _, k := range opts.ScaleOut {
			r.ScaleOut = append(r.ScaleOut, ScaleOutPoint{Workers: k})
		}
	}
	if opts.has(ScenarioLatency) {
		r.Latency = &Latency{Rate: opts.Rate}
	}
	if opts.has(ScenarioConcurrency) {
		r.Concurrent = &Concurrency{InFlight: opts.InFlight, Isolated: len(opts.ChildCommand) > 0, IdleWindowSeconds: opts.IdleWindow.Seconds()}
	}
	if opts.has(ScenarioPolicy) {
		r.Policy = &PolicyPropagation{Workers: opts.PolicyWorkers, Updates: opts.PolicyUpdates}
	}

	for run := 1; run <= opts.Runs; run++ {
		if err := runOnce(ctx, e, opts, r, run); err != nil {
			return r, fmt.Errorf("run %d: %w", run, err)
		}
	}
	r.checkTargets()
	r.WallSeconds = time.Since(start).Seconds()
	return r, nil
}

// runOnce runs every selected scenario once and adds its samples to r.
func runOnce(ctx context.Context, e *env, opts Options, r *Report, run int) error {
	progress := func(format string, a ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "run %d/%d: "+format+"\n", append([]any{run, opts.Runs}, a...)...)
		}
	}
	profile := func(name string) string {
		if opts.ProfileDir == "" || run != 1 {
			return ""
		}
		return filepath.Join(opts.ProfileDir, name)
	}
	scoped := func(f func(ctx context.Context) error) error {
		quiesce(ctx) // not part of the scenario's time
		ctx, cancel := context.WithTimeout(ctx, opts.ScenarioTimeout)
		defer cancel()
		return f(ctx)
	}
	tag := func(s string) string { return fmt.Sprintf("r%d%s", run, s) }

	var baseline, baselineEvents float64
	if r.Baseline != nil {
		err := scoped(func(ctx context.Context) error {
			s, err := e.throughputRun(ctx, tag("base"), opts.Jobs, "baseline job", e.baselineSide(opts.Concurrency, false), "")
			if err != nil {
				return fmt.Errorf("baseline: %w", err)
			}
			r.Baseline.add(s)
			baseline = s.jobsPerSec
			progress("baseline %.0f jobs/s", s.jobsPerSec)
			return nil
		})
		if err != nil {
			return err
		}
		err = scoped(func(ctx context.Context) error {
			s, err := e.throughputRun(ctx, tag("basev"), opts.Jobs, "baseline job", e.baselineSide(opts.Concurrency, true), profile("baseline-events"))
			if err != nil {
				return fmt.Errorf("baseline with events: %w", err)
			}
			r.BaselineEvents.add(s)
			r.BaselineEvents.addRatio(s.jobsPerSec / baseline)
			baselineEvents = s.jobsPerSec
			progress("raw loop + 1 event/job %.0f jobs/s", s.jobsPerSec)
			return nil
		})
		if err != nil {
			return err
		}
	}
	instant := func() (worker.Runner, error) { return instantRunner{}, nil }
	if r.Queue != nil {
		err := scoped(func(ctx context.Context) error {
			s, err := e.throughputRun(ctx, tag("queue"), opts.Jobs, "queue path job", e.workersSide(1, opts.Concurrency, instant), profile("queue"))
			if err != nil {
				return fmt.Errorf("queue path: %w", err)
			}
			r.Queue.add(s)
			r.Queue.addRatio(s.jobsPerSec / baseline)
			r.Queue.addLimitRatio(s.jobsPerSec / baselineEvents)
			progress("queue path %.0f jobs/s (%.2f of baseline, %.2f of baseline + 1 event/job)", s.jobsPerSec, s.jobsPerSec/baseline, s.jobsPerSec/baselineEvents)
			return nil
		})
		if err != nil {
			return err
		}
	}
	if r.Full != nil {
		err := scoped(func(ctx context.Context) error {
			// The bare session loop first, on a simulator of its own (same
			// options), so neither run sees the other's sessions.
			loopSim, err := startSim(ctx)
			if err != nil {
				return err
			}
			ls, err := sessionLoopRun(ctx, loopSim.url, tag("loop"), opts.FullJobs, opts.Concurrency, "full path job")
			loopStarted := loopSim.RunsStarted()
			loopSim.stop()
			if err != nil {
				return err
			}
			if loopStarted != opts.FullJobs || ls.results != opts.FullJobs {
				return fmt.Errorf("session loop: the simulator started %d runs and %d jobs completed, for %d jobs", loopStarted, ls.results, opts.FullJobs)
			}
			r.SessionLoop.add(ls)
			progress("bare HTTP+SSE session loop %.0f jobs/s", ls.jobsPerSec)

			sm, err := startSim(ctx)
			if err != nil {
				return err
			}
			defer sm.stop()
			s, err := e.throughputRun(ctx, tag("full"), opts.FullJobs, "full path job", e.workersSide(1, opts.Concurrency, spawnRunner(sm.url)), profile("full"))
			if err != nil {
				return fmt.Errorf("full path: %w", err)
			}
			if started := sm.RunsStarted(); started != opts.FullJobs {
				return fmt.Errorf("full path: the simulator started %d runs for %d jobs", started, opts.FullJobs)
			}
			r.Full.add(s)
			r.Full.addRatio(s.jobsPerSec / baseline)
			r.Full.addLimitRatio(s.jobsPerSec / ls.jobsPerSec)
			progress("full path %.0f jobs/s (%.2f of baseline, %.2f of the session loop, %.2f writes/job)", s.jobsPerSec, s.jobsPerSec/baseline, s.jobsPerSec/ls.jobsPerSec, s.writes)
			return nil
		})
		if err != nil {
			return err
		}
	}
	for i := range r.ScaleOut {
		pt := &r.ScaleOut[i]
		err := scoped(func(ctx context.Context) error {
			s, err := e.throughputRun(ctx, tag(fmt.Sprintf("scale%d", pt.Workers)), opts.Jobs, "scale-out job", e.workersSide(pt.Workers, opts.Concurrency, instant), "")
			if err != nil {
				return fmt.Errorf("scale-out with %d workers: %w", pt.Workers, err)
			}
			pt.Throughput.add(s)
			pt.Throughput.addRatio(s.jobsPerSec / baseline)
			progress("scale-out %d workers %.0f jobs/s", pt.Workers, s.jobsPerSec)
			return nil
		})
		if err != nil {
			return err
		}
	}
	if r.Latency != nil {
		err := scoped(func(ctx context.Context) error {
			s, err := e.latencyRun(ctx, tag("lat"), opts.Rate, opts.LatencyDuration, opts.Concurrency)
			if err != nil {
				return fmt.Errorf("latency: %w", err)
			}
			r.Latency.add(s)
			l := r.Latency
			progress("latency at %.0f jobs/s: p99 publish->session %.2f ms, run_completed->result %.2f ms, max publish->result %.1f ms",
				s.achievedRate, l.PublishToSession.P99.Samples[len(l.PublishToSession.P99.Samples)-1],
				l.RunCompletedToResult.P99.Samples[len(l.RunCompletedToResult.P99.Samples)-1], l.PublishToResult.Max.Samples[len(l.PublishToResult.Max.Samples)-1])
			return nil
		})
		if err != nil {
			return err
		}
	}
	if r.Concurrent != nil {
		err := scoped(func(ctx context.Context) error {
			s, err := e.concurrencyRun(ctx, tag("conc"), opts.InFlight, opts.IdleWindow, opts.ChildCommand)
			if err != nil {
				return fmt.Errorf("concurrency: %w", err)
			}
			r.Concurrent.add(s)
			c := r.Concurrent
			progress("concurrency %d runs: %.1f KiB RSS/run, %.2f goroutines/run, %.1f%% CPU idle",
				opts.InFlight, c.RSSPerRunKiB.Samples[len(c.RSSPerRunKiB.Samples)-1],
				c.GoroutinesPerRun.Samples[len(c.GoroutinesPerRun.Samples)-1], s.idleCPUPercent)
			return nil
		})
		if err != nil {
			return err
		}
	}
	if r.Policy != nil {
		err := scoped(func(ctx context.Context) error {
			s, err := e.policyRun(ctx, tag("pol"), opts.PolicyWorkers, opts.PolicyUpdates)
			if err != nil {
				return fmt.Errorf("policy: %w", err)
			}
			r.Policy.add(s)
			pp := r.Policy
			progress("policy to %d workers: p50 %.2f ms, p99 %.2f ms (raw KV watch p50 %.2f ms, ratio %.2f)", opts.PolicyWorkers,
				last(pp.Applied.P50), last(pp.Applied.P99), last(pp.RawWatch.P50), last(pp.RatioP50ToRawWatch))
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// last is a Stat's latest sample: the run just measured.
func last(s Stat) float64 { return s.Samples[len(s.Samples)-1] }

// Quiescence before each scenario: the previous one leaves work behind (its
// streams deleted, their files removed, a heap to collect), which landed in
// the next scenario's figures, most visibly in the latency scenario's p99
// after the scale-out runs. quiesce collects garbage, then waits until this
// process uses less than quietCPU of a core over a quietWindow, for at most
// quietMax.
const (
	quietCPU    = 0.10
	quietWindow = 250 * time.Millisecond
	quietMax    = 15 * time.Second
)

func quiesce(ctx context.Context) {
	runtime.GC()
	deadline := time.Now().Add(quietMax)
	for time.Now().Before(deadline) {
		before := processCPU()
		if !sleepCtx(ctx, quietWindow) {
			return
		}
		if float64(processCPU()-before) < quietCPU*float64(quietWindow) {
			return
		}
	}
}
