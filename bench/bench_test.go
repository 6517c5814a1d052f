package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jetpilot-dev/jetpilot/policy"
)

// TestMain lets the test binary be the concurrency scenario's worker
// process: started with ChildEnv set, it runs ChildMain instead of the
// tests, as `jetpilot-bench child-worker` does.
func TestMain(m *testing.M) {
	if conf := os.Getenv(ChildEnv); conf != "" {
		if err := ChildMain(context.Background(), conf, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// smokeOptions is a tiny load: it proves every scenario works end to end
// and that the report adds up, and asserts nothing about timing.
func smokeOptions() Options {
	return Options{
		Runs:            2,
		Jobs:            40,
		FullJobs:        15,
		Concurrency:     4,
		ScaleOut:        []int{1, 2},
		InFlight:        12,
		IdleWindow:      100 * time.Millisecond,
		Rate:            50,
		LatencyDuration: 300 * time.Millisecond,
		PolicyWorkers:   2,
		PolicyUpdates:   3,
		ScenarioTimeout: 50 * time.Second,
		ChildCommand:    []string{os.Args[0]},
	}
}

func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	opts := smokeOptions()
	opts.Progress = io.MultiWriter(&progress, tlog{t})
	opts.ProfileDir = t.TempDir()
	r, err := Run(ctx, opts)
	require.NoError(t, err, "progress:\n%s", progress.String())

	assert.Equal(t, 2, r.Runs)
	assert.Equal(t, AllScenarios, r.Scenarios)
	assert.NotZero(t, r.Machine.CPUs)
	assert.NotEmpty(t, r.Machine.GoVersion)

	checkThroughput := func(name string, tp *Throughput, jobs int, ratio bool) {
		t.Helper()
		require.NotNil(t, tp, name)
		assert.Len(t, tp.JobsPerSec.Samples, 2, name)
		assert.Equal(t, []int{jobs, jobs}, tp.Jobs, name)
		assert.Equal(t, tp.Jobs, tp.Results, "%s: every job got exactly one result", name)
		for _, v := range tp.JobsPerSec.Samples {
			assert.Positive(t, v, name)
		}
		assert.Positive(t, tp.JobsPerSec.Median, name)
		assert.Positive(t, tp.AllocsPerJob.Median, name)
		if ratio {
			require.NotNil(t, tp.RatioToBaseline, name)
			assert.Len(t, tp.RatioToBaseline.Samples, 2, name)
			assert.Positive(t, tp.RatioToBaseline.Median, name)
		} else {
			assert.Nil(t, tp.RatioToBaseline, name)
		}
	}
	checkThroughput("baseline", r.Baseline, 40, false)
	checkThroughput("baseline + events", r.BaselineEvents, 40, true)
	checkThroughput("queue", r.Queue, 40, true)
	checkThroughput("session loop", r.SessionLoop, 15, false)
	checkThroughput("full", r.Full, 15, true)
	for name, tp := range map[string]*Throughput{"queue": r.Queue, "full": r.Full} {
		require.NotNil(t, tp.RatioToLimit, name)
		assert.Len(t, tp.RatioToLimit.Samples, 2, name)
	}
	// Writes counted from the streams: the job and its result at least;
	// the event loop writes one more per job than the plain one.
	assert.Equal(t, 2.0, r.Baseline.WritesPerJob.Median)
	assert.Equal(t, 3.0, r.BaselineEvents.WritesPerJob.Median)
	assert.GreaterOrEqual(t, r.Full.WritesPerJob.Median, 4.0, "job, result, a run record, an event")
	assert.Empty(t, r.SessionLoop.WritesPerJob.Samples, "no queue, no writes")
	require.Len(t, r.ScaleOut, 2)
	for i, k := range []int{1, 2} {
		assert.Equal(t, k, r.ScaleOut[i].Workers)
		checkThroughput(fmt.Sprintf("scale-out %d", k), &r.ScaleOut[i].Throughput, 40, true)
	}

	require.NotNil(t, r.Latency)
	jobs := int(50 * 0.3)
	for name, p := range map[string]Percentiles{
		"publish->session": r.Latency.PublishToSession, "run_completed->result": r.Latency.RunCompletedToResult,
		"publish->result": r.Latency.PublishToResult,
	} {
		assert.Equal(t, []int{jobs, jobs}, p.Count, name)
		assert.Len(t, p.P99.Samples, 2, name)
		assert.LessOrEqual(t, p.P50.Median, p.P99.Median, name)
		assert.LessOrEqual(t, p.P99.Median, p.Max.Median, name)
		assert.Positive(t, p.Max.Median, name)
	}
	assert.Positive(t, r.Latency.AchievedRate.Median)

	c := r.Concurrent
	require.NotNil(t, c)
	assert.True(t, c.Isolated, "the worker ran in a child process")
	assert.Equal(t, 12, c.InFlight)
	assert.Len(t, c.RSSPerRunKiB.Samples, 2)
	assert.Positive(t, c.GoroutinesPerRun.Median, "each open run holds goroutines")
	assert.Positive(t, c.RSSAfterMiB.Median)
	assert.GreaterOrEqual(t, c.IdleCPUPercent.Median, 0.0)

	checkPolicy(t, r.Policy, 2, 2, 3)

	names := map[string]bool{}
	for _, tg := range r.Targets {
		names[tg.Name] = true
	}
	assert.Len(t, names, 5, "every target is checked: %v", r.Targets)

	for _, f := range []string{"cpu-queue.pprof", "cpu-full.pprof", "allocs-queue-after.pprof", "allocs-full-before.pprof"} {
		st, err := os.Stat(opts.ProfileDir + "/" + f)
		require.NoError(t, err, f)
		assert.Positive(t, st.Size(), f)
	}

	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	for _, want := range []string{"baseline", "baseline + 1 live event/job", "queue path", "bare HTTP+SSE session loop", "full path", "scale-out: 2 worker(s)", "LATENCY", "CONCURRENCY", "POLICY", "TARGET"} {
		assert.Contains(t, table.String(), want)
	}
	b, err := json.Marshal(r)
	require.NoError(t, err)
	assert.True(t, json.Valid(b))
	assert.Equal(t, 2, strings.Count(progress.String(), ": baseline "), progress.String())
}

// checkPolicy checks a policy scenario's report: every run measured every
// update, and the workers applied exactly the versions stored, in order.
// Each run has a fresh bucket: the raw watch baseline puts revisions
// 1..updates, then the workers get updates+1..2*updates from Set.
func checkPolicy(t *testing.T, pp *PolicyPropagation, runs, workers, updates int) {
	t.Helper()
	require.NotNil(t, pp)
	assert.Equal(t, workers, pp.Workers)
	assert.Equal(t, updates, pp.Updates)
	want := make([]uint64, updates)
	for i := range want {
		want[i] = uint64(updates + 1 + i)
	}
	require.Len(t, pp.Versions, runs)
	for _, v := range pp.Versions {
		assert.Equal(t, want, v, "the versions the workers applied")
	}
	counts := make([]int, runs)
	for i := range counts {
		counts[i] = updates
	}
	for name, p := range map[string]Percentiles{"applied": pp.Applied, "raw watch": pp.RawWatch, "set call": pp.SetCall} {
		assert.Equal(t, counts, p.Count, name)
		assert.Len(t, p.P50.Samples, runs, name)
		assert.LessOrEqual(t, p.P50.Median, p.P99.Median, name)
		assert.LessOrEqual(t, p.P99.Median, p.Max.Median, name)
		assert.Positive(t, p.P50.Median, name)
	}
	assert.Len(t, pp.RatioP50ToRawWatch.Samples, runs)
	assert.Positive(t, pp.RatioP50ToRawWatch.Median)
}

func TestPolicyScenario(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Run(ctx, Options{
		Runs: 2, Scenarios: []Scenario{ScenarioPolicy}, PolicyWorkers: 3, PolicyUpdates: 4,
		ScenarioTimeout: 40 * time.Second, Progress: tlog{t},
	})
	require.NoError(t, err)
	assert.Equal(t, []Scenario{ScenarioPolicy}, r.Scenarios, "the policy scenario needs no throughput baseline")
	assert.Nil(t, r.Baseline)
	checkPolicy(t, r.Policy, 2, 3, 4)

	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	for _, want := range []string{"POLICY", "all 3 workers applied", "all 3 raw KV watchers", "ratio p50 policy / raw watch"} {
		assert.Contains(t, table.String(), want)
	}
	b, err := json.Marshal(r)
	require.NoError(t, err)
	var back struct {
		Policy *PolicyPropagation `json:"policy"`
	}
	require.NoError(t, json.Unmarshal(b, &back))
	require.NotNil(t, back.Policy)
	assert.Equal(t, r.Policy.Versions, back.Policy.Versions)
}

// BenchmarkPolicyParse is what every worker does with each version it
// receives (and PolicyStore.Set before storing one): parse and compile the
// scenario's documents. It explains most of the policy scenario's gap to
// the raw KV watch.
//
//	go test ./bench -run '^$' -bench PolicyParse -benchmem
func BenchmarkPolicyParse(b *testing.B) {
	for i := 0; b.Loop(); i++ {
		if _, err := policy.Parse(policyDoc(i)); err != nil {
			b.Fatal(err)
		}
	}
}

func TestInProcessConcurrency(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Run(ctx, Options{
		Runs: 1, Scenarios: []Scenario{ScenarioConcurrency}, InFlight: 8,
		IdleWindow: 50 * time.Millisecond, ScenarioTimeout: 40 * time.Second,
	})
	require.NoError(t, err)
	require.NotNil(t, r.Concurrent)
	assert.False(t, r.Concurrent.Isolated, "no child command: the worker shares the process")
	assert.Nil(t, r.Baseline, "the concurrency scenario alone needs no baseline")
	assert.Positive(t, r.Concurrent.GoroutinesPerRun.Median)
}

func TestOptions(t *testing.T) {
	s, err := ParseScenarios([]string{"latency,queue", "queue"})
	require.NoError(t, err)
	assert.Equal(t, []Scenario{ScenarioQueue, ScenarioLatency}, s)

	_, err = ParseScenarios([]string{"fast"})
	require.ErrorContains(t, err, `unknown scenario "fast"`)

	o, err := Options{Scenarios: []Scenario{ScenarioFull}}.withDefaults()
	require.NoError(t, err)
	assert.Equal(t, []Scenario{ScenarioBaseline, ScenarioFull}, o.Scenarios, "ratios need the baseline")
	assert.Equal(t, DefaultJobs, o.Jobs)
	assert.Equal(t, 3, o.Runs)
	assert.Equal(t, DefaultPolicyWorkers, o.PolicyWorkers)
	assert.Equal(t, DefaultPolicyUpdates, o.PolicyUpdates)

	for _, bad := range []Options{
		{Runs: -1}, {Jobs: -5}, {Concurrency: 20_000}, {InFlight: maxInFlight + 1},
		{Rate: -1}, {LatencyDuration: -time.Second}, {ScaleOut: []int{0}},
		{PolicyWorkers: 65}, {PolicyUpdates: -1}, {PolicyUpdates: maxPolicyUpdates + 1},
	} {
		_, err := bad.withDefaults()
		assert.Error(t, err, "%+v", bad)
	}
	_, err = Run(context.Background(), Options{Runs: -1})
	require.ErrorContains(t, err, "runs must be")
}

func TestQuantile(t *testing.T) {
	ds := make([]time.Duration, 100)
	for i := range ds {
		ds[i] = time.Duration(i+1) * time.Millisecond
	}
	assert.Equal(t, 50*time.Millisecond, quantile(ds, 0.5))
	assert.Equal(t, 99*time.Millisecond, quantile(ds, 0.99))
	assert.Equal(t, 100*time.Millisecond, quantile(ds, 1))
	assert.Equal(t, time.Millisecond, quantile(ds[:1], 0.99))
	assert.InDelta(t, 2.5, median([]float64{4, 1, 3, 2}), 1e-9)
	assert.InDelta(t, 3.0, median([]float64{5, 1, 3}), 1e-9)
}

// tlog writes progress lines to the test log with their time.
type tlog struct{ t *testing.T }

func (l tlog) Write(p []byte) (int, error) {
	l.t.Logf("%s %s", time.Now().Format("15:04:05.000"), strings.TrimSpace(string(p)))
	return len(p), nil
}
