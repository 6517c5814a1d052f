package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Stat is one figure measured once per run: every sample, and their median.
type Stat struct {
	Samples []float64 `json:"samples"`
	Median  float64   `json:"median"`
}

func (s *Stat) add(v float64) {
	s.Samples = append(s.Samples, v)
	s.Median = median(s.Samples)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Throughput is a jobs/s figure, with what each run moved.
type Throughput struct {
	// JobsPerSec: jobs submitted and their results stored, per second,
	// from the first submit to the last result.
	JobsPerSec Stat `json:"jobs_per_sec"`
	// RatioToBaseline: this run's jobs/s over the baseline's in the same
	// run (absent for the baseline itself).
	RatioToBaseline *Stat `json:"ratio_to_baseline,omitempty"`
	// RatioToLimit: this run's jobs/s over the limit the target
	// names, measured in the same run: for the queue path the raw loop
	// that also publishes one live event per job (BaselineEvents), for the
	// full path the bare HTTP+SSE session loop (SessionLoop).
	RatioToLimit *Stat `json:"ratio_to_limit,omitempty"`
	// AllocsPerJob and BytesPerJob: heap allocations of the whole bench
	// process (NATS server, simulator and load generator included) per job;
	// compare with the baseline's to see the worker's share.
	AllocsPerJob Stat `json:"allocs_per_job"`
	BytesPerJob  Stat `json:"bytes_per_job"`
	// CPUPerJob: the bench process's CPU time (user + system) per job, in
	// µs, NATS server, simulator and load generator included, over the
	// same span as jobs/s.
	CPUPerJob Stat `json:"cpu_us_per_job"`
	// Jobs and Results count, per run, what was submitted and what
	// distinct job ids got a result: they must be equal.
	Jobs    []int `json:"jobs"`
	Results []int `json:"results"`
	// WritesPerJob: messages stored in JetStream per job, in every stream
	// and bucket of the run, the job itself included (every one an fsync
	// with sync_interval: always). Absent for the session loop.
	WritesPerJob Stat `json:"writes_per_job"`
}

// ScaleOutPoint is the throughput of Workers workers on one consumer.
type ScaleOutPoint struct {
	Workers    int        `json:"workers"`
	Throughput Throughput `json:"throughput"`
}

// Concurrency is the cost of runs held open on one worker.
type Concurrency struct {
	InFlight int `json:"in_flight"`
	// Isolated is true when the worker ran in a child process, so the
	// figures are the worker's alone; false when the simulator and the NATS
	// server shared its process.
	Isolated bool `json:"isolated"`
	// RSSPerRunKiB is (VmRSS with the runs open - VmRSS of the idle worker)
	// / InFlight.
	RSSPerRunKiB Stat `json:"rss_per_run_kib"`
	// GoroutinesPerRun is the same difference of runtime.NumGoroutine.
	GoroutinesPerRun Stat `json:"goroutines_per_run"`
	// HeapPerRunKiB and StackPerRunKiB split the Go memory: HeapInuse and
	// StackInuse differences per run.
	HeapPerRunKiB  Stat `json:"heap_per_run_kib"`
	StackPerRunKiB Stat `json:"stack_per_run_kib"`
	// EndRSSPerRunKiB, EndHeapPerRunKiB and EndStackPerRunKiB are the same
	// figures at the end of the idle window, and IdleGCs how many GC cycles
	// the worker ran within it: stacks shrink (and garbage goes) only at a
	// GC, and idle runs allocate little, so the first figures can still
	// hold the ramp's garbage and the stacks it grew.
	EndRSSPerRunKiB   Stat `json:"end_rss_per_run_kib"`
	EndHeapPerRunKiB  Stat `json:"end_heap_per_run_kib"`
	EndStackPerRunKiB Stat `json:"end_stack_per_run_kib"`
	IdleGCs           Stat `json:"idle_gcs"`
	// IdleCPUPercent is user+system CPU (getrusage) over the idle window, in
	// percent of one core.
	IdleCPUPercent Stat `json:"idle_cpu_percent"`
	// RSSBeforeMiB and RSSAfterMiB are the worker process's VmRSS.
	RSSBeforeMiB Stat `json:"rss_before_mib"`
	RSSAfterMiB  Stat `json:"rss_after_mib"`
	// RampSeconds is how long it took to get every run open.
	RampSeconds Stat `json:"ramp_seconds"`
	// IdleWindowSeconds is the length of the CPU window.
	IdleWindowSeconds float64 `json:"idle_window_seconds"`
}

// Percentiles of one latency, each a Stat over the runs, in milliseconds.
type Percentiles struct {
	P50 Stat `json:"p50_ms"`
	P99 Stat `json:"p99_ms"`
	Max Stat `json:"max_ms"`
	// Count is how many jobs each run measured.
	Count []int `json:"count"`
}

func (p *Percentiles) add(ds []time.Duration) {
	p.Count = append(p.Count, len(ds))
	if len(ds) == 0 {
		p.P50.add(math.NaN())
		p.P99.add(math.NaN())
		p.Max.add(math.NaN())
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	p.P50.add(ms(quantile(s, 0.50)))
	p.P99.add(ms(quantile(s, 0.99)))
	p.Max.add(ms(s[len(s)-1]))
}

// quantile of sorted s by the nearest-rank method.
func quantile(s []time.Duration, q float64) time.Duration {
	rank := int(math.Ceil(q * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// Latency is the latency scenario's result.
type Latency struct {
	Rate int `json:"rate"`
	// AchievedRate is the publish rate actually reached, jobs/s.
	AchievedRate Stat `json:"achieved_rate"`
	// PublishToSession: from the bench's publish call to the agent server
	// receiving POST /v1/sessions (the simulator's request log).
	PublishToSession Percentiles `json:"publish_to_session"`
	// RunCompletedToResult: from the simulator's run_completed event
	// timestamp to the result's timestamp in the RESULTS stream.
	RunCompletedToResult Percentiles `json:"run_completed_to_result"`
	// PublishToResult: from publish to the result stored, end to end.
	PublishToResult Percentiles `json:"publish_to_result"`
}

// PolicyPropagation is the policy scenario's result: how long a stored
// policy takes to be in force on every worker, next to how long raw
// nats.go KV watchers take to see a put of the same bucket in the same run.
type PolicyPropagation struct {
	// Workers is how many workers (and raw watchers) each update had to
	// reach; Updates how many versions each run stored.
	Workers int `json:"workers"`
	Updates int `json:"updates"`
	// Applied: from just before PolicyStore.Set (what `jetpilot policy
	// set` calls) to the last of the Workers workers having applied the
	// version (its Policy() reports it).
	Applied Percentiles `json:"applied"`
	// RawWatch is the baseline: from just before kv.Put of the same
	// document on the same key to the last of Workers raw nats.go KV
	// watchers (one per connection) receiving that revision.
	RawWatch Percentiles `json:"raw_watch"`
	// RatioP50ToRawWatch is Applied's p50 over RawWatch's p50, per run.
	RatioP50ToRawWatch Stat `json:"ratio_p50_to_raw_watch"`
	// SetCall is the PolicyStore.Set call alone (validate, read the
	// current version, compare-and-set, wait for the server's ack), for
	// context: the workers may apply a version before Set has returned.
	SetCall Percentiles `json:"set_call"`
	// Versions lists, per run, the versions every worker applied, in order.
	Versions [][]uint64 `json:"versions"`
}

// Target is one goal of the issue and whether the medians met it.
type Target struct {
	Name  string  `json:"name"`
	Goal  string  `json:"goal"`
	Value float64 `json:"value"`
	Met   bool    `json:"met"`
}

// Machine describes where the bench ran.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	MemoryMiB int    `json:"memory_mib"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
}

// Report is everything Run measured.
type Report struct {
	Machine   Machine    `json:"machine"`
	Runs      int        `json:"runs"`
	Scenarios []Scenario `json:"scenarios"`
	// Durable: the server fsynced every write (Options.Durable).
	Durable bool `json:"durable"`
	// Options echoes the load that was applied.
	Jobs        int `json:"jobs"`
	FullJobs    int `json:"full_jobs"`
	Concurrency int `json:"concurrency"`

	Baseline *Throughput `json:"baseline,omitempty"`
	// BaselineEvents is the baseline loop that also publishes one live
	// status event per job: the queue path's limit.
	BaselineEvents *Throughput `json:"baseline_events,omitempty"`
	// SessionLoop is the bare HTTP+SSE session loop against the same
	// simulator, no queue: the full path's limit.
	SessionLoop *Throughput        `json:"session_loop,omitempty"`
	Queue       *Throughput        `json:"queue,omitempty"`
	Full        *Throughput        `json:"full,omitempty"`
	ScaleOut    []ScaleOutPoint    `json:"scaleout,omitempty"`
	Latency     *Latency           `json:"latency,omitempty"`
	Concurrent  *Concurrency       `json:"concurrency_scenario,omitempty"`
	Policy      *PolicyPropagation `json:"policy,omitempty"`
	Targets     []Target           `json:"targets"`
	WallSeconds float64            `json:"wall_seconds"`
}

// checkTargets fills r.Targets from the medians.
func (r *Report) checkTargets() {
	r.Targets = nil
	if r.Queue != nil && r.Queue.RatioToLimit != nil {
		v := r.Queue.RatioToLimit.Median
		r.Targets = append(r.Targets, Target{Name: "queue path / raw loop with one event per job", Goal: ">= 0.9", Value: v, Met: v >= 0.9})
	}
	if r.Full != nil && r.Full.RatioToLimit != nil {
		v := r.Full.RatioToLimit.Median
		r.Targets = append(r.Targets, Target{Name: "full path / bare HTTP+SSE session loop", Goal: ">= 0.75", Value: v, Met: v >= 0.75})
	}
	if c := r.Concurrent; c != nil {
		v := c.RSSPerRunKiB.Median
		r.Targets = append(r.Targets, Target{Name: "RSS per in-flight run (KiB)", Goal: "<= 32", Value: v, Met: v <= 32})
	}
	if l := r.Latency; l != nil {
		v := l.PublishToSession.P99.Median
		r.Targets = append(r.Targets, Target{Name: "p99 publish -> session created (ms)", Goal: "<= 5", Value: v, Met: v <= 5})
		v = l.RunCompletedToResult.P99.Median
		r.Targets = append(r.Targets, Target{Name: "p99 run_completed -> result published (ms)", Goal: "<= 5", Value: v, Met: v <= 5})
	}
}

func samples(s Stat, format string) string {
	parts := make([]string, len(s.Samples))
	for i, v := range s.Samples {
		parts[i] = fmt.Sprintf(format, v)
	}
	return strings.Join(parts, " ")
}

// WriteTable prints the report as aligned tables: every figure's median,
// then its per-run samples.
func (r *Report) WriteTable(out io.Writer) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	m := r.Machine
	p("machine\t%d CPUs, %s, %d MiB, %s, %s\n", m.CPUs, m.CPUModel, m.MemoryMiB, m.GoVersion, m.OS)
	p("runs\t%d (medians; per-run samples in brackets)\t\n", r.Runs)
	if r.Durable {
		p("storage\tfile, sync_interval: always (every write fsynced)\t\n\n")
	} else {
		p("storage\tfile, lazy fsync (nats-server's default)\t\n\n")
	}

	if r.Baseline != nil || r.Queue != nil || r.Full != nil || len(r.ScaleOut) > 0 {
		p("THROUGHPUT\tjobs/s\tratio to baseline\tratio to limit\twrites/job\tallocs/job*\tKiB/job*\tCPU µs/job*\tsamples jobs/s\n")
		ratio := func(s *Stat) string {
			if s == nil {
				return "-"
			}
			return fmt.Sprintf("%.2f [%s]", s.Median, samples(*s, "%.2f"))
		}
		row := func(name string, t *Throughput) {
			writes := "-"
			if len(t.WritesPerJob.Samples) > 0 {
				writes = fmt.Sprintf("%.2f", t.WritesPerJob.Median)
			}
			p("%s\t%.0f\t%s\t%s\t%s\t%.0f\t%.1f\t%.1f\t[%s]\n", name, t.JobsPerSec.Median, ratio(t.RatioToBaseline), ratio(t.RatioToLimit),
				writes, t.AllocsPerJob.Median, t.BytesPerJob.Median/1024, t.CPUPerJob.Median, samples(t.JobsPerSec, "%.0f"))
		}
		if r.Baseline != nil {
			row(fmt.Sprintf("baseline (nats.go, %d jobs)", r.Jobs), r.Baseline)
		}
		if r.BaselineEvents != nil {
			row(fmt.Sprintf("baseline + 1 live event/job (%d jobs)", r.Jobs), r.BaselineEvents)
		}
		if r.Queue != nil {
			row(fmt.Sprintf("jetpilot queue path (%d jobs)", r.Jobs), r.Queue)
		}
		if r.SessionLoop != nil {
			row(fmt.Sprintf("bare HTTP+SSE session loop (%d jobs)", r.FullJobs), r.SessionLoop)
		}
		if r.Full != nil {
			row(fmt.Sprintf("jetpilot full path (%d jobs)", r.FullJobs), r.Full)
		}
		for _, s := range r.ScaleOut {
			t := s.Throughput
			row(fmt.Sprintf("scale-out: %d worker(s), queue path", s.Workers), &t)
		}
		// No tab: the last cell of a line sets no column's width.
		p("* allocs, KiB and CPU: whole bench process (NATS server + simulator included). Limit: queue path -> baseline + 1 event/job, full path -> session loop.\n\n")
	}
	if l := r.Latency; l != nil {
		p("LATENCY at %d jobs/s (achieved %.0f)\tp50 ms\tp99 ms\tmax ms\tsamples p99\n", l.Rate, l.AchievedRate.Median)
		row := func(name string, pc Percentiles) {
			p("%s\t%.2f\t%.2f\t%.2f\t[%s]\n", name, pc.P50.Median, pc.P99.Median, pc.Max.Median, samples(pc.P99, "%.2f"))
		}
		row("publish -> session created", l.PublishToSession)
		row("run_completed -> result stored", l.RunCompletedToResult)
		row("publish -> result stored", l.PublishToResult)
		p("\n")
	}
	if c := r.Concurrent; c != nil {
		where := "worker in a child process: figures are the worker's alone"
		if !c.Isolated {
			where = "worker in the bench process: figures include the simulator and NATS server"
		}
		p("CONCURRENCY: %d runs in flight on one worker\t%s\t\n", c.InFlight, where)
		p("RSS per run\t%.1f KiB\t[%s]\n", c.RSSPerRunKiB.Median, samples(c.RSSPerRunKiB, "%.1f"))
		p("  Go heap per run\t%.1f KiB\t[%s]\n", c.HeapPerRunKiB.Median, samples(c.HeapPerRunKiB, "%.1f"))
		p("  goroutine stacks per run\t%.1f KiB\t[%s]\n", c.StackPerRunKiB.Median, samples(c.StackPerRunKiB, "%.1f"))
		p("  at the end of the idle window (%s GCs in it)\t%.1f KiB (heap %.1f, stacks %.1f)\t[%s]\n", samples(c.IdleGCs, "%.0f"),
			c.EndRSSPerRunKiB.Median, c.EndHeapPerRunKiB.Median, c.EndStackPerRunKiB.Median, samples(c.EndRSSPerRunKiB, "%.1f"))
		p("goroutines per run\t%.2f\t[%s]\n", c.GoroutinesPerRun.Median, samples(c.GoroutinesPerRun, "%.2f"))
		p("CPU while idle (%.0fs window)\t%.1f %% of a core\t[%s]\n", c.IdleWindowSeconds, c.IdleCPUPercent.Median, samples(c.IdleCPUPercent, "%.1f"))
		p("RSS idle worker -> with runs\t%.0f -> %.0f MiB\t\n", c.RSSBeforeMiB.Median, c.RSSAfterMiB.Median)
		p("ramp to all runs open\t%.1f s\t[%s]\n\n", c.RampSeconds.Median, samples(c.RampSeconds, "%.1f"))
	}
	if pp := r.Policy; pp != nil {
		p("POLICY: set -> in force on %d workers (%d updates per run)\tp50 ms\tp99 ms\tmax ms\tsamples p50\n", pp.Workers, pp.Updates)
		row := func(name string, pc Percentiles) {
			p("%s\t%.2f\t%.2f\t%.2f\t[%s]\n", name, pc.P50.Median, pc.P99.Median, pc.Max.Median, samples(pc.P50, "%.2f"))
		}
		row(fmt.Sprintf("policy set -> all %d workers applied", pp.Workers), pp.Applied)
		row(fmt.Sprintf("baseline: kv.Put -> all %d raw KV watchers", pp.Workers), pp.RawWatch)
		row("  PolicyStore.Set call alone (context)", pp.SetCall)
		p("ratio p50 policy / raw watch\t%.2f\t\t\t[%s]\n\n", pp.RatioP50ToRawWatch.Median, samples(pp.RatioP50ToRawWatch, "%.2f"))
	}
	if len(r.Targets) > 0 {
		p("TARGET\tgoal\tmedian\tmet\n")
		for _, t := range r.Targets {
			met := "yes"
			if !t.Met {
				met = "NO"
			}
			p("%s\t%s\t%.2f\t%s\n", t.Name, t.Goal, t.Value, met)
		}
	}
	p("\nwall time\t%.0f s\t\n", r.WallSeconds)
	return w.Flush()
}
